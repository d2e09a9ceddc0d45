/* backend_cpu.c: the CPU reference backend, the oracle every other backend is checked against.
 *
 * Invariant: f32 activations, f32 products with wide (several-accumulator or double)
 * reductions, weights dequantized exactly a few rows at a time into per-thread scratch; never a
 * whole matrix converted. Parallel loops go through the threadpool; each task writes disjoint
 * outputs.
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "backend.h"
#include "quantize.h"
#include "sampler.h"
#include "threadpool.h"

/* Rows of a weight dequantized together by one matmul task: 16 rows of Kimi K2's widest input
 * (18432) are 1.2 MB of f32, which stays in L2 on current CPUs. */
#define MATMUL_ROWS 16

typedef struct cpu_scratch {
    float *buf;
    size_t n; /* floats */
} cpu_scratch;

typedef struct cpu_backend {
    eng_backend base;
    eng_threadpool *pool;
    int n_threads;
    cpu_scratch *scratch; /* [n_threads] per-thread buffers, grown before each parallel loop */
} cpu_backend;

static cpu_backend *as_cpu(eng_backend *be) { return (cpu_backend *)be; }

/* Makes every thread's scratch at least n floats; called on the calling thread before a loop. */
static pp_status scratch_reserve(cpu_backend *cb, size_t n)
{
    for (int i = 0; i < cb->n_threads; i++) {
        if (cb->scratch[i].n >= n)
            continue;
        float *p = realloc(cb->scratch[i].buf, n * sizeof(float));
        if (!p)
            return PP_STATUS_OUT_OF_MEMORY;
        cb->scratch[i].buf = p;
        cb->scratch[i].n = n;
    }
    return PP_STATUS_OK;
}

static float dot_f32(const float *a, const float *b, int64_t n)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

/* ---- memory ---------------------------------------------------------------------------------- */

static pp_status cpu_alloc(eng_backend *be, size_t bytes, void **out)
{
    (void)be;
    *out = calloc(1, bytes ? bytes : 1);
    return *out ? PP_STATUS_OK : PP_STATUS_OUT_OF_MEMORY;
}

static void cpu_free(eng_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static pp_status cpu_memcpy(eng_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
    return PP_STATUS_OK;
}

static pp_status cpu_copy(eng_backend *be, float *dst, const float *src, size_t n)
{
    return cpu_memcpy(be, dst, src, n * sizeof(float));
}

/* ---- embedding ------------------------------------------------------------------------------- */

static pp_status cpu_embedding(eng_backend *be, const eng_weight *table, const int32_t *ids,
                               int n_tokens, float *out)
{
    (void)be;
    for (int t = 0; t < n_tokens; t++)
        eng_weight_row_f32(table, ids[t], 0, table->n_in, out + (int64_t)t * table->n_in);
    return PP_STATUS_OK;
}

/* ---- matmul ---------------------------------------------------------------------------------- */

typedef struct matmul_ctx {
    cpu_backend *cb;
    const float *x;
    int64_t x_stride;
    const eng_weight *w;
    float *y;
    int64_t y_stride;
    int n_tokens;
} matmul_ctx;

static void matmul_task(void *p, int task, int thread)
{
    matmul_ctx *c = p;
    const eng_weight *w = c->w;
    int64_t n0 = (int64_t)task * MATMUL_ROWS;
    int64_t n1 = n0 + MATMUL_ROWS < w->n_out ? n0 + MATMUL_ROWS : w->n_out;
    float *rows = c->cb->scratch[thread].buf; /* [MATMUL_ROWS][n_in] */
    for (int64_t n = n0; n < n1; n++)
        eng_weight_row_f32(w, n, 0, w->n_in, rows + (n - n0) * w->n_in);
    for (int t = 0; t < c->n_tokens; t++) {
        const float *xt = c->x + (int64_t)t * c->x_stride;
        float *yt = c->y + (int64_t)t * c->y_stride;
        for (int64_t n = n0; n < n1; n++)
            yt[n] = dot_f32(xt, rows + (n - n0) * w->n_in, w->n_in);
    }
}

static pp_status cpu_matmul(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w,
                            float *y, int64_t y_stride, int n_tokens)
{
    cpu_backend *cb = as_cpu(be);
    if (n_tokens <= 0)
        return PP_STATUS_OK;
    pp_status st = scratch_reserve(cb, (size_t)MATMUL_ROWS * (size_t)w->n_in);
    if (st != PP_STATUS_OK)
        return st;
    matmul_ctx c = {cb, x, x_stride, w, y, y_stride, n_tokens};
    int n_tasks = (int)((w->n_out + MATMUL_ROWS - 1) / MATMUL_ROWS);
    eng_threadpool_run(cb->pool, n_tasks, matmul_task, &c);
    return PP_STATUS_OK;
}

/* ---- elementwise ----------------------------------------------------------------------------- */

static pp_status cpu_rmsnorm(eng_backend *be, const float *x, int64_t x_stride, const eng_vec *w,
                             float eps, float *out, int64_t out_stride, int n_rows)
{
    (void)be;
    int64_t d = w->n;
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (int64_t)r * x_stride;
        float *o = out + (int64_t)r * out_stride;
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)xr[i] * (double)xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        for (int64_t i = 0; i < d; i++)
            o[i] = xr[i] * inv * eng_load_f32(w->data, w->dtype, (size_t)i);
    }
    return PP_STATUS_OK;
}

