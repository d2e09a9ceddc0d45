/* kernels.h: the C-callable launchers of paraphym's CUDA kernels.
 *
 * kernels/ includes nothing from the rest of the tree: weights are described by kern_weight
 * (the device-side twin of engine/weights.h's eng_weight), activations are f32 device pointers,
 * and every launcher takes the caller's stream. Conventions:
 *   - Every launcher returns 0 (cudaSuccess) or a cudaError_t value as int: the launch error,
 *     or cudaErrorInvalidValue (1) for arguments it cannot handle. Launchers never synchronise
 *     and never abort; a fault inside a kernel surfaces at the caller's next synchronisation.
 *   - All pointers are device pointers unless the comment says host.
 *   - Numeric contract ("f32 mode"): f32 activations and accumulation, weights dequantized
 *     exactly, the CPU reference's formulas (engine/backend_cpu.c); results differ from it only
 *     by summation order.
 *   - n_tokens == 0 (or any empty dimension) launches nothing and returns 0.
 */
#ifndef PP_KERNELS_H
#define PP_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as cudaStream_t, without including cuda_runtime.h; NULL is the legacy stream. */
typedef struct CUstream_st *kern_stream;

/* ---- devices --------------------------------------------------------------------------------- */

typedef struct kern_device_info {
    char name[256];
    int major, minor;           /* compute capability */
    int n_sm;
    size_t total_mem_bytes;
    size_t free_mem_bytes;
} kern_device_info;

/* Number of usable CUDA devices: 0 when there is no driver, no device, or cudaGetDeviceCount
 * fails (the error text goes to err when err_len > 0). Never aborts. */
int kern_device_count(char *err, size_t err_len);

/* Fills *info for device `device`; returns 0, or -1 with the CUDA error text in err. Makes the
 * device current (creating its context) to read the free memory. */
int kern_device_info_get(int device, kern_device_info *info, char *err, size_t err_len);

/* The device's total memory in bytes from its properties alone (no context is created, so no
 * VRAM is taken by asking); returns 0, or -1 with the CUDA error text in err. */
int kern_device_total_mem(int device, size_t *bytes, char *err, size_t err_len);

/* Device memory in use on `device`, by every process (total - free as cudaMemGetInfo reports
 * them); returns 0, or -1 with the CUDA error text in err. Creates the device's context when this
 * process has none (hundreds of MiB: ask only about devices in use); the calling thread's
 * current device is left as it was. */
int kern_device_mem_used(int device, size_t *used, char *err, size_t err_len);

/* Runs a trivial kernel (out[i] = a * i + b over n elements) on device 0 and checks the result;
 * returns 0 when the device computes correctly, -1 with a message otherwise. */
int kern_device_selftest(int n, char *err, size_t err_len);

/* ---- weights --------------------------------------------------------------------------------- */

typedef enum kern_wfmt {
    KERN_W_F32 = 0,
    KERN_W_BF16,
    KERN_W_F16,
    KERN_W_FP8_BLOCK,  /* e4m3 values, one scale per [block_out x block_in] block */
    KERN_W_INT4_GROUP, /* uint32 words of 8 nibbles (low nibble = lowest column), value = (u - 8),
                          one scale per [1 x group] */
    KERN_W_INT8_CHANNEL, /* int8 values, one scale per output row */
} kern_wfmt;

typedef enum kern_dtype {
    KERN_DT_F32 = 0,
    KERN_DT_BF16,
    KERN_DT_F16,
} kern_dtype;

/* A linear weight, logical shape [n_out][n_in] (y = x W^T), in device memory. Dequantized
 * element (n, k):
 *   F32/BF16/F16:  data[n * n_in + k]
 *   FP8_BLOCK:     e4m3(data[n * n_in + k]) * scale[(n / block_out) * scale_cols + k / block_in]
 *   INT4_GROUP:    (nibble k % 8 of ((uint32*)data)[n * packed_cols + k / 8] - 8)
 *                    * scale[n * scale_cols + k / group]
 *   INT8_CHANNEL:  (float)((int8*)data)[n * n_in + k] * scale[n]   (scale [n_out], scale_cols 1)
 * with scale in scale_dtype (products formed in f32, as the CPU reference does). */
