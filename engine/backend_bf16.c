/* backend_bf16.c: the bf16 compute mode, a decorator over any backend (CPU or CUDA) that emulates
 * Hugging Face's bf16 production path (docs/MODELS.md section 0): every activation tensor is bf16
 * between ops. Each op runs the inner backend's f32 op (f32 accumulation inside matmuls,
 * attention, MLA and experts; f32 softmax) and then rounds, with the inner backend's round_bf16,
 * exactly the elements the op wrote, to the nearest bf16 (ties to even, as torch's cast). Values
 * stay stored as f32 floats that are bf16-representable, so the KV cache (filled by kv_write from
 * rounded matmul / RoPE outputs) holds bf16 values too, and a bf16 cache (the mode's default,
 * eng_model_opts.kv) stores them without loss.
 *
 * Rounded: embedding rows, matmul outputs (logits included: HF's lm_head runs in bf16), RMSNorm
 * outputs, residual / shared-expert adds, the rotated RoPE slices, SwiGLU outputs, attention and
 * MLA outputs, routed-expert outputs and, inside the experts op, each expert's silu(gate) * up
 * (eng_moe_args.h_bf16; HF's is a bf16 tensor), and Qwen3-MoE's combine weights (softmax
 * router: HF casts them to bf16, `routing_weights.to(hidden_states.dtype)`).
 * Not rounded: DeepSeek-V3's combine weights (sigmoid router: fp32 in HF, and its router logits
 * are computed in fp32, which model.c does on eng_backend_bf16_inner), memory ops (copies and
 * KV-cache writes), quant_act_fp8's output (below), argmax (its output is token ids) and topk
 * (ids, and values copied from its input).
 *
 * Quantized when the decorator is made with fp8_act_quant (`--act-quant fp8`; off by default:
 * the FP8 fixtures' references do not quantize activations, and no reference of HF's W8A8
 * logits is at hand to check it against; see README "Numerics")
 * (W8A8, HF's FP8Linear; docs/MODELS.md section 1.7 and trap 7): the input of every
 * matmul whose weight is FP8_BLOCK (stored FP8 checkpoints and `--quant fp8` alike) and both
 * inputs of FP8_BLOCK routed experts (x, and silu(gate) * up inside the experts op, through
 * eng_moe_args.act_quant_group), per token per group of the weight's block_in (128) columns:
 * s = max|x| / 448, x -> f32(e4m3(x / s)) * s (the inner backend's quant_act_fp8, into a
 * scratch buffer this decorator owns). The f32 matmul over those values is HF's f32 sum of
 * dot(xq, wq) * s_x * s_w up to the order of the f32 roundings. A token with an all-zero group
 * gets a zero output row, as HF's nan_to_num(nan=0) makes of the NaN row its s = 0 causes (the
 * op zeroes the whole quantized row; see backend.h). The absorbed MLA never runs kv_b as a
 * matmul: model_deepseek.c stores the latent c_kv quantized in this mode when kv_b is FP8 (the
 * values the naive form's kv_b matmul quantizes). INT4 / INT8 weights keep bf16 activations
 * (W4A16 / W8A16, as compressed-tensors' Kimi-K2-Thinking runs); the router and lm_head are
 * never FP8.
 *
 * Matmuls run the inner backend's matmul_bf16 when it has one (CUDA: BF16 weights on tensor
 * cores through cuBLAS, backend.h), because every matmul input here is the rounded output of an
 * op of this decorator (an RMSNorm, SwiGLU, attention or embedding row), so bf16-representable
 * as matmul_bf16 requires; the sum of the same exact products, in another order. Not so the W8A8
 * inputs above: quant_act_fp8's values (e4m3 * an f32 scale) are not bf16 values, so an FP8
 * matmul under fp8_act_quant keeps the inner matmul. The experts and MLA ops run their products
 * inside the inner op (no op-table matmul); DeepSeek-V3's router matmul runs on
 * eng_backend_bf16_inner, f32. This decorator's own matmul_bf16 is NULL: its matmul is that.
 * Likewise attention runs the inner backend's attention_bf16 when it has one (CUDA: flash
 * attention on tensor cores for prefill over a bf16 cache, its probabilities rounded to bf16 as
 * FlashAttention kernels round them), because q and the cache hold rounded values.
 *
 * Where HF rounds inside what is one op here, this mode rounds only the op's output:
 *   - RMSNorm: HF rounds x * rsqrt(var + eps) to bf16 before multiplying by the weight (two
 *     roundings); here x * inv * w is rounded once. Emulating the inner rounding needs an
 *     elementwise multiply the op table does not have (a second rmsnorm or a diagonal matmul
 *     cannot reproduce it exactly), so it is left out: one bf16 ulp at most per element.
 *   - RoPE: HF casts cos/sin to bf16 and rounds x*cos, rotate(x)*sin and their sum; here f32
 *     cos/sin and one rounding of the result. (q and k enter RoPE already bf16.)
 *   - SwiGLU: HF rounds silu(gate) before the product; attention in eager mode rounds scores and
 *     probabilities (SDPA, HF's default, rounds the probabilities in its flash kernel on a GPU,
 *     as attention_bf16 does, and neither on a CPU); routed experts' gate/up/down outputs and
 *     Qwen3-MoE's bf16 index_add accumulation happen inside the experts op (which rounds only
 *     silu(gate) * up, before an FP8 expert's down input is quantized from it, as HF's is).
 * Thread safety and lifetime are the inner backend's; the decorator owns it.
 */