static pp_status cpu_add(eng_backend *be, const float *a, const float *b, float *out, size_t n)
{
    (void)be;
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return PP_STATUS_OK;
}

static pp_status cpu_rope(eng_backend *be, float *x, int n_tokens, int n_head, int64_t token_stride,
                          int64_t head_stride, int rope_offset, const int32_t *pos_of, const eng_rope *rope)
{
    (void)be;
    int half = rope->d_rope / 2;
    float tmp[1024]; /* d_rope <= 1024, checked at model load */
    for (int t = 0; t < n_tokens; t++) {
        float pos = (float)pos_of[t];
        for (int h = 0; h < n_head; h++) {
            float *v = x + (int64_t)t * token_stride + (int64_t)h * head_stride + rope_offset;
            for (int j = 0; j < half; j++) {
                /* as HF: f32 angle, f32 cos/sin, then the attention factor */
                float ang = pos * rope->inv_freq[j];
                float c = (float)cos((double)ang) * rope->cos_sin_scale;
                float s = (float)sin((double)ang) * rope->cos_sin_scale;
                float a, b;
                if (rope->interleaved) {
                    a = v[2 * j];
                    b = v[2 * j + 1];
                } else {
                    a = v[j];
                    b = v[j + half];
                }
                tmp[j] = a * c - b * s;
                tmp[j + half] = b * c + a * s;
            }
            memcpy(v, tmp, (size_t)rope->d_rope * sizeof(float));
        }
    }
    return PP_STATUS_OK;
}

