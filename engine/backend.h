/* backend.h: the op table every backend implements (the CPU reference, and CUDA in builds with
 * PP_HAVE_CUDA).
 *
 * The forward passes (model_*.c) are written only against this table. Activations are f32 rows
 * in backend memory (host memory for the CPU backend, device memory for CUDA); pointer
 * arithmetic on them is fine, dereferencing them on the host is not. Weights are eng_weight /
 * eng_vec made resident by weight_prepare / vec_prepare.
 *
 * Numeric contract of the CPU reference: f32 activations and accumulation, weights dequantized
 * exactly, no intermediate bf16 rounding (round_bf16 rounds only when called). The bf16 compute
 * mode is a decorator over any backend (eng_backend_bf16_wrap) that rounds each op's output to
 * bf16, quantizes the activations entering FP8_BLOCK weights (quant_act_fp8), and runs its
 * other matmuls through matmul_bf16 where the backend has one (tensor cores on CUDA). Every op
 * returns PP_STATUS_OK or the backend's error (a device fault), never aborts.
 * Dimension names follow STYLE.md: n_tokens, n_head, n_head_kv, d_head, d_rope, d_ff, n_expert,
 * n_expert_used, n_vocab.
 */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "weights.h"

typedef struct eng_backend eng_backend;

/* RoPE parameters for one model: the rotated slice of each head and its frequencies. */
typedef struct eng_rope {
    int d_rope;          /* rotated width (even) */
    bool interleaved;    /* true: GPT-J pairs (2j, 2j+1), result stored de-interleaved as HF's
                            apply_rotary_pos_emb_interleave does; false: neox half split
                            (j, j + d_rope/2) */
    float cos_sin_scale; /* YaRN attention_factor multiplying cos and sin (1 otherwise) */
    const float *inv_freq; /* [d_rope/2] f32, host (owned by the model); linear scaling is
                              already folded in */
} eng_rope;

/* Element type of a KV cache's rows. ENG_KV_BF16 stores each value as the 16 high bits of
 * eng_round_bf16's result (nearest, ties to even): lossless for the bf16 compute mode, whose K/V
 * values are bf16 already, and half the bytes to keep and to read. Attention reads a row's
 * elements back as the f32 values they stand for. */
typedef enum eng_kv_dtype {
    ENG_KV_F32 = 0,
    ENG_KV_BF16,
} eng_kv_dtype;

/* Bytes of one KV cache element of dtype. */
static inline size_t eng_kv_elem_bytes(eng_kv_dtype dtype) { return dtype == ENG_KV_BF16 ? 2 : 4; }

/* The sequences of one forward pass and where their keys live: the KV cache is paged.
 * The batch's query tokens are its sequences' tokens concatenated: sequence s owns batch rows
 * seq_start[s] .. seq_start[s + 1] - 1; its i-th token sits at position seq_pos0[s] + i and sees
 * its own keys at positions 0 .. seq_pos0[s] + i. Key position j of sequence s lives in cache row
 *   block_table[s * max_blocks + j / block_size] * block_size + j % block_size
 * of a layer's cache. The arrays are in backend memory; the counts are host values. */
typedef struct eng_kv_batch {
    int n_seq;                  /* >= 1 */
    int n_tokens;               /* seq_start[n_seq] */
    int max_seq_tokens;         /* max over s of seq_start[s + 1] - seq_start[s] */
    int max_ctx;                /* max over s of seq_pos0[s] + its tokens */
    int block_size;             /* positions per KV block */
    int max_blocks;             /* row stride of block_table, >= ceil(max_ctx / block_size) */
    const int32_t *seq_start;   /* [n_seq + 1] */
    const int32_t *seq_pos0;    /* [n_seq] */
    const int32_t *block_table; /* [n_seq][max_blocks] */
} eng_kv_batch;

/* Causal attention over a paged KV cache for a batch of sequences. Query head h reads KV head
 * h / (n_head / n_head_kv). */
typedef struct eng_attn_args {
    eng_kv_batch batch;
    int n_head, n_head_kv;
    int d_qk, d_v;
    float scale;          /* softmax scale on q.k */
    const float *q;       /* [batch.n_tokens][n_head][d_qk] rows q_stride apart */
    int64_t q_stride;
    eng_kv_dtype kv_dtype; /* the element type of k and v (strides count elements) */
    const void *k;        /* cache rows [..][n_head_kv][d_qk], k_stride apart */
    int64_t k_stride;
    const void *v;        /* cache rows [..][n_head_kv][d_v], v_stride apart */
    int64_t v_stride;
    float *out;           /* [batch.n_tokens][n_head][d_v], rows out_stride apart */
    int64_t out_stride;
} eng_attn_args;