#include <limits.h>
#include <stdlib.h>

#include "backend.h"

typedef struct bf16_backend {
    eng_backend base;
    eng_backend *inner; /* owned */
    bool w8a8;          /* quantize FP8_BLOCK weights' inputs (eng_backend_bf16_wrap) */
    float *act;         /* [act_cap] inner's memory: an FP8_BLOCK matmul's quantized input
                           [n_tokens][n_in]; grown, never shrunk, freed with the decorator */
    size_t act_cap;     /* floats */
} bf16_backend;

static const eng_backend_ops bf16_ops;

static bf16_backend *as_bf16(eng_backend *be) { return (bf16_backend *)be; }
static eng_backend *inner_of(eng_backend *be) { return as_bf16(be)->inner; }

/* Makes b->act hold at least n floats (the old contents are not kept). */
static pp_status act_reserve(bf16_backend *b, size_t n)
{
    if (n <= b->act_cap)
        return PP_STATUS_OK;
    eng_backend *in = b->inner;
    if (b->act)
        in->ops->free(in, b->act);
    b->act = NULL;
    b->act_cap = 0;
    void *p = NULL;
    pp_status st = in->ops->alloc(in, n * sizeof(float), &p);
    if (st != PP_STATUS_OK)
        return st;
    b->act = p;
    b->act_cap = n;
    return PP_STATUS_OK;
}

/* Rounds rows [n_rows][n_cols] (stride apart) with the inner backend. */
static pp_status round_rows(eng_backend *in, float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    if (n_rows <= 0 || n_cols <= 0)
        return PP_STATUS_OK;
    return in->ops->round_bf16(in, x, stride, n_rows, n_cols);
}

/* ---- memory: passed through ------------------------------------------------------------------ */

static pp_status bf16_alloc(eng_backend *be, size_t bytes, void **out)
{
    eng_backend *in = inner_of(be);
    return in->ops->alloc(in, bytes, out);
}

static void bf16_free(eng_backend *be, void *ptr)
{
    eng_backend *in = inner_of(be);
    in->ops->free(in, ptr);
}

static pp_status bf16_upload(eng_backend *be, void *dst, const void *src, size_t bytes)
{
    eng_backend *in = inner_of(be);
    return in->ops->upload(in, dst, src, bytes);
}

/* a KV-cache write copies values some op already rounded */
static pp_status bf16_kv_write(eng_backend *be, void *cache, eng_kv_dtype dtype, int64_t cache_row_stride,
                               int64_t cache_head_stride, const float *src, int64_t src_row_stride,
                               int64_t src_head_stride, int n_head, int64_t width, const int32_t *slot,
                               int n_tokens)
{
    eng_backend *in = inner_of(be);
    return in->ops->kv_write(in, cache, dtype, cache_row_stride, cache_head_stride, src, src_row_stride,
                             src_head_stride, n_head, width, slot, n_tokens);
}