typedef struct kern_weight {
    kern_wfmt fmt;
    int64_t n_out, n_in;
    const void *data;
    const void *scale;       /* NULL for F32/BF16/F16 */
    kern_dtype scale_dtype;
    int block_out, block_in; /* FP8_BLOCK */
    int group;               /* INT4_GROUP */
    int64_t packed_cols;     /* INT4_GROUP: ceil(n_in / 8) */
    int64_t scale_cols;      /* FP8_BLOCK: ceil(n_in / block_in); INT4_GROUP: ceil(n_in / group);
                                INT8_CHANNEL: 1 */
} kern_weight;

/* A 1-D tensor (norm weight, bias): n elements of dtype. */
typedef struct kern_vec {
    const void *data;
    kern_dtype dtype;
    int64_t n;
} kern_vec;

/* ---- elementwise (kernels/elementwise.cu) ---------------------------------------------------- */

/* out[t][:] = row ids[t] of table, dequantized (out rows are table->n_in wide, contiguous).
 * ids: [n_tokens] device int32; ids outside [0, n_out) give a row of NaN (the engine checks ids
 * before they reach the device). */
int kern_embedding(const kern_weight *table, const int32_t *ids, int n_tokens, float *out,
                   kern_stream stream);

/* out[r] = x[r] * (1 / sqrt(mean(x[r]^2) + eps)) * w, rows of width w->n; x and out may alias. */
int kern_rmsnorm(const float *x, int64_t x_stride, const kern_vec *w, float eps, float *out,
                 int64_t out_stride, int n_rows, kern_stream stream);

/* out[i] = a[i] + b[i], n elements (out may alias a or b). */
int kern_add(const float *a, const float *b, float *out, size_t n, kern_stream stream);

/* RoPE in place on the slice [rope_offset, rope_offset + d_rope) of every head; token t at
 * position pos[t] (device int32 [n_tokens]). inv_freq: [d_rope / 2] device f32. interleaved:
 * pairs (2j, 2j+1) read, result stored half-split (HF's apply_rotary_pos_emb_interleave); else
 * pairs (j, j + d_rope/2). Angle (float)pos * inv_freq[j] in f32, cos/sin of it (accurate, not
 * __cosf), times cos_sin_scale. */
int kern_rope(float *x, int n_tokens, int n_head, int64_t token_stride, int64_t head_stride,
              int rope_offset, const int32_t *pos, int d_rope, bool interleaved,
              float cos_sin_scale, const float *inv_freq, kern_stream stream);

/* KV-cache write: for t < n_tokens, h < n_head, i < width:
 *   cache[slot[t] * cache_row_stride + h * cache_head_stride + i]
 *     = src[t * src_row_stride + h * src_head_stride + i]
 * slot: device int32 [n_tokens], the cache row of each token (distinct rows; a negative slot
 * skips its token). src_head_stride may be 0 (one source row copied into every head, as the
 * shared k_pe of DeepSeek's naive MLA cache). cache elements are `dtype` (strides count them):
 * KERN_DT_F32 a bit-exact copy; KERN_DT_BF16 the high 16 bits of kern_round_bf16's result
 * (nearest, ties to even; bit-exact with engine/common.h's eng_round_bf16). Other dtypes:
 * cudaErrorInvalidValue. */
int kern_kv_write(void *cache, kern_dtype dtype, int64_t cache_row_stride, int64_t cache_head_stride,
                  const float *src, int64_t src_row_stride, int64_t src_head_stride, int n_head,
                  int64_t width, const int32_t *slot, int n_tokens, kern_stream stream);

/* out[t][i] = silu(gate[t][i]) * up[t][i] = gate / (1 + exp(-gate)) * up; out may alias. */
int kern_swiglu(const float *gate, int64_t gate_stride, const float *up, int64_t up_stride,
                float *out, int64_t out_stride, int n_tokens, int d_ff, kern_stream stream);