/* MLA attention in the absorbed (latent-cache) form, DeepSeek-V3: per head h,
 *   q_lat = W_UK_h^T q_nope_h                 (W_UK_h = kv_b rows [h*(d_nope+d_v), +d_nope))
 *   score = scale * (q_lat . c_kv[j] + q_pe_h . k_pe[j]),  j = 0 .. pos0 + t
 *   out_h = W_UV_h (sum_j softmax(score)_j c_kv[j])   (W_UV_h = the next d_v rows)
 */
typedef struct eng_mla_args {
    eng_kv_batch batch;      /* ckv and kpe rows are the same cache rows */
    int n_head;
    int d_nope, d_rope, d_v, kv_lora_rank;
    float scale;
    const float *q;          /* [batch.n_tokens][n_head][d_nope + d_rope] (nope first), q_stride
                                apart */
    int64_t q_stride;
    eng_kv_dtype kv_dtype;   /* the element type of ckv and kpe */
    const void *ckv;         /* cache rows [..][kv_lora_rank] (normalised c_kv) */
    const void *kpe;         /* cache rows [..][d_rope] (post-RoPE k_pe) */
    const eng_weight *kv_b;  /* [n_head * (d_nope + d_v)][kv_lora_rank] */
    float *out;              /* [batch.n_tokens][n_head][d_v] contiguous */
} eng_mla_args;

typedef enum eng_router_kind {
    ENG_ROUTER_SOFTMAX = 0, /* Qwen3-MoE: softmax over all experts, top-k, optional renorm */
    ENG_ROUTER_SIGMOID,     /* DeepSeek-V3: sigmoid, bias for selection only, group limit,
                               optional renorm (+1e-20), times routed_scaling_factor */
} eng_router_kind;

typedef struct eng_route_args {
    eng_router_kind kind;
    int n_tokens, n_expert, n_expert_used;
    int n_group, topk_group;       /* sigmoid router only */
    bool norm_topk_prob;
    float routed_scaling_factor;   /* sigmoid router only */
    const eng_vec *bias;           /* e_score_correction_bias [n_expert] or NULL */
    const float *logits;           /* [n_tokens][n_expert] router logits */
    int32_t *idx;                  /* out [n_tokens][n_expert_used] expert ids, backend memory */
    float *weight;                 /* out [n_tokens][n_expert_used] combine weights, backend memory */
} eng_route_args;

/* Routed experts: out[t] = sum_i weight[t][i] * down_e(silu(gate_e(x[t])) * up_e(x[t])),
 * e = idx[t][i]. Accumulated in f32. */
typedef struct eng_moe_args {
    int n_tokens, d_model, d_ff_expert, n_expert, n_expert_used;
    const float *x;                /* [n_tokens][d_model] */
    const eng_weight *gate;        /* [n_expert] each [d_ff_expert][d_model] */
    const eng_weight *up;          /* [n_expert] each [d_ff_expert][d_model] */
    const eng_weight *down;        /* [n_expert] each [d_model][d_ff_expert] */
    const int32_t *idx;            /* [n_tokens][n_expert_used], backend memory */
    const float *weight;           /* [n_tokens][n_expert_used], backend memory */
    float *out;                    /* [n_tokens][d_model], overwritten */
    int act_quant_group;           /* 0: inputs used as they are. > 0 (the bf16 mode over FP8_BLOCK
                                      experts, set by the decorator): each expert's gate/up input
                                      x[t] and down input silu(gate) * up are first quantized as
                                      quant_act_fp8 does, in groups of this many columns (the
                                      checkpoint's weight_block_size[1], every FP8 weight's
                                      block_in) */
    bool x_bf16;                   /* every x element is a bf16 value (the bf16 mode, set by the
                                      decorator): a backend may then run the gate/up products in
                                      bf16 on tensor cores (exact products, f32 sums, as
                                      matmul_bf16); the result is the same sum in another order */
    bool h_bf16;                   /* h = silu(gate x) * up x is rounded to the nearest bf16 (ties
                                      to even, eng_round_bf16) before the down products and before
                                      act_quant_group's quantization (the bf16 mode: HF's h is a
                                      bf16 tensor); the down products may then run on tensor
                                      cores too */
} eng_moe_args;