static pp_status bf16_download(eng_backend *be, void *dst, const void *src, size_t bytes)
{
    eng_backend *in = inner_of(be);
    return in->ops->download(in, dst, src, bytes);
}

static pp_status bf16_copy(eng_backend *be, float *dst, const float *src, size_t n)
{
    eng_backend *in = inner_of(be);
    return in->ops->copy(in, dst, src, n);
}

/* ---- ops: the inner op, then its output rounded ---------------------------------------------- */

/* out [n_tokens][table->n_in] contiguous (a bf16 table is exact already; tiny fixtures store f32) */
static pp_status bf16_embedding(eng_backend *be, const eng_weight *table, const int32_t *ids, int n_tokens,
                                float *out)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->embedding(in, table, ids, n_tokens, out);
    return st != PP_STATUS_OK ? st : round_rows(in, out, table->n_in, n_tokens, table->n_in);
}

/* y [n_tokens][w->n_out], rows y_stride apart. An FP8_BLOCK weight runs W8A8 as HF's FP8Linear:
 * x is quantized in groups of block_in columns (HF's act_quant(x, weight_block_size[1])) into
 * b->act [n_tokens][n_in], and the matmul reads that; a row of x with an all-zero group gives
 * a zero row there, hence a zero row of y (HF's nan_to_num); the inner matmul multiplies those
 * values (not bf16 ones). Any other x is bf16 already and goes to the inner matmul_bf16 where
 * there is one. */
static pp_status bf16_matmul(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w, float *y,
                             int64_t y_stride, int n_tokens)
{
    bf16_backend *b = as_bf16(be);
    eng_backend *in = b->inner;
    pp_status st = PP_STATUS_OK;
    if (b->w8a8 && w->fmt == ENG_WFMT_FP8_BLOCK && n_tokens > 0 && w->n_in > 0) {
        if ((st = act_reserve(b, (size_t)n_tokens * (size_t)w->n_in)) != PP_STATUS_OK ||
            (st = in->ops->quant_act_fp8(in, x, x_stride, b->act, w->n_in, n_tokens, w->n_in, w->block_in)) !=
                PP_STATUS_OK)
            return st;
        x = b->act;
        x_stride = w->n_in;
        st = in->ops->matmul(in, x, x_stride, w, y, y_stride, n_tokens);
    } else if (in->ops->matmul_bf16) {
        st = in->ops->matmul_bf16(in, x, x_stride, w, y, y_stride, n_tokens);
    } else {
        st = in->ops->matmul(in, x, x_stride, w, y, y_stride, n_tokens);
    }
    return st != PP_STATUS_OK ? st : round_rows(in, y, y_stride, n_tokens, w->n_out);
}

/* out [n_rows][w->n], rows out_stride apart */
static pp_status bf16_rmsnorm(eng_backend *be, const float *x, int64_t x_stride, const eng_vec *w, float eps,
                              float *out, int64_t out_stride, int n_rows)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->rmsnorm(in, x, x_stride, w, eps, out, out_stride, n_rows);
    return st != PP_STATUS_OK ? st : round_rows(in, out, out_stride, n_rows, w->n);
}

/* out [n] contiguous */
static pp_status bf16_add(eng_backend *be, const float *a, const float *b, float *out, size_t n)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->add(in, a, b, out, n);
    return st != PP_STATUS_OK ? st : round_rows(in, out, (int64_t)n, 1, (int64_t)n);
}

/* The rotated slices: x + t * token_stride + h * head_stride + [rope_offset, + d_rope). One
 * rounding call when the slices form evenly spaced rows (one head, or heads filling the token
 * row), else one per token with the heads as rows. */