static pp_status cpu_swiglu(eng_backend *be, const float *gate, int64_t gate_stride, const float *up,
                            int64_t up_stride, float *out, int64_t out_stride, int n_tokens, int d_ff)
{
    (void)be;
    for (int t = 0; t < n_tokens; t++) {
        const float *g = gate + (int64_t)t * gate_stride;
        const float *u = up + (int64_t)t * up_stride;
        float *o = out + (int64_t)t * out_stride;
        for (int i = 0; i < d_ff; i++)
            o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
    return PP_STATUS_OK;
}

/* ---- attention ------------------------------------------------------------------------------- */

/* Softmax of s[0..n) in place (max-subtracted, double sum); returns nothing. */
static void softmax_inplace(float *s, int n)
{
    float mx = -INFINITY;
    for (int j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < n; j++)
        s[j] *= inv;
}

static pp_status cpu_kv_write(eng_backend *be, void *cache, eng_kv_dtype dtype, int64_t cache_row_stride,
                              int64_t cache_head_stride, const float *src, int64_t src_row_stride,
                              int64_t src_head_stride, int n_head, int64_t width, const int32_t *slot,
                              int n_tokens)
{
    (void)be;
    if (dtype != ENG_KV_F32 && dtype != ENG_KV_BF16)
        return PP_STATUS_INVALID_ARG;
    for (int t = 0; t < n_tokens; t++) {
        if (slot[t] < 0)
            continue;
        for (int h = 0; h < n_head; h++) {
            int64_t at = (int64_t)slot[t] * cache_row_stride + (int64_t)h * cache_head_stride;
            const float *x = src + (int64_t)t * src_row_stride + (int64_t)h * src_head_stride;
            if (dtype == ENG_KV_F32) {
                memcpy((float *)cache + at, x, (size_t)width * sizeof(float));
                continue;
            }
            uint16_t *row = (uint16_t *)cache + at;
            for (int64_t i = 0; i < width; i++) {
                float r = eng_round_bf16(x[i]);
                uint32_t bits;
                memcpy(&bits, &r, sizeof bits);
                row[i] = (uint16_t)(bits >> 16);
            }
        }
    }
    return PP_STATUS_OK;
}

/* n elements of a KV cache from element `at` on, as f32: the cache's own floats for F32, the
 * bf16 values converted into tmp [n] for BF16 (exactly the f32 values they stand for). */
static const float *kv_row(const void *cache, eng_kv_dtype dtype, int64_t at, int64_t n, float *tmp)
{
    if (dtype == ENG_KV_F32)
        return (const float *)cache + at;
    const uint16_t *p = (const uint16_t *)cache + at;
    for (int64_t i = 0; i < n; i++)
        tmp[i] = eng_bf16_to_f32(p[i]);
    return tmp;
}

/* The sequence that batch row `row` belongs to (seq_start is nondecreasing; empty sequences own
 * no row). */
static int batch_seq_of(const eng_kv_batch *b, int row)
{
    int lo = 0, hi = b->n_seq - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (b->seq_start[mid] <= row)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* The cache row of sequence s's key position j. */
static int64_t batch_key_row(const eng_kv_batch *b, int s, int j)
{
    return (int64_t)b->block_table[(int64_t)s * b->max_blocks + j / b->block_size] * b->block_size +
           j % b->block_size;
}

/* Checks what every paged op relies on before it reads the tables. */
static bool batch_ok(const eng_kv_batch *b)
{
    return b->n_seq >= 1 && b->block_size >= 1 && b->n_tokens >= 0 && b->max_ctx >= 0 &&
           (int64_t)b->max_blocks * b->block_size >= b->max_ctx;
}

typedef struct attn_ctx {
    cpu_backend *cb;
    const eng_attn_args *a;
} attn_ctx;

static void attention_task(void *p, int task, int thread)
{
    attn_ctx *c = p;
    const eng_attn_args *a = c->a;
    const eng_kv_batch *b = &a->batch;
    int t = task / a->n_head, h = task % a->n_head;
    int kvh = h / (a->n_head / a->n_head_kv);
    int sq = batch_seq_of(b, t);
    int n_keys = b->seq_pos0[sq] + (t - b->seq_start[sq]) + 1;
    float *s = c->cb->scratch[thread].buf; /* [max_ctx + 1] */
    float *tmp = s + b->max_ctx + 1;       /* [max(d_qk, d_v)]: a bf16 row as f32 */
    const float *q = a->q + (int64_t)t * a->q_stride + (int64_t)h * a->d_qk;
    for (int j = 0; j < n_keys; j++) {
        int64_t at = batch_key_row(b, sq, j) * a->k_stride + (int64_t)kvh * a->d_qk;
        s[j] = dot_f32(q, kv_row(a->k, a->kv_dtype, at, a->d_qk, tmp), a->d_qk) * a->scale;
    }
    softmax_inplace(s, n_keys);
    float *o = a->out + (int64_t)t * a->out_stride + (int64_t)h * a->d_v;
    for (int i = 0; i < a->d_v; i++)
        o[i] = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        int64_t at = batch_key_row(b, sq, j) * a->v_stride + (int64_t)kvh * a->d_v;
        const float *v = kv_row(a->v, a->kv_dtype, at, a->d_v, tmp);
        for (int i = 0; i < a->d_v; i++)
            o[i] += s[j] * v[i];
    }
}

static pp_status cpu_attention(eng_backend *be, const eng_attn_args *a)
{
    cpu_backend *cb = as_cpu(be);
    if (!batch_ok(&a->batch) || (a->kv_dtype != ENG_KV_F32 && a->kv_dtype != ENG_KV_BF16))
        return PP_STATUS_INVALID_ARG;
    int d_max = a->d_qk > a->d_v ? a->d_qk : a->d_v;
    pp_status st = scratch_reserve(cb, (size_t)a->batch.max_ctx + 1 + (size_t)d_max);
    if (st != PP_STATUS_OK)
        return st;
    attn_ctx c = {cb, a};
    eng_threadpool_run(cb->pool, a->batch.n_tokens * a->n_head, attention_task, &c);
    return PP_STATUS_OK;
}

typedef struct mla_ctx {
    cpu_backend *cb;
    const eng_mla_args *a;
} mla_ctx;

/* One task per head: dequantize W_UK_h and W_UV_h once, then run every query token of the
 * batch. */
static void mla_task(void *p, int h, int thread)
{
    mla_ctx *c = p;
    const eng_mla_args *a = c->a;
    const eng_kv_batch *b = &a->batch;
    int r = a->kv_lora_rank;
    int d_qk = a->d_nope + a->d_rope;
    float *wuk = c->cb->scratch[thread].buf;      /* [d_nope][r] */
    float *wuv = wuk + (int64_t)a->d_nope * r;    /* [d_v][r] */
    float *qlat = wuv + (int64_t)a->d_v * r;      /* [r] */
    float *olat = qlat + r;                       /* [r] */
    float *s = olat + r;                          /* [max_ctx + 1] */
    float *tmp = s + b->max_ctx + 1;              /* [r + d_rope]: a bf16 row as f32 */
    int64_t row0 = (int64_t)h * (a->d_nope + a->d_v);
    for (int i = 0; i < a->d_nope; i++)
        eng_weight_row_f32(a->kv_b, row0 + i, 0, r, wuk + (int64_t)i * r);
    for (int i = 0; i < a->d_v; i++)
        eng_weight_row_f32(a->kv_b, row0 + a->d_nope + i, 0, r, wuv + (int64_t)i * r);
    for (int sq = 0; sq < b->n_seq; sq++) {
        for (int t = b->seq_start[sq]; t < b->seq_start[sq + 1]; t++) {
            const float *q = a->q + (int64_t)t * a->q_stride + (int64_t)h * d_qk;
            for (int k = 0; k < r; k++)
                qlat[k] = 0.0f;
            for (int i = 0; i < a->d_nope; i++)
                for (int k = 0; k < r; k++)
                    qlat[k] += q[i] * wuk[(int64_t)i * r + k];
            int n_keys = b->seq_pos0[sq] + (t - b->seq_start[sq]) + 1;
            for (int j = 0; j < n_keys; j++) {
                int64_t kr = batch_key_row(b, sq, j);
                s[j] = (dot_f32(qlat, kv_row(a->ckv, a->kv_dtype, kr * r, r, tmp), r) +
                        dot_f32(q + a->d_nope, kv_row(a->kpe, a->kv_dtype, kr * a->d_rope, a->d_rope, tmp + r),
                                a->d_rope)) *
                       a->scale;
            }
            softmax_inplace(s, n_keys);
            for (int k = 0; k < r; k++)
                olat[k] = 0.0f;
            for (int j = 0; j < n_keys; j++) {
                const float *ck = kv_row(a->ckv, a->kv_dtype, batch_key_row(b, sq, j) * r, r, tmp);
                for (int k = 0; k < r; k++)
                    olat[k] += s[j] * ck[k];
            }
            float *o = a->out + ((int64_t)t * a->n_head + h) * a->d_v;
            for (int i = 0; i < a->d_v; i++)
                o[i] = dot_f32(wuv + (int64_t)i * r, olat, r);
        }
    }
}

static pp_status cpu_mla_absorbed(eng_backend *be, const eng_mla_args *a)
{
    cpu_backend *cb = as_cpu(be);
    if (!batch_ok(&a->batch))
        return PP_STATUS_INVALID_ARG;
    if (a->kv_dtype != ENG_KV_F32 && a->kv_dtype != ENG_KV_BF16)
        return PP_STATUS_INVALID_ARG;
    size_t r = (size_t)a->kv_lora_rank;
    size_t need = (size_t)(a->d_nope + a->d_v) * r + 2 * r + (size_t)a->batch.max_ctx + 1 + r +
                  (size_t)a->d_rope;
    pp_status st = scratch_reserve(cb, need);
    if (st != PP_STATUS_OK)
        return st;
    mla_ctx c = {cb, a};
    eng_threadpool_run(cb->pool, a->n_head, mla_task, &c);
    return PP_STATUS_OK;
}

/* ---- W8A8 activation quantization (the bf16 mode over FP8_BLOCK weights) ----------------------- */

/* e4m3's largest finite value: HF's act_quant scale is max|x| / 448. */
#define FP8_E4M3_MAX 448.0f

/* The scale of columns [c0, c1) of a row: max |x| / 448 (fmaxf skips NaN). */
static float act_group_scale(const float *x, int64_t c0, int64_t c1)
{
    float m = 0.0f;
    for (int64_t c = c0; c < c1; c++)
        m = fmaxf(m, fabsf(x[c]));
    return m / FP8_E4M3_MAX;
}

/* One row of quant_act_fp8: first whether any group's scale is 0 (the whole row is then zeros,
 * HF's nan_to_num), then each group with its scale. out may be x: a group's scale is computed
 * before the group is written. */
static void quant_act_row(const float *x, float *out, int64_t n_cols, int group)
{
    bool zero_row = false;
    for (int64_t c0 = 0; c0 < n_cols && !zero_row; c0 += group)
        zero_row = act_group_scale(x, c0, c0 + group < n_cols ? c0 + group : n_cols) == 0.0f;
    for (int64_t c0 = 0; c0 < n_cols; c0 += group) {
        int64_t c1 = c0 + group < n_cols ? c0 + group : n_cols;
        float s = zero_row ? 0.0f : act_group_scale(x, c0, c1);
        for (int64_t c = c0; c < c1; c++)
            out[c] = zero_row ? 0.0f : eng_fp8_e4m3_to_f32(eng_f32_to_fp8_e4m3(x[c] / s)) * s;
    }
}

static pp_status cpu_quant_act_fp8(eng_backend *be, const float *x, int64_t x_stride, float *out,
                                   int64_t out_stride, int n_rows, int64_t n_cols, int group)
{
    (void)be;
    if (group < 1)
        return PP_STATUS_INVALID_ARG;
    for (int r = 0; r < n_rows; r++)
        quant_act_row(x + (int64_t)r * x_stride, out + (int64_t)r * out_stride, n_cols, group);
    return PP_STATUS_OK;
}

/* ---- MoE ------------------------------------------------------------------------------------- */

/* Indices of the k largest v[0..n) in descending order, ties to the lower index. */
static void topk_desc(const float *v, int n, int k, int32_t *idx)
{
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int e = 0; e < n; e++) {
            bool taken = false;
            for (int j = 0; j < i; j++)
                taken = taken || idx[j] == e;
            if (!taken && (best < 0 || v[e] > v[best]))
                best = e;
        }
        idx[i] = best;
    }
}

