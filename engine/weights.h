/* weights.h: a model's tensors as the forward passes see them: linear weights in their stored
 * format (f32, bf16, f16, fp8 with 128x128 block scales, int4 with group scales) and vectors
 * (norm weights, biases).
 *
 * Invariant: a bound eng_weight has been checked against the shape the architecture expects
 * (rows, columns, scale grid), so a row dequantization never reads outside its tensors. Nothing
 * is converted at bind time: data points into the safetensors mapping.
 */
#ifndef ENG_WEIGHTS_H
#define ENG_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "safetensors.h"

typedef enum eng_wfmt {
    ENG_WFMT_F32 = 0,
    ENG_WFMT_BF16,
    ENG_WFMT_F16,
    ENG_WFMT_FP8_BLOCK,  /* e4m3 values, scale_inv per [block_out x block_in] block */
    ENG_WFMT_INT4_GROUP, /* compressed-tensors pack-quantized: u = q + 8 nibbles, scale per group */
    ENG_WFMT_INT8_CHANNEL, /* int8 values, one scale per output row (on-load quantization) */
} eng_wfmt;

/* A linear layer's weight, logical shape [n_out][n_in] (nn.Linear layout: y = x W^T). */
typedef struct eng_weight {
    eng_wfmt fmt;
    int64_t n_out, n_in;
    /* F32/BF16/F16/FP8/INT8: [n_out][n_in] in the stored dtype.
     * INT4: [n_out][packed_cols] uint32 words, 8 nibbles each, low nibble = lowest column. */
    const void *data;
    /* FP8:  [ceil(n_out/block_out)][ceil(n_in/block_in)] scale_dtype (a multiplier).
     * INT4: [n_out][ceil(n_in/group)] scale_dtype. INT8: [n_out] scale_dtype.
     * NULL for unquantized formats. */
    const void *scale;
    eng_dtype scale_dtype;  /* F32, BF16 or F16 */
    int block_out, block_in; /* FP8 */
    int group;              /* INT4 */
    int64_t packed_cols;    /* INT4: ceil(n_in / 8) */
    int64_t scale_cols;     /* FP8: ceil(n_in/block_in); INT4: ceil(n_in/group); INT8: 1 */
} eng_weight;

/* A 1-D tensor (norm weight, bias, e_score_correction_bias), stored F32, BF16 or F16. */
typedef struct eng_vec {
    const void *data; /* [n] dtype */
    eng_dtype dtype;
    int64_t n;
} eng_vec;

/* Bytes the weight occupies as stored (data plus scales). */
size_t eng_weight_bytes(const eng_weight *w);

/* Dequantizes row n, columns [k0, k1), of w into out[0 .. k1-k0) as f32, exactly. */
void eng_weight_row_f32(const eng_weight *w, int64_t n, int64_t k0, int64_t k1, float *out);

/* Binds the linear weight named `prefix` ("model.layers.0.self_attn.q_proj"): one of
 *   prefix.weight            F32/BF16/F16                         -> plain
 *   prefix.weight + prefix.weight_scale_inv   F8_E4M3 + F32/BF16/F16 -> FP8_BLOCK (block from cfg)
 *   prefix.weight_packed + prefix.weight_scale (+ prefix.weight_shape) -> INT4_GROUP (group from cfg)
 * and checks it is [n_out][n_in] with a scale grid of the right shape. PP_STATUS_NOT_FOUND when
 * absent, PP_STATUS_BAD_FORMAT on a shape or dtype mismatch. */
pp_status eng_weight_bind(const eng_st_set *set, const eng_config *cfg, const char *prefix,
                          int64_t n_out, int64_t n_in, eng_weight *out, eng_err *err);

/* Binds a vector tensor `name` of n elements (F32, BF16 or F16). */
pp_status eng_vec_bind(const eng_st_set *set, const char *name, int64_t n, eng_vec *out,
                       eng_err *err);

#endif /* ENG_WEIGHTS_H */