typedef struct eng_backend_ops {
    const char *name;
    void (*destroy)(eng_backend *be);

    /* memory */
    pp_status (*alloc)(eng_backend *be, size_t bytes, void **out);
    void (*free)(eng_backend *be, void *ptr);
    pp_status (*upload)(eng_backend *be, void *dst, const void *src, size_t bytes);
    pp_status (*download)(eng_backend *be, void *dst, const void *src, size_t bytes);
    pp_status (*copy)(eng_backend *be, float *dst, const float *src, size_t n);

    /* out[t] = table row ids[t], dequantized. ids: [n_tokens] host. */
    pp_status (*embedding)(eng_backend *be, const eng_weight *table, const int32_t *ids,
                           int n_tokens, float *out);
    /* y[t] = x[t] W^T; x rows x_stride apart ([n_tokens][w->n_in]), y rows y_stride apart. */
    pp_status (*matmul)(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w,
                        float *y, int64_t y_stride, int n_tokens);
    /* Optional (may be NULL: the CPU reference has none): matmul for inputs that are bf16
     * already. Same arguments and result layout as matmul, but the caller promises that every
     * x[t][k] (t < n_tokens, k < w->n_in) is bf16-representable (an f32 whose low 16 bits are
     * zero, as round_bf16 leaves every value, NaN included), as the bf16 compute mode's
     * activations are. The backend
     * may then multiply in bf16 on tensor cores with f32 accumulation: with bf16 weights every
     * product x * w is exact in f32, so y[t][n] is the f32 sum of the exact products in an
     * unspecified order (the same numbers matmul adds, in another order), within matmul's
     * reduction tolerance of it. For weights or shapes without such a fast path (CUDA: weights
     * other than BF16, n_tokens below its threshold) it runs matmul. An x element that breaks
     * the promise may be rounded to the nearest bf16 first (never a fault). */
    pp_status (*matmul_bf16)(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w,
                             float *y, int64_t y_stride, int n_tokens);
    /* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, over n_rows rows of width d = w->n; rows
     * x_stride / out_stride apart (may alias). */
    pp_status (*rmsnorm)(eng_backend *be, const float *x, int64_t x_stride, const eng_vec *w,
                         float eps, float *out, int64_t out_stride, int n_rows);
    /* out[i] = a[i] + b[i] (may alias a or b). */
    pp_status (*add)(eng_backend *be, const float *a, const float *b, float *out, size_t n);
    /* Rotates, in place, the slice [rope_offset, rope_offset + d_rope) of every head of x:
     * [n_tokens][n_head][...] with heads head_stride apart and tokens token_stride apart;
     * token t is at position pos[t] (backend memory). */
    pp_status (*rope)(eng_backend *be, float *x, int n_tokens, int n_head, int64_t token_stride,
                      int64_t head_stride, int rope_offset, const int32_t *pos, const eng_rope *rope);
    /* KV-cache write: for t < n_tokens with slot[t] >= 0 (backend memory), h < n_head,
     * i < width: cache[slot[t] * cache_row_stride + h * cache_head_stride + i] =
     * src[t * src_row_stride + h * src_head_stride + i] (src_head_stride may be 0), cache
     * elements of `dtype` (strides count them): F32 a copy, BF16 the value's eng_round_bf16,
     * stored as its high 16 bits (bit for bit on every backend). */
    pp_status (*kv_write)(eng_backend *be, void *cache, eng_kv_dtype dtype, int64_t cache_row_stride,
                          int64_t cache_head_stride, const float *src, int64_t src_row_stride,
                          int64_t src_head_stride, int n_head, int64_t width, const int32_t *slot,
                          int n_tokens);
    /* out[t][i] = silu(gate[t][i]) * up[t][i], rows of d_ff. */
    pp_status (*swiglu)(eng_backend *be, const float *gate, int64_t gate_stride, const float *up,
                        int64_t up_stride, float *out, int64_t out_stride, int n_tokens, int d_ff);
    pp_status (*attention)(eng_backend *be, const eng_attn_args *args);
    /* Optional (may be NULL: the CPU reference has none): attention for the bf16 compute mode,
     * whose q and KV cache hold bf16 values. Same arguments and output as attention, but the
     * backend may compute it as flash-attention kernels on tensor cores do (CUDA: a BF16 cache,
     * the head dims kernels/kernels.h's kern_attention_tc_supported lists, prefill-sized
     * batches): q.k exact in f32, the softmax probabilities rounded to bf16 before they
     * multiply V, the row sum over those rounded values. The output then differs from
     * attention's by that rounding (relative error up to 2^-8 per probability, about 1.6e-3
     * rms), as Hugging Face's bf16
     * path does on a GPU (SDPA's flash kernel). Other arguments run attention. */
    pp_status (*attention_bf16)(eng_backend *be, const eng_attn_args *args);
    pp_status (*mla_absorbed)(eng_backend *be, const eng_mla_args *args);
    pp_status (*moe_route)(eng_backend *be, const eng_route_args *args);
    pp_status (*moe_experts)(eng_backend *be, const eng_moe_args *args);
    /* W8A8 activation quantization, as Hugging Face's FP8Linear does before every FP8_BLOCK
     * weight (act_quant, docs/MODELS.md section 1.7); the bf16 mode runs it, the f32 mode never.
     * For r < n_rows, each group of `group` columns of row r (the row's last group may be
     * shorter), c < n_cols:
     *   s = max |x| / 448 over the group (f32; fmaxf, so a NaN does not raise it),
     *   out = f32(e4m3(x / s)) * s,  e4m3 = eng_f32_to_fp8_e4m3 (nearest, ties to even,
     *                                saturating at +-448; engine/quantize.h)
     * so out holds the value the FP8 GEMM multiplies (xq * s_x), and a matmul over it
     * accumulates sum xq * s_x * wq * s_w in f32 as HF's kernel does. HF's nan_to_num rule: an
     * all-zero group has s = 0 and HF's 0 / s is NaN, so its GEMM output row is NaN, which
     * nan_to_num(nan=0) turns into zeros. Here a row with any group of s == 0 (all zeros, or an
     * amax so small that amax / 448 underflows) is written as +0 throughout instead, and a
     * matmul maps a zero row (finite weights) to a zero row: the same zeros, no NaN ever made,
     * no extra op. Rows x_stride / out_stride floats apart; out may be x with the same stride
     * (in place), else they must not overlap. Bit for bit the same on every backend for finite
     * x (a NaN in x gives NaN, sign and payload unspecified). INVALID_ARG for group < 1. */
    pp_status (*quant_act_fp8)(eng_backend *be, const float *x, int64_t x_stride, float *out,
                               int64_t out_stride, int n_rows, int64_t n_cols, int group);
    /* Rounds x[r][c] in place to the nearest bf16 (ties to even, NaN stays NaN: eng_round_bf16,
     * bit for bit on every backend) for r < n_rows, c < n_cols, rows stride floats apart
     * (stride >= 0). The values stay f32. */
    pp_status (*round_bf16)(eng_backend *be, float *x, int64_t stride, int n_rows, int64_t n_cols);
    /* Greedy pick, on the backend (so greedy decoding downloads one int32 per sequence, not a
     * row of logits): for r < n_rows, out[r] (backend memory, int32) = the index c < n_cols
     * that engine/sampler.h's eng_argmax (the sampler's greedy pick) takes from row r,
     * x + r * stride (rows stride floats apart), the same on every backend: the lowest index of
     * the largest value (ties to the lowest index; -0 == +0; +inf is the largest); a NaN at
     * column 0 gives 0; a NaN elsewhere is never picked; a row all -inf or all NaN gives 0.
     * INVALID_ARG for n_rows < 0, n_cols < 1, n_cols > INT32_MAX or stride < n_cols (out is
     * not touched then); n_rows == 0 does nothing. */
    pp_status (*argmax)(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols,
                        int32_t *out);
    /* Sampling candidates, on the backend (so a sampled token downloads k (value, id) pairs per
     * sequence, not a row of logits): for r < n_rows and row r = x + r * stride (rows stride
     * floats apart), vals[r * k + j] and ids[r * k + j] (backend memory, f32 and int32) = what
     * engine/sampler.h's eng_topk(row, n_cols, k) writes, the same on every backend: the row's
     * first min(k, n_cols) columns in the candidate order (values descending, equal values lower
     * column first, -0 == +0; a NaN at column 0 first, other NaNs after every number) and their
     * values bit for bit; -inf and -1 for j >= n_cols. The first id is argmax's pick.
     * INVALID_ARG for n_rows < 0, n_cols < 1, n_cols > INT32_MAX, stride < n_cols, or k outside
     * 1 .. ENG_TOPK_MAX (engine/sampler.h; nothing is written then); n_rows == 0 does nothing. */
    pp_status (*topk)(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols, int k,
                      float *vals, int32_t *ids);

    /* Optional, both or neither (NULL on the CPU reference): recording a run of ops to run them
     * as one unit (CUDA: stream capture into a CUDA graph, launched whole, so the kernels run
     * back to back without a launch gap between them). model.c records each decode step's
     * device work, from the first layer to the sampling picks.
     * record_begin: from now on this backend's ops are recorded, not run. OK when recording
     * began; any other status means nothing is being recorded and the ops run as usual (not a
     * failure: graphs off, or the backend dead, which its next op reports).
     * While recording, the caller issues only device-side ops (no upload, download or host
     * read); an op that cannot be recorded (it would allocate, upload a weight on first use or
     * wait for the device) returns PP_STATUS_UNSUPPORTED having done nothing, and so does every
     * op after it until record_end. The ops' outputs exist only once record_end has run them.
     * record_end(be, run): ends the recording. With run true and every op recorded, runs the
     * recorded ops (queued in issue order, as if issued one by one now) and returns OK, or a
     * device failure. Otherwise runs nothing and returns PP_STATUS_UNSUPPORTED: the caller that
     * still wants the ops issues them again without recording (they have not run, so their
     * inputs are as they were). */
    pp_status (*record_begin)(eng_backend *be);
    pp_status (*record_end)(eng_backend *be, bool run);

    /* Optional (may be NULL): the backend's message for its last failed op, "" when the last op
     * succeeded (for CUDA: the call, the CUDA error's name and text, and whether the device is
     * lost). Owned by the backend, valid until its next op. */
    const char *(*last_error)(eng_backend *be);
} eng_backend_ops;