static pp_status cpu_moe_route(eng_backend *be, const eng_route_args *a)
{
    (void)be;
    int E = a->n_expert, K = a->n_expert_used;
    float *prob = malloc((size_t)E * 2 * sizeof(float));
    if (!prob)
        return PP_STATUS_OUT_OF_MEMORY;
    float *choice = prob + E;
    for (int t = 0; t < a->n_tokens; t++) {
        const float *lg = a->logits + (int64_t)t * E;
        int32_t *idx = a->idx + (int64_t)t * K;
        float *w = a->weight + (int64_t)t * K;
        if (a->kind == ENG_ROUTER_SOFTMAX) {
            memcpy(prob, lg, (size_t)E * sizeof(float));
            softmax_inplace(prob, E);
            topk_desc(prob, E, K, idx);
            double sum = 0.0;
            for (int i = 0; i < K; i++) {
                w[i] = prob[idx[i]];
                sum += w[i];
            }
            if (a->norm_topk_prob)
                for (int i = 0; i < K; i++)
                    w[i] = (float)(w[i] / sum);
            continue;
        }
        /* sigmoid router (DeepSeek-V3 noaux_tc) */
        for (int e = 0; e < E; e++) {
            prob[e] = 1.0f / (1.0f + expf(-lg[e]));
            choice[e] = prob[e] + (a->bias ? eng_load_f32(a->bias->data, a->bias->dtype, (size_t)e) : 0.0f);
        }
        if (a->n_group > 1) {
            int per = E / a->n_group;
            float gscore[256];
            for (int g = 0; g < a->n_group; g++) {
                int32_t top2[2];
                topk_desc(choice + g * per, per, 2, top2);
                gscore[g] = choice[g * per + top2[0]] + choice[g * per + top2[1]];
            }
            int32_t gsel[256];
            topk_desc(gscore, a->n_group, a->topk_group, gsel);
            for (int g = 0; g < a->n_group; g++) {
                bool keep = false;
                for (int i = 0; i < a->topk_group; i++)
                    keep = keep || gsel[i] == g;
                /* transformers 5.x masks dropped groups with -inf (4.x and DeepSeek's remote
                 * code used 0.0, which differs when a kept score sigmoid + bias is negative;
                 * tests/fixtures/unseen/ds_group_noqlora was made by HF 5.24 to pin this) */
                if (!keep)
                    for (int e = g * per; e < (g + 1) * per; e++)
                        choice[e] = -INFINITY;
            }
        }
        topk_desc(choice, E, K, idx);
        double sum = 0.0;
        for (int i = 0; i < K; i++) {
            w[i] = prob[idx[i]];
            sum += w[i];
        }
        for (int i = 0; i < K; i++) {
            float wi = a->norm_topk_prob ? (float)(w[i] / (sum + 1e-20)) : w[i];
            w[i] = wi * a->routed_scaling_factor;
        }
    }
    free(prob);
    return PP_STATUS_OK;
}

