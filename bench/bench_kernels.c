/* bench_kernels.c: paraphym's CUDA kernels timed beside ceilings measured in the same run.
 *
 *   bench_kernels [--quick] [--only SUBSTRING] [--budget SECONDS]
 *
 * Ceilings first (always run: they are the denominators): device-to-device copy of 2 GiB
 * (cudaMemcpyAsync and cublasScopy; the faster is the bandwidth ceiling) and cuBLAS bf16 GEMM
 * 8192^3 with f32 accumulation (the FLOP ceiling). Then, filtered by --only: cuBLAS bf16
 * decode-shaped products, kern_matmul at decode and prefill shapes, a whole Phi-4 layer at M = 1,
 * kern_moe_experts, kern_attention (decode at batch 1 and 16 over f32 and bf16 KV caches, and
 * prefill), kern_attention_tc (the bf16 mode's tensor-core prefill attention), kern_mla_absorbed
 * (decode at batch 1 and 16, f32 and bf16 latents), kern_matmul_tc (our tensor-core prefill
 * product, every weight format) and the CUDA backend's matmul_bf16 op at prefill shapes (the
 * bf16 mode's products: x packed to bf16, then cuBLAS), at the shapes of Phi-4,
 * Qwen3-Coder-30B-A3B and Kimi K2 (shared/docs/PERFORMANCE.md,
 * KERNELS.md). Attention reads paged KV caches: decode through a shuffled block table, so a
 * sequence's keys are scattered blocks, never one stream.
 *
 * Invariant of every figure: the median over replays of one CUDA graph, timed with a pair of
 * events around each cudaGraphLaunch after warm-up replays (save the matmul_bf16 op itself, which
 * runs on its backend's stream and is host-timed between device synchronisations); decode graphs cycle over distinct
 * copies of the weights (or distinct sequences of a KV cache) that together exceed 4x the L2, so
 * the L2 cannot serve them, and rates count the bytes each call must read from memory. Data is
 * random and valid (finite bf16, e4m3 without the NaN codes 0x7f/0xff, positive scales), never
 * zeros.
 *
 * Output: one JSON object per measurement on stdout (flushed as it goes), then a markdown table
 * on stdout; progress and errors on stderr. Exit status: 0 all measured, 1 a measurement failed
 * (the others still run unless the device is left in an error state), 2 usage, 77 no CUDA device.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "bench_util.h"
#include "kernels.h"

/* Graph sizing, not timing: 3.0e6 bytes/us is the H100 copy bandwidth (PERFORMANCE.md) and
 * 3 us a launch's fixed cost (KERNELS.md: 2-5 us); they estimate how many calls fill about
 * GRAPH_TARGET_US of GPU time per replay, so the host always enqueues ahead of the GPU and no
 * replay waits on the host. */
#define EST_BYTES_PER_US 3.0e6
#define EST_FIXED_US 3.0
#define GRAPH_TARGET_US 300.0
#define GRAPH_MAX_CALLS 256
#define MAX_COPIES 64
#define MAX_REPS 64
/* Per-measurement share of the run: reps are cut so one measurement's timed replays stay within
 * it (a slow kernel cannot stretch the run; at least 3 replays are always timed). */
#define SHARE_MS 1000.0
#define SHARE_MS_QUICK 250.0
#define POOL_BYTES ((size_t)64 << 20)     /* random source buffers, one per fill kind */
#define BLAS_WS_BYTES ((size_t)32 << 20)  /* cuBLAS workspace recommended for Hopper */

/* ---- errors ------------------------------------------------------------------------------- */

static const char *g_measure = "setup"; /* the group being run, named in every error message */

static void report_cuda(const char *what, cudaError_t e, int line)
{
    fprintf(stderr, "bench_kernels: [%s] %s failed: %s (%s), line %d\n", g_measure, what,
            cudaGetErrorName(e), cudaGetErrorString(e), line);
}

static void report_cublas(const char *what, cublasStatus_t s, int line)
{
    fprintf(stderr, "bench_kernels: [%s] %s failed: %s (%s), line %d\n", g_measure, what,
            cublasGetStatusName(s), cublasGetStatusString(s), line);
}

/* CK: a CUDA runtime call or a kern_* launcher (int status = cudaError_t); CKB: a cuBLAS call.
 * Both report and jump to the function's `done` label, where rc is still -1. */