/* Rounds x in place to bf16 (nearest, ties to even; NaN -> 0x7fc00000), the values staying f32
 * with their low 16 bits zero: rows [n_rows][n_cols], row r at x + r * stride (stride >= 0;
 * rows may overlap: the rounding is idempotent). Bit-exact with engine/common.h's
 * eng_round_bf16. One thread per element, grid (ceil(n_cols / 256) capped at 2^20,
 * min(n_rows, 65535)), loops beyond. With kern_quant_act_fp8 and kern_f32_to_bf16 below, the
 * only kernels of the bf16 compute mode; no f32 op rounds or quantizes activations. */
int kern_round_bf16(float *x, int64_t stride, int n_rows, int64_t n_cols, kern_stream stream);

/* Packs f32 rows into bf16 storage (the tensor-core input of the bf16 mode's matmul_bf16):
 *   out[r * out_stride + c] = the high half of kern_round_bf16's bits of x[r * x_stride + c]
 * for r < n_rows, c < n_cols: nearest bf16, ties to even, NaN -> 0x7fc0. For the
 * bf16-representable values the bf16 mode passes (low 16 bits zero) that is exact, the same as
 * a truncation. With n_cols odd, column n_cols of each out row (the pair's second half) is
 * written as +0; nothing else outside [n_rows][n_cols] is touched. out: uint16 device memory,
 * 4-byte aligned, out_stride even and >= n_cols (each thread stores a pair of columns as one
 * 32-bit word); x rows any stride >= 0, not overlapping out. One thread per column pair, grid
 * (min(ceil(pairs / 256), 2^20), min(n_rows, 65535)), loops beyond. cudaErrorInvalidValue for an
 * odd out_stride, out_stride < n_cols or a misaligned out. */
int kern_f32_to_bf16(const float *x, int64_t x_stride, uint16_t *out, int64_t out_stride,
                     int n_rows, int64_t n_cols, kern_stream stream);

/* W8A8 activation quantization (the bf16 mode over FP8_BLOCK weights; engine/backend.h's
 * quant_act_fp8, Hugging Face's act_quant): for each row r < n_rows and each group of `group`
 * columns (the row's last group may be shorter) of its n_cols,
 *   s = max |x| / 448 (f32, fmaxf: NaN never raises it),
 *   out = f32(e4m3(x / s)) * s   (e4m3: cuda_fp8.h's __nv_cvt_float_to_fp8 with __NV_SATFINITE,
 *                                 nearest even, saturating at +-448, which is engine/quantize.c's
 *                                 eng_f32_to_fp8_e4m3 for every non-NaN f32)
 * and a row with any group of s == 0 is written as +0 throughout (HF's nan_to_num of the NaN
 * row its 0 / 0 makes). Bit-exact with the CPU reference for finite x (a NaN comes out NaN,
 * of either sign). out may be x with the same stride (in place); otherwise the two must not
 * overlap, nor may rows. One block of 8 warps per row (rows
 * strided by gridDim.x, at most 2^20 blocks); warp w owns the row's groups w, w + 8, ...: a
 * first pass finds a zero scale (__syncthreads_or), a second recomputes each group's scale and
 * writes it. cudaErrorInvalidValue for group < 1. */
int kern_quant_act_fp8(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                       int n_rows, int64_t n_cols, int group, kern_stream stream);

/* ---- matmul (kernels/matmul.cu) -------------------------------------------------------------- */

/* y[t][n] = sum_k x[t][k] * W[n][k] for t < n_tokens, n < w->n_out; x rows x_stride floats
 * apart, y rows y_stride apart (y must not alias x). Any n_out, n_in (no tile multiples
 * needed). */
int kern_matmul(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                int64_t y_stride, int n_tokens, kern_stream stream);

/* ---- tensor-core matmul (kernels/matmul_tc.cu) ----------------------------------------------- */

/* Whether kern_matmul_tc takes w: a valid BF16 or INT8_CHANNEL weight, or FP8_BLOCK / INT4_GROUP
 * whose block_in / group is a multiple of 16, with n_out <= 8388480. */