/* Per expert e: its tokens' rows gathered into xe, g = gate_e xe and u = up_e xe, g = silu(g) * u,
 * ye = down_e g, each ye row added into its token's out row with the combine weight. With
 * h_bf16 g is rounded to bf16 after the SwiGLU; with act_quant_group, x is quantized once per
 * token (xq) before the gather, and g per row after the SwiGLU (and the rounding). */
static pp_status cpu_moe_experts(eng_backend *be, const eng_moe_args *a)
{
    int T = a->n_tokens, K = a->n_expert_used, D = a->d_model, F = a->d_ff_expert;
    int group = a->act_quant_group;
    if (group < 0)
        return PP_STATUS_INVALID_ARG;
    size_t n_x = (size_t)T * (size_t)D, n_h = (size_t)T * (size_t)F;
    float *xe = malloc((n_x * (group ? 3 : 2) + n_h * 2) * sizeof(float));
    int32_t *tok = malloc((size_t)T * sizeof(int32_t));
    float *tw = malloc((size_t)T * sizeof(float));
    pp_status st = PP_STATUS_OK;
    if (!xe || !tok || !tw) {
        st = PP_STATUS_OUT_OF_MEMORY;
        goto done;
    }
    float *ye = xe + n_x, *g = ye + n_x, *u = g + n_h;
    const float *x = a->x; /* [T][D]: the rows the experts read */
    if (group) {
        float *xq = u + n_h;
        cpu_quant_act_fp8(be, a->x, D, xq, D, T, D, group);
        x = xq;
    }
    memset(a->out, 0, n_x * sizeof(float));
    for (int e = 0; e < a->n_expert; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < K; i++)
                if (a->idx[(int64_t)t * K + i] == e) {
                    tok[n] = t;
                    tw[n] = a->weight[(int64_t)t * K + i];
                    memcpy(xe + (int64_t)n * D, x + (int64_t)t * D, (size_t)D * sizeof(float));
                    n++;
                }
        if (n == 0)
            continue;
        if ((st = cpu_matmul(be, xe, D, &a->gate[e], g, F, n)) != PP_STATUS_OK ||
            (st = cpu_matmul(be, xe, D, &a->up[e], u, F, n)) != PP_STATUS_OK)
            goto done;
        cpu_swiglu(be, g, F, u, F, g, F, n, F);
        if (a->h_bf16)
            for (size_t i = 0; i < (size_t)n * (size_t)F; i++)
                g[i] = eng_round_bf16(g[i]);
        if (group)
            cpu_quant_act_fp8(be, g, F, g, F, n, F, group);
        if ((st = cpu_matmul(be, g, F, &a->down[e], ye, D, n)) != PP_STATUS_OK)
            goto done;
        for (int i = 0; i < n; i++) {
            float *o = a->out + (int64_t)tok[i] * D;
            const float *y = ye + (int64_t)i * D;
            for (int d = 0; d < D; d++)
                o[d] += tw[i] * y[d];
        }
    }
