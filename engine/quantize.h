/* quantize.h: on-load quantization (`--quant fp8|int8|int4`): a linear weight stored as
 * F32/BF16/F16 is converted once, at load, into one of the formats the matmuls read natively:
 *   fp8:  e4m3 values with one f32 scale per 128x128 block (Kimi K2's / DeepSeek-V3's layout),
 *         scale = amax(block) / 448, values rounded to nearest even;
 *   int8: int8 values with one f32 scale per output row, scale = amax(row) / 127, symmetric;
 *   int4: compressed-tensors pack-quantized nibbles (u = q + 8) with one f32 scale per 128
 *         columns of a row, q = clamp(round(x / scale), -8, 7) (Kimi-K2-Thinking's layout), the
 *         scale chosen among amax(group) / c, c = 6, 6.25, ..., 8.5, for the least squared error
 *         (a few of the largest values may clip; amax / 7 alone cost Kimi's nano model +6.1%
 *         perplexity, the search +4.2%).
 * An all-zero block, row or group gets scale 1 (its values are 0). NaN/Inf inputs are rejected.
 */
#ifndef ENG_QUANTIZE_H
#define ENG_QUANTIZE_H

#include "common.h"
#include "weights.h"

typedef enum eng_load_quant {
    ENG_LOADQ_NONE = 0,
    ENG_LOADQ_FP8,
    ENG_LOADQ_INT8,
    ENG_LOADQ_INT4,
} eng_load_quant;

/* "none", "fp8", "int8", "int4" -> *out; INVALID_ARG with a message otherwise. */
pp_status eng_load_quant_parse(const char *name, eng_load_quant *out, eng_err *err);
const char *eng_load_quant_name(eng_load_quant q);

/* float -> float8_e4m3fn, round to nearest even, saturating at +-448 (NaN -> 0x7f). */
uint8_t eng_f32_to_fp8_e4m3(float x);

/* Quantizes w (F32, BF16 or F16) into *out, whose data and scales live in one allocation
 * returned in *owned (free() it after the weight's last use). UNSUPPORTED when w is already
 * quantized, BAD_FORMAT when it holds NaN or Inf (named by `name`), OUT_OF_MEMORY. */
pp_status eng_weight_quantize(const eng_weight *w, eng_load_quant q, const char *name, eng_weight *out,
                              void **owned, eng_err *err);

#endif /* ENG_QUANTIZE_H */