bool kern_matmul_tc_supported(const kern_weight *w);

/* The bf16 mode's prefill product on tensor cores: y[t][n] = sum_k x[t][k] * W[n][k] for
 * t < n_tokens, n < w->n_out (y rows y_stride >= n_out floats apart), where x is given as bf16:
 * xb [n_tokens][xb_stride] uint16 (kern_f32_to_bf16's output), xb_stride a multiple of 8 and
 * >= n_in rounded up to 8, xb 16-byte aligned; its columns >= n_in are never used. Products are
 * exact (every supported weight stores bf16 values: bf16, e4m3, int8, int4), sums f32; FP8 /
 * INT4 scales multiply each scale block's partial sum, INT8's row scale the total, so results
 * are the f32 path's up to summation order and the rounding of those scaled sums. Needs compute
 * capability >= 8.0 (cudaErrorInvalidDevice otherwise); cudaErrorInvalidValue for a weight
 * kern_matmul_tc_supported refuses or a bad layout. y must not alias xb. */
int kern_matmul_tc(const uint16_t *xb, int64_t xb_stride, const kern_weight *w, float *y,
                   int64_t y_stride, int n_tokens, kern_stream stream);

/* ---- attention (kernels/attention.cu) -------------------------------------------------------- */

/* The sequences of one forward pass and where their keys live (a paged KV cache).
 * The batch's query tokens are its sequences' tokens concatenated: sequence s owns batch rows
 * seq_start[s] .. seq_start[s + 1] - 1; its i-th token sits at position seq_pos0[s] + i and sees
 * its own sequence's keys at positions 0 .. seq_pos0[s] + i (causal). Key position j of
 * sequence s lives in row
 *   block_table[s * max_blocks + j / block_size] * block_size + j % block_size
 * of the layer's cache (rows k_stride / v_stride elements apart, as the args say). Sequences may
 * have any lengths, including 0 tokens. The launchers plan from the host fields and trust the
 * device arrays to agree with them; with n_tokens > 0 they require 1 <= max_seq_tokens <=
 * n_tokens and max_ctx >= max_seq_tokens. */
typedef struct kern_kv_batch {
    int n_seq;                  /* >= 1 */
    int n_tokens;               /* host copy of seq_start[n_seq]: rows of q and out */
    int max_seq_tokens;         /* host: max over s of seq_start[s + 1] - seq_start[s] */
    int max_ctx;                /* host: max over s of seq_pos0[s] + its tokens (keys seen by
                                   the longest row); every sequence's context <= this */
    int block_size;             /* positions per KV block, >= 1 */
    int max_blocks;             /* row stride of block_table; >= ceil(max_ctx / block_size) */
    const int32_t *seq_start;   /* device [n_seq + 1], seq_start[0] = 0, nondecreasing */
    const int32_t *seq_pos0;    /* device [n_seq], >= 0 */
    const int32_t *block_table; /* device [n_seq][max_blocks] block ids */
} kern_kv_batch;

/* The host checks every launcher over a kern_kv_batch makes: the counts in range, the block table
 * covering max_ctx, and for a batch with tokens the rules above and its device arrays given. */
static inline bool kern_kv_batch_ok(const kern_kv_batch *b)
{
    if (b->n_seq < 1 || b->n_tokens < 0 || b->max_seq_tokens < 0 || b->max_ctx < 0 || b->block_size < 1 ||
        b->max_blocks < 0 || (int64_t)b->max_blocks * b->block_size < (int64_t)b->max_ctx)
        return false;
    return b->n_tokens == 0 || (b->max_seq_tokens >= 1 && b->max_seq_tokens <= b->n_tokens &&
                                b->max_ctx >= b->max_seq_tokens && b->seq_start && b->seq_pos0 && b->block_table);
}

/* Causal attention over a paged KV cache for a batch of sequences (kern_kv_batch): query head h
 * reads KV head h / (n_head / n_head_kv). Softmax in f32 with the running max. Any
 * d_qk, d_v <= 256. */