struct eng_backend {
    const eng_backend_ops *ops;
};

/* Creates the CPU reference backend with n_threads worker threads (<= 0: one per core). */
pp_status eng_backend_cpu_create(int n_threads, eng_backend **out, eng_err *err);

#ifdef PP_HAVE_CUDA
/* Number of usable CUDA devices: 0 when there is no driver or no device (why, when why_len > 0,
 * then holds the CUDA error text, or ""). Never aborts. */
int eng_backend_cuda_device_count(char *why, size_t why_len);

/* Creates a CUDA backend on `device` with a stream of its own (non-blocking). Activations live
 * in device memory; weights stay in host memory and are uploaded on first use into a weight
 * cache. With share_with (a CUDA backend, e.g. the model a fork is made from) the new backend
 * shares share_with's weight cache, so no tensor is uploaded twice; device < 0 then means
 * share_with's device. The cache is freed with the last backend that uses it; host tensors must
 * outlive it. Backends sharing a cache may run on different threads; one backend is used by one
 * thread at a time. Errors: UNSUPPORTED when there is no CUDA device, INVALID_ARG for a bad
 * device or share_with, DEVICE / OUT_OF_MEMORY when the stream cannot be created; *out is NULL
 * then. After a sticky device fault (illegal address, launch failure) every op of the backend
 * returns PP_STATUS_DEVICE; last_error says what happened. */