done:
    free(xe);
    free(tok);
    free(tw);
    return st;
}

/* ---- bf16 rounding (the bf16 compute mode, engine/backend_bf16.c) ---------------------------- */

static pp_status cpu_round_bf16(eng_backend *be, float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    (void)be;
    for (int r = 0; r < n_rows; r++) {
        float *row = x + (int64_t)r * stride;
        for (int64_t i = 0; i < n_cols; i++)
            row[i] = eng_round_bf16(row[i]);
    }
    return PP_STATUS_OK;
}

/* ---- greedy argmax ----------------------------------------------------------------------------- */

/* eng_argmax of each row (the rule lives in engine/sampler.c, shared with the sampler). */
static pp_status cpu_argmax(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols,
                            int32_t *out)
{
    (void)be;
    if (n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols)
        return PP_STATUS_INVALID_ARG;
    for (int r = 0; r < n_rows; r++)
        out[r] = eng_argmax(x + (int64_t)r * stride, (int32_t)n_cols);
    return PP_STATUS_OK;
}

/* ---- sampling candidates --------------------------------------------------------------------- */

/* eng_topk of each row (the rule lives in engine/sampler.c, shared with the sampler). */
static pp_status cpu_topk(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols, int k,
                          float *vals, int32_t *ids)
{
    (void)be;
    if (n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols || k < 1 || k > ENG_TOPK_MAX)
        return PP_STATUS_INVALID_ARG;
    for (int r = 0; r < n_rows; r++)
        eng_topk(x + (int64_t)r * stride, (int32_t)n_cols, k, vals + (int64_t)r * k, ids + (int64_t)r * k);
    return PP_STATUS_OK;
}