typedef struct kern_attn_args {
    kern_kv_batch batch;
    int n_head, n_head_kv;
    int d_qk, d_v;
    float scale;
    const float *q;   /* [batch.n_tokens][n_head][d_qk], rows q_stride apart */
    int64_t q_stride;
    kern_dtype kv_dtype; /* KERN_DT_F32 or KERN_DT_BF16: the element type of k and v (strides
                            count elements; a bf16 element is read as the f32 it stands for) */
    const void *k;    /* cache rows [..][n_head_kv][d_qk], k_stride apart (paged: see batch) */
    int64_t k_stride;
    const void *v;    /* cache rows [..][n_head_kv][d_v], v_stride apart */
    int64_t v_stride;
    float *out;       /* [batch.n_tokens][n_head][d_v], rows out_stride apart */
    int64_t out_stride;
} kern_attn_args;

/* Device bytes kern_attention needs as workspace for these args: 0 when it runs without key
 * splits (the row tiles already fill the GPU, or the context is short), else the split-K
 * partials (n_split * batch.n_tokens * n_head * (d_v + 2) floats). Depends only on the host
 * fields of the args (not on the device); 0 for invalid args or batch.n_tokens == 0. */
size_t kern_attention_workspace_bytes(const kern_attn_args *args);

/* workspace: kern_attention_workspace_bytes(args) bytes of device memory, 8-byte aligned (NULL
 * allowed when that is 0), used only by this call's launches on `stream`. Returns
 * cudaErrorInvalidValue for a kv_dtype other than F32/BF16, d_qk or d_v outside 1..256, n_head
 * not a multiple of n_head_kv, a batch field out of range (n_seq < 1, block_size < 1, max_blocks
 * too small for max_ctx), a NULL tensor or a missing workspace. */
int kern_attention(const kern_attn_args *args, void *workspace, kern_stream stream);

/* ---- tensor-core attention (kernels/attention_tc.cu) ------------------------------------------ */

/* Whether kern_attention_tc takes these args: a BF16 cache, n_head a multiple of n_head_kv,
 * (d_qk, d_v) one of (32, 32), (48, 48), (64, 64), (128, 128), (48, 32), (96, 64), (192, 128),
 * k_stride and v_stride multiples of 8 and k, v 16-byte aligned. Looks at no batch field. */
bool kern_attention_tc_supported(const kern_attn_args *args);

/* The bf16 mode's prefill attention: kern_attention's contract (the same batch and layout rules)
 * except the numerics: q is rounded to the nearest bf16 (exact for bf16 values), the
 * probabilities are rounded to bf16 before they multiply V, and the row sum adds those rounded
 * values (attention_tc.cu's header). No workspace: one CTA per 64 query rows of a sequence and
 * KV head, all keys in it, so meant for prefill-sized batches. Needs compute capability >= 8.0
 * (cudaErrorInvalidDevice otherwise); cudaErrorInvalidValue for args kern_attention_tc_supported
 * refuses or kern_attention would refuse. */
int kern_attention_tc(const kern_attn_args *args, kern_stream stream);

/* MLA, absorbed form (DeepSeek-V3), over a paged latent cache for a batch of sequences
 * (kern_kv_batch; ckv and kpe rows are indexed by the same cache rows): per head h
 *   q_lat = W_UK_h^T q_nope_h, score_j = scale * (q_lat . ckv[j] + q_pe_h . kpe[j]),
 *   out_h = W_UV_h (sum_j softmax(score)_j ckv[j]),
 * W_UK_h = kv_b rows [h*(d_nope+d_v), +d_nope), W_UV_h = the next d_v rows. kv_lora_rank <= 1024.
 * workspace: kern_mla_workspace_bytes(...) bytes of device memory the launcher may use. */