static pp_status bf16_rope(eng_backend *be, float *x, int n_tokens, int n_head, int64_t token_stride,
                           int64_t head_stride, int rope_offset, const int32_t *pos, const eng_rope *rope)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->rope(in, x, n_tokens, n_head, token_stride, head_stride, rope_offset, pos, rope);
    if (st != PP_STATUS_OK || n_tokens <= 0 || n_head <= 0)
        return st;
    float *x0 = x + rope_offset;
    if (n_head == 1)
        return round_rows(in, x0, token_stride, n_tokens, rope->d_rope);
    if (token_stride == (int64_t)n_head * head_stride && (int64_t)n_tokens * n_head <= INT_MAX)
        return round_rows(in, x0, head_stride, n_tokens * n_head, rope->d_rope);
    for (int t = 0; t < n_tokens && st == PP_STATUS_OK; t++)
        st = round_rows(in, x0 + (int64_t)t * token_stride, head_stride, n_head, rope->d_rope);
    return st;
}

/* out [n_tokens][d_ff], rows out_stride apart */
static pp_status bf16_swiglu(eng_backend *be, const float *gate, int64_t gate_stride, const float *up,
                             int64_t up_stride, float *out, int64_t out_stride, int n_tokens, int d_ff)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->swiglu(in, gate, gate_stride, up, up_stride, out, out_stride, n_tokens, d_ff);
    return st != PP_STATUS_OK ? st : round_rows(in, out, out_stride, n_tokens, d_ff);
}

/* out [n_tokens][n_head * d_v], rows out_stride apart */
/* The inner backend's attention_bf16 where it has one: q (RoPE's rounded output) and the cache
 * (filled from rounded values) hold bf16 values, as that op asks. */
static pp_status bf16_attention(eng_backend *be, const eng_attn_args *a)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->attention_bf16 ? in->ops->attention_bf16(in, a) : in->ops->attention(in, a);
    return st != PP_STATUS_OK ? st
                              : round_rows(in, a->out, a->out_stride, a->batch.n_tokens,
                                           (int64_t)a->n_head * a->d_v);
}

/* out [n_tokens][n_head][d_v] contiguous */
static pp_status bf16_mla_absorbed(eng_backend *be, const eng_mla_args *a)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->mla_absorbed(in, a);
    int64_t width = (int64_t)a->n_head * a->d_v;
    return st != PP_STATUS_OK ? st : round_rows(in, a->out, width, a->batch.n_tokens, width);
}

/* weight [n_tokens][n_expert_used]: rounded for the softmax router only (Qwen3-MoE casts its
 * combine weights to bf16; DeepSeek-V3 keeps them fp32). Expert ids are never touched. */
static pp_status bf16_moe_route(eng_backend *be, const eng_route_args *a)
{
    eng_backend *in = inner_of(be);
    pp_status st = in->ops->moe_route(in, a);
    if (st != PP_STATUS_OK || a->kind != ENG_ROUTER_SOFTMAX)
        return st;
    return round_rows(in, a->weight, a->n_expert_used, a->n_tokens, a->n_expert_used);
}

/* out [n_tokens][d_model] contiguous. FP8_BLOCK experts (gate, up and down of expert 0 stand for
 * all: one checkpoint format per layer) run W8A8: act_quant_group = their block_in, so the
 * inner op quantizes both expert inputs as bf16_matmul does. */
static pp_status bf16_moe_experts(eng_backend *be, const eng_moe_args *a)
{
    eng_backend *in = inner_of(be);
    eng_moe_args q = *a;
    if (as_bf16(be)->w8a8 && a->n_expert > 0 && a->gate[0].fmt == ENG_WFMT_FP8_BLOCK && a->up[0].fmt == ENG_WFMT_FP8_BLOCK &&
        a->down[0].fmt == ENG_WFMT_FP8_BLOCK)
        q.act_quant_group = a->gate[0].block_in;
    q.x_bf16 = true; /* x is an RMSNorm output of this decorator, rounded */
    q.h_bf16 = true; /* HF's silu(gate) * up is a bf16 tensor */
    pp_status st = in->ops->moe_experts(in, &q);
    return st != PP_STATUS_OK ? st : round_rows(in, a->out, a->d_model, a->n_tokens, a->d_model);
}