pp_status eng_backend_cuda_create(int device, eng_backend *share_with, eng_backend **out, eng_err *err);

/* Decode steps be has run as one CUDA graph (record_end launched them), and recordings that
 * fell back to issuing the ops one by one (an op could not be recorded, or capture,
 * instantiation or launch failed); both 0 for a backend that is not CUDA. Graphs are on unless
 * the environment has PARAPHYM_CUDA_GRAPHS=0 (or off, false, no) when the backend is created;
 * a backend turns them off for itself after GRAPH_MAX_FAILURES (backend_cuda.c) fallbacks in a
 * row that were not merely a first use (an upload, a workspace to grow). */
void eng_backend_cuda_graph_counts(const eng_backend *be, size_t *launched, size_t *fallbacks);

/* Device bytes held by be's weight cache (shared with the backends it was created with or for);
 * 0 for a backend that is not CUDA. Thread-safe. */
size_t eng_backend_cuda_weight_bytes(const eng_backend *be);
#endif

/* Wraps inner in the bf16 compute mode: a backend whose ops run inner's op and then round, with
 * inner's round_bf16, exactly the elements the op wrote to bf16 (engine/backend_bf16.c says
 * which, and what is not rounded). With fp8_act_quant, FP8_BLOCK weights also quantize their
 * input activations (W8A8, as HF's FP8Linear; backend_bf16.c). On success *out owns inner:
 * destroying *out destroys both, and last_error is inner's. On failure (OUT_OF_MEMORY, or
 * INVALID_ARG for a NULL inner) *out is NULL and the caller still owns inner. */
pp_status eng_backend_bf16_wrap(eng_backend *inner, bool fp8_act_quant, eng_backend **out, eng_err *err);

/* True when be is a bf16 decorator made with fp8_act_quant. */
bool eng_backend_bf16_fp8_act_quant(const eng_backend *be);

/* The backend a bf16 decorator wraps, or be itself when be is not one (also for NULL): where an
 * op that must stay f32 in the bf16 mode runs (DeepSeek-V3's router), and what a CUDA fork
 * shares its weight cache with. */
eng_backend *eng_backend_bf16_inner(eng_backend *be);

static inline void eng_backend_destroy(eng_backend *be)
{
    if (be)
        be->ops->destroy(be);
}

#endif /* ENG_BACKEND_H */