typedef struct kern_mla_args {
    kern_kv_batch batch;
    int n_head;
    int d_nope, d_rope, d_v, kv_lora_rank;
    float scale;
    const float *q;          /* [batch.n_tokens][n_head][d_nope + d_rope], rows q_stride apart */
    int64_t q_stride;
    kern_dtype kv_dtype;     /* KERN_DT_F32 or KERN_DT_BF16: the element type of ckv and kpe */
    const void *ckv;         /* cache rows [..][kv_lora_rank], contiguous (paged: see batch) */
    const void *kpe;         /* cache rows [..][d_rope], contiguous */
    const kern_weight *kv_b; /* host struct describing device data: [n_head*(d_nope+d_v)][rank] */
    float *out;              /* [batch.n_tokens][n_head][d_v] contiguous */
} kern_mla_args;

size_t kern_mla_workspace_bytes(const kern_mla_args *args);
int kern_mla_absorbed(const kern_mla_args *args, void *workspace, kern_stream stream);

/* ---- MoE (kernels/moe.cu) -------------------------------------------------------------------- */

typedef enum kern_router {
    KERN_ROUTER_SOFTMAX = 0, /* softmax over all experts, top-k, optional renorm */
    KERN_ROUTER_SIGMOID,     /* sigmoid, + bias for selection only, group limit (dropped groups
                                -inf), top-k, optional renorm (/(sum + 1e-20)), * scaling */
} kern_router;

/* One block per token; ties go to the lower expert index, as the CPU reference. n_expert <= 1024,
 * n_group <= 64, n_expert_used <= 32. */
typedef struct kern_route_args {
    kern_router kind;
    int n_tokens, n_expert, n_expert_used;
    int n_group, topk_group;
    bool norm_topk_prob;
    float routed_scaling_factor;
    const kern_vec *bias;    /* host struct (device data) or NULL */
    const float *logits;     /* [n_tokens][n_expert] */
    int32_t *idx;            /* out [n_tokens][n_expert_used] */
    float *weight;           /* out [n_tokens][n_expert_used] */
} kern_route_args;

int kern_moe_route(const kern_route_args *args, kern_stream stream);

/* Routed experts: out[t] = sum_i weight[t][i] * down_e(silu(gate_e(x[t])) * up_e(x[t])),
 * e = idx[t][i] (every idx must be in [0, n_expert)). gate/up/down are DEVICE arrays of
 * n_expert kern_weight each (descriptors uploaded once by the caller). Accumulation in f32; the
 * combine adds the n_expert_used products of a token in slot order i = 0, 1, ...
 * act_quant_group > 0 (the bf16 mode over FP8 experts): x[t] and each pair's silu(g) * u are
 * quantized as kern_quant_act_fp8 does, in groups of that many columns, before the expert
 * matmuls read them (x into the workspace, the pairs' rows in place). */
typedef struct kern_moe_args {
    int n_tokens, d_model, d_ff_expert, n_expert, n_expert_used;
    const float *x;              /* [n_tokens][d_model] */
    const kern_weight *gate;     /* device [n_expert] */
    const kern_weight *up;       /* device [n_expert] */
    const kern_weight *down;     /* device [n_expert] */
    const int32_t *idx;          /* [n_tokens][n_expert_used] */
    const float *weight;         /* [n_tokens][n_expert_used] */
    float *out;                  /* [n_tokens][d_model], overwritten */
    int act_quant_group;         /* 0: no activation quantization; > 0: its group (columns) */
    bool h_bf16;                 /* h = silu(gate x) * up x is rounded to the nearest bf16 (ties
                                    to even) before the down products and their quantization
                                    (the bf16 mode: Hugging Face's h is a bf16 tensor) */
    bool tc_gate_up;             /* the gate/up products may run on tensor cores (matmul_tc.cuh;
                                    from KERN_MOE_TC_MIN_TOKENS tokens on an sm_80+ device): x holds
                                    bf16 values, act_quant_group is 0, and every gate and up
                                    weight is [d_ff_expert][d_model] of format tc_fmt, which
                                    kern_matmul_tc_supported takes. The caller checks this (the
                                    descriptors are device memory here). */
    kern_wfmt tc_fmt;
    bool tc_down;                /* likewise the down products: h_bf16, act_quant_group 0, every
                                    down weight [d_model][d_ff_expert] of format tc_down_fmt */
    kern_wfmt tc_down_fmt;
} kern_moe_args;