#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t ck_e_ = (cudaError_t)(call);                                                   \
        if (ck_e_ != cudaSuccess) {                                                                \
            report_cuda(#call, ck_e_, __LINE__);                                                   \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

#define CKB(call)                                                                                  \
    do {                                                                                           \
        cublasStatus_t ck_s_ = (call);                                                             \
        if (ck_s_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            report_cublas(#call, ck_s_, __LINE__);                                                 \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

/* ---- shapes and formats ------------------------------------------------------------------- */

typedef struct mat_shape {
    const char *what;
    int64_t n_out, n_in;
} mat_shape;

/* Phi-4 decode products (out x in); PHI4_LAYER adds o_proj for the whole layer. */
static const mat_shape PHI4_DECODE[3] = {
    {"qkv", 7680, 5120}, {"gate_up", 35840, 5120}, {"down", 5120, 17920}};
static const mat_shape PHI4_LAYER[4] = {
    {"qkv", 7680, 5120}, {"o", 5120, 5120}, {"gate_up", 35840, 5120}, {"down", 5120, 17920}};
static const int DECODE_M[5] = {1, 2, 4, 8, 16};
static const int GEMV_M[2] = {1, 8}; /* cuBLAS ceilings, PERFORMANCE.md: M = 8 times as M = 1 */

typedef struct fmt_spec {
    const char *name;
    kern_wfmt fmt;
} fmt_spec;

/* FP8: 128 x 128 blocks, f32 scales (DeepSeek-V3 / Kimi K2 checkpoints); INT4: group 128, f32
 * scales; INT8: one f32 scale per row (both as the on-load quantization makes them). */
static const fmt_spec DECODE_FMTS[] = {
    {"bf16", KERN_W_BF16},
    {"fp8_block", KERN_W_FP8_BLOCK},
    {"int4_group", KERN_W_INT4_GROUP},
    {"int8_channel", KERN_W_INT8_CHANNEL},
};
#define N_DECODE_FMTS ((int)(sizeof DECODE_FMTS / sizeof DECODE_FMTS[0]))
static const fmt_spec MOE_FMTS[2] = {{"bf16", KERN_W_BF16}, {"fp8_block", KERN_W_FP8_BLOCK}};
#define QBLOCK 128

typedef struct moe_model {
    const char *name;
    int n_expert, n_expert_used, d_model, d_ff_expert;
} moe_model;

static const moe_model MOE_MODELS[2] = {
    {"qwen3_coder_30b", 128, 8, 2048, 768},
    {"kimi_k2", 384, 8, 7168, 2048},
};
#define MOE_MAX_TOKENS 8
static const int MOE_TOKENS[2] = {1, MOE_MAX_TOKENS};
#define MOE_MAX_SETS 16

typedef struct attn_cfg {
    const char *name;
    int n_head, n_head_kv, d_head;
} attn_cfg;

static const attn_cfg ATTN_CFGS[2] = {{"phi4", 40, 10, 128}, {"qwen3_coder", 32, 4, 128}};
static const int DECODE_CTX[4] = {4096, 8192, 16384, 32768};
#define DECODE_MAX_BATCH 16
static const int DECODE_BATCH[2] = {1, DECODE_MAX_BATCH};
#define ATTN_BLOCK 16 /* positions per block of the paged GQA caches (vLLM's default) */
static const int PREFILL_TOKENS[2] = {2048, 4096};
static const int PREFILL_M[2] = {512, 2048};

/* Kimi K2 MLA (config.json): 64 heads, kv_lora_rank 512, qk_rope 64, qk_nope 128, v 128. */
#define MLA_HEADS 64
#define MLA_RANK 512
#define MLA_ROPE 64
#define MLA_NOPE 128
#define MLA_DV 128
#define MLA_BLOCK 64 /* positions per block of the paged latent cache (FlashMLA's) */
static const int MLA_CTX[2] = {4096, 32768};

/* ---- results ------------------------------------------------------------------------------ */

typedef struct result {
    char name[64], shape[64], format[24], note[128];
    int m, batch, context;   /* -1: not applicable */
    double us, us_min;       /* median and fastest replay, per call (or per batch step) */
    double gbs, tflops;      /* < 0: not applicable */
    double pct;              /* of the ceiling named by `ceiling`; < 0 when unknown */
    const char *ceiling;     /* "copy", "gemm_bf16" or NULL */
    double vs_cublas;        /* cuBLAS time / ours, same shape and M (> 1: ours faster) */
    int reps, calls;
} result;

enum { FILL_F32, FILL_BF16, FILL_E4M3, FILL_INT4, FILL_SCALE, N_FILL };

typedef struct bench {
    bool quick;
    const char *only;
    double budget_s, t_start;
    int l2_bytes;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    cudaEvent_t ev[2 * MAX_REPS + 2];
    int n_ev;
    void *pool[N_FILL];          /* [POOL_BYTES] random source data per fill kind, device */
    double copy_gbs;             /* bandwidth ceiling of this run (0 until measured) */
    double gemm_tflops;          /* bf16 GEMM ceiling of this run (0 until measured) */
    double cublas_gemv_us[3][2]; /* PHI4_DECODE x GEMV_M, 0 until measured */
    double cublas_prefill_us[2]; /* PREFILL_M, 0 until measured */
    result *res;
    int n_res, cap_res;
    int n_failed, n_skipped;
} bench;

static void result_init(result *r, const char *name, const char *shape, const char *format)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    snprintf(r->shape, sizeof r->shape, "%s", shape);
    snprintf(r->format, sizeof r->format, "%s", format);
    r->m = r->batch = r->context = -1;
    r->gbs = r->tflops = r->pct = r->vs_cublas = -1.0;
}

/* Fills pct from the run's ceilings: bandwidth for a rate in GB/s, FLOPs otherwise. */
static void result_pct(const bench *b, result *r)
{
    if (r->gbs >= 0.0 && b->copy_gbs > 0.0) {
        r->pct = 100.0 * r->gbs / b->copy_gbs;
        r->ceiling = "copy";
    } else if (r->tflops >= 0.0 && b->gemm_tflops > 0.0) {
        r->pct = 100.0 * r->tflops / b->gemm_tflops;
        r->ceiling = "gemm_bf16";
    }
}

static void json_num(const char *key, double v, const char *fmt)
{
    printf(", \"%s\": ", key);
    if (v < 0.0)
        printf("null");
    else
        printf(fmt, v);
}

static void json_int(const char *key, int v)
{
    printf(", \"%s\": ", key);
    if (v < 0)
        printf("null");
    else
        printf("%d", v);
}

/* Prints r as one JSON line and keeps it for the closing table. */
static void result_emit(bench *b, const result *r)
{
    printf("{\"name\": \"%s\", \"shape\": \"%s\", \"format\": \"%s\"", r->name, r->shape,
           r->format);
    json_int("M", r->m);
    json_int("batch", r->batch);
    json_int("context", r->context);
    json_num("us", r->us, "%.3f");
    json_num("us_min", r->us_min, "%.3f");
    json_num("GB_s", r->gbs, "%.1f");
    json_num("TFLOP_s", r->tflops, "%.2f");
    json_num("pct_of_ceiling", r->pct, "%.1f");
    printf(", \"ceiling\": ");
    if (r->ceiling)
        printf("\"%s\"", r->ceiling);
    else
        printf("null");
    json_num("vs_cublas", r->vs_cublas, "%.3f");
    printf(", \"reps\": %d, \"calls_per_graph\": %d, \"note\": \"%s\"}\n", r->reps, r->calls,
           r->note);
    fflush(stdout);
    if (b->n_res == b->cap_res) {
        int cap = b->cap_res ? 2 * b->cap_res : 128;
        result *p = realloc(b->res, (size_t)cap * sizeof *p);
        if (!p)
            return; /* the JSON line is out; only the table loses the row */
        b->res = p;
        b->cap_res = cap;
    }
    b->res[b->n_res++] = *r;
}

static void table_cell_num(double v, const char *fmt)
{
    if (v < 0.0)
        printf(" |");
    else {
        printf(" ");
        printf(fmt, v);
        printf(" |");
    }
}

static void table_cell_int(int v)
{
    if (v < 0)
        printf(" |");
    else
        printf(" %d |", v);
}

static void table_print(const bench *b)
{
    printf("\n| name | shape | format | M | batch | context | us | GB/s | TFLOP/s | %% of ceiling "
           "| vs cuBLAS | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < b->n_res; i++) {
        const result *r = &b->res[i];
        printf("| %s | %s | %s |", r->name, r->shape, r->format);
        table_cell_int(r->m);
        table_cell_int(r->batch);
        table_cell_int(r->context);
        table_cell_num(r->us, "%.1f");
        table_cell_num(r->gbs, "%.0f");
        table_cell_num(r->tflops, "%.1f");
        if (r->pct >= 0.0)
            printf(" %.0f%% (%s) |", r->pct, r->ceiling);
        else
            printf(" |");
        table_cell_num(r->vs_cublas, "%.2fx");
        printf(" %s |\n", r->note);
    }
    fflush(stdout);
}

/* ---- random data -------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float unit_f32(uint32_t u) /* [0, 1) */
{
    return (float)(u >> 8) * (1.0f / 16777216.0f);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* bf16 by truncation: finite for every finite f32. */
static uint32_t bf16_bits(float f)
{
    return f32_bits(f) >> 16;
}

/* e4m3: the magnitude code 0x7f is NaN; move it to 0x7e (448). */
static uint32_t e4m3_fix(uint32_t w)
{
    for (int i = 0; i < 4; i++)
        if (((w >> (8 * i)) & 0x7fu) == 0x7fu)
            w ^= 1u << (8 * i);
    return w;
}

/* One 32-bit word of fill kind k. Magnitudes (activations in [-1, 1), bf16 weights in
 * [-1/16, 1/16), scales in [1/128, 3/128)) keep every dot product and softmax finite. */
static uint32_t fill_word(int k, uint64_t r)
{
    uint32_t lo = (uint32_t)r, hi = (uint32_t)(r >> 32);
    switch (k) {
    case FILL_F32: return f32_bits(2.0f * unit_f32(lo) - 1.0f);
    case FILL_BF16:
        return bf16_bits(0.0625f * (2.0f * unit_f32(lo) - 1.0f)) |
               bf16_bits(0.0625f * (2.0f * unit_f32(hi) - 1.0f)) << 16;
    case FILL_E4M3: return e4m3_fix(lo);
    case FILL_INT4: return lo;
    default: return f32_bits((0.5f + unit_f32(lo)) / 64.0f); /* FILL_SCALE */
    }
}

/* Uploads one POOL_BYTES buffer of random words per fill kind. */
static int pools_make(bench *b)
{
    int rc = -1;
    const size_t n = POOL_BYTES / sizeof(uint32_t);
    uint32_t *h = malloc(POOL_BYTES);
    uint64_t st = 20261127u;
    if (!h) {
        fprintf(stderr, "bench_kernels: out of host memory (%zu bytes)\n", POOL_BYTES);
        return -1;
    }
    for (int k = 0; k < N_FILL; k++) {
        for (size_t i = 0; i < n; i++)
            h[i] = fill_word(k, rng_next(&st));
        CK(cudaMalloc(&b->pool[k], POOL_BYTES));
        CK(cudaMemcpy(b->pool[k], h, POOL_BYTES, cudaMemcpyHostToDevice));
    }
    rc = 0;
done:
    free(h);
    return rc;
}

/* ---- device memory ------------------------------------------------------------------------ */

/* Every allocation of a measurement group, freed together by devlist_free. */
typedef struct devlist {
    void **p;
    int n, cap;
} devlist;

/* cudaMalloc(bytes) recorded in l; NULL (reported) on failure. */
static void *dev_alloc(devlist *l, size_t bytes)
{
    void *p = NULL;
    cudaError_t e;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        void **q = realloc(l->p, (size_t)cap * sizeof *q);
        if (!q) {
            fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
            return NULL;
        }
        l->p = q;
        l->cap = cap;
    }
    if ((e = cudaMalloc(&p, bytes ? bytes : 256)) != cudaSuccess) {
        fprintf(stderr, "bench_kernels: [%s] cudaMalloc(%zu bytes) failed: %s (%s)\n", g_measure,
                bytes, cudaGetErrorName(e), cudaGetErrorString(e));
        (void)cudaGetLastError(); /* an allocation failure is not sticky */
        return NULL;
    }
    l->p[l->n++] = p;
    return p;
}

/* Frees everything in l (the device must be idle: cudaFree synchronises); returns 0 or -1. */
static int devlist_free(devlist *l)
{
    int rc = 0;
    for (int i = 0; i < l->n; i++) {
        cudaError_t e = cudaFree(l->p[i]);
        if (e != cudaSuccess && rc == 0) {
            report_cuda("cudaFree", e, __LINE__);
            rc = -1;
        }
    }
    free(l->p);
    l->p = NULL;
    l->n = l->cap = 0;
    return rc;
}

/* Copies random data of kind k into dst[0, bytes) from the pool, starting at a seed-dependent
 * offset (so copies differ), on the bench stream. */
static int dev_fill(bench *b, void *dst, size_t bytes, int k, uint64_t seed)
{
    int rc = -1;
    size_t done_bytes = 0, off = (size_t)(seed * 40961u % (POOL_BYTES / 2)) & ~(size_t)255;
    while (done_bytes < bytes) {
        size_t chunk = POOL_BYTES - off;
        if (chunk > bytes - done_bytes)
            chunk = bytes - done_bytes;
        CK(cudaMemcpyAsync((char *)dst + done_bytes, (const char *)b->pool[k] + off, chunk,
                           cudaMemcpyDeviceToDevice, b->stream));
        done_bytes += chunk;
        off = 0;
    }
    rc = 0;
done:
    return rc;
}

/* ---- weights ------------------------------------------------------------------------------ */

static int64_t ceil_div64(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static size_t weight_data_bytes(kern_wfmt f, int64_t n_out, int64_t n_in)
{
    switch (f) {
    case KERN_W_F32: return (size_t)(n_out * n_in * 4);
    case KERN_W_BF16:
    case KERN_W_F16: return (size_t)(n_out * n_in * 2);
    case KERN_W_FP8_BLOCK:
    case KERN_W_INT8_CHANNEL: return (size_t)(n_out * n_in);
    case KERN_W_INT4_GROUP: return (size_t)(n_out * ceil_div64(n_in, 8) * 4);
    default: return 0;
    }
}

static size_t weight_scale_bytes(kern_wfmt f, int64_t n_out, int64_t n_in)
{
    switch (f) {
    case KERN_W_FP8_BLOCK:
        return (size_t)(ceil_div64(n_out, QBLOCK) * ceil_div64(n_in, QBLOCK) * 4);
    case KERN_W_INT4_GROUP: return (size_t)(n_out * ceil_div64(n_in, QBLOCK) * 4);
    case KERN_W_INT8_CHANNEL: return (size_t)(n_out * 4);
    default: return 0;
    }
}

/* Bytes a product must read: the quantized values plus their scales. */
static size_t weight_bytes(kern_wfmt f, int64_t n_out, int64_t n_in)
{
    return weight_data_bytes(f, n_out, n_in) + weight_scale_bytes(f, n_out, n_in);
}

/* Allocates and fills one [n_out][n_in] weight of format f; *w describes it. */
static int weight_make(bench *b, devlist *dl, kern_wfmt f, int64_t n_out, int64_t n_in,
                       uint64_t seed, kern_weight *w)
{
    const size_t db = weight_data_bytes(f, n_out, n_in), sb = weight_scale_bytes(f, n_out, n_in);
    /* FILL_INT4 is random words: every nibble a valid INT4 value, every byte a valid INT8 one */
    const int kind = f == KERN_W_BF16 ? FILL_BF16 : f == KERN_W_FP8_BLOCK ? FILL_E4M3
                   : f == KERN_W_INT4_GROUP || f == KERN_W_INT8_CHANNEL ? FILL_INT4 : FILL_F32;
    void *data, *scale = NULL;
    memset(w, 0, sizeof *w);
    if (f == KERN_W_F16)
        return -1; /* not benchmarked: no random-f16 pool */
    if (!(data = dev_alloc(dl, db)) || dev_fill(b, data, db, kind, seed))
        return -1;
    if (sb && (!(scale = dev_alloc(dl, sb)) || dev_fill(b, scale, sb, FILL_SCALE, seed + 7)))
        return -1;
    w->fmt = f;
    w->n_out = n_out;
    w->n_in = n_in;
    w->data = data;
    w->scale = scale;
    w->scale_dtype = KERN_DT_F32;
    if (f == KERN_W_FP8_BLOCK) {
        w->block_out = w->block_in = QBLOCK;
        w->scale_cols = ceil_div64(n_in, QBLOCK);
    } else if (f == KERN_W_INT4_GROUP) {
        w->group = QBLOCK;
        w->packed_cols = ceil_div64(n_in, 8);
        w->scale_cols = ceil_div64(n_in, QBLOCK);
    } else if (f == KERN_W_INT8_CHANNEL) {
        w->scale_cols = 1;
    }
    return 0;
}

/* ---- graph timing ------------------------------------------------------------------------- */

/* Copies of `bytes` each that together exceed 4x the L2 (at least min_copies, at most
 * MAX_COPIES). */
static int copies_for(const bench *b, double bytes, int min_copies)
{
    double n = floor(4.0 * (double)b->l2_bytes / bytes) + 1.0;
    if (n < min_copies)
        n = min_copies;
    return n > MAX_COPIES ? MAX_COPIES : (int)n;
}

/* Calls per graph: every copy once, and enough calls of bytes_per_call to fill GRAPH_TARGET_US
 * at the estimated rate. */
static int calls_for(int n_copies, double bytes_per_call)
{
    double est_us = bytes_per_call / EST_BYTES_PER_US + EST_FIXED_US;
    int n = (int)ceil(GRAPH_TARGET_US / est_us);
    if (n > GRAPH_MAX_CALLS)
        n = GRAPH_MAX_CALLS;
    return n < n_copies ? n_copies : n;
}

typedef int (*enqueue_fn)(void *ctx, cudaStream_t s);

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Runs enqueue once eagerly (checked and synchronised, so a fault names its group and lazy
 * module loading happens outside the capture), captures it into a graph and replays it: one
 * sizing replay, warm-up replays, then up to reps_max timed replays (fewer when they would
 * exceed the measurement's share). *us = median replay in us, *us_min the fastest; returns 0
 * or -1 (reported). */
static int graph_time(bench *b, enqueue_fn enqueue, void *ctx, int reps_max, double *us,
                      double *us_min, int *n_reps)
{
    int rc = -1, reps = reps_max < MAX_REPS ? reps_max : MAX_REPS;
    const int warm = b->quick ? 1 : 3;
    const double share_ms = b->quick ? SHARE_MS_QUICK : SHARE_MS;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    float ms = 0.0f, t[MAX_REPS];

    /* the uploads (cudaMemcpy, legacy stream: no implicit order with our non-blocking stream)
     * and the fills have landed */
    CK(cudaDeviceSynchronize());
    if (enqueue(ctx, b->stream) != 0)
        goto done;
    CK(cudaStreamSynchronize(b->stream));
    CK(cudaStreamBeginCapture(b->stream, cudaStreamCaptureModeRelaxed));
    if (enqueue(ctx, b->stream) != 0) {
        cudaGraph_t partial = NULL;
        (void)cudaStreamEndCapture(b->stream, &partial);
        if (partial)
            (void)cudaGraphDestroy(partial);
        (void)cudaGetLastError();
        goto done;
    }
    CK(cudaStreamEndCapture(b->stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));

    CK(cudaEventRecord(b->ev[0], b->stream));
    CK(cudaGraphLaunch(exec, b->stream));
    CK(cudaEventRecord(b->ev[1], b->stream));
    CK(cudaEventSynchronize(b->ev[1]));
    CK(cudaEventElapsedTime(&ms, b->ev[0], b->ev[1]));
    if ((double)ms * reps > share_ms) {
        reps = (int)(share_ms / (double)ms);
        if (reps < 3)
            reps = 3;
    }
    for (int i = 0; i < warm; i++)
        CK(cudaGraphLaunch(exec, b->stream));
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(b->ev[2 + 2 * i], b->stream));
        CK(cudaGraphLaunch(exec, b->stream));
        CK(cudaEventRecord(b->ev[3 + 2 * i], b->stream));
    }
    CK(cudaStreamSynchronize(b->stream));
    for (int i = 0; i < reps; i++)
        CK(cudaEventElapsedTime(&t[i], b->ev[2 + 2 * i], b->ev[3 + 2 * i]));
    qsort(t, (size_t)reps, sizeof t[0], cmp_float);
    *us = 1e3 * (reps % 2 ? (double)t[reps / 2] : 0.5 * ((double)t[reps / 2 - 1] + t[reps / 2]));
    *us_min = 1e3 * (double)t[0];
    *n_reps = reps;
    rc = 0;
done:
    if (exec)
        (void)cudaGraphExecDestroy(exec);
    if (graph)
        (void)cudaGraphDestroy(graph);
    return rc;
}

static int reps_default(const bench *b)
{
    return b->quick ? 5 : 30;
}

/* ---- enqueue contexts --------------------------------------------------------------------- */

typedef struct copy_ctx {
    bench *b;
    void *dst;
    const void *src;
    size_t bytes;
    bool scopy; /* cublasScopy (a kernel) instead of cudaMemcpyAsync */
} copy_ctx;

static int copy_enqueue(void *p, cudaStream_t s)
{
    copy_ctx *c = p;
    int rc = -1;
    if (c->scopy)
        CKB(cublasScopy(c->b->blas, (int)(c->bytes / sizeof(float)), c->src, 1, c->dst, 1));
    else
        CK(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, s));
    rc = 0;
done:
    return rc;
}

/* cuBLAS y[m][n_out] = x[m][n_in] W^T, all bf16, f32 accumulation, call i on copy i % n_w. */
typedef struct blas_ctx {
    bench *b;
    void *const *w; /* n_w copies of [n_out][n_in] bf16, device */
    int n_w, n_calls, m;
    int64_t n_out, n_in;
    const void *x; /* [m][n_in] bf16, device */
    void *y;       /* [m][n_out] bf16, device */
} blas_ctx;

static int blas_enqueue(void *p, cudaStream_t s)
{
    blas_ctx *c = p;
    const float one = 1.0f, zero = 0.0f;
    int rc = -1;
    (void)s; /* the handle runs on b->stream (cublasSetStream at start) */
    for (int i = 0; i < c->n_calls; i++)
        CKB(cublasGemmEx(c->b->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)c->n_out, c->m, (int)c->n_in,
                         &one, c->w[i % c->n_w], CUDA_R_16BF, (int)c->n_in, c->x, CUDA_R_16BF,
                         (int)c->n_in, &zero, c->y, CUDA_R_16BF, (int)c->n_out, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT));
    rc = 0;
done:
    return rc;
}

/* kern_matmul over weight groups: call i runs the per_call weights of copy i % n_copies. */
typedef struct mm_ctx {
    const kern_weight *w; /* [n_copies][per_call] host descriptors of device data */
    int n_copies, per_call, n_calls, m;
    const float *x; /* [m][n_in] f32, rows n_in apart */
    float *y;       /* [m][n_out] f32, rows n_out apart */
} mm_ctx;

static int mm_enqueue(void *p, cudaStream_t s)
{
    mm_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        for (int j = 0; j < c->per_call; j++) {
            const kern_weight *w = &c->w[(i % c->n_copies) * c->per_call + j];
            CK(kern_matmul(c->x, w->n_in, w, c->y, w->n_out, c->m, s));
        }
    rc = 0;
done:
    return rc;
}

typedef struct moe_ctx {
    const kern_moe_args *args; /* [n_sets] */
    int n_sets, n_calls;
    void *ws;
} moe_ctx;

static int moe_enqueue(void *p, cudaStream_t s)
{
    moe_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        CK(kern_moe_experts(&c->args[i % c->n_sets], c->ws, s));
    rc = 0;
done:
    return rc;
}

typedef struct attn_ctx {
    const kern_attn_args *args; /* [n_args], one per cache */
    int n_args, n_calls;
    void *ws;
} attn_ctx;

static int attn_enqueue(void *p, cudaStream_t s)
{
    attn_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        CK(kern_attention(&c->args[i % c->n_args], c->ws, s));
    rc = 0;
done:
    return rc;
}

/* kern_attention_tc over the same contexts (no workspace). */
static int attn_tc_enqueue(void *p, cudaStream_t s)
{
    attn_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        CK(kern_attention_tc(&c->args[i % c->n_args], s));
    rc = 0;
done:
    return rc;
}

typedef struct mla_ctx {
    const kern_mla_args *args; /* [n_args], one per (cache, kv_b) copy */
    int n_args, n_calls;
    void *ws;
} mla_ctx;

static int mla_enqueue(void *p, cudaStream_t s)
{
    mla_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        CK(kern_mla_absorbed(&c->args[i % c->n_args], c->ws, s));
    rc = 0;
done:
    return rc;
}

/* ---- measurement groups ------------------------------------------------------------------- */

static void shape_str(char *dst, size_t n, int64_t n_out, int64_t n_in)
{
    snprintf(dst, n, "%" PRId64 "x%" PRId64, n_out, n_in);
}

/* Ceiling 1: device-to-device copy of 2 GiB, bytes read + written / time, median of 20. */
static int run_ceiling_copy(bench *b)
{
    const size_t bytes = (size_t)2 << 30;
    devlist dl = {0};
    result r[2];
    int rc = -1;
    void *src, *dst;
    if (!(src = dev_alloc(&dl, bytes)) || !(dst = dev_alloc(&dl, bytes)) ||
        dev_fill(b, src, bytes, FILL_BF16, 1))
        goto done;
    for (int v = 0; v < 2; v++) {
        copy_ctx c = {b, dst, src, bytes, v == 1};
        double us = 0.0, us_min = 0.0;
        int reps = 0;
        if (graph_time(b, copy_enqueue, &c, b->quick ? 5 : 20, &us, &us_min, &reps))
            goto done;
        result_init(&r[v], "ceiling_copy", "2GiB", v ? "cublas_scopy" : "memcpy_d2d");
        r[v].us = us;
        r[v].us_min = us_min;
        r[v].gbs = 2.0 * (double)bytes / us / 1e3;
        r[v].reps = reps;
        r[v].calls = 1;
        snprintf(r[v].note, sizeof r[v].note, "bytes read + written");
        if (r[v].gbs > b->copy_gbs)
            b->copy_gbs = r[v].gbs;
    }
    for (int v = 0; v < 2; v++) {
        result_pct(b, &r[v]);
        result_emit(b, &r[v]);
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* Ceiling 2: cuBLAS bf16 GEMM 8192^3, f32 accumulation, median of 10 after warm-up. */
static int run_ceiling_gemm(bench *b)
{
    const int64_t n = 8192;
    const size_t bytes = (size_t)(n * n * 2);
    devlist dl = {0};
    result r;
    int rc = -1, reps = 0;
    double us = 0.0, us_min = 0.0;
    void *a, *bm, *cm;
    if (!(a = dev_alloc(&dl, bytes)) || !(bm = dev_alloc(&dl, bytes)) ||
        !(cm = dev_alloc(&dl, bytes)) || dev_fill(b, a, bytes, FILL_BF16, 2) ||
        dev_fill(b, bm, bytes, FILL_BF16, 3))
        goto done;
    void *const w[1] = {a};
    blas_ctx c = {b, w, 1, 1, (int)n, n, n, bm, cm};
    if (graph_time(b, blas_enqueue, &c, b->quick ? 3 : 10, &us, &us_min, &reps))
        goto done;
    result_init(&r, "ceiling_gemm_cublas", "8192x8192x8192", "bf16");
    r.m = (int)n;
    r.us = us;
    r.us_min = us_min;
    r.tflops = 2.0 * (double)n * (double)n * (double)n / us / 1e6;
    r.reps = reps;
    r.calls = 1;
    snprintf(r.note, sizeof r.note, "cublasGemmEx, CUBLAS_COMPUTE_32F, bf16 out");
    b->gemm_tflops = r.tflops;
    result_pct(b, &r);
    result_emit(b, &r);
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* Ceiling 3: cuBLAS bf16 products at the Phi-4 decode shapes, M = 1 and 8, over weight copies
 * that exceed 4x L2; rate = weight bytes / time. */
static int run_cublas_gemv(bench *b)
{
    int rc = -1;
    devlist dl = {0};
    for (int si = 0; si < 3; si++) {
        const mat_shape *sh = &PHI4_DECODE[si];
        const double wb = (double)weight_bytes(KERN_W_BF16, sh->n_out, sh->n_in);
        const int n_copies = copies_for(b, wb, 2);
        void *w[MAX_COPIES], *x, *y;
        for (int i = 0; i < n_copies; i++)
            if (!(w[i] = dev_alloc(&dl, (size_t)wb)) ||
                dev_fill(b, w[i], (size_t)wb, FILL_BF16, 100 + (uint64_t)i))
                goto done;
        if (!(x = dev_alloc(&dl, (size_t)(16 * sh->n_in * 2))) ||
            !(y = dev_alloc(&dl, (size_t)(16 * sh->n_out * 2))) ||
            dev_fill(b, x, (size_t)(16 * sh->n_in * 2), FILL_BF16, 5))
            goto done;
        for (int mi = 0; mi < 2; mi++) {
            blas_ctx c = {b, w, n_copies, calls_for(n_copies, wb), GEMV_M[mi], sh->n_out,
                          sh->n_in, x, y};
            double us = 0.0, us_min = 0.0;
            int reps = 0;
            result r;
            char shape[64];
            if (graph_time(b, blas_enqueue, &c, reps_default(b), &us, &us_min, &reps))
                goto done;
            shape_str(shape, sizeof shape, sh->n_out, sh->n_in);
            result_init(&r, "ceiling_gemv_cublas_bf16", shape, "bf16");
            r.m = GEMV_M[mi];
            r.us = us / c.n_calls;
            r.us_min = us_min / c.n_calls;
            r.gbs = wb / r.us / 1e3;
            r.reps = reps;
            r.calls = c.n_calls;
            snprintf(r.note, sizeof r.note, "phi4 %s, %d weight copies", sh->what, n_copies);
            result_pct(b, &r);
            result_emit(b, &r);
            b->cublas_gemv_us[si][mi] = r.us;
        }
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* cuBLAS time of the same Phi-4 decode product, or -1 when not measured. */
static double cublas_gemv_ref(const bench *b, int si, int m)
{
    for (int mi = 0; mi < 2; mi++)
        if (GEMV_M[mi] == m && b->cublas_gemv_us[si][mi] > 0.0)
            return b->cublas_gemv_us[si][mi];
    return -1.0;
}

/* Our matmul at the Phi-4 decode shapes, M = 1..16, format f; rate on quantized bytes +
 * scales. */
static int run_matmul_decode(bench *b, const fmt_spec *f, const char *name)
{
    int rc = -1;
    devlist dl = {0};
    for (int si = 0; si < 3; si++) {
        const mat_shape *sh = &PHI4_DECODE[si];
        const double wb = (double)weight_bytes(f->fmt, sh->n_out, sh->n_in);
        const int n_copies = copies_for(b, wb, 2);
        kern_weight w[MAX_COPIES];
        float *x, *y;
        for (int i = 0; i < n_copies; i++)
            if (weight_make(b, &dl, f->fmt, sh->n_out, sh->n_in, 200 + (uint64_t)i, &w[i]))
                goto done;
        if (!(x = dev_alloc(&dl, (size_t)(16 * sh->n_in) * sizeof(float))) ||
            !(y = dev_alloc(&dl, (size_t)(16 * sh->n_out) * sizeof(float))) ||
            dev_fill(b, x, (size_t)(16 * sh->n_in) * sizeof(float), FILL_F32, 6))
            goto done;
        for (int mi = 0; mi < 5; mi++) {
            mm_ctx c = {w, n_copies, 1, calls_for(n_copies, wb), DECODE_M[mi], x, y};
            double us = 0.0, us_min = 0.0, ref;
            int reps = 0;
            result r;
            char shape[64];
            if (graph_time(b, mm_enqueue, &c, reps_default(b), &us, &us_min, &reps))
                goto done;
            shape_str(shape, sizeof shape, sh->n_out, sh->n_in);
            result_init(&r, name, shape, f->name);
            r.m = DECODE_M[mi];
            r.us = us / c.n_calls;
            r.us_min = us_min / c.n_calls;
            r.gbs = wb / r.us / 1e3;
            r.reps = reps;
            r.calls = c.n_calls;
            if (f->fmt == KERN_W_BF16 && (ref = cublas_gemv_ref(b, si, r.m)) > 0.0)
                r.vs_cublas = ref / r.us;
            snprintf(r.note, sizeof r.note, "phi4 %s, f32 x, %d weight copies", sh->what,
                     n_copies);
            result_pct(b, &r);
            result_emit(b, &r);
        }
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* A whole Phi-4 layer's products at M = 1 (qkv, o, gate_up, down) in one graph, format f. */
static int run_layer(bench *b, const fmt_spec *f, const char *name)
{
    int rc = -1, reps = 0;
    devlist dl = {0};
    double lb = 0.0, us = 0.0, us_min = 0.0;
    kern_weight w[MAX_COPIES * 4];
    float *x, *y;
    result r;
    for (int j = 0; j < 4; j++)
        lb += (double)weight_bytes(f->fmt, PHI4_LAYER[j].n_out, PHI4_LAYER[j].n_in);
    const int n_copies = copies_for(b, lb, 2);
    for (int i = 0; i < n_copies; i++)
        for (int j = 0; j < 4; j++)
            if (weight_make(b, &dl, f->fmt, PHI4_LAYER[j].n_out, PHI4_LAYER[j].n_in,
                            300 + (uint64_t)(4 * i + j), &w[4 * i + j]))
                goto done;
    /* x: [1][17920] f32 (the widest n_in); y: [1][35840] f32 (the widest n_out) */
    if (!(x = dev_alloc(&dl, 17920 * sizeof(float))) ||
        !(y = dev_alloc(&dl, 35840 * sizeof(float))) ||
        dev_fill(b, x, 17920 * sizeof(float), FILL_F32, 7))
        goto done;
    mm_ctx c = {w, n_copies, 4, calls_for(n_copies, lb), 1, x, y};
    if (graph_time(b, mm_enqueue, &c, reps_default(b), &us, &us_min, &reps))
        goto done;
    result_init(&r, name, "qkv+o+gate_up+down", f->name);
    r.m = 1;
    r.us = us / c.n_calls;
    r.us_min = us_min / c.n_calls;
    r.gbs = lb / r.us / 1e3;
    r.reps = reps;
    r.calls = c.n_calls;
    snprintf(r.note, sizeof r.note, "%.1f MB per layer, %d layer copies", lb / 1e6, n_copies);
    result_pct(b, &r);
    result_emit(b, &r);
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* Picks n_expert_used distinct experts per token (uniform, fixed seed) and routing weights
 * that sum to 1; marks used[]. Returns the number of distinct experts. */
static int moe_route_host(const moe_model *mm, int n_tokens, uint64_t *st, int32_t *idx,
                          float *wt, bool *used)
{
    int distinct = 0;
    memset(used, 0, (size_t)mm->n_expert * sizeof *used);
    for (int t = 0; t < n_tokens; t++) {
        float sum = 0.0f;
        for (int i = 0; i < mm->n_expert_used; i++) {
            int e, dup;
            do {
                e = (int)(rng_next(st) % (uint64_t)mm->n_expert);
                dup = 0;
                for (int j = 0; j < i; j++)
                    dup |= idx[t * mm->n_expert_used + j] == e;
            } while (dup);
            idx[t * mm->n_expert_used + i] = e;
            wt[t * mm->n_expert_used + i] = 0.5f + unit_f32((uint32_t)rng_next(st));
            sum += wt[t * mm->n_expert_used + i];
            if (!used[e]) {
                used[e] = true;
                distinct++;
            }
        }
        for (int i = 0; i < mm->n_expert_used; i++)
            wt[t * mm->n_expert_used + i] /= sum;
    }
    return distinct;
}

/* MoE expert work through kern_moe_experts at batch 1 and 8 tokens, format f. Each weight set
 * is one routing: the experts it uses get their own gate/up/down weights; the descriptors of
 * the unused experts repeat the set's first used expert (valid memory, never read), so a
 * 384-expert model costs only the experts the routing reads. Sets are added until they exceed
 * 4x L2. Rate = bytes of the distinct experts used x 3 matrices / time. */
static int run_moe(bench *b, const moe_model *mm, const fmt_spec *f, const char *name)
{
    int rc = -1;
    devlist dl = {0};
    const int E = mm->n_expert, K = mm->n_expert_used;
    const double eb = (double)weight_bytes(f->fmt, mm->d_ff_expert, mm->d_model) * 2.0 +
                      (double)weight_bytes(f->fmt, mm->d_model, mm->d_ff_expert);
    kern_weight *hg = calloc((size_t)E, sizeof *hg), *hu = calloc((size_t)E, sizeof *hu),
                *hd = calloc((size_t)E, sizeof *hd);
    bool *used = calloc((size_t)E, sizeof *used);
    int32_t *idx = calloc((size_t)(MOE_MAX_TOKENS * K), sizeof *idx);
    float *wt = calloc((size_t)(MOE_MAX_TOKENS * K), sizeof *wt);
    uint64_t st = 424242u;
    if (!hg || !hu || !hd || !used || !idx || !wt) {
        fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
        goto done;
    }
    for (int ti = 0; ti < 2; ti++) {
        const int T = MOE_TOKENS[ti];
        kern_moe_args args[MOE_MAX_SETS];
        double set_bytes[MOE_MAX_SETS], total = 0.0, us = 0.0, us_min = 0.0, distinct_sum = 0.0;
        int n_sets = 0, reps = 0;
        float *x, *out;
        void *ws = NULL;
        size_t ws_bytes;
        result r;
        char shape[64];
        if (!(x = dev_alloc(&dl, (size_t)T * (size_t)mm->d_model * sizeof(float))) ||
            !(out = dev_alloc(&dl, (size_t)T * (size_t)mm->d_model * sizeof(float))) ||
            dev_fill(b, x, (size_t)T * (size_t)mm->d_model * sizeof(float), FILL_F32, 8))
            goto done;
        while (n_sets == 0 || (total <= 4.0 * b->l2_bytes && n_sets < MOE_MAX_SETS)) {
            const int s = n_sets;
            const int distinct = moe_route_host(mm, T, &st, idx, wt, used);
            int first = -1;
            kern_weight *dg, *du, *dd;
            int32_t *didx;
            float *dwt;
            for (int e = 0; e < E; e++) {
                if (!used[e])
                    continue;
                uint64_t seed = 1000 + 3 * (uint64_t)(s * E + e);
                if (weight_make(b, &dl, f->fmt, mm->d_ff_expert, mm->d_model, seed, &hg[e]) ||
                    weight_make(b, &dl, f->fmt, mm->d_ff_expert, mm->d_model, seed + 1, &hu[e]) ||
                    weight_make(b, &dl, f->fmt, mm->d_model, mm->d_ff_expert, seed + 2, &hd[e]))
                    goto done;
                if (first < 0)
                    first = e;
            }
            for (int e = 0; e < E; e++)
                if (!used[e]) {
                    hg[e] = hg[first];
                    hu[e] = hu[first];
                    hd[e] = hd[first];
                }
            if (!(dg = dev_alloc(&dl, (size_t)E * sizeof *dg)) ||
                !(du = dev_alloc(&dl, (size_t)E * sizeof *du)) ||
                !(dd = dev_alloc(&dl, (size_t)E * sizeof *dd)) ||
                !(didx = dev_alloc(&dl, (size_t)(T * K) * sizeof *didx)) ||
                !(dwt = dev_alloc(&dl, (size_t)(T * K) * sizeof *dwt)))
                goto done;
            CK(cudaMemcpy(dg, hg, (size_t)E * sizeof *dg, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(du, hu, (size_t)E * sizeof *du, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dd, hd, (size_t)E * sizeof *dd, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(didx, idx, (size_t)(T * K) * sizeof *didx, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dwt, wt, (size_t)(T * K) * sizeof *dwt, cudaMemcpyHostToDevice));
            memset(&args[s], 0, sizeof args[s]);
            args[s].n_tokens = T;
            args[s].d_model = mm->d_model;
            args[s].d_ff_expert = mm->d_ff_expert;
            args[s].n_expert = E;
            args[s].n_expert_used = K;
            args[s].x = x;
            args[s].gate = dg;
            args[s].up = du;
            args[s].down = dd;
            args[s].idx = didx;
            args[s].weight = dwt;
            args[s].out = out;
            set_bytes[s] = distinct * eb;
            total += set_bytes[s];
            distinct_sum += distinct;
            n_sets++;
        }
        ws_bytes = kern_moe_workspace_bytes(&args[0]);
        if (ws_bytes && !(ws = dev_alloc(&dl, ws_bytes)))
            goto done;
        moe_ctx c = {args, n_sets, calls_for(n_sets, total / n_sets), ws};
        if (graph_time(b, moe_enqueue, &c, reps_default(b), &us, &us_min, &reps))
            goto done;
        double graph_bytes = 0.0;
        for (int i = 0; i < c.n_calls; i++)
            graph_bytes += set_bytes[i % n_sets];
        snprintf(shape, sizeof shape, "E%d/%d %dx%d", E, K, mm->d_model, mm->d_ff_expert);
        result_init(&r, name, shape, f->name);
        r.batch = T;
        r.us = us / c.n_calls;
        r.us_min = us_min / c.n_calls;
        r.gbs = graph_bytes / us / 1e3;
        r.reps = reps;
        r.calls = c.n_calls;
        snprintf(r.note, sizeof r.note, "%.1f distinct experts per call, %.1f MB per call, %d sets",
                 distinct_sum / n_sets, graph_bytes / c.n_calls / 1e6, n_sets);
        result_pct(b, &r);
        result_emit(b, &r);
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    free(hg);
    free(hu);
    free(hd);
    free(used);
    free(idx);
    free(wt);
    return rc;
}

/* ---- paged KV caches ----------------------------------------------------------------------- */

/* Uploads a block table [n_seq][max_blocks] over a pool of n_seq * max_blocks blocks: block ids
 * in a random order (shuffle, fixed seed: so a sequence's blocks are neither adjacent nor in
 * order, and its reads are not one contiguous stream) or the identity. Returns the device table
 * or NULL (reported). */
static int32_t *block_table_make(devlist *dl, int n_seq, int max_blocks, bool shuffle,
                                 uint64_t seed)
{
    const size_t n = (size_t)n_seq * (size_t)max_blocks;
    int32_t *h = malloc(n * sizeof *h), *d = NULL;
    cudaError_t e;
    if (!h) {
        fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        h[i] = (int32_t)i;
    for (size_t i = n; shuffle && i > 1; i--) { /* Fisher-Yates */
        size_t j = (size_t)(rng_next(&seed) % i);
        int32_t t = h[i - 1];
        h[i - 1] = h[j];
        h[j] = t;
    }
    if ((d = dev_alloc(dl, n * sizeof *d)) &&
        (e = cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice)) != cudaSuccess) {
        report_cuda("cudaMemcpy(block table)", e, __LINE__);
        d = NULL;
    }
    free(h);
    return d;
}

/* Uploads the batch arrays of n_seq sequences of n_tok tokens each, all at position pos0:
 * seq_start = {0, n_tok, 2 n_tok, ...} [n_seq + 1] and seq_pos0 [n_seq]. Their prefixes serve
 * any smaller batch of the same sequences. Returns 0 or -1 (reported). */
/* The batch of n_seq sequences of n_tok tokens each, all at context ctx (seqs_make's arrays),
 * sequence s reading row s of table (max_blocks ids apart). */
static kern_kv_batch kv_batch_uniform(int n_seq, int n_tok, int ctx, int block_size, int max_blocks,
                                      const int32_t *seq_start, const int32_t *seq_pos0, const int32_t *table)
{
    kern_kv_batch kb = {
        .n_seq = n_seq, .n_tokens = n_seq * n_tok, .max_seq_tokens = n_tok, .max_ctx = ctx,
        .block_size = block_size, .max_blocks = max_blocks,
        .seq_start = seq_start, .seq_pos0 = seq_pos0, .block_table = table,
    };
    return kb;
}

static int seqs_make(devlist *dl, int n_seq, int n_tok, int pos0, int32_t **seq_start,
                     int32_t **seq_pos0)
{
    int rc = -1;
    int32_t *h = malloc((size_t)(2 * n_seq + 1) * sizeof *h);
    if (!h) {
        fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
        return -1;
    }
    for (int s = 0; s <= n_seq; s++)
        h[s] = s * n_tok;
    for (int s = 0; s < n_seq; s++)
        h[n_seq + 1 + s] = pos0;
    if (!(*seq_start = dev_alloc(dl, (size_t)(n_seq + 1) * sizeof *h)) ||
        !(*seq_pos0 = dev_alloc(dl, (size_t)n_seq * sizeof *h)))
        goto done;
    CK(cudaMemcpy(*seq_start, h, (size_t)(n_seq + 1) * sizeof *h, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(*seq_pos0, h + n_seq + 1, (size_t)n_seq * sizeof *h, cudaMemcpyHostToDevice));
    rc = 0;
done:
    free(h);
    return rc;
}

/* Sequences of a decode cache pool: enough that their KV (kv_bytes each) exceeds 4x L2 and at
 * least DECODE_MAX_BATCH, in whole batches; MAX_COPIES is a multiple of DECODE_MAX_BATCH. */
static int decode_n_seqs(const bench *b, double kv_bytes)
{
    int n = copies_for(b, kv_bytes, DECODE_MAX_BATCH);
    n = (n + DECODE_MAX_BATCH - 1) / DECODE_MAX_BATCH * DECODE_MAX_BATCH;
    return n > MAX_COPIES ? MAX_COPIES : n;
}

/* Decode attention (one new token per sequence, paged KV cache of f32 or bf16 elements: kv) at
 * contexts 4k..32k, batch 1 and 16 (16 sequences at the same context in one call). One pool
 * holds n_seqs sequences' blocks (ATTN_BLOCK positions each, shuffled table); a batch-B call
 * reads B of them, and the calls of a graph cycle over all n_seqs, which exceed 4x L2. Rate = KV
 * bytes read (K and V of every sequence of the batch, 4 or 2 bytes an element) / time. */
static int run_attn_decode(bench *b, const attn_cfg *cfg, kern_dtype kv, const char *name)
{
    int rc = -1;
    devlist dl = {0};
    kern_attn_args *args = calloc(MAX_COPIES, sizeof *args);
    const int d = cfg->d_head;
    const int64_t kv_w = (int64_t)cfg->n_head_kv * d; /* elements per cache row of K (and of V) */
    const size_t es = kv == KERN_DT_BF16 ? 2 : sizeof(float); /* bytes per cache element */
    const int64_t q_w = (int64_t)cfg->n_head * d;
    if (!args) {
        fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
        goto done;
    }
    for (int ci = 0; ci < 4; ci++) {
        const int ctx = DECODE_CTX[ci];
        const int max_blocks = (ctx + ATTN_BLOCK - 1) / ATTN_BLOCK;
        const double kvb = 2.0 * (double)ctx * (double)kv_w * (double)es; /* per sequence */
        const int n_seqs = decode_n_seqs(b, kvb);
        const size_t pool_b = (size_t)n_seqs * (size_t)max_blocks * ATTN_BLOCK * (size_t)kv_w * es;
        const size_t qo_b = (size_t)DECODE_MAX_BATCH * (size_t)q_w * sizeof(float);
        const int fill = kv == KERN_DT_BF16 ? FILL_BF16 : FILL_F32;
        void *k, *v;
        float *q, *out;
        int32_t *table, *seq_start, *seq_pos0;
        if (!(k = dev_alloc(&dl, pool_b)) || !(v = dev_alloc(&dl, pool_b)) ||
            !(q = dev_alloc(&dl, qo_b)) || !(out = dev_alloc(&dl, qo_b)) ||
            dev_fill(b, k, pool_b, fill, 500) || dev_fill(b, v, pool_b, fill, 501) ||
            dev_fill(b, q, qo_b, FILL_F32, 9) ||
            !(table = block_table_make(&dl, n_seqs, max_blocks, true, 502 + (uint64_t)ci)) ||
            seqs_make(&dl, DECODE_MAX_BATCH, 1, ctx - 1, &seq_start, &seq_pos0))
            goto done;
        for (int bi = 0; bi < 2; bi++) {
            const int batch = DECODE_BATCH[bi], n_copies = n_seqs / batch;
            void *ws = NULL;
            size_t ws_bytes;
            double us = 0.0, us_min = 0.0;
            int reps = 0;
            result r;
            char shape[64];
            for (int i = 0; i < n_copies; i++) {
                kern_attn_args *a = &args[i];
                memset(a, 0, sizeof *a);
                a->batch = kv_batch_uniform(batch, 1, ctx, ATTN_BLOCK, max_blocks, seq_start, seq_pos0,
                                            table + (size_t)i * batch * max_blocks);
                a->n_head = cfg->n_head;
                a->n_head_kv = cfg->n_head_kv;
                a->d_qk = a->d_v = d;
                a->scale = 1.0f / sqrtf((float)d);
                a->q = q;
                a->q_stride = q_w;
                a->kv_dtype = kv;
                a->k = k;
                a->k_stride = kv_w;
                a->v = v;
                a->v_stride = kv_w;
                a->out = out;
                a->out_stride = q_w;
            }
            ws_bytes = kern_attention_workspace_bytes(&args[0]);
            if (ws_bytes && !(ws = dev_alloc(&dl, ws_bytes)))
                goto done;
            attn_ctx c = {args, n_copies, calls_for(n_copies, batch * kvb), ws};
            if (graph_time(b, attn_enqueue, &c, reps_default(b), &us, &us_min, &reps))
                goto done;
            snprintf(shape, sizeof shape, "%d/%d heads x %d", cfg->n_head, cfg->n_head_kv, d);
            result_init(&r, name, shape, kv == KERN_DT_BF16 ? "bf16_kv" : "f32_kv");
            r.batch = batch;
            r.context = ctx;
            r.us = us / c.n_calls;
            r.us_min = us_min / c.n_calls;
            r.gbs = batch * kvb / r.us / 1e3;
            r.reps = reps;
            r.calls = c.n_calls;
            snprintf(r.note, sizeof r.note,
                     "%.1f MB KV per sequence, %d sequences, paged (block %d, shuffled)",
                     kvb / 1e6, n_seqs, ATTN_BLOCK);
            result_pct(b, &r);
            result_emit(b, &r);
        }
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    free(args);
    return rc;
}

/* MLA decode (Kimi K2 absorbed form), kv_b in format f, latent cache elements kv (f32 or
 * bf16), contexts 4k and 32k, batch 1 and 16 (one new token per sequence). One latent pool (ckv
 * and kpe rows, MLA_BLOCK positions per block, shuffled table) holds n_seqs sequences, which
 * exceed 4x L2; call i reads the latents of its batch of sequences and kv_b copy i (one per
 * sequence of the pool). Rate = latent bytes of the batch (4 or 2 bytes an element) / time (the
 * note adds kv_b). */
static int run_mla(bench *b, const fmt_spec *f, kern_dtype kv, const char *name)
{
    int rc = -1;
    devlist dl = {0};
    kern_mla_args args[MAX_COPIES];
    kern_weight kvb[MAX_COPIES];
    const int64_t kvb_out = (int64_t)MLA_HEADS * (MLA_NOPE + MLA_DV);
    const double wb = (double)weight_bytes(f->fmt, kvb_out, MLA_RANK);
    const int64_t q_w = (int64_t)MLA_HEADS * (MLA_NOPE + MLA_ROPE);
    const size_t es = kv == KERN_DT_BF16 ? 2 : sizeof(float); /* bytes per latent element */
    const int fill = kv == KERN_DT_BF16 ? FILL_BF16 : FILL_F32;
    for (int ci = 0; ci < 2; ci++) {
        const int ctx = MLA_CTX[ci];
        const int max_blocks = (ctx + MLA_BLOCK - 1) / MLA_BLOCK;
        const double lat = (double)ctx * (MLA_RANK + MLA_ROPE) * (double)es; /* per sequence */
        const int n_seqs = decode_n_seqs(b, lat + wb);
        const size_t rows = (size_t)n_seqs * (size_t)max_blocks * MLA_BLOCK;
        const size_t ckv_b = rows * MLA_RANK * es;
        const size_t kpe_b = rows * MLA_ROPE * es;
        const size_t q_b = (size_t)DECODE_MAX_BATCH * (size_t)q_w * sizeof(float);
        const size_t out_b = (size_t)DECODE_MAX_BATCH * MLA_HEADS * MLA_DV * sizeof(float);
        void *ckv, *kpe;
        float *q, *out;
        int32_t *table, *seq_start, *seq_pos0;
        if (!(ckv = dev_alloc(&dl, ckv_b)) || !(kpe = dev_alloc(&dl, kpe_b)) ||
            !(q = dev_alloc(&dl, q_b)) || !(out = dev_alloc(&dl, out_b)) ||
            dev_fill(b, ckv, ckv_b, fill, 600) || dev_fill(b, kpe, kpe_b, fill, 601) ||
            dev_fill(b, q, q_b, FILL_F32, 10) ||
            !(table = block_table_make(&dl, n_seqs, max_blocks, true, 603 + (uint64_t)ci)) ||
            seqs_make(&dl, DECODE_MAX_BATCH, 1, ctx - 1, &seq_start, &seq_pos0))
            goto done;
        for (int i = 0; i < n_seqs; i++)
            if (weight_make(b, &dl, f->fmt, kvb_out, MLA_RANK, 610 + (uint64_t)i, &kvb[i]))
                goto done;
        for (int bi = 0; bi < 2; bi++) {
            const int batch = DECODE_BATCH[bi], n_copies = n_seqs / batch;
            void *ws = NULL;
            size_t ws_bytes;
            double us = 0.0, us_min = 0.0;
            int reps = 0;
            result r;
            char shape[64];
            for (int i = 0; i < n_copies; i++) {
                kern_mla_args *a = &args[i];
                memset(a, 0, sizeof *a);
                a->batch = kv_batch_uniform(batch, 1, ctx, MLA_BLOCK, max_blocks, seq_start, seq_pos0,
                                            table + (size_t)i * batch * max_blocks);
                a->n_head = MLA_HEADS;
                a->d_nope = MLA_NOPE;
                a->d_rope = MLA_ROPE;
                a->d_v = MLA_DV;
                a->kv_lora_rank = MLA_RANK;
                a->scale = 1.0f / sqrtf((float)(MLA_NOPE + MLA_ROPE));
                a->q = q;
                a->q_stride = q_w;
                a->kv_dtype = kv;
                a->ckv = ckv;
                a->kpe = kpe;
                a->kv_b = &kvb[i];
                a->out = out;
            }
            ws_bytes = kern_mla_workspace_bytes(&args[0]);
            if (ws_bytes && !(ws = dev_alloc(&dl, ws_bytes)))
                goto done;
            mla_ctx c = {args, n_copies, calls_for(n_copies, batch * lat + wb), ws};
            if (graph_time(b, mla_enqueue, &c, reps_default(b), &us, &us_min, &reps))
                goto done;
            snprintf(shape, sizeof shape, "%d heads, rank %d + rope %d, nope %d, v %d",
                     MLA_HEADS, MLA_RANK, MLA_ROPE, MLA_NOPE, MLA_DV);
            result_init(&r, name, shape, f->name);
            r.batch = batch;
            r.context = ctx;
            r.us = us / c.n_calls;
            r.us_min = us_min / c.n_calls;
            r.gbs = batch * lat / r.us / 1e3;
            r.reps = reps;
            r.calls = c.n_calls;
            snprintf(r.note, sizeof r.note,
                     "%s latent %.1f MB x %d + kv_b %.1f MB: %.0f GB/s on both, %d sequences, "
                     "paged (block %d, shuffled)",
                     kv == KERN_DT_BF16 ? "bf16" : "f32", lat / 1e6, batch, wb / 1e6,
                     (batch * lat + wb) / r.us / 1e3, n_seqs, MLA_BLOCK);
            result_pct(b, &r);
            result_emit(b, &r);
        }
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* Prefill attention: one sequence, causal, pos0 0, n_tokens 2048 and 4096, 32/4 heads, d 128
 * (Qwen3-Coder), its K/V already in a paged cache (ATTN_BLOCK positions per block, identity
 * table); FLOPs = 4 * n_tokens^2 / 2 * d * n_head (QK^T and PV, half of them under the mask).
 * tc: kern_attention_tc (the bf16 mode's prefill attention: bf16 cache, tensor cores) instead of
 * kern_attention over an f32 cache. */
static int run_attn_prefill(bench *b, bool tc, const char *name)
{
    const size_t kv_elem = tc ? 2 : sizeof(float);
    int rc = -1;
    devlist dl = {0};
    const attn_cfg *cfg = &ATTN_CFGS[1];
    const int d = cfg->d_head;
    for (int ni = 0; ni < 2; ni++) {
        const int n = PREFILL_TOKENS[ni];
        const int max_blocks = (n + ATTN_BLOCK - 1) / ATTN_BLOCK;
        const size_t q_b = (size_t)n * (size_t)(cfg->n_head * d) * sizeof(float);
        const size_t kv_b = (size_t)max_blocks * ATTN_BLOCK * (size_t)(cfg->n_head_kv * d) * kv_elem;
        float *q, *k, *v, *out;
        int32_t *table, *seq_start, *seq_pos0;
        void *ws = NULL;
        size_t ws_bytes;
        kern_attn_args a;
        double us = 0.0, us_min = 0.0, flops;
        int reps = 0;
        result r;
        char shape[64];
        if (!(q = dev_alloc(&dl, q_b)) || !(k = dev_alloc(&dl, kv_b)) ||
            !(v = dev_alloc(&dl, kv_b)) || !(out = dev_alloc(&dl, q_b)) ||
            dev_fill(b, q, q_b, FILL_F32, 11) || dev_fill(b, k, kv_b, tc ? FILL_BF16 : FILL_F32, 12) ||
            dev_fill(b, v, kv_b, tc ? FILL_BF16 : FILL_F32, 13) ||
            !(table = block_table_make(&dl, 1, max_blocks, false, 0)) ||
            seqs_make(&dl, 1, n, 0, &seq_start, &seq_pos0))
            goto done;
        memset(&a, 0, sizeof a);
        a.batch = kv_batch_uniform(1, n, n, ATTN_BLOCK, max_blocks, seq_start, seq_pos0, table);
        a.n_head = cfg->n_head;
        a.n_head_kv = cfg->n_head_kv;
        a.d_qk = a.d_v = d;
        a.scale = 1.0f / sqrtf((float)d);
        a.q = q;
        a.q_stride = (int64_t)cfg->n_head * d;
        a.kv_dtype = tc ? KERN_DT_BF16 : KERN_DT_F32;
        a.k = k;
        a.k_stride = (int64_t)cfg->n_head_kv * d;
        a.v = v;
        a.v_stride = (int64_t)cfg->n_head_kv * d;
        a.out = out;
        a.out_stride = (int64_t)cfg->n_head * d;
        ws_bytes = tc ? 0 : kern_attention_workspace_bytes(&a);
        if (ws_bytes && !(ws = dev_alloc(&dl, ws_bytes)))
            goto done;
        attn_ctx c = {&a, 1, 1, ws};
        if (graph_time(b, tc ? attn_tc_enqueue : attn_enqueue, &c, b->quick ? 3 : 10, &us, &us_min, &reps))
            goto done;
        flops = 4.0 * (double)n * (double)n / 2.0 * d * cfg->n_head;
        snprintf(shape, sizeof shape, "%d/%d heads x %d, causal", cfg->n_head, cfg->n_head_kv, d);
        result_init(&r, name, shape, tc ? "bf16_tc" : "f32");
        r.m = n;
        r.batch = 1;
        r.context = n;
        r.us = us;
        r.us_min = us_min;
        r.tflops = flops / us / 1e6;
        r.reps = reps;
        r.calls = 1;
        snprintf(r.note, sizeof r.note, "qwen3_coder shape, %.1f GFLOP, paged (block %d)",
                 flops / 1e9, ATTN_BLOCK);
        result_pct(b, &r);
        result_emit(b, &r);
        if (devlist_free(&dl))
            goto done;
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* A prefill product's row (name, format): M = PREFILL_M[mi] rows times sh, graph-timed (us,
 * us_min over reps replays of one call), its TFLOP/s, and with vs_cublas the ratio to the same
 * run's cuBLAS time for that M (when measured). */
static void result_prefill(const bench *b, result *r, const char *name, const char *format, const mat_shape *sh,
                           int mi, double us, double us_min, int reps, bool vs_cublas)
{
    char shape[64];
    shape_str(shape, sizeof shape, sh->n_out, sh->n_in);
    result_init(r, name, shape, format);
    r->m = PREFILL_M[mi];
    r->us = us;
    r->us_min = us_min;
    r->tflops = 2.0 * r->m * (double)sh->n_out * (double)sh->n_in / us / 1e6;
    r->reps = reps;
    r->calls = 1;
    if (vs_cublas && b->cublas_prefill_us[mi] > 0.0)
        r->vs_cublas = b->cublas_prefill_us[mi] / us;
}

/* Prefill products at 7680x5120 (Phi-4 qkv), M = 512 and 2048: cuBLAS bf16 (cublas = true) or
 * kern_matmul with bf16 weights and f32 activations; TFLOP/s against the GEMM ceiling. */
static int run_matmul_prefill(bench *b, bool cublas, const char *name)
{
    const mat_shape *sh = &PHI4_DECODE[0];
    const int m_max = PREFILL_M[1];
    const size_t x_elems = (size_t)m_max * (size_t)sh->n_in;
    const size_t y_elems = (size_t)m_max * (size_t)sh->n_out;
    const size_t act = cublas ? 2 : sizeof(float);
    int rc = -1;
    devlist dl = {0};
    kern_weight w;
    void *x, *y;
    if (weight_make(b, &dl, KERN_W_BF16, sh->n_out, sh->n_in, 700, &w) ||
        !(x = dev_alloc(&dl, x_elems * act)) || !(y = dev_alloc(&dl, y_elems * act)) ||
        dev_fill(b, x, x_elems * act, cublas ? FILL_BF16 : FILL_F32, 14))
        goto done;
    for (int mi = 0; mi < 2; mi++) {
        const int m = PREFILL_M[mi];
        double us = 0.0, us_min = 0.0;
        int reps = 0;
        result r;
        void *const wd[1] = {(void *)w.data};
        blas_ctx bc = {b, wd, 1, 1, m, sh->n_out, sh->n_in, x, y};
        mm_ctx mc = {&w, 1, 1, 1, m, x, y};
        if (graph_time(b, cublas ? blas_enqueue : mm_enqueue, cublas ? (void *)&bc : (void *)&mc,
                       b->quick ? 3 : 10, &us, &us_min, &reps))
            goto done;
        result_prefill(b, &r, name, "bf16", sh, mi, us, us_min, reps, !cublas);
        if (cublas)
            b->cublas_prefill_us[mi] = us;
        snprintf(r.note, sizeof r.note, cublas ? "phi4 qkv, cublasGemmEx bf16 x and out" : "phi4 qkv, f32 x and out");
        result_pct(b, &r);
        result_emit(b, &r);
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* kern_matmul_tc over one weight: the bf16 x (already packed) times W, f32 out. */
typedef struct tc_ctx {
    const kern_weight *w;
    int m;
    const uint16_t *xb; /* [m][n_in] bf16, device */
    float *y;           /* [m][n_out] f32, device */
} tc_ctx;

static int tc_enqueue(void *p, cudaStream_t s)
{
    tc_ctx *c = p;
    int rc = -1;
    CK(kern_matmul_tc(c->xb, c->w->n_in, c->w, c->y, c->w->n_out, c->m, s));
    rc = 0;
done:
    return rc;
}

/* Our tensor-core prefill kernel (kern_matmul_tc, the bf16 mode's products over quantized
 * weights) at 7680x5120 (Phi-4 qkv), M = 512 and 2048, for every DECODE_FMTS format (BF16 too,
 * so it stands beside cuBLAS on the same weights); x packed to bf16 beforehand, f32 out;
 * TFLOP/s against the GEMM ceiling and vs_cublas = cuBLAS's raw bf16 GEMM time of the shape
 * (cublas_prefill_bf16) over ours. */
static int run_matmul_tc(bench *b, const char *name)
{
    const mat_shape *sh = &PHI4_DECODE[0];
    const int m_max = PREFILL_M[1];
    const size_t x_elems = (size_t)m_max * (size_t)sh->n_in;
    int rc = -1;
    devlist dl = {0};
    uint16_t *xb;
    float *y;
    if (!(xb = dev_alloc(&dl, x_elems * 2)) || dev_fill(b, xb, x_elems * 2, FILL_BF16, 15) ||
        !(y = dev_alloc(&dl, (size_t)m_max * (size_t)sh->n_out * sizeof(float))))
        goto done;
    for (int fi = 0; fi < N_DECODE_FMTS; fi++) {
        kern_weight w;
        if (weight_make(b, &dl, DECODE_FMTS[fi].fmt, sh->n_out, sh->n_in, 710 + (uint64_t)fi, &w))
            goto done;
        for (int mi = 0; mi < 2; mi++) {
            const int m = PREFILL_M[mi];
            double us = 0.0, us_min = 0.0;
            int reps = 0;
            result r;
            tc_ctx tc = {&w, m, xb, y};
            if (graph_time(b, tc_enqueue, &tc, b->quick ? 3 : 10, &us, &us_min, &reps))
                goto done;
            result_prefill(b, &r, name, DECODE_FMTS[fi].name, sh, mi, us, us_min, reps, true);
            snprintf(r.note, sizeof r.note, "phi4 qkv, kern_matmul_tc, bf16 x, f32 out");
            result_pct(b, &r);
            result_emit(b, &r);
        }
    }
    rc = 0;
done:
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* kern_f32_to_bf16 over copies of x: call i packs copy i % n_x into the one bf16 buffer. */
typedef struct pack_ctx {
    float *const *x; /* [n_x] copies of [m][n_in] f32, device */
    int n_x, n_calls, m;
    int64_t n_in;
    uint16_t *xb;    /* [m][n_in] bf16, device */
} pack_ctx;

static int pack_enqueue(void *p, cudaStream_t s)
{
    pack_ctx *c = p;
    int rc = -1;
    for (int i = 0; i < c->n_calls; i++)
        CK(kern_f32_to_bf16(c->x[i % c->n_x], c->n_in, c->xb, c->n_in, c->m, c->n_in, s));
    rc = 0;
done:
    return rc;
}

/* The CUDA backend's matmul_bf16 op (engine/backend.h: the bf16 mode's prefill products) at
 * 7680x5120 (Phi-4 qkv), M = 512 and 2048, called through the op table as the engine calls it:
 * kern_f32_to_bf16 packs the f32 x, then cublasGemmEx on the backend's handle, f32 out. Two rows
 * per M: the packing alone (graph-timed over copies of x that exceed 4x L2; GB/s of f32 read +
 * bf16 written, against the copy ceiling), then the whole op, whose vs_cublas is cuBLAS's raw bf16
 * GEMM of the same shape (cublas_prefill_bf16: bf16 x and out, so without the packing and with
 * half the output bytes) over it. The op runs on the backend's own stream, which a graph captured
 * on the bench stream cannot hold, so it is host-timed: OP_CALLS back-to-back calls (on the x
 * copies in turn) between two cudaDeviceSynchronize per replay, median over replays; the host
 * enqueues a call in far less than its GPU time (tens of us against >= 60 us), so the GPU does
 * not wait on it after the first. */
#define OP_CALLS 20
static int run_matmul_bf16_op(bench *b, const char *name)
{
    const mat_shape *sh = &PHI4_DECODE[0];
    const int m_max = PREFILL_M[1];
    const size_t x_bytes = (size_t)m_max * (size_t)sh->n_in * sizeof(float);
    const size_t w_words = (size_t)(sh->n_out * sh->n_in) / 2; /* bf16 pairs */
    const int n_x = copies_for(b, (double)PREFILL_M[0] * (double)sh->n_in * sizeof(float), 1);
    int rc = -1;
    devlist dl = {0};
    eng_backend *be = NULL;
    eng_err err = {{0}};
    uint32_t *wh = malloc(w_words * sizeof(uint32_t)); /* host bf16 weight, as a mapping holds it */
    float *x[MAX_COPIES];
    float *y;
    uint16_t *xb;
    uint64_t seed = 701;
    if (!wh) {
        fprintf(stderr, "bench_kernels: [%s] out of host memory\n", g_measure);
        goto done;
    }
    for (size_t i = 0; i < w_words; i++)
        wh[i] = fill_word(FILL_BF16, rng_next(&seed));
    const eng_weight w = {.fmt = ENG_WFMT_BF16, .n_out = sh->n_out, .n_in = sh->n_in, .data = wh};
    for (int i = 0; i < n_x; i++) {
        if (!(x[i] = dev_alloc(&dl, x_bytes)) || dev_fill(b, x[i], x_bytes, FILL_F32, 30 + (uint64_t)i))
            goto done;
        CK(kern_round_bf16(x[i], sh->n_in, m_max, sh->n_in, b->stream)); /* the op's promise */
    }
    if (!(y = dev_alloc(&dl, (size_t)m_max * (size_t)sh->n_out * sizeof(float))) ||
        !(xb = dev_alloc(&dl, x_bytes / 2)))
        goto done;
    if (eng_backend_cuda_create(0, NULL, &be, &err) != PP_STATUS_OK) {
        fprintf(stderr, "bench_kernels: [%s] eng_backend_cuda_create: %s\n", g_measure, err.msg);
        goto done;
    }
    for (int mi = 0; mi < 2; mi++) {
        const int m = PREFILL_M[mi];
        const double flops = 2.0 * m * (double)sh->n_out * (double)sh->n_in;
        const double pack_bytes = (double)m * (double)sh->n_in * 6.0;
        pack_ctx pc = {x, n_x, calls_for(n_x, pack_bytes), m, sh->n_in, xb};
        double us = 0.0, us_min = 0.0;
        int reps = 0;
        result r;
        char shape[64];
        shape_str(shape, sizeof shape, sh->n_out, sh->n_in);
        if (graph_time(b, pack_enqueue, &pc, reps_default(b), &us, &us_min, &reps))
            goto done;
        result_init(&r, name, shape, "f32_to_bf16");
        r.m = m;
        r.us = us / pc.n_calls;
        r.us_min = us_min / pc.n_calls;
        r.gbs = pack_bytes / r.us / 1e3;
        r.reps = reps;
        r.calls = pc.n_calls;
        snprintf(r.note, sizeof r.note, "kern_f32_to_bf16 of x alone (the op's packing), %d x copies", n_x);
        result_pct(b, &r);
        result_emit(b, &r);

        /* the op: warm-up calls (the first uploads the weight and creates the cuBLAS handle) */
        float t[MAX_REPS];
        reps = reps_default(b);
        for (int i = -3; i < reps; i++) {
            CK(cudaDeviceSynchronize());
            double t0 = bench_now_s();
            for (int c = 0; c < OP_CALLS; c++) {
                pp_status st = be->ops->matmul_bf16(be, x[c % n_x], sh->n_in, &w, y, sh->n_out, m);
                if (st != PP_STATUS_OK) {
                    fprintf(stderr, "bench_kernels: [%s] matmul_bf16 returned %s: %s\n", g_measure,
                            pp_status_str(st), be->ops->last_error(be));
                    goto done;
                }
            }
            CK(cudaDeviceSynchronize());
            if (i >= 0)
                t[i] = (float)((bench_now_s() - t0) * 1e6 / OP_CALLS);
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_float);
        result_init(&r, name, shape, "bf16");
        r.m = m;
        r.us = reps % 2 ? (double)t[reps / 2] : 0.5 * ((double)t[reps / 2 - 1] + t[reps / 2]);
        r.us_min = t[0];
        r.tflops = flops / r.us / 1e6;
        r.reps = reps;
        r.calls = OP_CALLS;
        if (b->cublas_prefill_us[mi] > 0.0) {
            r.vs_cublas = b->cublas_prefill_us[mi] / r.us;
            snprintf(r.note, sizeof r.note, "engine op: f32 x packed + cublasGemmEx, f32 out; host-timed; "
                     "cuBLAS raw %.1f TFLOP/s", flops / b->cublas_prefill_us[mi] / 1e6);
        } else {
            snprintf(r.note, sizeof r.note, "engine op: f32 x packed + cublasGemmEx, f32 out; host-timed");
        }
        result_pct(b, &r);
        result_emit(b, &r);
    }
    rc = 0;
done:
    eng_backend_destroy(be);
    free(wh);
    if (devlist_free(&dl))
        rc = -1;
    return rc;
}

/* ---- driver ------------------------------------------------------------------------------- */

/* Whether group `name` runs: it matches --only and the run is within its budget. */
static bool group_begin(bench *b, const char *name)
{
    if (b->only && !strstr(name, b->only))
        return false;
    if (bench_now_s() - b->t_start > b->budget_s) {
        fprintf(stderr, "bench_kernels: [%s] skipped: past the %.0f s budget\n", name,
                b->budget_s);
        b->n_skipped++;
        return false;
    }
    g_measure = name;
    fprintf(stderr, "bench_kernels: [%s] ...\n", name);
    return true;
}

/* Accounts a group's outcome. A failure that left the device in an error state (a fault in a
 * kernel) ends the run: every later call would fail too. Returns false when the run must end. */
static bool group_end(bench *b, const char *name, int rc, double t0)
{
    cudaError_t e;
    fprintf(stderr, "bench_kernels: [%s] %s in %.2f s\n", name, rc ? "FAILED" : "done",
            bench_now_s() - t0);
    g_measure = "driver";
    if (rc == 0)
        return true;
    b->n_failed++;
    if ((e = cudaDeviceSynchronize()) != cudaSuccess) {
        report_cuda("cudaDeviceSynchronize after the failure", e, __LINE__);
        return false;
    }
    (void)cudaGetLastError(); /* a non-sticky error (bad argument, out of memory) */
    return true;
}

static int bench_init(bench *b)
{
    int rc = -1, dev = 0;
    struct cudaDeviceProp prop;
    CK(cudaSetDevice(0));
    CK(cudaGetDevice(&dev));
    CK(cudaGetDeviceProperties(&prop, dev));
    CK(cudaDeviceGetAttribute(&b->l2_bytes, cudaDevAttrL2CacheSize, dev));
    if (b->l2_bytes <= 0)
        b->l2_bytes = 50 << 20; /* H100's 50 MiB, should the attribute read 0 */
    CK(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking));
    for (b->n_ev = 0; b->n_ev < 2 * MAX_REPS + 2; b->n_ev++)
        CK(cudaEventCreate(&b->ev[b->n_ev]));
    CKB(cublasCreate(&b->blas));
    CKB(cublasSetStream(b->blas, b->stream));
    CK(cudaMalloc(&b->blas_ws, BLAS_WS_BYTES));
    CKB(cublasSetWorkspace(b->blas, b->blas_ws, BLAS_WS_BYTES));
    if (pools_make(b))
        goto done;
    CK(cudaDeviceSynchronize());
    printf("{\"name\": \"device\", \"device\": \"%s\", \"cc\": \"%d.%d\", \"sm\": %d, "
           "\"l2_bytes\": %d, \"mem_gib\": %.1f, \"quick\": %s, \"only\": \"%s\"}\n",
           prop.name, prop.major, prop.minor, prop.multiProcessorCount, b->l2_bytes,
           (double)prop.totalGlobalMem / (double)(1u << 30), b->quick ? "true" : "false",
           b->only ? b->only : "");
    fflush(stdout);
    rc = 0;
done:
    return rc;
}

static void bench_free(bench *b)
{
    for (int k = 0; k < N_FILL; k++)
        if (b->pool[k])
            (void)cudaFree(b->pool[k]);
    if (b->blas)
        (void)cublasDestroy(b->blas);
    if (b->blas_ws)
        (void)cudaFree(b->blas_ws);
    for (int i = 0; i < b->n_ev; i++)
        (void)cudaEventDestroy(b->ev[i]);
    if (b->stream)
        (void)cudaStreamDestroy(b->stream);
    free(b->res);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_kernels [--quick] [--only SUBSTRING] [--budget SECONDS]\n"
                    "  --quick     fewer replays (smoke runs)\n"
                    "  --only S    run only the measurements whose name contains S (the copy and\n"
                    "              GEMM ceilings always run)\n"
                    "  --budget S  skip the groups that would start after S seconds\n"
                    "              (default 170)\n");
}

int main(int argc, char **argv)
{
    bench b;
    int n_dev = 0;
    cudaError_t e;
    char name[64]; /* as result.name */
    double t0;
    bool alive = true;
    memset(&b, 0, sizeof b);
    b.budget_s = 170.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            b.quick = true;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            b.only = argv[++i];
        else if (!strcmp(argv[i], "--budget") && i + 1 < argc)
            b.budget_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if ((e = cudaGetDeviceCount(&n_dev)) != cudaSuccess || n_dev == 0) {
        printf("skipped: no CUDA device (%s)\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0");
        return 77;
    }
    b.t_start = bench_now_s();
    if (bench_init(&b)) {
        bench_free(&b);
        return 1;
    }

    /* The ceilings: always, first (every pct below divides by them). */
    g_measure = "ceiling_copy";
    t0 = bench_now_s();
    alive = group_end(&b, "ceiling_copy", run_ceiling_copy(&b), t0);
    if (alive) {
        g_measure = "ceiling_gemm_cublas";
        t0 = bench_now_s();
        alive = group_end(&b, "ceiling_gemm_cublas", run_ceiling_gemm(&b), t0);
    }
    if (alive && group_begin(&b, "ceiling_gemv_cublas_bf16")) {
        t0 = bench_now_s();
        alive = group_end(&b, "ceiling_gemv_cublas_bf16", run_cublas_gemv(&b), t0);
    }
    for (int fi = 0; alive && fi < N_DECODE_FMTS; fi++) {
        snprintf(name, sizeof name, "matmul_decode_%s", DECODE_FMTS[fi].name);
        if (group_begin(&b, name)) {
            t0 = bench_now_s();
            alive = group_end(&b, name, run_matmul_decode(&b, &DECODE_FMTS[fi], name), t0);
        }
    }
    for (int fi = 0; alive && fi < N_DECODE_FMTS; fi++) {
        snprintf(name, sizeof name, "phi4_layer_decode_%s", DECODE_FMTS[fi].name);
        if (group_begin(&b, name)) {
            t0 = bench_now_s();
            alive = group_end(&b, name, run_layer(&b, &DECODE_FMTS[fi], name), t0);
        }
    }
    for (int mi = 0; alive && mi < 2; mi++)
        for (int fi = 0; alive && fi < 2; fi++) {
            snprintf(name, sizeof name, "moe_experts_%s_%s", MOE_MODELS[mi].name,
                     MOE_FMTS[fi].name);
            if (group_begin(&b, name)) {
                t0 = bench_now_s();
                alive = group_end(&b, name, run_moe(&b, &MOE_MODELS[mi], &MOE_FMTS[fi], name),
                                  t0);
            }
        }
    /* decode attention over f32 and bf16 KV caches (the bf16 compute mode's), each model's
       pair side by side */
    for (int ai = 0; alive && ai < 4; ai++) {
        const kern_dtype kv = ai % 2 ? KERN_DT_BF16 : KERN_DT_F32;
        snprintf(name, sizeof name, "attn_decode_%s%s", ATTN_CFGS[ai / 2].name, ai % 2 ? "_bf16_kv" : "");
        if (group_begin(&b, name)) {
            t0 = bench_now_s();
            alive = group_end(&b, name, run_attn_decode(&b, &ATTN_CFGS[ai / 2], kv, name), t0);
        }
    }
    /* MLA over f32 latents with both kv_b formats, then over bf16 latents with FP8 kv_b (Kimi
       K2's production pairing) */
    for (int fi = 0; alive && fi < 3; fi++) {
        const fmt_spec *f = &MOE_FMTS[fi < 2 ? fi : 1];
        const kern_dtype kv = fi < 2 ? KERN_DT_F32 : KERN_DT_BF16;
        snprintf(name, sizeof name, "mla_decode_kimi_k2_%s%s", f->name, fi < 2 ? "" : "_bf16_kv");
        if (group_begin(&b, name)) {
            t0 = bench_now_s();
            alive = group_end(&b, name, run_mla(&b, f, kv, name), t0);
        }
    }
    if (alive && group_begin(&b, "attn_prefill_qwen3_coder")) {
        t0 = bench_now_s();
        alive = group_end(&b, "attn_prefill_qwen3_coder",
                          run_attn_prefill(&b, false, "attn_prefill_qwen3_coder"), t0);
    }
    if (alive && group_begin(&b, "attn_tc_prefill_qwen3_coder")) {
        t0 = bench_now_s();
        alive = group_end(&b, "attn_tc_prefill_qwen3_coder",
                          run_attn_prefill(&b, true, "attn_tc_prefill_qwen3_coder"), t0);
    }
    if (alive && group_begin(&b, "cublas_prefill_bf16")) {
        t0 = bench_now_s();
        alive = group_end(&b, "cublas_prefill_bf16",
                          run_matmul_prefill(&b, true, "cublas_prefill_bf16"), t0);
    }
    if (alive && group_begin(&b, "matmul_prefill_bf16")) {
        t0 = bench_now_s();
        alive = group_end(&b, "matmul_prefill_bf16",
                          run_matmul_prefill(&b, false, "matmul_prefill_bf16"), t0);
    }
    if (alive && group_begin(&b, "matmul_tc_prefill")) {
        t0 = bench_now_s();
        alive = group_end(&b, "matmul_tc_prefill", run_matmul_tc(&b, "matmul_tc_prefill"), t0);
    }
    if (alive && group_begin(&b, "matmul_bf16_op_prefill")) {
        t0 = bench_now_s();
        alive = group_end(&b, "matmul_bf16_op_prefill",
                          run_matmul_bf16_op(&b, "matmul_bf16_op_prefill"), t0);
    }

    table_print(&b);
    fprintf(stderr, "bench_kernels: %d measurements, %d groups failed, %d skipped (budget), "
                    "%.1f s%s\n",
            b.n_res, b.n_failed, b.n_skipped, bench_now_s() - b.t_start,
            alive ? "" : "; stopped early: the device is in an error state");
    bench_free(&b);
    return b.n_failed ? 1 : 0;
}