/* ---- lifetime -------------------------------------------------------------------------------- */

/* The CPU backend fails only for host memory, which its ops' statuses already say. */
static const char *cpu_last_error(eng_backend *be)
{
    (void)be;
    return "";
}

static void cpu_destroy(eng_backend *be)
{
    cpu_backend *cb = as_cpu(be);
    if (!cb)
        return;
    eng_threadpool_destroy(cb->pool);
    if (cb->scratch)
        for (int i = 0; i < cb->n_threads; i++)
            free(cb->scratch[i].buf);
    free(cb->scratch);
    free(cb);
}

static const eng_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_copy,
    .embedding = cpu_embedding,
    .matmul = cpu_matmul,
    /* .matmul_bf16 stays NULL: no faster product for bf16 inputs here, and this matmul is the
     * oracle the other backends' matmul_bf16 is checked against (the bf16 mode falls back to
     * it) */
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .rope = cpu_rope,
    .kv_write = cpu_kv_write,
    .swiglu = cpu_swiglu,
    .attention = cpu_attention,
    .mla_absorbed = cpu_mla_absorbed,
    .moe_route = cpu_moe_route,
    .moe_experts = cpu_moe_experts,
    .quant_act_fp8 = cpu_quant_act_fp8,
    .round_bf16 = cpu_round_bf16,
    .argmax = cpu_argmax,
    .topk = cpu_topk,
    .last_error = cpu_last_error,
};

pp_status eng_backend_cpu_create(int n_threads, eng_backend **out, eng_err *err)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256)
        n_threads = 256;
    cpu_backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "cpu backend: out of memory");
    cb->base.ops = &cpu_ops;
    cb->n_threads = n_threads;
    cb->scratch = calloc((size_t)n_threads, sizeof *cb->scratch);
    pp_status st = cb->scratch ? eng_threadpool_create(n_threads, &cb->pool, err)
                               : eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "cpu backend: out of memory");
    if (st != PP_STATUS_OK) {
        cpu_destroy(&cb->base);
        return st;
    }
    *out = &cb->base;
    return PP_STATUS_OK;
}