/* kern_moe_experts runs the gate/up products on tensor cores (tc_gate_up) from this many tokens:
 * below it the pairs of an expert are too few to fill a 64-pair tile, and the SIMT grouped
 * kernel reads each weight row once for all of them anyway. Not measured yet. */
#define KERN_MOE_TC_MIN_TOKENS 64

size_t kern_moe_workspace_bytes(const kern_moe_args *args);
int kern_moe_experts(const kern_moe_args *args, void *workspace, kern_stream stream);

/* ---- sampling (kernels/sample.cu) ------------------------------------------------------------ */

/* Greedy pick: out[r] (device int32 [n_rows]) = engine/sampler.c's eng_argmax of row r, x + r *
 * stride ([n_rows][n_cols], rows stride floats apart), bit for bit: the lowest column of the
 * largest value (-0 == +0, +inf largest, subnormals compared exactly); a NaN at column 0 gives
 * 0, a NaN elsewhere is never picked; a row all -inf or all NaN gives 0. One block per row (rows
 * strided by gridDim.x, at most 2^20 blocks) of 16 columns a thread in whole warps, 32 to 1024
 * threads; float4 loads from the row's first 16-byte boundary on (any stride, any row base),
 * then a warp-shuffle and shared-memory reduction. cudaErrorInvalidValue for n_rows < 0,
 * n_cols < 1 (an empty row has no index to give: unlike other launchers', this empty dimension
 * is an error), n_cols > INT32_MAX, stride < n_cols, or x not 4-byte aligned. */
int kern_argmax(const float *x, int64_t stride, int n_rows, int64_t n_cols, int32_t *out,
                kern_stream stream);

/* The most candidates kern_topk gives per row: engine/sampler.h's ENG_TOPK_MAX (the backend
 * checks that they agree). */
#define KERN_TOPK_MAX 1024

/* Device bytes kern_topk needs as workspace for these dims (0 when the rows are not split;
 * at most kern_topk_workspace_max(), kernels/workspace.h). */
size_t kern_topk_workspace_bytes(int n_rows, int64_t n_cols, int k);

/* Sampling candidates: for each row r of x ([n_rows][n_cols], rows stride floats apart), the
 * first min(k, n_cols) columns in engine/sampler.c's candidate order (eng_topk, bit for bit):
 * a strict total order given by one 64-bit key per column, larger first: high half the value
 * made monotone (the sign bit set for positives, all bits flipped for negatives, -0 as +0;
 * +inf's key for a NaN at column 0, 0 for other NaNs), low half ~column. ids[r * k + j] (device
 * int32) = the j-th column, vals[r * k + j] (device f32) = its value bit for bit; j >= n_cols
 * gets -1 and -inf. Each CTA selects the k largest keys of its columns by an MSB-first radix
 * select (8-bit digits, histograms in shared memory, stopping once the keys at or above the
 * prefix found are exactly k), gathers them and sorts them by a bitonic sort in shared memory.
 * A row goes to one CTA, or, when the rows alone give too few CTAs, to several that each take
 * a range of at least max(4096, 8k) columns and leave their best k keys in the workspace, then
 * one CTA per row selects the row's best k of those. 512 threads a CTA. workspace:
 * kern_topk_workspace_bytes(n_rows, n_cols, k) bytes of device memory, 8-byte aligned (NULL
 * when that is 0). cudaErrorInvalidValue for n_rows < 0, n_cols < 1, n_cols > INT32_MAX,
 * stride < n_cols, k outside 1 .. KERN_TOPK_MAX, x not 4-byte aligned, NULL x, vals or ids,
 * or a workspace missing; n_rows == 0 launches nothing. */
int kern_topk(const float *x, int64_t stride, int n_rows, int64_t n_cols, int k, float *vals, int32_t *ids,
              void *workspace, kern_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* PP_KERNELS_H */