/* not rounded: its output is what the FP8 GEMM multiplies, not a bf16 tensor */
static pp_status bf16_quant_act_fp8(eng_backend *be, const float *x, int64_t x_stride, float *out,
                                    int64_t out_stride, int n_rows, int64_t n_cols, int group)
{
    eng_backend *in = inner_of(be);
    return in->ops->quant_act_fp8(in, x, x_stride, out, out_stride, n_rows, n_cols, group);
}

static pp_status bf16_round_bf16(eng_backend *be, float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    eng_backend *in = inner_of(be);
    return in->ops->round_bf16(in, x, stride, n_rows, n_cols);
}

/* not rounded: its output is token ids */
static pp_status bf16_argmax(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols,
                             int32_t *out)
{
    eng_backend *in = inner_of(be);
    return in->ops->argmax(in, x, stride, n_rows, n_cols, out);
}

/* not rounded: ids, and values copied from x */
static pp_status bf16_topk(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols, int k,
                           float *vals, int32_t *ids)
{
    eng_backend *in = inner_of(be);
    return in->ops->topk(in, x, stride, n_rows, n_cols, k, vals, ids);
}

/* ---- recording: the inner backend's, whose ops are the ones recorded -------------------------- */

static pp_status bf16_record_begin(eng_backend *be)
{
    eng_backend *in = inner_of(be);
    return in->ops->record_begin ? in->ops->record_begin(in) : PP_STATUS_UNSUPPORTED;
}

static pp_status bf16_record_end(eng_backend *be, bool run)
{
    eng_backend *in = inner_of(be);
    return in->ops->record_end ? in->ops->record_end(in, run) : PP_STATUS_UNSUPPORTED;
}

/* ---- lifetime -------------------------------------------------------------------------------- */

static const char *bf16_last_error(eng_backend *be)
{
    eng_backend *in = inner_of(be);
    return in->ops->last_error ? in->ops->last_error(in) : "";
}

static void bf16_destroy(eng_backend *be)
{
    if (!be)
        return;
    bf16_backend *b = as_bf16(be);
    if (b->act)
        b->inner->ops->free(b->inner, b->act);
    eng_backend_destroy(b->inner);
    free(b);
}

static const eng_backend_ops bf16_ops = {
    .name = "bf16",
    .destroy = bf16_destroy,
    .alloc = bf16_alloc,
    .free = bf16_free,
    .upload = bf16_upload,
    .download = bf16_download,
    .copy = bf16_copy,
    .embedding = bf16_embedding,
    .matmul = bf16_matmul,
    .rmsnorm = bf16_rmsnorm,
    .add = bf16_add,
    .rope = bf16_rope,
    .kv_write = bf16_kv_write,
    .swiglu = bf16_swiglu,
    .attention = bf16_attention,
    .mla_absorbed = bf16_mla_absorbed,
    .moe_route = bf16_moe_route,
    .moe_experts = bf16_moe_experts,
    .quant_act_fp8 = bf16_quant_act_fp8,
    .round_bf16 = bf16_round_bf16,
    .argmax = bf16_argmax,
    .topk = bf16_topk,
    .record_begin = bf16_record_begin,
    .record_end = bf16_record_end,
    .last_error = bf16_last_error,
};

pp_status eng_backend_bf16_wrap(eng_backend *inner, bool fp8_act_quant, eng_backend **out, eng_err *err)
{
    *out = NULL;
    if (!inner)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "bf16 backend: no backend to wrap");
    bf16_backend *b = calloc(1, sizeof *b);
    if (!b)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "bf16 backend: out of memory");
    b->base.ops = &bf16_ops;
    b->inner = inner;
    b->w8a8 = fp8_act_quant;
    *out = &b->base;
    return PP_STATUS_OK;
}

bool eng_backend_bf16_fp8_act_quant(const eng_backend *be)
{
    return be && be->ops == &bf16_ops && ((const bf16_backend *)be)->w8a8;
}

eng_backend *eng_backend_bf16_inner(eng_backend *be)
{
    return be && be->ops == &bf16_ops ? inner_of(be) : be;
}
