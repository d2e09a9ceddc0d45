/* test_ops.c: every op of the CUDA backend checked against the CPU reference backend.
 *
 *   test_ops [--small] [--op NAME] [--seed N] [--backend cuda|cpu]
 *
 * Each case builds its inputs on the host (weights as host eng_weight structs over random bytes,
 * the form a safetensors mapping gives both backends), runs the op on the CPU backend and on a
 * fresh backend under test, and checks every output in this order:
 *   1. NaN/Inf positions: a NaN/Inf in the tested output where the CPU value is finite (or the
 *      reverse) fails, reported with its index;
 *   2. relative L2 error per row, ||out - cpu|| / ||cpu||, against the op's bound (f32 mode,
 *      kernels/kernels.h: the backends differ only by summation order and the last ulps of
 *      expf / cosf / sinf):
 *        BOUND_ELEMENTWISE 1e-5  embedding, rmsnorm, add, rope, swiglu, moe_route's weights
 *        BOUND_REDUCTION   1e-4  matmul, matmul_bf16, attention, MLA, MoE experts
 *        BOUND_ATTN_BF16   2^-7  attention_bf16 (bf16 probabilities, see its definition)
 *        BOUND_EXPERTS_HBF16 1e-3 MoE experts with h rounded to bf16 (see its definition)
 *      (the issue's bounds: they are not to be widened to make a case pass); round_bf16,
 *      quant_act_fp8 and kv_write must match bit for bit (bound 0, reported as the fraction of
 *      differing elements; kv_write compares the whole cache, the rows it must not touch
 *      included);
 *   3. guard bands: every output buffer has GUARD extra elements on both sides (and, for strided
 *      rows, gaps between rows) filled with SENTINEL, which must come back bit for bit. Inputs
 *      hold NaN there instead, so a kernel reading outside its inputs shows up in check 1.
 * Attention and MLA run batches of several sequences over a paged KV cache (eng_kv_batch) whose
 * block table is a random permutation of the cache's blocks: every cache row that holds no key
 * of its sequence's context (other blocks, the tail of a sequence's last block, the blocks that
 * table entries past a sequence's last block point at) is NaN, so a kernel reading a key it must
 * not see fails check 1; the CPU reference's output must be finite there too. The batch arrays
 * (positions, slots, seq_start, seq_pos0, block_table) are uploaded to the backend under test;
 * the CPU reference gets host copies. KV caches come in both element types (eng_kv_dtype):
 * kv_write into a bf16 cache must store each value's eng_round_bf16 (ties, infinities, NaNs and
 * subnormals among the sources); attention and MLA over a bf16 cache (bf16 values, dead rows the
 * bf16 NaN 0x7fc0) are checked against the CPU reading the same cache, and must also give bit for
 * bit what the backend under test gives over the same cache widened to f32.
 * moe_route's expert ids must be identical (its logits are drawn without near-ties, see
 * route_logits), and so must argmax's and topk's (ties, NaN and infinities on purpose, see
 * case_argmax; topk's values bit for bit too).
 * matmul_bf16 gets bf16-representable x (random values rounded to bf16, as the
 * bf16 mode's activations are) and is checked against the CPU's matmul of the same x; a backend
 * without the op (the CPU reference: ops->matmul_bf16 is NULL) reports it "unsup". An op the
 * backend under test refuses with PP_STATUS_UNSUPPORTED (a weight format
 * without kernels) is reported as "unsup", not failed; any other error fails the case. Prints one line per case and a summary; exits 0 when every case passes, 1
 * otherwise, 77 without a CUDA device. --small runs only small shapes (for compute-sanitizer);
 * --op runs one op's cases; --backend cpu checks the CPU backend against itself, which tests the
 * harness without a GPU (every error must then be 0). A case that loses the CUDA context (an
 * illegal address, a misaligned access) fails, and the device is reset so the next cases run.
 */
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels.h"
#include "sampler.h"

#define BOUND_ELEMENTWISE 1e-5
#define BOUND_REDUCTION 1e-4
/* attention_bf16 rounds every probability to bf16 (relative error up to 2^-8, about 1.6e-3 rms)
 * before it weighs its value row, so the output's relative L2 error is about that rms whatever
 * the context length (a convex combination of the value rows, each weight off by its own
 * rounding). A host emulation of the kernel over 7266 cases (head dims 32 .. 192, GQA 1 .. 8,
 * 1 .. 2100 keys, peaked and flat scores) measured per-row medians of 1.5e-3 and a worst row of
 * 3.4e-3 (3.7e-3 for one (token, head) slice; the tails grow as the rows narrow). 2^-7 leaves a
 * factor of about 2 above that worst row, while a wrong mask, scale, fragment or rescaling gives
 * errors of order 1. */
#define BOUND_ATTN_BF16 (1.0 / 128)
/* moe_experts with h_bf16: h = silu(gate x) * up x is rounded to bf16 on both sides, but the two
 * backends' f32 sums before the rounding differ in their last bits, so an element lying that
 * close to a rounding boundary rounds the other way: one bf16 step (up to 2^-7 relative) in a small
 * fraction of the elements. A host simulation of these cases' shapes (f32 sums against f64 ones,
 * random bf16 x and weights) flipped 2-4e-4 of the h elements and moved the worst output row by
 * 1.4e-4 (7.7e-4 at 2048 -> 768); leaving h unrounded moved it by 2.0e-3 .. 2.7e-3. 1e-3 sits
 * between the two. */
#define BOUND_EXPERTS_HBF16 1e-3

#define GUARD 64              /* elements of guard band on each side of every buffer */
#define SENTINEL 0xffbadbadu  /* guard bands and gaps of outputs: a NaN no op writes */
#define NAN_BITS 0x7fc00000u  /* guard bands and gaps of inputs */
#define NAN_BF16 0x7fc0u      /* gaps of bf16 inputs: NAN_BITS's high half */
#define NAN_BF16_PAIR 0x7fc07fc0u /* guard bands of bf16 inputs: two bf16 NaNs a word */
#define MAX_FAIL_LINES 6      /* failure details printed per case */

/* ---- small utilities ---------------------------------------------------------------------- */

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_ops: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, every NaN to 0x7fc0: the high half of engine/common.h's eng_round_bf16
 * (the KV cache's bf16 elements), written out again here as the definition to test against. */
static uint16_t bf16_from_f32(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0u;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Round to nearest even for normal halves; tiny values flush to zero (test values never are). */
static uint16_t f16_from_f32(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    int32_t exp = (int32_t)((u >> 23) & 0xffu) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    if (exp <= 0)
        return (uint16_t)sign;
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00u);
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* a carry into the exponent is still the right rounding */
    return (uint16_t)h;
}

/* Stores v as element i of an F32/BF16/F16 array. */
static void store_f(void *p, eng_dtype dt, size_t i, float v)
{
    if (dt == ENG_DTYPE_BF16)
        ((uint16_t *)p)[i] = bf16_from_f32(v);
    else if (dt == ENG_DTYPE_F16)
        ((uint16_t *)p)[i] = f16_from_f32(v);
    else
        ((float *)p)[i] = v;
}

static const char *dtype_name(eng_dtype dt)
{
    return dt == ENG_DTYPE_BF16 ? "bf16" : dt == ENG_DTYPE_F16 ? "f16" : "f32";
}

/* splitmix64: a reproducible stream per case. */
typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_u64(rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_f(rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)(rng_u64(r) >> 40) * (1.0f / 16777216.0f);
}

static int rng_int(rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- test weights and vectors: host tensors over random bytes --------------------------------- */

typedef struct wfmt_case {
    const char *name;
    eng_wfmt fmt;
    eng_dtype scale_dtype; /* FP8 / INT4 / INT8 */
    int group;             /* INT4 */
    int block_out, block_in; /* FP8; 0: 128 (the checkpoints' 128 x 128 blocks) */
} wfmt_case;

static const wfmt_case FORMATS[] = {
    {"f32", ENG_WFMT_F32, ENG_DTYPE_UNKNOWN, 0, 0, 0},
    {"bf16", ENG_WFMT_BF16, ENG_DTYPE_UNKNOWN, 0, 0, 0},
    {"f16", ENG_WFMT_F16, ENG_DTYPE_UNKNOWN, 0, 0, 0},
    {"fp8/f32", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_F32, 0, 0, 0},
    {"fp8/bf16", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_BF16, 0, 0, 0},
    {"fp8/f16", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_F16, 0, 0, 0},
    {"int4g32/bf16", ENG_WFMT_INT4_GROUP, ENG_DTYPE_BF16, 32, 0, 0},
    {"int4g128/f16", ENG_WFMT_INT4_GROUP, ENG_DTYPE_F16, 128, 0, 0},
    {"int4g32/f32", ENG_WFMT_INT4_GROUP, ENG_DTYPE_F32, 32, 0, 0},
    {"int8/f32", ENG_WFMT_INT8_CHANNEL, ENG_DTYPE_F32, 0, 0, 0},
    {"int8/bf16", ENG_WFMT_INT8_CHANNEL, ENG_DTYPE_BF16, 0, 0, 0},
    {"int8/f16", ENG_WFMT_INT8_CHANNEL, ENG_DTYPE_F16, 0, 0, 0},
};
#define N_FORMATS ((int)(sizeof FORMATS / sizeof FORMATS[0]))

/* A linear weight in host memory; w points at data and scale. */
typedef struct test_weight {
    eng_weight w;
    void *data;  /* [n_out][n_in] stored dtype, or [n_out][packed_cols] uint32 */
    void *scale; /* FP8: [ceil(n_out/block_out)][ceil(n_in/block_in)], INT4: [n_out][ceil(n_in/group)],
                    INT8: [n_out] */
} test_weight;

/* Random weights of moderate size (dequantized values mostly within +-4):
 *   f32 / bf16 / f16: uniform in [-1, 1] (rounded to the dtype);
 *   fp8: any e4m3 byte but the NaN codes 0x7f / 0xff (subnormals and 448 included), blocks of
 *        the case's size (128 x 128 unless it says otherwise; ragged at the edges when n_out,
 *        n_in are not multiples), scales in [2^-9, 2^-7];
 *   int4: random words (the nibbles past n_in too), scales in [2^-5, 2^-3];
 *   int8: random bytes (any of -128 .. 127), one scale per row in [2^-8, 2^-6]. */
static void weight_make(test_weight *t, const wfmt_case *f, int64_t n_out, int64_t n_in, rng *r)
{
    memset(t, 0, sizeof *t);
    eng_weight *w = &t->w;
    w->fmt = f->fmt;
    w->n_out = n_out;
    w->n_in = n_in;
    size_t n = (size_t)(n_out * n_in);
    size_t n_scale = 0;
    float s_lo = 0, s_hi = 0;
    switch (f->fmt) {
    case ENG_WFMT_F32:
    case ENG_WFMT_BF16:
    case ENG_WFMT_F16: {
        eng_dtype dt = f->fmt == ENG_WFMT_F32 ? ENG_DTYPE_F32 : f->fmt == ENG_WFMT_BF16 ? ENG_DTYPE_BF16 : ENG_DTYPE_F16;
        t->data = xmalloc(n * eng_dtype_size(dt));
        for (size_t i = 0; i < n; i++)
            store_f(t->data, dt, i, rng_f(r, -1.0f, 1.0f));
        break;
    }
    case ENG_WFMT_FP8_BLOCK: {
        uint8_t *d = xmalloc(n);
        for (size_t i = 0; i < n; i++) {
            uint8_t b;
            do
                b = (uint8_t)rng_u64(r);
            while ((b & 0x7fu) == 0x7fu);
            d[i] = b;
        }
        t->data = d;
        w->block_out = f->block_out ? f->block_out : 128;
        w->block_in = f->block_in ? f->block_in : 128;
        w->scale_cols = ceil_div(n_in, w->block_in);
        n_scale = (size_t)(ceil_div(n_out, w->block_out) * w->scale_cols);
        s_lo = 1.0f / 512, s_hi = 1.0f / 128;
        break;
    }
    case ENG_WFMT_INT4_GROUP: {
        w->group = f->group;
        w->packed_cols = ceil_div(n_in, 8);
        w->scale_cols = ceil_div(n_in, f->group);
        size_t n_words = (size_t)(n_out * w->packed_cols);
        uint32_t *d = xmalloc(n_words * 4);
        for (size_t i = 0; i < n_words; i++)
            d[i] = (uint32_t)rng_u64(r);
        t->data = d;
        n_scale = (size_t)(n_out * w->scale_cols);
        s_lo = 1.0f / 32, s_hi = 1.0f / 8;
        break;
    }
    case ENG_WFMT_INT8_CHANNEL: {
        uint8_t *d = xmalloc(n);
        for (size_t i = 0; i < n; i++)
            d[i] = (uint8_t)rng_u64(r);
        t->data = d;
        w->scale_cols = 1;
        n_scale = (size_t)n_out;
        s_lo = 1.0f / 256, s_hi = 1.0f / 64;
        break;
    }
    }
    if (n_scale) {
        w->scale_dtype = f->scale_dtype;
        t->scale = xmalloc(n_scale * eng_dtype_size(f->scale_dtype));
        for (size_t i = 0; i < n_scale; i++)
            store_f(t->scale, f->scale_dtype, i, rng_f(r, s_lo, s_hi));
    }
    w->data = t->data;
    w->scale = t->scale;
}

static void weight_free(test_weight *t)
{
    free(t->data);
    free(t->scale);
    memset(t, 0, sizeof *t);
}

/* n_expert experts' gate / up ([d_ff][d_model]) and down ([d_model][d_ff]) weights, with the
 * eng_weight arrays eng_moe_args points at. */
typedef struct test_experts {
    int n;
    test_weight *store;            /* [3][n] */
    eng_weight *gate, *up, *down;  /* [n] each */
} test_experts;

static void experts_make(test_experts *e, const wfmt_case *f, int n, int d_model, int d_ff, rng *r)
{
    e->n = n;
    e->store = xmalloc(3 * (size_t)n * sizeof *e->store);
    eng_weight *w = xmalloc(3 * (size_t)n * sizeof *w);
    for (int i = 0; i < 3 * n; i++) {
        bool down = i >= 2 * n;
        weight_make(&e->store[i], f, down ? d_model : d_ff, down ? d_ff : d_model, r);
        w[i] = e->store[i].w;
    }
    e->gate = w;
    e->up = w + n;
    e->down = w + 2 * n;
}

static void experts_free(test_experts *e)
{
    for (int i = 0; i < 3 * e->n; i++)
        weight_free(&e->store[i]);
    free(e->store);
    free(e->gate);
    memset(e, 0, sizeof *e);
}

typedef struct test_vec {
    eng_vec v;
    void *data;
} test_vec;

/* n values of dtype dt: vals when given, else uniform in [lo, hi). */
static void vec_make(test_vec *t, eng_dtype dt, int64_t n, const float *vals, float lo, float hi, rng *r)
{
    t->data = xmalloc((size_t)n * eng_dtype_size(dt));
    for (int64_t i = 0; i < n; i++)
        store_f(t->data, dt, (size_t)i, vals ? vals[i] : rng_f(r, lo, hi));
    t->v = (eng_vec){t->data, dt, n};
}

static void vec_free(test_vec *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

/* ---- layouts: where an op reads or writes inside a buffer ------------------------------------ */

/* Element (r, s, c) sits at offset + r * row_stride + s * sub_stride + c for r < n_rows,
 * s < n_sub, c < width (sub-blocks are heads). Rows are the unit of the relative L2 error. */
typedef struct layout {
    int64_t n_rows, row_stride;
    int64_t n_sub, sub_stride;
    int64_t width, offset;
} layout;

static layout rows(int64_t n_rows, int64_t width, int64_t row_stride)
{
    return (layout){n_rows, row_stride, 1, 0, width, 0};
}

static size_t layout_at(const layout *l, int64_t r, int64_t s, int64_t c)
{
    return (size_t)(l->offset + r * l->row_stride + s * l->sub_stride + c);
}

/* Elements a buffer needs to hold the layout. */
static size_t layout_extent(const layout *l)
{
    if (l->n_rows <= 0 || l->n_sub <= 0 || l->width <= 0)
        return 0;
    return layout_at(l, l->n_rows - 1, l->n_sub - 1, l->width - 1) + 1;
}

/* [n] flags: 1 where the layout has an element. */
static uint8_t *layout_mask(const layout *l, size_t n)
{
    uint8_t *m = xmalloc(n);
    memset(m, 0, n);
    for (int64_t r = 0; r < l->n_rows; r++)
        for (int64_t s = 0; s < l->n_sub; s++)
            for (int64_t c = 0; c < l->width; c++)
                m[layout_at(l, r, s, c)] = 1;
    return m;
}

/* ---- the harness ----------------------------------------------------------------------------- */

typedef struct harness {
    eng_backend *cpu;
    const char *dut_name; /* "cuda", or "cpu" to check the harness */
    bool small;
    const char *only;     /* run only this op's cases (NULL: all) */
    uint64_t seed;
    int n_cases, n_failed, n_unsupported;
    double worst_elementwise, worst_reduction, worst_attn_bf16, worst_experts_hbf16;
    bool stop;            /* the device is lost: no further cases */
} harness;

typedef struct tcase {
    harness *h;
    eng_backend *dut;  /* a fresh backend under test */
    rng r;
    char op[32];
    char desc[160];
    double bound;
    double max_rel;
    int n_fail;
    bool unsupported;  /* the backend under test refused the op with UNSUPPORTED */
} tcase;

static void fail(tcase *tc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(tcase *tc, const char *fmt, ...)
{
    if (tc->n_fail++ >= MAX_FAIL_LINES)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("      FAIL %s %s: ", tc->op, tc->desc);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static pp_status dut_create(harness *h, eng_backend *share, eng_backend **out, eng_err *err)
{
    if (strcmp(h->dut_name, "cpu") == 0)
        return eng_backend_cpu_create(0, out, err);
    return eng_backend_cuda_create(share ? -1 : 0, share, out, err);
}

/* Starts a case: false when it is filtered out or the device is gone. */
static bool case_begin(harness *h, tcase *tc, const char *op, double bound, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static bool case_begin(harness *h, tcase *tc, const char *op, double bound, const char *fmt, ...)
{
    memset(tc, 0, sizeof *tc);
    if (h->stop || (h->only && strcmp(h->only, op) != 0))
        return false;
    tc->h = h;
    tc->bound = bound;
    tc->r.s = h->seed ^ ((uint64_t)(h->n_cases + 1) * 0xd1b54a32d192ed03ull);
    snprintf(tc->op, sizeof tc->op, "%s", op);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tc->desc, sizeof tc->desc, fmt, ap);
    va_end(ap);
    eng_err err = {{0}};
    if (dut_create(h, NULL, &tc->dut, &err) != PP_STATUS_OK) {
        printf("FAIL  %-12s %s: cannot create the %s backend: %s; stopping\n", op, tc->desc, h->dut_name,
               err.msg);
        h->n_cases++;
        h->n_failed++;
        h->stop = true;
        return false;
    }
    return true;
}

static void case_end(tcase *tc)
{
    harness *h = tc->h;
    h->n_cases++;
    if (tc->n_fail)
        h->n_failed++;
    else if (tc->unsupported)
        h->n_unsupported++;
    double *worst = tc->bound == BOUND_ATTN_BF16       ? &h->worst_attn_bf16
                    : tc->bound == BOUND_EXPERTS_HBF16 ? &h->worst_experts_hbf16
                    : tc->bound >= BOUND_REDUCTION     ? &h->worst_reduction
                                                       : &h->worst_elementwise;
    if (tc->max_rel > *worst)
        *worst = tc->max_rel;
    printf("%-5s %-12s %-66s max rel L2 %8.2e (bound %.0e)\n",
           tc->n_fail ? "FAIL" : tc->unsupported ? "unsup" : "ok", tc->op, tc->desc, tc->max_rel, tc->bound);
    fflush(stdout);
    eng_backend_destroy(tc->dut);
    tc->dut = NULL;
    if (strcmp(h->dut_name, "cuda") == 0) {
        /* a sticky fault poisons the context for every later case: start a new one */
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) {
            printf("      the device failed (%s: %s); resetting it\n", cudaGetErrorName(e), cudaGetErrorString(e));
            cudaDeviceReset();
            cudaGetLastError();
        }
    }
}

/* Checks a status from the backend under test (or, with is_cpu, the reference). */
static bool op_ok(tcase *tc, pp_status st, bool is_cpu, const char *what)
{
    if (st == PP_STATUS_OK)
        return true;
    eng_backend *be = is_cpu ? tc->h->cpu : tc->dut;
    const char *msg = be->ops->last_error ? be->ops->last_error(be) : "";
    if (!is_cpu && st == PP_STATUS_UNSUPPORTED) {
        tc->unsupported = true;
        printf("      unsupported by %s %s: %s\n", tc->h->dut_name, what, msg);
        return false;
    }
    fail(tc, "%s %s returned %s%s%s", is_cpu ? "cpu" : tc->h->dut_name, what, pp_status_str(st),
         msg[0] ? ": " : "", msg);
    return false;
}

/* ---- buffers with guard bands: one copy for the CPU, one in the backend under test ----------- */

typedef struct gbuf {
    size_t n;          /* interior elements (4 bytes each: f32, or int32 expert ids) */
    uint32_t *init;    /* [GUARD + n + GUARD] host: the bits the buffer started with */
    void *cpu;         /* [n] host: the CPU backend's copy of the interior */
    void *dut_base;    /* [GUARD + n + GUARD] memory of the backend under test */
    void *dut;         /* dut_base + GUARD elements: what the op sees */
} gbuf;

/* A buffer of n elements starting as interior[0 .. n) with `guard` in the guard bands. */
static bool gbuf_make(tcase *tc, gbuf *b, size_t n, const uint32_t *interior, uint32_t guard)
{
    memset(b, 0, sizeof *b);
    size_t total = n + 2 * GUARD;
    b->n = n;
    b->init = xmalloc(total * 4);
    for (size_t i = 0; i < total; i++)
        b->init[i] = guard;
    memcpy(b->init + GUARD, interior, n * 4);
    b->cpu = xmalloc(n * 4);
    memcpy(b->cpu, interior, n * 4);
    eng_backend *d = tc->dut;
    if (!op_ok(tc, d->ops->alloc(d, total * 4, &b->dut_base), false, "alloc") ||
        !op_ok(tc, d->ops->upload(d, b->dut_base, b->init, total * 4), false, "upload"))
        return false;
    b->dut = (uint32_t *)b->dut_base + GUARD;
    return true;
}

static void gbuf_free(tcase *tc, gbuf *b)
{
    if (b->dut_base)
        tc->dut->ops->free(tc->dut, b->dut_base);
    free(b->init);
    free(b->cpu);
    memset(b, 0, sizeof *b);
}

/* [layout_extent(l)] f32 bits: uniform values in [lo, hi) at the layout's elements, NaN in the
 * gaps. */
static uint32_t *random_bits(tcase *tc, const layout *l, float lo, float hi)
{
    size_t n = layout_extent(l);
    uint32_t *bits = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        bits[i] = NAN_BITS;
    for (int64_t r = 0; r < l->n_rows; r++)
        for (int64_t s = 0; s < l->n_sub; s++)
            for (int64_t c = 0; c < l->width; c++)
                bits[layout_at(l, r, s, c)] = f32_bits(rng_f(&tc->r, lo, hi));
    return bits;
}

/* An input (or in/out) buffer: uniform values in [lo, hi) at the layout's elements, NaN in the
 * gaps and guard bands. */
static bool gbuf_random(tcase *tc, gbuf *b, const layout *l, float lo, float hi)
{
    uint32_t *bits = random_bits(tc, l, lo, hi);
    bool ok = gbuf_make(tc, b, layout_extent(l), bits, NAN_BITS);
    free(bits);
    return ok;
}

/* A buffer of n bf16 elements (a KV cache): bf16_from_f32 of the f32 bits[0 .. n), packed two
 * a word (element i in the low half of word i / 2 when i is even: little-endian, as the backends
 * index uint16_t), an odd n's last word completed with NAN_BF16; NaN pairs in the guard bands.
 * b->n counts words. */
static bool gbuf_make_bf16(tcase *tc, gbuf *b, size_t n, const uint32_t *bits)
{
    size_t words = (n + 1) / 2;
    uint16_t *half = xmalloc(words * 4);
    for (size_t i = 0; i < n; i++)
        half[i] = bf16_from_f32(bits_f32(bits[i]));
    if (n % 2)
        half[n] = NAN_BF16;
    uint32_t *packed = xmalloc(words * 4);
    memcpy(packed, half, words * 4);
    bool ok = gbuf_make(tc, b, words, packed, NAN_BF16_PAIR);
    free(packed);
    free(half);
    return ok;
}

/* Element i of a cache buffer's bits (f32: 4 bytes, bf16: 2) as a uint32. */
static uint32_t kv_elem(const void *p, eng_kv_dtype kv, size_t i)
{
    if (kv == ENG_KV_BF16) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)p + 2 * i, 2);
        return h;
    }
    uint32_t u;
    memcpy(&u, (const uint8_t *)p + 4 * i, 4);
    return u;
}

static const char *kv_name(eng_kv_dtype kv) { return kv == ENG_KV_BF16 ? "bf16" : "f32"; }

/* gbuf_random with every value rounded to bf16 (the values stay f32): matmul_bf16's input. The
 * NaN of the gaps and guard bands stays NaN. */
static bool gbuf_random_bf16(tcase *tc, gbuf *b, const layout *l, float lo, float hi)
{
    size_t n = layout_extent(l);
    uint32_t *bits = random_bits(tc, l, lo, hi);
    for (size_t i = 0; i < n; i++)
        bits[i] = (uint32_t)bf16_from_f32(bits_f32(bits[i])) << 16;
    bool ok = gbuf_make(tc, b, n, bits, NAN_BITS);
    free(bits);
    return ok;
}

/* An input buffer holding n given 4-byte values (no gaps). */
static bool gbuf_values(tcase *tc, gbuf *b, const void *values, size_t n)
{
    return gbuf_make(tc, b, n, values, NAN_BITS);
}

/* An output buffer of n elements, SENTINEL everywhere. */
static bool gbuf_output(tcase *tc, gbuf *b, size_t n)
{
    uint32_t *bits = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        bits[i] = SENTINEL;
    bool ok = gbuf_make(tc, b, n, bits, SENTINEL);
    free(bits);
    return ok;
}

/* The whole buffer (guard bands included) as the backend under test left it; NULL on failure. */
static uint32_t *gbuf_fetch(tcase *tc, const gbuf *b)
{
    size_t total = b->n + 2 * GUARD;
    uint32_t *got = xmalloc(total * 4);
    if (!op_ok(tc, tc->dut->ops->download(tc->dut, got, b->dut_base, total * 4), false, "download")) {
        free(got);
        return NULL;
    }
    return got;
}

/* Check 3: every element outside the layout (guard bands, gaps) is as it started. */
static void check_guards(tcase *tc, const gbuf *b, const uint32_t *got, const uint8_t *mask, const char *what)
{
    size_t total = b->n + 2 * GUARD;
    for (size_t i = 0; i < total; i++) {
        bool in = i >= GUARD && i < GUARD + b->n;
        if (in && mask[i - GUARD])
            continue;
        if (got[i] != b->init[i])
            fail(tc, "%s: %s element %lld changed (0x%08x -> 0x%08x = %g)", what,
                 in ? "gap" : "guard band", (long long)i - GUARD, b->init[i], got[i], (double)bits_f32(got[i]));
    }
}

/* check_guards over the whole buffer: every element, inside the buffer too, is as it started
 * (an input read only, or an output a refused call must not write). */
static void check_untouched(tcase *tc, const gbuf *b, const char *what)
{
    uint32_t *got = gbuf_fetch(tc, b);
    if (!got)
        return;
    uint8_t *none = layout_mask(&(layout){0, 0, 0, 0, 0, 0}, b->n);
    check_guards(tc, b, got, none, what);
    free(none);
    free(got);
}

/* Checks an f32 output against the CPU's: NaN/Inf positions, relative L2 per row, guard bands. */
static void check_f32(tcase *tc, const gbuf *b, const layout *l, const char *what)
{
    uint32_t *got = gbuf_fetch(tc, b);
    if (!got)
        return;
    uint8_t *mask = layout_mask(l, b->n);
    const float *ref = b->cpu;
    int bad = 0;
    for (int64_t r = 0; r < l->n_rows; r++)
        for (int64_t s = 0; s < l->n_sub; s++)
            for (int64_t c = 0; c < l->width; c++) {
                size_t i = layout_at(l, r, s, c);
                float want = ref[i], have = bits_f32(got[GUARD + i]);
                bool same_class = isfinite(want) ? isfinite(have)
                                                 : (isnan(want) ? isnan(have) : have == want);
                if (!same_class) {
                    bad++;
                    fail(tc, "%s: element [%lld][%lld][%lld] (index %zu) is %g, cpu %g", what, (long long)r,
                         (long long)s, (long long)c, i, (double)have, (double)want);
                }
            }
    for (int64_t r = 0; r < l->n_rows && !bad; r++) {
        double num = 0.0, den = 0.0;
        for (int64_t s = 0; s < l->n_sub; s++)
            for (int64_t c = 0; c < l->width; c++) {
                size_t i = layout_at(l, r, s, c);
                if (!isfinite(ref[i]))
                    continue;
                double d = (double)bits_f32(got[GUARD + i]) - (double)ref[i];
                num += d * d;
                den += (double)ref[i] * (double)ref[i];
            }
        double rel = num == 0.0 ? 0.0 : den == 0.0 ? INFINITY : sqrt(num / den);
        if (rel > tc->max_rel)
            tc->max_rel = rel;
        if (!(rel <= tc->bound))
            fail(tc, "%s: row %lld relative L2 error %.3g > %.0e", what, (long long)r, rel, tc->bound);
    }
    check_guards(tc, b, got, mask, what);
    free(mask);
    free(got);
}

/* Checks an int32 output equals the CPU's element for element, then its guard bands. */
static void check_i32(tcase *tc, const gbuf *b, const layout *l, const char *what)
{
    uint32_t *got = gbuf_fetch(tc, b);
    if (!got)
        return;
    uint8_t *mask = layout_mask(l, b->n);
    const int32_t *ref = b->cpu;
    for (int64_t r = 0; r < l->n_rows; r++)
        for (int64_t c = 0; c < l->width; c++) {
            size_t i = layout_at(l, r, 0, c);
            if ((int32_t)got[GUARD + i] != ref[i])
                fail(tc, "%s: row %lld slot %lld is %d, cpu %d", what, (long long)r, (long long)c,
                     (int32_t)got[GUARD + i], ref[i]);
        }
    check_guards(tc, b, got, mask, what);
    free(mask);
    free(got);
}

/* ---- embedding ---------------------------------------------------------------------------------- */

static void case_embedding(harness *h, const wfmt_case *f, int n_vocab, int d, int n_tokens)
{
    tcase tc;
    if (!case_begin(h, &tc, "embedding", BOUND_ELEMENTWISE, "n_vocab=%d d=%d n_tokens=%d %s", n_vocab, d,
                    n_tokens, f->name))
        return;
    test_weight tw;
    weight_make(&tw, f, n_vocab, d, &tc.r);
    int32_t *ids = xmalloc((size_t)n_tokens * sizeof *ids);
    for (int t = 0; t < n_tokens; t++)
        ids[t] = rng_int(&tc.r, n_vocab);
    ids[0] = n_vocab - 1; /* the last row, the first row and a repeated id */
    if (n_tokens > 1)
        ids[1] = 0;
    if (n_tokens > 2)
        ids[2] = ids[0];
    layout l = rows(n_tokens, d, d);
    gbuf out = {0};
    if (gbuf_output(&tc, &out, layout_extent(&l)) &&
        op_ok(&tc, h->cpu->ops->embedding(h->cpu, &tw.w, ids, n_tokens, out.cpu), true, "embedding") &&
        op_ok(&tc, tc.dut->ops->embedding(tc.dut, &tw.w, ids, n_tokens, out.dut), false, "embedding"))
        check_f32(&tc, &out, &l, "out");
    gbuf_free(&tc, &out);
    free(ids);
    weight_free(&tw);
    case_end(&tc);
}

/* Ids outside [0, n_vocab) are refused with INVALID_ARG before anything is written, and the
 * backend stays usable. (Not for --backend cpu: the CPU reference trusts its caller.) */
static void case_embedding_bad_ids(harness *h)
{
    tcase tc;
    if (!case_begin(h, &tc, "embedding", BOUND_ELEMENTWISE, "bad ids -1 and n_vocab are refused"))
        return;
    test_weight tw;
    weight_make(&tw, &FORMATS[1], 10, 8, &tc.r);
    int32_t good[3] = {9, 0, 4}, too_big[3] = {1, 10, 2}, negative[3] = {-1, 0, 0};
    layout l = rows(3, 8, 8);
    gbuf out = {0};
    if (gbuf_output(&tc, &out, layout_extent(&l))) {
        const int32_t *bad[2] = {too_big, negative};
        for (int i = 0; i < 2; i++) {
            pp_status st = tc.dut->ops->embedding(tc.dut, &tw.w, bad[i], 3, out.dut);
            const char *msg = tc.dut->ops->last_error ? tc.dut->ops->last_error(tc.dut) : "";
            if (st != PP_STATUS_INVALID_ARG || !msg[0])
                fail(&tc, "ids {%d, %d, %d}: got %s with message '%s', expected INVALID_ARG and a message",
                     bad[i][0], bad[i][1], bad[i][2], pp_status_str(st), msg);
        }
        check_untouched(&tc, &out, "out after refused ids"); /* nothing written */
        if (op_ok(&tc, h->cpu->ops->embedding(h->cpu, &tw.w, good, 3, out.cpu), true, "embedding") &&
            op_ok(&tc, tc.dut->ops->embedding(tc.dut, &tw.w, good, 3, out.dut), false, "embedding after refused ids"))
            check_f32(&tc, &out, &l, "out");
    }
    gbuf_free(&tc, &out);
    weight_free(&tw);
    case_end(&tc);
}

/* ---- matmul ---------------------------------------------------------------------------------- */

/* matmul, or with bf16 matmul_bf16 (the bf16 mode's products: tensor cores on CUDA from 17
 * tokens for BF16 weights and the quantized formats kern_matmul_tc takes, matmul otherwise) over
 * bf16-valued x; the reference is the CPU's matmul
 * over the same x either way. */
static void case_matmul_op(harness *h, const wfmt_case *f, int n_out, int n_in, int n_tokens, int x_pad, int y_pad,
                           bool bf16)
{
    const char *op = bf16 ? "matmul_bf16" : "matmul";
    tcase tc;
    if (!case_begin(h, &tc, op, BOUND_REDUCTION, "n_out=%d n_in=%d n_tokens=%d x_stride=%d y_stride=%d %s", n_out,
                    n_in, n_tokens, n_in + x_pad, n_out + y_pad, f->name))
        return;
    if (bf16 && !tc.dut->ops->matmul_bf16) {
        tc.unsupported = true;
        printf("      unsupported by %s: no matmul_bf16 op\n", h->dut_name);
        case_end(&tc);
        return;
    }
    test_weight tw;
    weight_make(&tw, f, n_out, n_in, &tc.r);
    layout lx = rows(n_tokens, n_in, n_in + x_pad), ly = rows(n_tokens, n_out, n_out + y_pad);
    gbuf x = {0}, y = {0};
    bool made = bf16 ? gbuf_random_bf16(&tc, &x, &lx, -1.0f, 1.0f) : gbuf_random(&tc, &x, &lx, -1.0f, 1.0f);
    if (made && gbuf_output(&tc, &y, layout_extent(&ly)) &&
        op_ok(&tc, h->cpu->ops->matmul(h->cpu, x.cpu, lx.row_stride, &tw.w, y.cpu, ly.row_stride, n_tokens), true,
              "matmul") &&
        op_ok(&tc,
              (bf16 ? tc.dut->ops->matmul_bf16 : tc.dut->ops->matmul)(tc.dut, x.dut, lx.row_stride, &tw.w, y.dut,
                                                                      ly.row_stride, n_tokens),
              false, op))
        check_f32(&tc, &y, &ly, "y");
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &y);
    weight_free(&tw);
    case_end(&tc);
}

static void case_matmul(harness *h, const wfmt_case *f, int n_out, int n_in, int n_tokens, int x_pad, int y_pad)
{
    case_matmul_op(h, f, n_out, n_in, n_tokens, x_pad, y_pad, false);
}

static void case_matmul_bf16(harness *h, const wfmt_case *f, int n_out, int n_in, int n_tokens, int x_pad,
                             int y_pad)
{
    case_matmul_op(h, f, n_out, n_in, n_tokens, x_pad, y_pad, true);
}

/* ---- elementwise ------------------------------------------------------------------------------ */

/* alias: out is x (same stride). */
static void case_rmsnorm(harness *h, eng_dtype dt, int d, int n_rows, int x_pad, int out_pad, bool alias)
{
    tcase tc;
    if (!case_begin(h, &tc, "rmsnorm", BOUND_ELEMENTWISE, "d=%d n_rows=%d x_stride=%d out_stride=%d%s w %s", d,
                    n_rows, d + x_pad, alias ? d + x_pad : d + out_pad, alias ? " in place" : "", dtype_name(dt)))
        return;
    test_vec w;
    vec_make(&w, dt, d, NULL, 0.5f, 1.5f, &tc.r);
    float eps = 1e-6f;
    layout lx = rows(n_rows, d, d + x_pad), lo = alias ? lx : rows(n_rows, d, d + out_pad);
    gbuf x = {0}, o = {0};
    bool ok = gbuf_random(&tc, &x, &lx, -2.0f, 2.0f) && (alias || gbuf_output(&tc, &o, layout_extent(&lo)));
    gbuf *out = alias ? &x : &o;
    if (ok && op_ok(&tc, h->cpu->ops->rmsnorm(h->cpu, x.cpu, lx.row_stride, &w.v, eps, out->cpu, lo.row_stride, n_rows),
                    true, "rmsnorm") &&
        op_ok(&tc, tc.dut->ops->rmsnorm(tc.dut, x.dut, lx.row_stride, &w.v, eps, out->dut, lo.row_stride, n_rows),
              false, "rmsnorm"))
        check_f32(&tc, out, &lo, "out");
    gbuf_free(&tc, &x);
    if (!alias)
        gbuf_free(&tc, &o);
    vec_free(&w);
    case_end(&tc);
}

/* alias: 0 out separate, 1 out is a, 2 out is b. */
static void case_add(harness *h, size_t n, int alias)
{
    tcase tc;
    static const char *const names[3] = {"", " out=a", " out=b"};
    if (!case_begin(h, &tc, "add", BOUND_ELEMENTWISE, "n=%zu%s", n, names[alias]))
        return;
    layout l = rows(1, (int64_t)n, (int64_t)n);
    gbuf a = {0}, b = {0}, o = {0};
    bool ok = gbuf_random(&tc, &a, &l, -1.0f, 1.0f) && gbuf_random(&tc, &b, &l, -1.0f, 1.0f) &&
              (alias || gbuf_output(&tc, &o, n));
    gbuf *out = alias == 1 ? &a : alias == 2 ? &b : &o;
    if (ok && op_ok(&tc, h->cpu->ops->add(h->cpu, a.cpu, b.cpu, out->cpu, n), true, "add") &&
        op_ok(&tc, tc.dut->ops->add(tc.dut, a.dut, b.dut, out->dut, n), false, "add"))
        check_f32(&tc, out, &l, "out");
    gbuf_free(&tc, &a);
    gbuf_free(&tc, &b);
    gbuf_free(&tc, &o);
    case_end(&tc);
}

/* Where rope's tokens sit (pos[t], one position per token):
 *   POS_RUN:    pos0 + t (one sequence);
 *   POS_SEQS:   a batch of sequences of 1 .. 7 tokens, each a run from its own offset
 *               (non-monotonic, non-contiguous; all in [0, pos0], the first run ends at pos0);
 *   POS_RANDOM: each token anywhere in [0, pos0] (repeats allowed; the first two are pos0 and 0). */
enum { POS_RUN, POS_SEQS, POS_RANDOM };

typedef struct rope_case {
    int n_tokens, n_head;
    int head_width;         /* elements of each head (the rotated slice is inside) */
    int64_t token_stride, head_stride;
    int x_offset;           /* the op's x is the buffer + x_offset (DeepSeek's k_pe: ckv + r, one
                               head); the data fills head_width elements of each head from the
                               buffer's row start */
    int rope_offset, d_rope;
    bool interleaved;
    float cos_sin_scale;
    int pos0;
    float base;             /* inv_freq[j] = base^(-2j / d_rope) */
    int pos_kind;           /* POS_RUN, POS_SEQS, POS_RANDOM */
} rope_case;

static void rope_positions(const rope_case *p, rng *r, int32_t *pos)
{
    if (p->pos_kind == POS_RANDOM) {
        for (int t = 0; t < p->n_tokens; t++)
            pos[t] = t == 0 ? p->pos0 : t == 1 ? 0 : rng_int(r, p->pos0 + 1);
        return;
    }
    int len = p->pos_kind == POS_RUN ? p->n_tokens : 1 + rng_int(r, 7), i = 0;
    int start = p->pos_kind == POS_RUN ? p->pos0 : p->pos0 - len + 1 > 0 ? p->pos0 - len + 1 : 0;
    for (int t = 0; t < p->n_tokens; t++, i++) {
        if (i == len) { /* the next sequence */
            len = 1 + rng_int(r, 7);
            start = rng_int(r, p->pos0 + 2 - len > 1 ? p->pos0 + 2 - len : 1);
            i = 0;
        }
        pos[t] = start + i;
    }
}

static void case_rope(harness *h, rope_case p)
{
    static const char *const kinds[] = {"from ", "seqs in 0..", "random in 0.."};
    tcase tc;
    if (!case_begin(h, &tc, "rope", BOUND_ELEMENTWISE,
                    "n_tokens=%d n_head=%d d_rope=%d offset=%d strides=%lld,%lld %s scale=%g pos %s%d", p.n_tokens,
                    p.n_head, p.d_rope, p.rope_offset, (long long)p.token_stride, (long long)p.head_stride,
                    p.interleaved ? "interleaved" : "half-split", (double)p.cos_sin_scale, kinds[p.pos_kind], p.pos0))
        return;
    float *inv_freq = xmalloc((size_t)(p.d_rope / 2) * sizeof(float));
    for (int j = 0; j < p.d_rope / 2; j++)
        inv_freq[j] = powf(p.base, -2.0f * (float)j / (float)p.d_rope);
    eng_rope rope = {p.d_rope, p.interleaved, p.cos_sin_scale, inv_freq};
    int32_t *positions = xmalloc((size_t)p.n_tokens * sizeof *positions);
    rope_positions(&p, &tc.r, positions);
    /* the whole heads hold data; only the rotated slices may change */
    layout lh = {p.n_tokens, p.token_stride, p.n_head, p.head_stride, p.head_width, 0};
    layout lr = {p.n_tokens, p.token_stride, p.n_head, p.head_stride, p.d_rope, p.x_offset + p.rope_offset};
    gbuf x = {0}, pos = {0};
    if (gbuf_random(&tc, &x, &lh, -1.0f, 1.0f) && gbuf_values(&tc, &pos, positions, (size_t)p.n_tokens) &&
        op_ok(&tc, h->cpu->ops->rope(h->cpu, (float *)x.cpu + p.x_offset, p.n_tokens, p.n_head, p.token_stride,
                                     p.head_stride, p.rope_offset, pos.cpu, &rope), true, "rope") &&
        op_ok(&tc, tc.dut->ops->rope(tc.dut, (float *)x.dut + p.x_offset, p.n_tokens, p.n_head, p.token_stride,
                                     p.head_stride, p.rope_offset, pos.dut, &rope), false, "rope"))
        check_f32(&tc, &x, &lr, "x");
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &pos);
    free(positions);
    free(inv_freq);
    case_end(&tc);
}

/* fused: gate and up halves of one [n_tokens][2 * d_ff] row (Phi-3's gate_up_proj); in_place: out
 * is gate with gate's stride (eng_mlp_forward). */
static void case_swiglu(harness *h, int n_tokens, int d_ff, bool fused, bool in_place, int out_pad)
{
    tcase tc;
    if (!case_begin(h, &tc, "swiglu", BOUND_ELEMENTWISE, "n_tokens=%d d_ff=%d%s%s out_stride=%d", n_tokens, d_ff,
                    fused ? " gate|up rows" : "", in_place ? " out=gate" : "", d_ff + out_pad))
        return;
    int64_t gs = fused ? 2 * (int64_t)d_ff : d_ff;
    layout lg = rows(n_tokens, fused ? 2 * d_ff : d_ff, gs), lu = rows(n_tokens, d_ff, d_ff);
    layout lgate = rows(n_tokens, d_ff, gs), lo = in_place ? lgate : rows(n_tokens, d_ff, d_ff + out_pad);
    gbuf g = {0}, u = {0}, o = {0};
    bool ok = gbuf_random(&tc, &g, &lg, -6.0f, 6.0f) && (fused || gbuf_random(&tc, &u, &lu, -2.0f, 2.0f)) &&
              (in_place || gbuf_output(&tc, &o, layout_extent(&lo)));
    float *up_cpu = fused ? (float *)g.cpu + d_ff : u.cpu, *up_dut = fused ? (float *)g.dut + d_ff : u.dut;
    int64_t us = fused ? gs : d_ff;
    gbuf *out = in_place ? &g : &o;
    if (ok && op_ok(&tc, h->cpu->ops->swiglu(h->cpu, g.cpu, gs, up_cpu, us, out->cpu, lo.row_stride, n_tokens, d_ff),
                    true, "swiglu") &&
        op_ok(&tc, tc.dut->ops->swiglu(tc.dut, g.dut, gs, up_dut, us, out->dut, lo.row_stride, n_tokens, d_ff),
              false, "swiglu"))
        check_f32(&tc, out, &lo, "out");
    gbuf_free(&tc, &g);
    gbuf_free(&tc, &u);
    gbuf_free(&tc, &o);
    case_end(&tc);
}

/* ---- the KV cache: kv_write ------------------------------------------------------------------ */

typedef struct kv_case {
    int n_tokens, n_head;
    int64_t width;
    int64_t src_row_stride, src_head_stride; /* src_head_stride 0: one source row for every head */
    int src_offset;          /* src is the buffer + src_offset (k or v inside a fused q|k|v row) */
    int64_t cache_row_stride, cache_head_stride;
    int cache_offset;        /* cache is the buffer + cache_offset (k_pe after k_nope in a head) */
    int n_cache_rows;        /* >= n_tokens */
    int n_skip;              /* tokens with a negative slot (the first token is one of them) */
} kv_case;

/* Source values that take every branch of the bf16 rounding: ties to even (down and up), just
 * below and above a tie, the largest finite f32 (rounds to inf), infinities, quiet and signalling
 * NaNs of both signs (all become 0x7fc0), subnormals (rounded, not flushed) and -0. */
static const uint32_t BF16_EDGES[] = {
    0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u, 0xbf808000u, 0xbf818000u, 0x7f7fffffu,
    0xff7fffffu, 0x7f7f8000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u,
    0xff800001u, 0x00008000u, 0x00018000u, 0x0000ffffu, 0x80008001u, 0x00000001u, 0x80000000u,
};

/* The tokens go to distinct cache rows scattered over the whole cache (the last row included);
 * n_skip of them (the first, then random ones) have a negative slot and write nothing. The whole
 * cache starts random (NaN in the gaps between heads and rows), and the whole of it must come
 * back bit for bit as the CPU left it, which must be what eng_backend_ops.kv_write describes
 * (checked on the host: the rows no token is written to stay as they were): for an F32 cache a
 * copy, for a BF16 cache each value's bf16_from_f32 (its source then holds BF16_EDGES values at
 * random elements besides the random ones). */
static void case_kv_write(harness *h, kv_case p, eng_kv_dtype kv)
{
    tcase tc;
    if (!case_begin(h, &tc, "kv_write", 0.0,
                    "n_tokens=%d n_head=%d width=%lld src %lld,%lld cache %lld,%lld+%d rows=%d skip=%d %s",
                    p.n_tokens, p.n_head, (long long)p.width, (long long)p.src_row_stride,
                    (long long)p.src_head_stride, (long long)p.cache_row_stride, (long long)p.cache_head_stride,
                    p.cache_offset, p.n_cache_rows, p.n_skip, kv_name(kv)))
        return;
    int32_t *perm = xmalloc((size_t)p.n_cache_rows * sizeof *perm);
    for (int i = 0; i < p.n_cache_rows; i++)
        perm[i] = i;
    for (int i = p.n_cache_rows - 1; i > 0; i--) {
        int j = rng_int(&tc.r, i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < p.n_cache_rows; i++) /* the last token writes the last row */
        if (perm[i] == p.n_cache_rows - 1) {
            perm[i] = perm[p.n_tokens - 1];
            perm[p.n_tokens - 1] = p.n_cache_rows - 1;
        }
    for (int k = 0; k < p.n_skip; k++) /* -1, -2, ... (slot -1 of rows narrower than GUARD is in the
                                          guard band); the last token writes unless it is the first */
        perm[k == 0 || p.n_tokens < 3 ? 0 : 1 + rng_int(&tc.r, p.n_tokens - 2)] = -1 - k;
    layout ls = {p.n_tokens, p.src_row_stride, p.src_head_stride ? p.n_head : 1, p.src_head_stride, p.width,
                 p.src_offset};
    layout lc = {p.n_cache_rows, p.cache_row_stride, p.n_head, p.cache_head_stride, p.width, p.cache_offset};
    gbuf src = {0}, cache = {0}, slot = {0};
    bool ok;
    if (kv == ENG_KV_BF16) {
        uint32_t *sbits = random_bits(&tc, &ls, -1.0f, 1.0f);
        for (int64_t r = 0; r < ls.n_rows; r++)
            for (int64_t sb = 0; sb < ls.n_sub; sb++)
                for (int64_t c = 0; c < ls.width; c++)
                    if (rng_int(&tc.r, 8) == 0)
                        sbits[layout_at(&ls, r, sb, c)] =
                            BF16_EDGES[rng_int(&tc.r, (int)(sizeof BF16_EDGES / sizeof BF16_EDGES[0]))];
        uint32_t *cbits = random_bits(&tc, &lc, -1.0f, 1.0f);
        ok = gbuf_make(&tc, &src, layout_extent(&ls), sbits, NAN_BITS) &&
             gbuf_make_bf16(&tc, &cache, layout_extent(&lc), cbits);
        free(sbits);
        free(cbits);
    } else {
        ok = gbuf_random(&tc, &src, &ls, -1.0f, 1.0f) && gbuf_random(&tc, &cache, &lc, -1.0f, 1.0f);
    }
    const size_t es = kv == ENG_KV_BF16 ? 2 : 4; /* bytes per cache element */
    if (ok && gbuf_values(&tc, &slot, perm, (size_t)p.n_tokens) &&
        op_ok(&tc, h->cpu->ops->kv_write(h->cpu, (uint8_t *)cache.cpu + es * (size_t)p.cache_offset, kv,
                                         p.cache_row_stride, p.cache_head_stride, (float *)src.cpu + p.src_offset,
                                         p.src_row_stride, p.src_head_stride, p.n_head, p.width, slot.cpu,
                                         p.n_tokens),
              true, "kv_write") &&
        op_ok(&tc, tc.dut->ops->kv_write(tc.dut, (uint8_t *)cache.dut + es * (size_t)p.cache_offset, kv,
                                         p.cache_row_stride, p.cache_head_stride, (float *)src.dut + p.src_offset,
                                         p.src_row_stride, p.src_head_stride, p.n_head, p.width, slot.dut,
                                         p.n_tokens),
              false, "kv_write")) {
        /* the reference against the definition, element by element (a bf16 cache's elements as
           uint32 holding 16 bits; n_el includes an odd bf16 cache's pad, which nothing writes) */
        const size_t n_el = cache.n * 4 / es;
        uint32_t *want = xmalloc(n_el * 4);
        for (size_t i = 0; i < n_el; i++)
            want[i] = kv_elem(cache.init + GUARD, kv, i);
        const uint32_t *sbits = src.cpu;
        for (int t = 0; t < p.n_tokens; t++)
            for (int hd = 0; perm[t] >= 0 && hd < p.n_head; hd++)
                for (int64_t i = 0; i < p.width; i++) {
                    uint32_t x = sbits[p.src_offset + t * p.src_row_stride + hd * p.src_head_stride + i];
                    want[layout_at(&lc, perm[t], hd, i)] = kv == ENG_KV_BF16 ? bf16_from_f32(bits_f32(x)) : x;
                }
        for (size_t i = 0, n_bad = 0; i < n_el; i++)
            if (kv_elem(cache.cpu, kv, i) != want[i] && n_bad++ < 2)
                fail(&tc, "cpu reference: cache element %zu is 0x%08x, expected 0x%08x", i,
                     kv_elem(cache.cpu, kv, i), want[i]);
        free(want);
        uint32_t *got = gbuf_fetch(&tc, &cache);
        if (got) {
            size_t n_diff = 0;
            for (size_t i = 0; i < n_el; i++) {
                uint32_t g = kv_elem(got + GUARD, kv, i), c = kv_elem(cache.cpu, kv, i);
                if (g != c && n_diff++ < MAX_FAIL_LINES)
                    fail(&tc, "cache element %zu (row %lld): 0x%08x, cpu 0x%08x", i,
                         (long long)((int64_t)i - p.cache_offset) / p.cache_row_stride, g, c);
            }
            tc.max_rel = (double)n_diff / (double)n_el; /* the fraction of differing elements */
            uint8_t *all = xmalloc(cache.n);
            memset(all, 1, cache.n);
            check_guards(&tc, &cache, got, all, "cache");
            free(all);
            free(got);
        }
    }
    gbuf_free(&tc, &src);
    gbuf_free(&tc, &cache);
    gbuf_free(&tc, &slot);
    free(perm);
    case_end(&tc);
}

/* ---- paged batches of sequences ------------------------------------------------------------ */

#define MAX_SEQ 16

/* A batch: sequence s has n_tokens[s] query tokens (0 allowed) from position pos0[s]. */
typedef struct seq_spec {
    int n_seq;
    int n_tokens[MAX_SEQ], pos0[MAX_SEQ];
} seq_spec;

static seq_spec seq_one(int n_tokens, int pos0)
{
    return (seq_spec){1, {n_tokens}, {pos0}};
}

static seq_spec seq_list(int n_seq, const int *n_tokens, const int *pos0)
{
    seq_spec q = {n_seq, {0}, {0}};
    for (int s = 0; s < n_seq; s++) {
        q.n_tokens[s] = n_tokens[s];
        q.pos0[s] = pos0[s];
    }
    return q;
}

/* n_seq sequences decoding one token each, from positions spread evenly over [pos_lo, pos_hi]. */
static seq_spec seq_decode(int n_seq, int pos_lo, int pos_hi)
{
    seq_spec q = {n_seq, {0}, {0}};
    for (int s = 0; s < n_seq; s++) {
        q.n_tokens[s] = 1;
        q.pos0[s] = n_seq == 1 ? pos_lo : pos_lo + (int)((int64_t)(pos_hi - pos_lo) * s / (n_seq - 1));
    }
    return q;
}

/* "n_tokens=5 pos0=3", "tokens@pos0 7@0,0@12,33@100", or "16 seqs x 1 tokens @3990..4200". */
static void seq_desc(const seq_spec *q, char *buf, size_t size)
{
    if (q->n_seq == 1) {
        snprintf(buf, size, "n_tokens=%d pos0=%d", q->n_tokens[0], q->pos0[0]);
        return;
    }
    bool same = true;
    int lo = q->pos0[0], hi = q->pos0[0];
    for (int s = 1; s < q->n_seq; s++) {
        same = same && q->n_tokens[s] == q->n_tokens[0];
        lo = q->pos0[s] < lo ? q->pos0[s] : lo;
        hi = q->pos0[s] > hi ? q->pos0[s] : hi;
    }
    if (same && q->n_seq > 4) {
        snprintf(buf, size, "%d seqs x %d tokens @%d..%d", q->n_seq, q->n_tokens[0], lo, hi);
        return;
    }
    size_t len = (size_t)snprintf(buf, size, "tokens@pos0");
    for (int s = 0; s < q->n_seq && len < size; s++)
        len += (size_t)snprintf(buf + len, size - len, "%s%d@%d", s ? "," : " ", q->n_tokens[s], q->pos0[s]);
}

/* A batch over a paged cache: each sequence's blocks are drawn from a random permutation of the
 * cache's blocks (so sequences interleave in memory), plus two spare blocks no sequence owns;
 * block_table has one column more than the longest sequence needs, and its entries past a
 * sequence's last block name the spare blocks. live marks the rows that hold a key inside their
 * sequence's context: every other row is NaN in the caches paged_fill makes. */
typedef struct paged {
    int block_size, n_blocks;
    int64_t n_rows;          /* cache rows: n_blocks * block_size */
    uint8_t *live;           /* [n_rows] */
    eng_kv_batch cpu, dut;   /* the batch with host arrays / with the backend under test's */
    gbuf seq_start, seq_pos0, block_table;
} paged;

static bool paged_make(tcase *tc, paged *pg, const seq_spec *q, int block_size)
{
    memset(pg, 0, sizeof *pg);
    int B = block_size, n_need = 0, max_nb = 0, max_ctx = 0, max_seq_tokens = 0;
    int32_t start[MAX_SEQ + 1], pos0[MAX_SEQ];
    start[0] = 0;
    for (int s = 0; s < q->n_seq; s++) {
        int ctx = q->pos0[s] + q->n_tokens[s], nb = (int)ceil_div(ctx, B);
        n_need += nb;
        max_nb = nb > max_nb ? nb : max_nb;
        max_ctx = ctx > max_ctx ? ctx : max_ctx;
        max_seq_tokens = q->n_tokens[s] > max_seq_tokens ? q->n_tokens[s] : max_seq_tokens;
        start[s + 1] = start[s] + q->n_tokens[s];
        pos0[s] = q->pos0[s];
    }
    int max_blocks = max_nb + 1, n_spare = 2;
    pg->block_size = B;
    pg->n_blocks = n_need + n_spare;
    pg->n_rows = (int64_t)pg->n_blocks * B;
    int32_t *perm = xmalloc((size_t)pg->n_blocks * sizeof *perm);
    for (int i = 0; i < pg->n_blocks; i++)
        perm[i] = i;
    for (int i = pg->n_blocks - 1; i > 0; i--) {
        int j = rng_int(&tc->r, i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *table = xmalloc((size_t)q->n_seq * (size_t)max_blocks * sizeof *table);
    pg->live = xmalloc((size_t)pg->n_rows);
    memset(pg->live, 0, (size_t)pg->n_rows);
    for (int s = 0, next = 0; s < q->n_seq; s++) {
        int ctx = q->pos0[s] + q->n_tokens[s];
        for (int b = 0; b < max_blocks; b++) {
            int32_t id = b < ceil_div(ctx, B) ? perm[next++] : perm[n_need + (s + b) % n_spare];
            table[(size_t)s * (size_t)max_blocks + (size_t)b] = id;
            for (int j = b * B; j < (b + 1) * B && j < ctx; j++)
                pg->live[(int64_t)id * B + j % B] = 1;
        }
    }
    bool ok = gbuf_values(tc, &pg->seq_start, start, (size_t)q->n_seq + 1) &&
              gbuf_values(tc, &pg->seq_pos0, pos0, (size_t)q->n_seq) &&
              gbuf_values(tc, &pg->block_table, table, (size_t)q->n_seq * (size_t)max_blocks);
    pg->cpu = (eng_kv_batch){
        .n_seq = q->n_seq, .n_tokens = start[q->n_seq], .max_seq_tokens = max_seq_tokens, .max_ctx = max_ctx,
        .block_size = B, .max_blocks = max_blocks,
        .seq_start = pg->seq_start.cpu, .seq_pos0 = pg->seq_pos0.cpu, .block_table = pg->block_table.cpu,
    };
    pg->dut = pg->cpu;
    pg->dut.seq_start = pg->seq_start.dut;
    pg->dut.seq_pos0 = pg->seq_pos0.dut;
    pg->dut.block_table = pg->block_table.dut;
    free(table);
    free(perm);
    return ok;
}

static void paged_free(tcase *tc, paged *pg)
{
    gbuf_free(tc, &pg->seq_start);
    gbuf_free(tc, &pg->seq_pos0);
    gbuf_free(tc, &pg->block_table);
    free(pg->live);
    memset(pg, 0, sizeof *pg);
}

/* A cache of pg's rows, row_stride elements apart: uniform values in [-1, 1) in the first width
 * elements of the live rows, NaN everywhere else (dead rows, gaps, guard bands). ENG_KV_BF16: the
 * values are rounded to bf16 and b holds bf16 elements (NaN 0x7fc0); when wide is not NULL it gets
 * the same cache widened to f32 (each element the f32 its bf16 stands for, NaN where b has NaN). */
static bool paged_fill(tcase *tc, gbuf *b, gbuf *wide, const paged *pg, int64_t width, int64_t row_stride,
                       eng_kv_dtype kv)
{
    layout l = rows(pg->n_rows, width, row_stride);
    size_t n = layout_extent(&l);
    uint32_t *bits = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        bits[i] = NAN_BITS;
    for (int64_t r = 0; r < pg->n_rows; r++)
        for (int64_t c = 0; pg->live[r] && c < width; c++) {
            float x = rng_f(&tc->r, -1.0f, 1.0f);
            bits[layout_at(&l, r, 0, c)] = kv == ENG_KV_BF16 ? (uint32_t)bf16_from_f32(x) << 16 : f32_bits(x);
        }
    bool ok = kv == ENG_KV_BF16 ? gbuf_make_bf16(tc, b, n, bits) : gbuf_make(tc, b, n, bits, NAN_BITS);
    if (ok && wide)
        ok = gbuf_make(tc, wide, n, bits, NAN_BITS);
    free(bits);
    return ok;
}

/* The backend under test gave the same bits for the same op over a bf16 cache (a) and over the
 * cache widened to f32 (b): attention reads a bf16 element as the f32 it stands for, so the two
 * runs are the same computation (whole buffers, guard bands included). */
static void check_same_bits(tcase *tc, const gbuf *a, const gbuf *b, const char *what)
{
    uint32_t *ga = gbuf_fetch(tc, a), *gb = ga ? gbuf_fetch(tc, b) : NULL;
    size_t n_diff = 0;
    for (size_t i = 0; gb && i < a->n + 2 * GUARD; i++)
        if (ga[i] != gb[i] && n_diff++ < 2)
            fail(tc, "%s: element %lld is 0x%08x over the bf16 cache, 0x%08x over it widened to f32", what,
                 (long long)i - GUARD, ga[i], gb[i]);
    if (n_diff > 2)
        fail(tc, "%s: %zu elements differ between the bf16 cache and its f32 widening", what, n_diff);
    free(ga);
    free(gb);
}

/* The CPU reference's output must be finite: it read no NaN row (no key outside a context). */
static bool check_cpu_finite(tcase *tc, const gbuf *b, const layout *l, const char *what)
{
    const float *ref = b->cpu;
    for (int64_t r = 0; r < l->n_rows; r++)
        for (int64_t s = 0; s < l->n_sub; s++)
            for (int64_t c = 0; c < l->width; c++)
                if (!isfinite(ref[layout_at(l, r, s, c)])) {
                    fail(tc, "cpu reference: %s element [%lld][%lld][%lld] is %g (a key outside its context?)",
                         what, (long long)r, (long long)s, (long long)c, (double)ref[layout_at(l, r, s, c)]);
                    return false;
                }
    return true;
}

/* ---- attention ------------------------------------------------------------------------------ */

typedef struct attn_case {
    int n_head, n_head_kv, d_qk, d_v;
    int q_pad, kv_pad, out_pad; /* extra elements per row (q, k, v, out rows strided) */
} attn_case;

/* Over an F32 or a BF16 cache; a BF16 case also runs the backend under test over the same cache
 * widened to f32 (check_same_bits). */
static void case_attention_op(harness *h, attn_case p, seq_spec sq, int block_size, eng_kv_dtype kv, bool bf16_op)
{
    tcase tc;
    char seqs[128];
    seq_desc(&sq, seqs, sizeof seqs);
    const char *op = bf16_op ? "attention_bf16" : "attention";
    if (!case_begin(h, &tc, op, bf16_op ? BOUND_ATTN_BF16 : BOUND_REDUCTION, "heads=%d/%d d_qk=%d d_v=%d block=%d %s%s%s", p.n_head,
                    p.n_head_kv, p.d_qk, p.d_v, block_size, seqs, p.q_pad || p.kv_pad || p.out_pad ? " strided" : "",
                    kv == ENG_KV_BF16 ? " kv bf16" : ""))
        return;
    if (bf16_op && !tc.dut->ops->attention_bf16) {
        tc.unsupported = true;
        printf("      unsupported by %s: no attention_bf16 op\n", h->dut_name);
        case_end(&tc);
        return;
    }
    const bool bf16 = kv == ENG_KV_BF16;
    paged pg;
    bool ok = paged_make(&tc, &pg, &sq, block_size);
    int n_tokens = pg.cpu.n_tokens;
    layout lq = rows(n_tokens, (int64_t)p.n_head * p.d_qk, (int64_t)p.n_head * p.d_qk + p.q_pad);
    layout lo = rows(n_tokens, (int64_t)p.n_head * p.d_v, (int64_t)p.n_head * p.d_v + p.out_pad);
    int64_t k_stride = (int64_t)p.n_head_kv * p.d_qk + p.kv_pad, v_stride = (int64_t)p.n_head_kv * p.d_v + p.kv_pad;
    gbuf q = {0}, k = {0}, v = {0}, o = {0}, kw = {0}, vw = {0}, ow = {0};
    ok = ok && (bf16_op ? gbuf_random_bf16(&tc, &q, &lq, -1.0f, 1.0f) : gbuf_random(&tc, &q, &lq, -1.0f, 1.0f)) &&
         paged_fill(&tc, &k, bf16 ? &kw : NULL, &pg, (int64_t)p.n_head_kv * p.d_qk, k_stride, kv) &&
         paged_fill(&tc, &v, bf16 ? &vw : NULL, &pg, (int64_t)p.n_head_kv * p.d_v, v_stride, kv) &&
         gbuf_output(&tc, &o, layout_extent(&lo)) &&
         (!bf16 || bf16_op || gbuf_output(&tc, &ow, layout_extent(&lo)));
    eng_attn_args a = {
        .batch = pg.cpu, .n_head = p.n_head, .n_head_kv = p.n_head_kv,
        .d_qk = p.d_qk, .d_v = p.d_v, .scale = 1.0f / sqrtf((float)p.d_qk),
        .q = q.cpu, .q_stride = lq.row_stride,
        .kv_dtype = kv,
        .k = k.cpu, .k_stride = k_stride,
        .v = v.cpu, .v_stride = v_stride,
        .out = o.cpu, .out_stride = lo.row_stride,
    };
    if (ok && op_ok(&tc, h->cpu->ops->attention(h->cpu, &a), true, "attention") &&
        check_cpu_finite(&tc, &o, &lo, "out")) {
        a.batch = pg.dut, a.q = q.dut, a.k = k.dut, a.v = v.dut, a.out = o.dut;
        if (op_ok(&tc, (bf16_op ? tc.dut->ops->attention_bf16 : tc.dut->ops->attention)(tc.dut, &a), false, op)) {
            check_f32(&tc, &o, &lo, "out");
            a.kv_dtype = ENG_KV_F32, a.k = kw.dut, a.v = vw.dut, a.out = ow.dut;
            if (bf16 && !bf16_op && op_ok(&tc, tc.dut->ops->attention(tc.dut, &a), false, "attention over the widened cache"))
                check_same_bits(&tc, &o, &ow, "out");
        }
    }
    gbuf_free(&tc, &q);
    gbuf_free(&tc, &k);
    gbuf_free(&tc, &v);
    gbuf_free(&tc, &o);
    gbuf_free(&tc, &kw);
    gbuf_free(&tc, &vw);
    gbuf_free(&tc, &ow);
    paged_free(&tc, &pg);
    case_end(&tc);
}

static void case_attention(harness *h, attn_case p, seq_spec sq, int block_size, eng_kv_dtype kv)
{
    case_attention_op(h, p, sq, block_size, kv, false);
}

/* attention_bf16 over bf16 caches and bf16 q: every head-dim pair kern_attention_tc has and two
 * it has not (24 / 24, 128 / 100: attention runs them), GQA 1:1 .. 8:1, block sizes 1, 5, 16, 64;
 * prefills of 16 .. 600 tokens (one or several 64-row tiles, several key tiles, a context before
 * them), batches mixing prefills with decode tokens and an empty sequence, q / out strided and
 * cache rows strided by whole 16-byte units (the tensor-core path) or not (attention), and
 * batches below the prefill threshold (attention). */
static void run_attention_bf16(harness *h)
{
    static const int dims[][2] = {{32, 32}, {48, 48}, {64, 64}, {128, 128}, {48, 32}, {96, 64}, {192, 128},
                                  {24, 24}, {128, 100}};
    static const int ratio[] = {1, 4, 5, 8}, blocks[] = {16, 5, 1, 64};
    const eng_kv_dtype kv = ENG_KV_BF16;
    for (int d = 0; d < 9; d++) {
        int r = d % 4, n_kv = d % 3 ? 2 : 1;
        seq_spec sq = d % 2 ? seq_list(3, (int[]){40, 0, 17}, (int[]){0, 6, 30}) : seq_one(70, d);
        case_attention_op(h, (attn_case){ratio[r] * n_kv, n_kv, dims[d][0], dims[d][1], 0, 0, 0}, sq,
                          blocks[d % 4], kv, true);
    }
    /* strided q / out, cache rows padded by 8 (tensor cores) and by 3 (attention) */
    case_attention_op(h, (attn_case){8, 2, 64, 64, 2 * 2 * 64, 8, 5}, seq_list(2, (int[]){33, 2}, (int[]){9, 0}), 16,
                      kv, true);
    case_attention_op(h, (attn_case){8, 2, 64, 64, 3, 3, 0}, seq_one(20, 0), 16, kv, true);
    /* below the prefill threshold: decode tokens only */
    case_attention_op(h, (attn_case){16, 2, 128, 128, 0, 0, 0}, seq_list(3, (int[]){1, 1, 15}, (int[]){0, 90, 7}), 16,
                      kv, true);
    if (h->small)
        return;
    /* a prefill + decode mix with an empty sequence; several row and key tiles */
    case_attention_op(h, (attn_case){16, 2, 128, 128, 0, 0, 0},
                      seq_list(4, (int[]){130, 0, 1, 40}, (int[]){0, 5, 300, 64}), 16, kv, true);
    case_attention_op(h, (attn_case){4, 4, 192, 128, 0, 0, 0}, seq_one(300, 0), 64, kv, true);
    case_attention_op(h, (attn_case){32, 4, 128, 128, 0, 0, 0}, seq_one(257, 1000), 16, kv, true);
    /* Phi-4's heads (40 / 10) over a chunk after a long context */
    case_attention_op(h, (attn_case){40, 10, 128, 128, 0, 0, 0}, seq_one(600, 1500), 16, kv, true);
}

typedef struct mla_case {
    int n_head, kv_lora_rank, d_nope, d_rope, d_v, q_pad;
    int fmt; /* index into FORMATS for kv_b */
} mla_case;

/* Over an F32 or a BF16 latent cache, as case_attention. */
static void case_mla(harness *h, mla_case p, seq_spec sq, int block_size, eng_kv_dtype kv)
{
    tcase tc;
    const wfmt_case *f = &FORMATS[p.fmt];
    char seqs[128];
    seq_desc(&sq, seqs, sizeof seqs);
    if (!case_begin(h, &tc, "mla_absorbed", BOUND_REDUCTION,
                    "heads=%d rank=%d d_nope=%d d_rope=%d d_v=%d block=%d %s%s kv_b %s%s", p.n_head, p.kv_lora_rank,
                    p.d_nope, p.d_rope, p.d_v, block_size, seqs, p.q_pad ? " strided" : "", f->name,
                    kv == ENG_KV_BF16 ? " kv bf16" : ""))
        return;
    const bool bf16 = kv == ENG_KV_BF16;
    int d_qk = p.d_nope + p.d_rope;
    test_weight kv_b;
    weight_make(&kv_b, f, (int64_t)p.n_head * (p.d_nope + p.d_v), p.kv_lora_rank, &tc.r);
    paged pg;
    bool ok = paged_make(&tc, &pg, &sq, block_size);
    int n_tokens = pg.cpu.n_tokens;
    layout lq = rows(n_tokens, (int64_t)p.n_head * d_qk, (int64_t)p.n_head * d_qk + p.q_pad);
    layout lo = rows(n_tokens, (int64_t)p.n_head * p.d_v, (int64_t)p.n_head * p.d_v);
    gbuf q = {0}, ckv = {0}, kpe = {0}, o = {0}, ckvw = {0}, kpew = {0}, ow = {0};
    ok = ok && gbuf_random(&tc, &q, &lq, -1.0f, 1.0f) &&
         paged_fill(&tc, &ckv, bf16 ? &ckvw : NULL, &pg, p.kv_lora_rank, p.kv_lora_rank, kv) &&
         paged_fill(&tc, &kpe, bf16 ? &kpew : NULL, &pg, p.d_rope, p.d_rope, kv) &&
         gbuf_output(&tc, &o, layout_extent(&lo)) && (!bf16 || gbuf_output(&tc, &ow, layout_extent(&lo)));
    eng_mla_args a = {
        .batch = pg.cpu, .n_head = p.n_head,
        .d_nope = p.d_nope, .d_rope = p.d_rope, .d_v = p.d_v, .kv_lora_rank = p.kv_lora_rank,
        .scale = 1.0f / sqrtf((float)d_qk),
        .q = q.cpu, .q_stride = lq.row_stride,
        .kv_dtype = kv,
        .ckv = ckv.cpu, .kpe = kpe.cpu,
        .kv_b = &kv_b.w,
        .out = o.cpu,
    };
    if (ok && op_ok(&tc, h->cpu->ops->mla_absorbed(h->cpu, &a), true, "mla_absorbed") &&
        check_cpu_finite(&tc, &o, &lo, "out")) {
        a.batch = pg.dut, a.q = q.dut, a.ckv = ckv.dut, a.kpe = kpe.dut, a.out = o.dut;
        if (op_ok(&tc, tc.dut->ops->mla_absorbed(tc.dut, &a), false, "mla_absorbed")) {
            check_f32(&tc, &o, &lo, "out");
            a.kv_dtype = ENG_KV_F32, a.ckv = ckvw.dut, a.kpe = kpew.dut, a.out = ow.dut;
            if (bf16 && op_ok(&tc, tc.dut->ops->mla_absorbed(tc.dut, &a), false, "mla_absorbed over the widened cache"))
                check_same_bits(&tc, &o, &ow, "out");
        }
    }
    gbuf_free(&tc, &q);
    gbuf_free(&tc, &ckv);
    gbuf_free(&tc, &kpe);
    gbuf_free(&tc, &o);
    gbuf_free(&tc, &ckvw);
    gbuf_free(&tc, &kpew);
    gbuf_free(&tc, &ow);
    paged_free(&tc, &pg);
    weight_free(&kv_b);
    case_end(&tc);
}

/* ---- MoE --------------------------------------------------------------------------------------- */

typedef struct route_case {
    eng_router_kind kind;
    int n_tokens, n_expert, n_expert_used, n_group, topk_group;
    bool norm, ties;
    float scaling;
    eng_dtype bias_dtype; /* ENG_DTYPE_UNKNOWN: no bias */
} route_case;

static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

/* The largest two of v[0 .. n) summed (the sigmoid router's group score). */
static double top2_sum(const double *v, int n)
{
    double a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (v[i] > a) {
            b = a;
            a = v[i];
        } else if (v[i] > b) {
            b = v[i];
        }
    }
    return a + b;
}

/* One token's router logits without near-ties, so both backends must pick the same experts: a
 * random permutation of a grid of n_expert values 6 / n_expert apart in [-3, 3) (distinct
 * probabilities and sigmoid scores differ by >= ~1e-3, far above f32 noise; integer biases keep
 * scores of different biases apart by > 0.09), redrawn until the group scores of the sigmoid
 * router are >= 1e-5 apart. With ties, every odd expert copies its even neighbour and group 1
 * copies group 0 (exact ties, which both must break towards the lower index). */
static void route_logits(const route_case *p, const float *bias, rng *r, float *lg)
{
    int E = p->n_expert, per = p->n_group > 1 ? E / p->n_group : E;
    double *score = xmalloc((size_t)E * sizeof *score), gs[64];
    for (int attempt = 0; attempt < 1000; attempt++) {
        for (int e = 0; e < E; e++)
            lg[e] = -3.0f + 6.0f * (float)e / (float)E;
        for (int e = E - 1; e > 0; e--) {
            int j = rng_int(r, e + 1);
            float t = lg[e];
            lg[e] = lg[j];
            lg[j] = t;
        }
        if (p->ties) {
            for (int e = 1; e < E; e += 2)
                lg[e] = lg[e - 1];
            if (p->n_group > 1)
                for (int e = 0; e < per; e++)
                    lg[per + e] = lg[e];
        }
        if (p->kind != ENG_ROUTER_SIGMOID || p->n_group <= 1)
            break;
        for (int e = 0; e < E; e++)
            score[e] = sigmoid_d(lg[e]) + (bias ? bias[e] : 0.0);
        for (int g = 0; g < p->n_group; g++)
            gs[g] = top2_sum(score + g * per, per);
        bool separated = true;
        for (int g = 0; g < p->n_group; g++)
            for (int g2 = g + 1; g2 < p->n_group; g2++)
                if (fabs(gs[g] - gs[g2]) < 1e-5 && !(p->ties && g == 0 && g2 == 1))
                    separated = false;
        if (separated)
            break;
    }
    free(score);
}

static void case_route(harness *h, route_case p)
{
    tcase tc;
    bool has_bias = p.bias_dtype != ENG_DTYPE_UNKNOWN;
    if (!case_begin(h, &tc, "moe_route", BOUND_ELEMENTWISE,
                    "%s n_tokens=%d experts=%d/%d groups=%d/%d norm=%d scale=%g bias=%s%s",
                    p.kind == ENG_ROUTER_SIGMOID ? "sigmoid" : "softmax", p.n_tokens, p.n_expert_used, p.n_expert,
                    p.n_group, p.topk_group, p.norm, (double)p.scaling, has_bias ? dtype_name(p.bias_dtype) : "none",
                    p.ties ? " ties" : ""))
        return;
    int E = p.n_expert, K = p.n_expert_used;
    float *bias_vals = xmalloc((size_t)E * sizeof(float));
    for (int e = 0; e < E; e++)
        bias_vals[e] = (float)(rng_int(&tc.r, 3) - 1); /* -1, 0, 1: exact in every dtype */
    if (p.ties) { /* as route_logits: odd experts copy their even neighbour, group 1 copies group 0 */
        for (int e = 1; e < E; e += 2)
            bias_vals[e] = bias_vals[e - 1];
        for (int e = 0; p.n_group > 1 && e < E / p.n_group; e++)
            bias_vals[E / p.n_group + e] = bias_vals[e];
    }
    test_vec bias = {{0}, NULL};
    if (has_bias)
        vec_make(&bias, p.bias_dtype, E, bias_vals, 0, 0, &tc.r);
    float *lg = xmalloc((size_t)p.n_tokens * (size_t)E * sizeof(float));
    for (int t = 0; t < p.n_tokens; t++)
        route_logits(&p, has_bias ? bias_vals : NULL, &tc.r, lg + (size_t)t * (size_t)E);
    layout lk = rows(p.n_tokens, K, K);
    gbuf logits = {0}, idx = {0}, w = {0};
    bool ok = gbuf_values(&tc, &logits, lg, (size_t)p.n_tokens * (size_t)E) &&
              gbuf_output(&tc, &idx, layout_extent(&lk)) && gbuf_output(&tc, &w, layout_extent(&lk));
    eng_route_args a = {
        .kind = p.kind, .n_tokens = p.n_tokens, .n_expert = E, .n_expert_used = K,
        .n_group = p.n_group, .topk_group = p.topk_group, .norm_topk_prob = p.norm,
        .routed_scaling_factor = p.scaling, .bias = has_bias ? &bias.v : NULL,
        .logits = logits.cpu, .idx = idx.cpu, .weight = w.cpu,
    };
    if (ok && op_ok(&tc, h->cpu->ops->moe_route(h->cpu, &a), true, "moe_route")) {
        a.logits = logits.dut, a.idx = idx.dut, a.weight = w.dut;
        if (op_ok(&tc, tc.dut->ops->moe_route(tc.dut, &a), false, "moe_route")) {
            check_i32(&tc, &idx, &lk, "idx");
            check_f32(&tc, &w, &lk, "weight");
        }
    }
    gbuf_free(&tc, &logits);
    gbuf_free(&tc, &idx);
    gbuf_free(&tc, &w);
    vec_free(&bias);
    free(lg);
    free(bias_vals);
    case_end(&tc);
}

/* x_bf16: x rounded to bf16 and eng_moe_args.x_bf16 set (CUDA: the gate/up products on tensor
 * cores from KERN_MOE_TC_MIN_TOKENS tokens); h_bf16 also sets eng_moe_args.h_bf16, as the bf16
 * mode calls the op (CUDA: the down products on tensor cores too), against its own bound. */
static void case_moe_experts_x(harness *h, const wfmt_case *f, int n_expert, int K, int n_tokens, int d_model,
                               int d_ff, bool x_bf16, bool h_bf16)
{
    tcase tc;
    if (!case_begin(h, &tc, "moe_experts", h_bf16 ? BOUND_EXPERTS_HBF16 : BOUND_REDUCTION,
                    "n_tokens=%d experts=%d/%d d_model=%d d_ff=%d %s%s%s", n_tokens, K, n_expert, d_model, d_ff,
                    f->name, x_bf16 ? " x bf16" : "", h_bf16 ? " h bf16" : ""))
        return;
    test_experts ex;
    experts_make(&ex, f, n_expert, d_model, d_ff, &tc.r);
    size_t n_sel = (size_t)n_tokens * (size_t)K;
    int32_t *ids = xmalloc(n_sel * sizeof *ids);
    float *wts = xmalloc(n_sel * sizeof *wts);
    for (int t = 0; t < n_tokens; t++)
        for (int i = 0; i < K; i++) {
            int32_t e;
            bool taken;
            do { /* K distinct experts per token */
                e = rng_int(&tc.r, n_expert);
                taken = false;
                for (int j = 0; j < i; j++)
                    taken = taken || ids[(size_t)t * (size_t)K + (size_t)j] == e;
            } while (taken);
            ids[(size_t)t * (size_t)K + (size_t)i] = e;
            wts[(size_t)t * (size_t)K + (size_t)i] = rng_f(&tc.r, 0.1f, 1.0f);
        }
    layout lx = rows(n_tokens, d_model, d_model);
    gbuf x = {0}, idx = {0}, w = {0}, o = {0};
    bool ok = (x_bf16 ? gbuf_random_bf16(&tc, &x, &lx, -1.0f, 1.0f) : gbuf_random(&tc, &x, &lx, -1.0f, 1.0f)) &&
              gbuf_values(&tc, &idx, ids, n_sel) && gbuf_values(&tc, &w, wts, n_sel) &&
              gbuf_output(&tc, &o, layout_extent(&lx));
    eng_moe_args a = {
        .n_tokens = n_tokens, .d_model = d_model, .d_ff_expert = d_ff, .n_expert = n_expert, .n_expert_used = K,
        .x = x.cpu, .gate = ex.gate, .up = ex.up, .down = ex.down, .idx = idx.cpu, .weight = w.cpu, .out = o.cpu,
        .x_bf16 = x_bf16, .h_bf16 = h_bf16,
    };
    if (ok && op_ok(&tc, h->cpu->ops->moe_experts(h->cpu, &a), true, "moe_experts")) {
        a.x = x.dut, a.idx = idx.dut, a.weight = w.dut, a.out = o.dut;
        if (op_ok(&tc, tc.dut->ops->moe_experts(tc.dut, &a), false, "moe_experts"))
            check_f32(&tc, &o, &lx, "out");
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &idx);
    gbuf_free(&tc, &w);
    gbuf_free(&tc, &o);
    free(ids);
    free(wts);
    experts_free(&ex);
    case_end(&tc);
}

static void case_moe_experts(harness *h, const wfmt_case *f, int n_expert, int K, int n_tokens, int d_model, int d_ff)
{
    case_moe_experts_x(h, f, n_expert, K, n_tokens, d_model, d_ff, false, false);
}

/* ---- the shared weight cache (CUDA only) ------------------------------------------------------ */

#define SHARE_WEIGHTS 8

typedef struct share_ctx {
    eng_backend *be;
    const test_weight *w;    /* [SHARE_WEIGHTS] */
    const float *x;          /* [n_tokens][n_in] host */
    const float *ref;        /* [SHARE_WEIGHTS][n_tokens][n_out] host, from the CPU */
    int n_tokens, reverse;
    double max_rel;
    pp_status st;
    char msg[512];
} share_ctx;

/* One thread: every weight's matmul on its own backend (in its own order), against the CPU. */
static void *share_thread(void *p)
{
    share_ctx *c = p;
    eng_backend *be = c->be;
    int64_t n_in = c->w[0].w.n_in, n_out = c->w[0].w.n_out;
    size_t nx = (size_t)(c->n_tokens * n_in), ny = (size_t)(c->n_tokens * n_out);
    float *x = NULL, *y = NULL, *host = xmalloc(ny * sizeof(float));
    c->st = be->ops->alloc(be, nx * sizeof(float), (void **)&x);
    if (c->st == PP_STATUS_OK)
        c->st = be->ops->alloc(be, ny * sizeof(float), (void **)&y);
    if (c->st == PP_STATUS_OK)
        c->st = be->ops->upload(be, x, c->x, nx * sizeof(float));
    for (int k = 0; k < SHARE_WEIGHTS && c->st == PP_STATUS_OK; k++) {
        int i = c->reverse ? SHARE_WEIGHTS - 1 - k : k;
        c->st = be->ops->matmul(be, x, n_in, &c->w[i].w, y, n_out, c->n_tokens);
        if (c->st == PP_STATUS_OK)
            c->st = be->ops->download(be, host, y, ny * sizeof(float));
        for (int t = 0; t < c->n_tokens && c->st == PP_STATUS_OK; t++) {
            double num = 0, den = 0;
            const float *want = c->ref + ((size_t)i * (size_t)c->n_tokens + (size_t)t) * (size_t)n_out;
            for (int64_t n = 0; n < n_out; n++) {
                double d = (double)host[(size_t)t * (size_t)n_out + (size_t)n] - (double)want[n];
                num += d * d;
                den += (double)want[n] * (double)want[n];
            }
            double rel = isfinite(num) ? sqrt(num / den) : INFINITY;
            c->max_rel = rel > c->max_rel ? rel : c->max_rel;
        }
    }
    if (c->st != PP_STATUS_OK)
        snprintf(c->msg, sizeof c->msg, "%s", be->ops->last_error(be));
    if (x)
        be->ops->free(be, x);
    if (y)
        be->ops->free(be, y);
    free(host);
    return NULL;
}

/* Two backends sharing one weight cache (a model and its fork): each weight is uploaded once
 * (the resident bytes do not grow when the second backend uses it), concurrent first uses from
 * two threads give correct results, and the cache outlives the backend that created it. */
static void case_shared_cache(harness *h)
{
    tcase tc;
    if (!case_begin(h, &tc, "shared_cache", BOUND_REDUCTION, "2 backends, 1 weight cache, 2 threads, %d weights",
                    SHARE_WEIGHTS))
        return;
    const int n_out = 300, n_in = 200, n_tokens = 5;
    test_weight w[SHARE_WEIGHTS];
    for (int i = 0; i < SHARE_WEIGHTS; i++)
        weight_make(&w[i], &FORMATS[i % N_FORMATS], n_out, n_in, &tc.r);
    float *x = xmalloc((size_t)(n_tokens * n_in) * sizeof(float));
    for (int i = 0; i < n_tokens * n_in; i++)
        x[i] = rng_f(&tc.r, -1.0f, 1.0f);
    size_t ny = (size_t)(n_tokens * n_out);
    float *ref = xmalloc(SHARE_WEIGHTS * ny * sizeof(float));
    for (int i = 0; i < SHARE_WEIGHTS; i++)
        op_ok(&tc, h->cpu->ops->matmul(h->cpu, x, n_in, &w[i].w, ref + (size_t)i * ny, n_out, n_tokens), true,
              "matmul");
    eng_backend *b2 = NULL;
    eng_err err = {{0}};
    if (dut_create(h, tc.dut, &b2, &err) != PP_STATUS_OK) {
        fail(&tc, "creating a backend that shares the cache: %s", err.msg);
    } else {
        share_ctx c[2] = {
            {tc.dut, w, x, ref, n_tokens, 0, 0.0, PP_STATUS_OK, ""},
            {b2, w, x, ref, n_tokens, 1, 0.0, PP_STATUS_OK, ""},
        };
        pthread_t th[2];
        for (int i = 0; i < 2; i++)
            if (pthread_create(&th[i], NULL, share_thread, &c[i]) != 0) {
                fprintf(stderr, "test_ops: pthread_create failed\n");
                exit(1);
            }
        for (int i = 0; i < 2; i++) {
            pthread_join(th[i], NULL);
            if (c[i].st != PP_STATUS_OK)
                fail(&tc, "thread %d: %s: %s", i, pp_status_str(c[i].st), c[i].msg);
            tc.max_rel = c[i].max_rel > tc.max_rel ? c[i].max_rel : tc.max_rel;
            if (!(c[i].max_rel <= tc.bound))
                fail(&tc, "thread %d: relative L2 error %.3g > %.0e", i, c[i].max_rel, tc.bound);
        }
        size_t bytes = 0;
        for (int i = 0; i < SHARE_WEIGHTS; i++)
            bytes += eng_weight_bytes(&w[i].w);
        size_t r1 = eng_backend_cuda_weight_bytes(tc.dut), r2 = eng_backend_cuda_weight_bytes(b2);
        /* each tensor once, rounded up to 256 bytes: at most 2 tensors x 256 bytes of slack */
        if (r1 != r2 || r1 < bytes || r1 > bytes + SHARE_WEIGHTS * 2 * 256)
            fail(&tc, "resident bytes %zu / %zu for %zu bytes of weights: uploaded twice?", r1, r2, bytes);
        /* the first backend goes; the second still reaches the cache (and adds to it) */
        eng_backend_destroy(tc.dut);
        tc.dut = b2;
        test_weight extra;
        weight_make(&extra, &FORMATS[3], n_out, n_in, &tc.r);
        share_ctx c3 = {b2, &extra, x, ref, n_tokens, 0, 0.0, PP_STATUS_OK, ""};
        float *ref3 = xmalloc(SHARE_WEIGHTS * ny * sizeof(float));
        op_ok(&tc, h->cpu->ops->matmul(h->cpu, x, n_in, &extra.w, ref3, n_out, n_tokens), true, "matmul");
        /* share_thread runs SHARE_WEIGHTS matmuls; give it the one weight each time */
        test_weight same[SHARE_WEIGHTS];
        for (int i = 0; i < SHARE_WEIGHTS; i++) {
            same[i] = extra;
            memcpy(ref3 + (size_t)i * ny, ref3, ny * sizeof(float));
        }
        c3.w = same;
        c3.ref = ref3;
        share_thread(&c3);
        if (c3.st != PP_STATUS_OK || !(c3.max_rel <= tc.bound))
            fail(&tc, "after destroying the first backend: %s %s, relative L2 %.3g", pp_status_str(c3.st), c3.msg,
                 c3.max_rel);
        if (eng_backend_cuda_weight_bytes(b2) < r1 + eng_weight_bytes(&extra.w))
            fail(&tc, "the cache did not grow after destroying the first backend");
        free(ref3);
        weight_free(&extra);
    }
    for (int i = 0; i < SHARE_WEIGHTS; i++)
        weight_free(&w[i]);
    free(x);
    free(ref);
    case_end(&tc);
}

/* ---- the case lists --------------------------------------------------------------------------- */

static const int DIMS[] = {1, 3, 7, 17, 100, 136, 200, 257, 1000, 2048 + 3};
#define N_DIMS ((int)(sizeof DIMS / sizeof DIMS[0]))
static const int TOKENS[] = {1, 2, 5, 16, 17, 64, 133};
#define N_TOKENS ((int)(sizeof TOKENS / sizeof TOKENS[0]))

static void run_embedding(harness *h)
{
    static const int shapes[][2] = {{1000, 257}, {100, 2051}, {7, 3}, {2051, 64}, {1, 1}};
    static const int small[][2] = {{7, 3}, {100, 136}, {1, 1}};
    int n = h->small ? 3 : 5;
    for (int fi = 0; fi < N_FORMATS; fi++)
        for (int s = 0; s < n; s++) {
            const int *sh = h->small ? small[s] : shapes[s];
            case_embedding(h, &FORMATS[fi], sh[0], sh[1], TOKENS[(fi + 2 * s) % (h->small ? 5 : N_TOKENS)]);
        }
    if (strcmp(h->dut_name, "cpu") != 0)
        case_embedding_bad_ids(h);
}

/* Per format: every n_out (with an n_in and n_tokens that move along), every n_in, every n_tokens
 * at a large ragged shape, and strided x / y. --small: a few shapes per format that still reach
 * the ragged edges (for the sanitizers, which run every kernel 10-100x slower). */
static void run_matmul(harness *h)
{
    static const int small[][3] = {{1, 1, 1}, {7, 17, 2}, {17, 136, 5}, {136, 257, 17}, {257, 100, 16}};
    for (int fi = 0; fi < N_FORMATS; fi++) {
        const wfmt_case *f = &FORMATS[fi];
        if (h->small) {
            for (int i = 0; i < 5; i++)
                case_matmul(h, f, small[i][0], small[i][1], small[i][2], 0, 0);
            case_matmul(h, f, 17, 100, 5, 7, 9);
            continue;
        }
        for (int i = 0; i < N_DIMS; i++) {
            int a = DIMS[i], b = DIMS[(i * 3 + fi) % N_DIMS]; /* i * 3 runs through every index */
            case_matmul(h, f, a, b, TOKENS[(i + fi) % N_TOKENS], 0, 0);     /* n_out = a */
            case_matmul(h, f, b, a, TOKENS[(i + fi + 3) % N_TOKENS], 0, 0); /* n_in = a */
        }
        for (int i = 0; i < N_TOKENS; i++)
            case_matmul(h, f, 257, 2051, TOKENS[i], i % 2 ? 5 : 0, i % 3 ? 0 : 3);
        case_matmul(h, f, 1000, 1000, 64, 7, 9);
    }
}

/* matmul_bf16's weight formats: BF16 (cuBLAS on CUDA), the quantized formats kern_matmul_tc
 * takes (FP8 with 128 x 128 blocks and with 64 x 48 ones, whose scale blocks change every third
 * k16 step and every 64 rows, so inside a CTA's 128-row tile; INT4 with groups of 32 and 128;
 * INT8), scales of all three dtypes, and the weights that fall back to matmul on CUDA: F32, and
 * FP8 with 8-column blocks (not whole k16 steps). */
static const wfmt_case BF16_FORMATS[] = {
    {"bf16", ENG_WFMT_BF16, ENG_DTYPE_UNKNOWN, 0, 0, 0},
    {"fp8/f32", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_F32, 0, 0, 0},
    {"fp8b64x48/bf16", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_BF16, 0, 64, 48},
    {"int4g32/bf16", ENG_WFMT_INT4_GROUP, ENG_DTYPE_BF16, 32, 0, 0},
    {"int4g128/f16", ENG_WFMT_INT4_GROUP, ENG_DTYPE_F16, 128, 0, 0},
    {"int8/f32", ENG_WFMT_INT8_CHANNEL, ENG_DTYPE_F32, 0, 0, 0},
    {"int8/bf16", ENG_WFMT_INT8_CHANNEL, ENG_DTYPE_BF16, 0, 0, 0},
    {"f32", ENG_WFMT_F32, ENG_DTYPE_UNKNOWN, 0, 0, 0},
    {"fp8b8x8/f16", ENG_WFMT_FP8_BLOCK, ENG_DTYPE_F16, 0, 8, 8},
};
#define N_BF16_FORMATS ((int)(sizeof BF16_FORMATS / sizeof BF16_FORMATS[0]))

/* matmul_bf16 at n_tokens 17 .. 1000 (the tensor-core paths on CUDA) and at 16 and 1 (below the
 * threshold: matmul) over every format of BF16_FORMATS: small ragged shapes (n_in and n_out not
 * multiples of 8, 16, 32 or 64; n_in below one stage; n_in a multiple of 8 but not of 32, so the
 * last stage is partly past n_in), token counts around the 64-token tile, odd and padded x / y
 * strides; the large shapes (Phi-4's qkv 5120 -> 7680, Qwen3-Coder's expert-sized 2048 -> 768,
 * a ragged 2051 -> 257) for a few formats each. {n_out, n_in, n_tokens, x_pad, y_pad, in
 * --small}. */
static void run_matmul_bf16(harness *h)
{
    static const struct {
        int n_out, n_in, n_tokens, x_pad, y_pad;
        bool small;
    } every[] = {
        {37, 100, 17, 0, 0, true},   {37, 100, 33, 3, 1, true},  {8, 8, 17, 0, 0, true},
        {8, 8, 257, 9, 0, true},     {65, 129, 128, 0, 0, true}, {129, 264, 65, 1, 7, true},
        {200, 96, 64, 0, 2, false},  {65, 129, 1000, 1, 7, false}, {300, 520, 200, 0, 0, false},
        {37, 100, 16, 0, 0, true},   {37, 100, 1, 3, 0, true}, /* below the threshold */
    };
    static const struct {
        int n_out, n_in, n_tokens, x_pad, y_pad;
        const char *fmt; /* a name in BF16_FORMATS */
    } large[] = {
        {7680, 5120, 100, 0, 0, "bf16"},        {7680, 5120, 33, 64, 8, "bf16"},
        {7680, 5120, 100, 0, 0, "fp8/f32"},     {7680, 5120, 47, 0, 0, "int4g128/f16"},
        {768, 2048, 257, 5, 3, "bf16"},         {768, 2048, 1000, 0, 0, "bf16"},
        {768, 2048, 257, 0, 0, "fp8/f32"},      {768, 2048, 300, 0, 1, "int4g32/bf16"},
        {768, 2048, 130, 0, 0, "int8/bf16"},    {257, 2051, 33, 5, 3, "fp8/f32"},
        {257, 2051, 90, 0, 0, "int4g32/bf16"},  {257, 2051, 64, 1, 0, "fp8b64x48/bf16"},
        {257, 2051, 33, 5, 3, "f32"},           {257, 2051, 40, 0, 0, "fp8b8x8/f16"},
    };
    for (int fi = 0; fi < N_BF16_FORMATS; fi++)
        for (size_t i = 0; i < sizeof every / sizeof every[0]; i++)
            if (!h->small || every[i].small)
                case_matmul_bf16(h, &BF16_FORMATS[fi], every[i].n_out, every[i].n_in, every[i].n_tokens,
                                 every[i].x_pad, every[i].y_pad);
    if (h->small)
        return;
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++)
        for (int fi = 0; fi < N_BF16_FORMATS; fi++)
            if (!strcmp(BF16_FORMATS[fi].name, large[i].fmt))
                case_matmul_bf16(h, &BF16_FORMATS[fi], large[i].n_out, large[i].n_in, large[i].n_tokens,
                                 large[i].x_pad, large[i].y_pad);
}

/* round_bf16 in place over [n_rows][n_cols] rows `stride` apart (stride 0: one row rounded
 * n_rows times). Bit-exact: every element must come back with the CPU's bits. The values are
 * random bit patterns (NaNs of every payload, infinities, subnormals included) with a special
 * value every 7th element: ties to even both ways, the overflow tie, FLT_MAX, the largest
 * subnormal, a signalling NaN that would round to inf, -0. */
static void case_round_bf16(harness *h, int n_rows, int64_t n_cols, int64_t stride)
{
    static const uint32_t specials[] = {0x3f808000u, 0x3f818000u, 0x7f7f8000u, 0x7f7f7fffu, 0x7f7fffffu,
                                        0xff7fffffu, 0x007fffffu, 0x00008000u, 0x00018000u, 0x7f800001u,
                                        0xffffffffu, 0x7f800000u, 0xff800000u, 0x80000000u, 0x00000001u};
    tcase tc;
    if (!case_begin(h, &tc, "round_bf16", 0.0, "n_rows=%d n_cols=%lld stride=%lld", n_rows, (long long)n_cols,
                    (long long)stride))
        return;
    layout l = rows(n_rows, n_cols, stride);
    size_t n = layout_extent(&l);
    uint32_t *bits = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        bits[i] = NAN_BITS;
    size_t k = 0;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t c = 0; c < n_cols; c++, k++)
            bits[layout_at(&l, r, 0, c)] = k % 7 == 0 ? specials[(k / 7) % (sizeof specials / sizeof specials[0])]
                                                      : (uint32_t)rng_u64(&tc.r);
    gbuf x = {0};
    if (gbuf_make(&tc, &x, n, bits, NAN_BITS) &&
        op_ok(&tc, h->cpu->ops->round_bf16(h->cpu, x.cpu, stride, n_rows, n_cols), true, "round_bf16") &&
        op_ok(&tc, tc.dut->ops->round_bf16(tc.dut, x.dut, stride, n_rows, n_cols), false, "round_bf16")) {
        uint32_t *got = gbuf_fetch(&tc, &x);
        if (got) {
            const uint32_t *want = x.cpu;
            size_t n_diff = 0;
            for (int64_t r = 0; r < n_rows; r++)
                for (int64_t c = 0; c < n_cols; c++) {
                    size_t i = layout_at(&l, r, 0, c);
                    if (got[GUARD + i] != want[i] && n_diff++ < MAX_FAIL_LINES)
                        fail(&tc, "element [%lld][%lld] (index %zu): 0x%08x, cpu 0x%08x", (long long)r,
                             (long long)c, i, got[GUARD + i], want[i]);
                }
            tc.max_rel = (double)n_diff / (double)(n_rows * n_cols); /* the fraction of differing bits */
            uint8_t *mask = layout_mask(&l, n);
            check_guards(&tc, &x, got, mask, "x");
            free(mask);
            free(got);
        }
    }
    gbuf_free(&tc, &x);
    free(bits);
    case_end(&tc);
}

/* quant_act_fp8 (the bf16 mode's W8A8 input quantization) over [n_rows][n_cols] rows in groups
 * of `group`, x rows n_cols + x_pad apart, out rows n_cols + out_pad apart (in_place: out is x).
 * Bit-exact. Row r's values are uniform in +-10^(r % 7 - 3) (e4m3 subnormals, many binades);
 * every third row has one group zeroed (-0 in half of them: the whole row must come out +0);
 * row 1 holds 448 and e4m3 ties at scale 1 (17, 19, 3 * 2^-10, ...); row 2 has a tiny amax
 * (1e-44: its scale underflows to 0, a zero row too) when there are rows enough. */
static void case_quant_act(harness *h, int n_rows, int64_t n_cols, int group, int x_pad, int out_pad, bool in_place)
{
    static const float ties[] = {448.0f, 17.0f, 19.0f, -17.0f, 0x1p-10f, 3 * 0x1p-10f, 5 * 0x1p-10f, 232.0f,
                                 1.0f + 0x1p-4f, 1.0f + 3 * 0x1p-4f, -0.0f, 0x1p-10f + 0x1p-30f};
    tcase tc;
    if (!case_begin(h, &tc, "quant_act_fp8", 0.0, "n_rows=%d n_cols=%lld group=%d x_stride=%lld out_stride=%lld%s",
                    n_rows, (long long)n_cols, group, (long long)(n_cols + x_pad),
                    (long long)(in_place ? n_cols + x_pad : n_cols + out_pad), in_place ? " in place" : ""))
        return;
    layout lx = rows(n_rows, n_cols, n_cols + x_pad), lo = in_place ? lx : rows(n_rows, n_cols, n_cols + out_pad);
    size_t nx = layout_extent(&lx);
    uint32_t *bits = xmalloc(nx * 4);
    for (size_t i = 0; i < nx; i++)
        bits[i] = NAN_BITS;
    int64_t n_groups = ceil_div(n_cols, group);
    for (int64_t r = 0; r < n_rows; r++) {
        float mag = powf(10.0f, (float)(r % 7 - 3));
        for (int64_t c = 0; c < n_cols; c++) {
            float v = rng_f(&tc.r, -mag, mag);
            if (r == 1)
                v = c < (int64_t)(sizeof ties / sizeof ties[0]) ? ties[c] : rng_f(&tc.r, -448.0f, 448.0f);
            if (r == 2 && n_rows > 2)
                v = rng_f(&tc.r, -1e-44f, 1e-44f);
            bits[layout_at(&lx, r, 0, c)] = f32_bits(v);
        }
        if (r % 3 == 0 && n_cols > 1) {
            int64_t g = r % n_groups, c1 = (g + 1) * group < n_cols ? (g + 1) * group : n_cols;
            for (int64_t c = g * group; c < c1; c++)
                bits[layout_at(&lx, r, 0, c)] = r % 2 ? 0x80000000u : 0u;
        }
    }
    gbuf x = {0}, o = {0};
    bool ok = gbuf_make(&tc, &x, nx, bits, NAN_BITS) && (in_place || gbuf_output(&tc, &o, layout_extent(&lo)));
    gbuf *out = in_place ? &x : &o;
    if (ok &&
        op_ok(&tc, h->cpu->ops->quant_act_fp8(h->cpu, x.cpu, lx.row_stride, out->cpu, lo.row_stride, n_rows, n_cols,
                                              group), true, "quant_act_fp8") &&
        op_ok(&tc, tc.dut->ops->quant_act_fp8(tc.dut, x.dut, lx.row_stride, out->dut, lo.row_stride, n_rows, n_cols,
                                              group), false, "quant_act_fp8")) {
        uint32_t *got = gbuf_fetch(&tc, out);
        if (got) {
            const uint32_t *want = out->cpu;
            size_t n_diff = 0, n_nonfinite = 0;
            for (int64_t r = 0; r < n_rows; r++)
                for (int64_t c = 0; c < n_cols; c++) {
                    size_t i = layout_at(&lo, r, 0, c);
                    n_nonfinite += !isfinite(bits_f32(want[i]));
                    if (got[GUARD + i] != want[i] && n_diff++ < MAX_FAIL_LINES)
                        fail(&tc, "element [%lld][%lld] (index %zu): 0x%08x, cpu 0x%08x (x 0x%08x)", (long long)r,
                             (long long)c, i, got[GUARD + i], want[i], bits[layout_at(&lx, r, 0, c)]);
                }
            if (n_nonfinite)
                fail(&tc, "the CPU reference wrote %zu non-finite values from finite inputs", n_nonfinite);
            tc.max_rel = (double)n_diff / (double)(n_rows * n_cols); /* the fraction of differing bits */
            uint8_t *mask = layout_mask(&lo, out->n);
            check_guards(&tc, out, got, mask, in_place ? "x" : "out");
            free(mask);
            free(got);
        }
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &o);
    free(bits);
    case_end(&tc);
}

/* ---- argmax ------------------------------------------------------------------------------------ */

#define INF_BITS 0x7f800000u /* argmax's input gaps and guard bands (see case_argmax) */
#define ARGMAX_PATTERNS 15

/* Fills row v[0 .. n) with pattern `pattern`; returns the index the argmax rule picks (as the
 * comments say), or -1 for the random patterns 0 and 12. */
static int64_t argmax_row(rng *r, int pattern, float *v, int64_t n)
{
    int64_t p = rng_int(r, (int)n), q = rng_int(r, (int)n), pq = p < q ? p : q;
    for (int64_t c = 0; c < n; c++)
        v[c] = rng_f(r, -8.0f, 8.0f);
    switch (pattern) {
    case 0: /* random */
        return -1;
    case 1: /* the maximum at the first, middle and last columns: 0 */
        v[0] = v[n / 2] = v[n - 1] = 9.0f;
        return 0;
    case 2: /* the maximum at p, then repeated at later columns and the last: p */
        for (int64_t c = p; c < n; c += 1 + (n - p) / 3)
            v[c] = 9.0f;
        v[n - 1] = 9.0f;
        return p;
    case 3: /* NaN at column 0, +inf at p: 0 */
        v[0] = NAN;
        v[p] = p ? INFINITY : v[0];
        return 0;
    case 4: /* NaN every 7th column from 1, at the last, and beside a maximum at p (not at 0): p */
        for (int64_t c = 1; c < n; c += 7)
            v[c] = NAN;
        if (n > 1)
            v[n - 1] = NAN;
        if (p + 1 < n)
            v[p + 1] = NAN;
        if (p > 1)
            v[p - 1] = NAN;
        v[p] = 9.0f;
        return p;
    case 5: /* -inf and NaN sprinkled, +inf at p and q: min(p, q) */
        for (int64_t c = 3; c < n; c += 5)
            v[c] = c % 2 ? -INFINITY : NAN;
        v[p] = v[q] = INFINITY;
        return pq;
    case 6: /* all -inf: 0 */
        for (int64_t c = 0; c < n; c++)
            v[c] = -INFINITY;
        return 0;
    case 7: /* all NaN: 0 */
        for (int64_t c = 0; c < n; c++)
            v[c] = NAN;
        return 0;
    case 8: /* -inf with NaN at every odd column: 0 */
        for (int64_t c = 0; c < n; c++)
            v[c] = c % 2 ? NAN : -INFINITY;
        return 0;
    case 9: /* -inf but NaN at 1 and -1e30 at p > 1: p (0 for p <= 1) */
        for (int64_t c = 0; c < n; c++)
            v[c] = c == 1 ? NAN : -INFINITY;
        if (p > 1)
            v[p] = -1e30f;
        return p > 1 ? p : 0;
    case 10: /* negative values, -0 at p and +0 at q: min(p, q) (-0 == +0) */
        for (int64_t c = 0; c < n; c++)
            v[c] = -fabsf(v[c]) - 1.0f;
        v[p] = -0.0f;
        v[q] = 0.0f;
        return pq;
    case 11: /* subnormals of both signs, the largest at p and q: min(p, q) */
        for (int64_t c = 0; c < n; c++)
            v[c] = bits_f32((uint32_t)rng_int(r, 0x7fffff) | (rng_int(r, 2) ? 0x80000000u : 0u));
        v[q] = v[p] = bits_f32(0x007fffffu);
        return pq;
    case 12: /* integers 0 .. 3: ties everywhere */
        for (int64_t c = 0; c < n; c++)
            v[c] = (float)rng_int(r, 4);
        return -1;
    case 13: /* ascending, the last 5 columns equal: max(n - 5, 0) */
        for (int64_t c = 0; c < n; c++)
            v[c] = (float)(c < n - 5 ? c : n - 5);
        return n > 5 ? n - 5 : 0;
    default: /* NaN but -inf at 0 and -5 at p > 0: p */
        for (int64_t c = 1; c < n; c++)
            v[c] = NAN;
        v[0] = -INFINITY;
        if (p)
            v[p] = -5.0f;
        return p;
    }
}

/* argmax over [n_rows][n_cols], rows `stride` apart, the first at element `offset` of the
 * buffer (an offset not a multiple of 4 starts the rows off a 16-byte boundary). Row r has
 * pattern (r + pattern0) % ARGMAX_PATTERNS of argmax_row: ties at the first, last and other
 * columns, NaN at column 0 and elsewhere, +-inf, all -inf, all NaN, signed zeros, subnormals.
 * The CPU's picks must be the ones argmax_row expects (so the patterns test what they say, and
 * --backend cpu catches a wrong rule), and the ids must be the CPU's exactly. The input's gaps
 * and guard bands hold +inf, not NaN (which argmax never picks past column 0), so a read
 * outside a row would win and show. */
static void case_argmax(harness *h, int n_rows, int64_t n_cols, int64_t stride, int64_t offset, int pattern0)
{
    tcase tc;
    if (!case_begin(h, &tc, "argmax", 0.0, "n_rows=%d n_cols=%lld stride=%lld offset=%lld pattern0=%d", n_rows,
                    (long long)n_cols, (long long)stride, (long long)offset, pattern0))
        return;
    layout lx = rows(n_rows, n_cols, stride), lo = rows(n_rows, 1, 1);
    lx.offset = offset;
    size_t nx = layout_extent(&lx);
    uint32_t *bits = xmalloc(nx * 4);
    for (size_t i = 0; i < nx; i++)
        bits[i] = INF_BITS;
    float *row = xmalloc((size_t)n_cols * sizeof *row);
    int64_t *expect = xmalloc((size_t)n_rows * sizeof *expect);
    for (int r = 0; r < n_rows; r++) {
        expect[r] = argmax_row(&tc.r, (r + pattern0) % ARGMAX_PATTERNS, row, n_cols);
        memcpy(bits + layout_at(&lx, r, 0, 0), row, (size_t)n_cols * 4);
    }
    gbuf x = {0}, out = {0};
    if (gbuf_make(&tc, &x, nx, bits, INF_BITS) && gbuf_output(&tc, &out, (size_t)n_rows) &&
        op_ok(&tc, h->cpu->ops->argmax(h->cpu, (const float *)x.cpu + offset, stride, n_rows, n_cols, out.cpu), true,
              "argmax") &&
        op_ok(&tc, tc.dut->ops->argmax(tc.dut, (const float *)x.dut + offset, stride, n_rows, n_cols, out.dut), false,
              "argmax")) {
        const int32_t *want = out.cpu;
        for (int r = 0; r < n_rows; r++)
            if (want[r] < 0 || want[r] >= n_cols || (expect[r] >= 0 && want[r] != expect[r]))
                fail(&tc, "the CPU reference picked %d for row %d (pattern %d), expected %lld", want[r], r,
                     (r + pattern0) % ARGMAX_PATTERNS, (long long)expect[r]);
        check_i32(&tc, &out, &lo, "out");
        check_untouched(&tc, &x, "x"); /* the input is read only */
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &out);
    free(expect);
    free(row);
    free(bits);
    case_end(&tc);
}

/* Bad arguments are refused with INVALID_ARG before anything is written, and n_rows == 0 writes
 * nothing; both backends (the CPU checks them too), then a good call on the same backend. */
static void case_argmax_bad_args(harness *h)
{
    tcase tc;
    if (!case_begin(h, &tc, "argmax", 0.0, "n_rows < 0, n_cols < 1 or > INT32_MAX, stride < n_cols refused"))
        return;
    static const struct { int n_rows; int64_t n_cols, stride; } bad[] = {
        {-1, 8, 8}, {2, 0, 8}, {2, -3, 8}, {2, 8, 7}, {1, (int64_t)INT32_MAX + 1, (int64_t)INT32_MAX + 1},
    };
    gbuf x = {0}, out = {0};
    float vals[2][8] = {{1, 2, 3, 9, 4, 9, 0, -1}, {NAN, 5, 6, 7, 8, 9, 10, 11}};
    layout lo = rows(2, 1, 1);
    if (gbuf_values(&tc, &x, vals, 16) && gbuf_output(&tc, &out, 2)) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            pp_status sc = h->cpu->ops->argmax(h->cpu, x.cpu, bad[i].stride, bad[i].n_rows, bad[i].n_cols, out.cpu);
            pp_status sd = tc.dut->ops->argmax(tc.dut, x.dut, bad[i].stride, bad[i].n_rows, bad[i].n_cols, out.dut);
            if (sc != PP_STATUS_INVALID_ARG || sd != PP_STATUS_INVALID_ARG)
                fail(&tc, "n_rows=%d n_cols=%lld stride=%lld: cpu %s, %s %s; expected INVALID_ARG", bad[i].n_rows,
                     (long long)bad[i].n_cols, (long long)bad[i].stride, pp_status_str(sc), h->dut_name,
                     pp_status_str(sd));
        }
        op_ok(&tc, tc.dut->ops->argmax(tc.dut, x.dut, 8, 0, 8, out.dut), false, "argmax of 0 rows");
        check_untouched(&tc, &out, "out after refused calls"); /* nothing written */
        if (op_ok(&tc, h->cpu->ops->argmax(h->cpu, x.cpu, 8, 2, 8, out.cpu), true, "argmax") &&
            op_ok(&tc, tc.dut->ops->argmax(tc.dut, x.dut, 8, 2, 8, out.dut), false, "argmax after refused calls")) {
            const int32_t *want = out.cpu;
            if (want[0] != 3 || want[1] != 0)
                fail(&tc, "cpu picked %d and %d, expected 3 (the first of two 9s) and 0 (NaN at column 0)", want[0],
                     want[1]);
            check_i32(&tc, &out, &lo, "out");
        }
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &out);
    case_end(&tc);
}

/* Greedy decoding's shapes: n_vocab from 1 to DeepSeek-V3's 129280 and beyond (Qwen3's 151936,
 * 163840), n_seq 1 .. 64; rows contiguous, with an odd stride from an unaligned base, and with a
 * stride that is a multiple of 4 from an unaligned base; more rows than blocks (2^20). --small:
 * rows of at most 4097 columns, at most 16 rows. */
static void run_argmax(harness *h)
{
    static const int64_t cols[] = {1, 2, 3, 31, 1000, 4097, 151936, 163840};
    static const int n_rows[] = {1, 3, 16, 64};
    int pattern0 = 0;
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        for (size_t j = 0; j < sizeof n_rows / sizeof n_rows[0]; j++) {
            if (h->small && (cols[i] > 4097 || n_rows[j] > 16))
                continue;
            int64_t n = cols[i];
            case_argmax(h, n_rows[j], n, n, 0, pattern0++ % ARGMAX_PATTERNS);
            case_argmax(h, n_rows[j], n, n + 2 * (int64_t)j + 1, 1 + 2 * (int64_t)(j % 2),
                        pattern0++ % ARGMAX_PATTERNS);
            case_argmax(h, n_rows[j], n, (n + 3) / 4 * 4 + 4, 2, pattern0++ % ARGMAX_PATTERNS);
        }
    case_argmax_bad_args(h);
    if (!h->small)
        case_argmax(h, (1 << 20) + 3, 2, 3, 1, 0);
}

/* ---- topk ---------------------------------------------------------------------------------------- */

/* topk over [n_rows][n_cols], rows `stride` apart from element `offset`, k pairs a row. Row r
 * has pattern (r + pattern0) % ARGMAX_PATTERNS of argmax_row (ties at the first, last and other
 * columns, NaN at column 0 and elsewhere, +-inf, all -inf, all NaN, signed zeros, subnormals,
 * integers 0 .. 3). The CPU's first id must be the one argmax_row expects (the candidate order
 * starts with argmax's pick), and the ids and the values' bits must be the CPU's exactly, the
 * (-inf, -1) filling past n_cols included. As for argmax, the input's gaps and guard bands hold
 * +inf, so a read outside a row would rank first and show. */
static void case_topk(harness *h, int n_rows, int64_t n_cols, int64_t stride, int64_t offset, int k, int pattern0)
{
    tcase tc;
    if (!case_begin(h, &tc, "topk", 0.0, "n_rows=%d n_cols=%lld stride=%lld offset=%lld k=%d pattern0=%d", n_rows,
                    (long long)n_cols, (long long)stride, (long long)offset, k, pattern0))
        return;
    layout lx = rows(n_rows, n_cols, stride), lo = rows(n_rows, k, k);
    lx.offset = offset;
    size_t nx = layout_extent(&lx);
    uint32_t *bits = xmalloc(nx * 4);
    for (size_t i = 0; i < nx; i++)
        bits[i] = INF_BITS;
    float *row = xmalloc((size_t)n_cols * sizeof *row);
    int64_t *expect = xmalloc((size_t)n_rows * sizeof *expect);
    for (int r = 0; r < n_rows; r++) {
        expect[r] = argmax_row(&tc.r, (r + pattern0) % ARGMAX_PATTERNS, row, n_cols);
        memcpy(bits + layout_at(&lx, r, 0, 0), row, (size_t)n_cols * 4);
    }
    gbuf x = {0}, vals = {0}, ids = {0};
    size_t n_out = (size_t)n_rows * (size_t)k;
    if (gbuf_make(&tc, &x, nx, bits, INF_BITS) && gbuf_output(&tc, &vals, n_out) && gbuf_output(&tc, &ids, n_out) &&
        op_ok(&tc, h->cpu->ops->topk(h->cpu, (const float *)x.cpu + offset, stride, n_rows, n_cols, k, vals.cpu,
                                     ids.cpu), true, "topk") &&
        op_ok(&tc, tc.dut->ops->topk(tc.dut, (const float *)x.dut + offset, stride, n_rows, n_cols, k, vals.dut,
                                     ids.dut), false, "topk")) {
        const int32_t *want = ids.cpu;
        for (int r = 0; r < n_rows; r++)
            if (expect[r] >= 0 && want[(size_t)r * (size_t)k] != expect[r])
                fail(&tc, "the CPU reference's first candidate of row %d (pattern %d) is %d, expected %lld", r,
                     (r + pattern0) % ARGMAX_PATTERNS, want[(size_t)r * (size_t)k], (long long)expect[r]);
        check_i32(&tc, &ids, &lo, "ids");
        check_i32(&tc, &vals, &lo, "vals (bits)");
        check_untouched(&tc, &x, "x"); /* the input is read only */
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &vals);
    gbuf_free(&tc, &ids);
    free(expect);
    free(row);
    free(bits);
    case_end(&tc);
}

/* Bad arguments are refused with INVALID_ARG before anything is written, and n_rows == 0 writes
 * nothing; both backends, then a good call on the same backend. */
static void case_topk_bad_args(harness *h)
{
    tcase tc;
    if (!case_begin(h, &tc, "topk", 0.0, "n_rows < 0, n_cols < 1 or > INT32_MAX, stride < n_cols, k outside "
                    "1 .. ENG_TOPK_MAX refused"))
        return;
    static const struct { int n_rows; int64_t n_cols, stride; int k; } bad[] = {
        {-1, 8, 8, 2}, {2, 0, 8, 2}, {2, -3, 8, 2}, {2, 8, 7, 2},
        {1, (int64_t)INT32_MAX + 1, (int64_t)INT32_MAX + 1, 2}, {2, 8, 8, 0}, {2, 8, 8, -1}, {2, 8, 8, ENG_TOPK_MAX + 1},
    };
    gbuf x = {0}, vals = {0}, ids = {0};
    float in[2][8] = {{1, 2, 3, 9, 4, 9, 0, -1}, {NAN, 5, 6, 7, 8, 9, 10, 11}};
    layout lo = rows(2, 3, 3);
    if (gbuf_values(&tc, &x, in, 16) && gbuf_output(&tc, &vals, 6) && gbuf_output(&tc, &ids, 6)) {
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            pp_status sc = h->cpu->ops->topk(h->cpu, x.cpu, bad[i].stride, bad[i].n_rows, bad[i].n_cols, bad[i].k,
                                             vals.cpu, ids.cpu);
            pp_status sd = tc.dut->ops->topk(tc.dut, x.dut, bad[i].stride, bad[i].n_rows, bad[i].n_cols, bad[i].k,
                                             vals.dut, ids.dut);
            if (sc != PP_STATUS_INVALID_ARG || sd != PP_STATUS_INVALID_ARG)
                fail(&tc, "n_rows=%d n_cols=%lld stride=%lld k=%d: cpu %s, %s %s; expected INVALID_ARG", bad[i].n_rows,
                     (long long)bad[i].n_cols, (long long)bad[i].stride, bad[i].k, pp_status_str(sc), h->dut_name,
                     pp_status_str(sd));
        }
        op_ok(&tc, tc.dut->ops->topk(tc.dut, x.dut, 8, 0, 8, 3, vals.dut, ids.dut), false, "topk of 0 rows");
        check_untouched(&tc, &vals, "output after refused calls"); /* nothing written */
        check_untouched(&tc, &ids, "output after refused calls");
        if (op_ok(&tc, h->cpu->ops->topk(h->cpu, x.cpu, 8, 2, 8, 3, vals.cpu, ids.cpu), true, "topk") &&
            op_ok(&tc, tc.dut->ops->topk(tc.dut, x.dut, 8, 2, 8, 3, vals.dut, ids.dut), false,
                  "topk after refused calls")) {
            const int32_t *want = ids.cpu;
            if (want[0] != 3 || want[1] != 5 || want[2] != 4 || want[3] != 0 || want[4] != 7 || want[5] != 6)
                fail(&tc, "cpu picked %d %d %d and %d %d %d, expected 3 5 4 (two 9s, the first first) and 0 7 6 "
                     "(NaN at column 0 first)", want[0], want[1], want[2], want[3], want[4], want[5]);
            check_i32(&tc, &ids, &lo, "ids");
            check_i32(&tc, &vals, &lo, "vals (bits)");
        }
    }
    gbuf_free(&tc, &x);
    gbuf_free(&tc, &vals);
    gbuf_free(&tc, &ids);
    case_end(&tc);
}

/* Sampling's shapes: n_vocab from 1 to Qwen3's 151936 and 163840, k from 1 to ENG_TOPK_MAX (k >
 * n_cols included), n_seq 1 .. 64; rows contiguous, and with an odd stride from an unaligned
 * base. Around kernels/sample.cu's split: one row of 8192 and 8193 columns at k 1024 (ranges of
 * at least 8k columns: none, then two), many rows that need no split, more rows than a grid's y
 * dimension holds (65535). --small: rows of at most 4097 columns, at most 16 rows. */
static void run_topk(harness *h)
{
    static const int64_t cols[] = {1, 7, 31, 1000, 4097, 151936, 163840};
    static const int ks[] = {1, 5, 50, ENG_TOPK_MAX};
    static const int n_rows[] = {1, 3, 16, 64};
    int pattern0 = 0;
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++)
            for (size_t j = 0; j < sizeof n_rows / sizeof n_rows[0]; j++) {
                if ((h->small && (cols[i] > 4097 || n_rows[j] > 16)) || (cols[i] > 4097 && n_rows[j] == 16))
                    continue;
                int64_t n = cols[i];
                if ((i + q + j) % 2 == 0)
                    case_topk(h, n_rows[j], n, n, 0, ks[q], pattern0++ % ARGMAX_PATTERNS);
                else
                    case_topk(h, n_rows[j], n, n + 2 * (int64_t)j + 1, 1 + 2 * (int64_t)(q % 2), ks[q],
                              pattern0++ % ARGMAX_PATTERNS);
            }
    case_topk(h, 1, 8192, 8192, 0, ENG_TOPK_MAX, 12);
    case_topk(h, 1, 8193, 8193, 3, ENG_TOPK_MAX, 12);
    case_topk(h, 2, 4096, 4097, 1, 2, 12);
    case_topk_bad_args(h);
    if (!h->small) {
        case_topk(h, 600, 9000, 9001, 2, 50, 5);
        case_topk(h, 70000, 3, 3, 1, 2, 0);
    }
}

static void run_elementwise(harness *h)
{
    static const int rms_d[] = {1, 7, 64, 128, 1000, 2051, 7168};
    static const eng_dtype dts[] = {ENG_DTYPE_F32, ENG_DTYPE_BF16, ENG_DTYPE_F16};
    for (int i = 0; i < 7; i++) {
        if (h->small && rms_d[i] > 1000)
            continue;
        int n_rows = (int[]){1, 5, 133}[i % 3];
        if (h->small && n_rows > 17)
            n_rows = 17;
        case_rmsnorm(h, dts[i % 3], rms_d[i], n_rows, 0, 0, false);
        case_rmsnorm(h, dts[(i + 1) % 3], rms_d[i], n_rows, 3, 5, false);
        case_rmsnorm(h, dts[(i + 2) % 3], rms_d[i], n_rows, i % 2 ? 4 : 0, 0, true);
    }
    /* Qwen3's per-head q_norm: every head a row, in place */
    case_rmsnorm(h, ENG_DTYPE_BF16, 128, h->small ? 40 : 133 * 32, 0, 0, true);

    static const size_t add_n[] = {1, 3, 1000, 7 * 2051, (1u << 20) + 3};
    for (int i = 0; i < 5; i++)
        if (!h->small || add_n[i] < 100000)
            for (int alias = 0; alias < 3; alias++)
                case_add(h, add_n[i], alias);

    /* rope: half split (Qwen3), partial (Phi-3), interleaved on q_pe after q_nope (DeepSeek) and
     * on k_pe (one head, stride 0, inside the c_kv | k_pe row), YaRN's cos/sin scale, large
     * positions; one token; a batch of sequences at their own offsets; random positions */
    rope_case ropes[] = {
        {5, 4, 64, 256, 64, 0, 0, 64, false, 1.0f, 0, 10000.0f, POS_RUN},
        {133, 32, 128, 32 * 128, 128, 0, 0, 128, false, 1.0f, 7, 1000000.0f, POS_RUN},
        {17, 8, 96, 3 * 8 * 96, 96, 0, 0, 32, false, 1.0f, 3, 10000.0f, POS_RUN},
        {7, 4, 192, 4 * 192, 192, 0, 128, 64, true, 1.2f, 11, 50000.0f, POS_RUN},
        {7, 1, 576, 576, 0, 512, 0, 64, true, 1.2f, 11, 50000.0f, POS_RUN},
        {3, 2, 64, 128, 64, 0, 0, 64, false, 1.0f, 30000, 10000.0f, POS_RUN},
        {3, 2, 192, 2 * 192 + 5, 192, 0, 128, 64, true, 0.8f, 30000, 10000.0f, POS_RUN},
        {2, 3, 16, 48, 16, 0, 4, 8, true, 1.0f, 32766, 10000.0f, POS_RUN},
        {1, 1, 8, 8, 8, 0, 0, 8, false, 1.0f, 0, 10000.0f, POS_RUN},
        {1, 4, 64, 256, 64, 0, 0, 64, false, 1.0f, 30000, 10000.0f, POS_RUN},
        {17, 2, 64, 128, 64, 0, 0, 64, false, 1.0f, 30000, 10000.0f, POS_SEQS},
        {133, 8, 128, 3 * 8 * 128 + 3, 128, 0, 0, 128, false, 1.0f, 30000, 1000000.0f, POS_SEQS},
        {20, 1, 576, 576, 0, 512, 0, 64, true, 1.2f, 5000, 50000.0f, POS_SEQS},
        {7, 4, 192, 4 * 192, 192, 0, 128, 64, true, 1.2f, 131071, 50000.0f, POS_RANDOM},
        {64, 1, 8, 8, 8, 0, 0, 8, false, 1.0f, 200000, 10000.0f, POS_RANDOM},
        {64, 40, 96, 40 * 96, 96, 0, 0, 96, false, 1.0f, 40000, 10000.0f, POS_RANDOM},
    };
    for (size_t i = 0; i < sizeof ropes / sizeof ropes[0]; i++)
        if (!h->small || ropes[i].n_tokens * ropes[i].n_head <= 64)
            case_rope(h, ropes[i]);

    static const int sw[][2] = {{1, 1}, {7, 100}, {5, 1000}, {133, 2051}, {16, 768}};
    for (int i = 0; i < 5; i++) {
        if (h->small && sw[i][0] * sw[i][1] > 10000)
            continue;
        case_swiglu(h, sw[i][0], sw[i][1], false, false, 0);
        case_swiglu(h, sw[i][0], sw[i][1], true, false, 3);
        case_swiglu(h, sw[i][0], sw[i][1], i % 2 == 0, true, 0);
    }

    /* round_bf16 (the bf16 mode): one element, contiguous, strided with gaps (matmul y rows, RoPE
     * slices of heads), stride 0, more rows than gridDim.y (65535), a row of 2M elements */
    static const struct { int n_rows; int64_t n_cols, stride; bool big; } rb[] = {
        {1, 1, 1, false}, {1, 1000, 1000, false}, {5, 64, 64, false}, {7, 100, 133, false},
        {32, 64, 128, false}, {3, 64, 0, false}, {133, 2051, 2056, true}, {70000, 3, 4, true},
        {1, (1 << 20) * 2 + 3, (1 << 20) * 2 + 3, true},
    };
    for (size_t i = 0; i < sizeof rb / sizeof rb[0]; i++)
        if (!h->small || !rb[i].big)
            case_round_bf16(h, rb[i].n_rows, rb[i].n_cols, rb[i].stride);

    /* quant_act_fp8 (the bf16 mode over FP8 weights): one element, a decode row of Kimi K2's
     * width and its widest input, a ragged last group, strided rows, in place (the experts' h;
     * DeepSeek's c_kv inside its c_kv | k_pe rows, Kimi's and ds_fp8_ragged's), groups of 1 and
     * of an odd width, more groups than warps, more rows than blocks (2^20) */
    static const struct { int n_rows; int64_t n_cols; int group, x_pad, out_pad; bool in_place, big; } qa[] = {
        {1, 1, 128, 0, 0, false, false}, {1, 7168, 128, 0, 0, false, false}, {5, 300, 128, 0, 0, false, false},
        {17, 2048 + 3, 128, 5, 3, false, false}, {16, 136, 128, 0, 0, true, false}, {3, 100, 1, 0, 0, false, false},
        {7, 1000, 7, 2, 0, false, false}, {6, 512, 128, 64, 0, true, false}, {5, 72, 128, 16, 0, true, false},
        {133, 18432, 128, 0, 0, false, true},
        {64, 7168, 128, 3, 0, true, true}, {(1 << 20) + 3, 2, 128, 0, 0, false, true},
    };
    for (size_t i = 0; i < sizeof qa / sizeof qa[0]; i++)
        if (!h->small || !qa[i].big)
            case_quant_act(h, qa[i].n_rows, qa[i].n_cols, qa[i].group, qa[i].x_pad, qa[i].out_pad, qa[i].in_place);
}

/* kv_write into f32 and bf16 caches: K of a fused q|k|v row into a [n_head_kv][d_head] cache row,
 * V of odd width, k_pe shared by every head (src_head_stride 0) into DeepSeek's naive cache after
 * k_nope, the latent cache's c_kv and k_pe from the c_kv | k_pe row, one element, rows narrower
 * than the guard band (a negative slot used as a row would land there), a decode token that is
 * skipped, caches at offsets that do and do not allow the 4-column path. */
static void run_kv_write(harness *h)
{
    /* n_tokens, n_head, width, src row / head stride, src offset, cache row / head stride, cache
     * offset, cache rows, skipped tokens */
    static const struct { kv_case c; bool big; } kv[] = {
        {{7, 8, 128, 48 * 128, 128, 32 * 128, 8 * 128, 128, 0, 64, 0}, false},
        {{5, 2, 100, 2 * 100 + 3, 100, 0, 2 * 100 + 5, 100, 0, 40, 1}, false},
        {{17, 4, 64, 576, 0, 512, 4 * 192, 192, 128, 100, 2}, false},
        {{133, 1, 512, 576, 0, 0, 512, 0, 0, 1000, 3}, false},
        {{133, 1, 64, 576, 0, 512, 64, 0, 0, 300, 0}, false},
        {{1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0}, false},
        {{9, 2, 16, 32, 16, 0, 40, 20, 0, 9, 2}, false},
        {{1, 8, 128, 8 * 128, 128, 0, 8 * 128, 128, 0, 16, 1}, false},
        {{33, 10, 96, 60 * 96, 96, 40 * 96, 10 * 96, 96, 0, 77, 1}, false},
        {{300, 8, 128, 48 * 128, 128, 32 * 128, 8 * 128, 128, 0, 4096, 5}, true},
        /* the cache 4 (bf16: 8) bytes past a 16-byte boundary with every stride a multiple of 4,
           then 16 (bf16: 8) past: the scalar and the 4-column path of each dtype; an odd offset
           and width */
        {{16, 4, 64, 4 * 64, 64, 0, 4 * 64 + 4, 64, 2, 50, 1}, false},
        {{16, 4, 64, 4 * 64, 64, 4, 4 * 64 + 4, 64, 4, 50, 1}, false},
        {{12, 3, 63, 3 * 63 + 1, 63, 1, 3 * 63 + 2, 63, 1, 31, 2}, false},
    };
    static const eng_kv_dtype dts[] = {ENG_KV_F32, ENG_KV_BF16};
    for (int d = 0; d < 2; d++)
        for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
            if (!h->small || !kv[i].big)
                case_kv_write(h, kv[i].c, dts[d]);
}

/* Attention over f32 caches, then over bf16 caches: the same mix with fewer of the grid's cases
 * (each d_qk/d_v pair once, every GQA ratio and block size twice) and of the long prefills. */
static void run_attention(harness *h, eng_kv_dtype kv)
{
    const bool f32 = kv == ENG_KV_F32;
    /* GQA 1:1, 4:1, 5:1, 8:1 with every (d_qk, d_v), block sizes 1, 5, 16, 64, one sequence (a
     * short prefill after a short prefix) or three (one of them empty) */
    static const int dims[][2] = {{24, 24}, {64, 64}, {128, 128}, {192, 128}, {192, 100}, {24, 100}, {64, 128}, {128, 100}};
    static const int ratio[] = {1, 4, 5, 8}, blocks[] = {1, 5, 16, 64};
    for (int d = 0; d < 8; d++)
        for (int r = 0; r < 4; r++) {
            if (!f32 && r != (d + d / 4) % 4)
                continue;
            int n_kv = d % 2 ? 2 : 1;
            seq_spec sq = d % 2 ? seq_list(3, (int[]){3, 0, 5}, (int[]){4, 6, 11}) : seq_one(5, 3);
            case_attention(h, (attn_case){ratio[r] * n_kv, n_kv, dims[d][0], dims[d][1], 0, 0, 0}, sq,
                           blocks[(d + r) % 4], kv);
        }
    /* strided as Phi-3 lays out q | k | v and DeepSeek's naive cache */
    case_attention(h, (attn_case){8, 2, 64, 64, 2 * 2 * 64, 2 * 64 + 3, 5}, seq_list(2, (int[]){7, 2}, (int[]){9, 0}), 16,
                   kv);
    case_attention(h, (attn_case){4, 4, 192, 128, 0, 0, 0}, seq_one(3, 20), 5, kv);
    /* decode batches, a ragged prefill + decode mix (an empty sequence in it), an empty last
     * sequence */
    case_attention(h, (attn_case){16, 2, 128, 128, 0, 0, 0}, seq_list(4, (int[]){1, 1, 1, 1}, (int[]){0, 9, 63, 300}),
                   16, kv);
    case_attention(h, (attn_case){10, 2, 128, 128, 0, 0, 0}, seq_decode(8, 0, 100), 1, kv);
    case_attention(h, (attn_case){8, 2, 64, 64, 0, 0, 0}, seq_list(4, (int[]){7, 0, 33, 1}, (int[]){0, 12, 40, 200}), 5,
                   kv);
    case_attention(h, (attn_case){4, 4, 64, 64, 0, 0, 0}, seq_list(3, (int[]){3, 1, 0}, (int[]){20, 0, 7}), 16, kv);
    if (h->small) {
        case_attention(h, (attn_case){16, 2, 128, 128, 0, 0, 0}, seq_one(1, 63), 64, kv);
        case_attention(h, (attn_case){4, 1, 64, 64, 0, 0, 0}, seq_one(17, 0), 64, kv);
        return;
    }
    /* decode: one token over a long cache */
    static const int pos[] = {0, 1, 255, 4096, 32767};
    for (int i = 0; i < 5; i++) {
        if (!f32 && i % 2)
            continue;
        case_attention(h, (attn_case){16, 2, 128, 128, 0, 0, 0}, seq_one(1, pos[i]), 16, kv);
        case_attention(h, (attn_case){4, 4, 192, 128, 0, 0, 0}, seq_one(1, pos[i]), 64, kv);
    }
    case_attention(h, (attn_case){32, 4, 100, 100, 0, 0, 0}, seq_one(1, 20000), 5, kv);
    /* decode batches: contexts 1 .. 5000 at every block size; 16 sequences at ~4k */
    static const attn_case dec[] = {{16, 2, 128, 128, 0, 0, 0}, {40, 8, 128, 128, 0, 0, 0},
                                    {8, 8, 64, 64, 0, 0, 0}, {32, 4, 128, 128, 0, 0, 0}};
    for (int i = 0; i < 4; i++)
        case_attention(h, dec[i], seq_list(4, (int[]){1, 1, 1, 1}, (int[]){0, 9, 1000, 4999}), blocks[(i + 2) % 4], kv);
    case_attention(h, (attn_case){16, 2, 128, 128, 0, 0, 0}, seq_decode(16, 3990, 4200), 16, kv);
    if (f32)
        case_attention(h, (attn_case){32, 4, 128, 128, 0, 0, 0}, seq_decode(16, 3900, 4100), 64, kv);
    case_attention(h, (attn_case){20, 4, 64, 64, 0, 0, 0}, seq_decode(16, 0, 15), 5, kv);
    /* ragged prefill + decode mixes */
    static const attn_case mix[] = {{8, 2, 128, 128, 0, 0, 0}, {4, 4, 192, 128, 0, 0, 0},
                                    {10, 2, 64, 64, 0, 0, 0}, {8, 1, 24, 100, 0, 0, 0}};
    for (int i = 0; i < 4; i++)
        case_attention(h, mix[i], seq_list(4, (int[]){7, 0, 33, 1}, (int[]){0, 12, 100, 2000}), blocks[(i + 2) % 4],
                       kv);
    case_attention(h, (attn_case){16, 2, 128, 128, 0, 0, 0},
                   seq_list(5, (int[]){64, 1, 17, 130, 3}, (int[]){0, 3000, 50, 500, 7}), 16, kv);
    case_attention(h, (attn_case){8, 2, 64, 64, 128, 3, 0},
                   seq_list(8, (int[]){1, 2, 3, 5, 8, 13, 21, 34}, (int[]){100, 0, 7, 1000, 64, 3, 500, 2}), 7, kv);
    /* prefill of one long sequence, and prefill after a cached prefix */
    if (f32) {
        case_attention(h, (attn_case){8, 2, 128, 128, 0, 0, 0}, seq_one(300, 0), 16, kv);
        case_attention(h, (attn_case){4, 4, 64, 64, 0, 0, 0}, seq_one(300, 0), 64, kv);
    }
    case_attention(h, (attn_case){8, 1, 192, 100, 0, 0, 0}, seq_one(300, 0), 5, kv);
    case_attention(h, (attn_case){8, 2, 128, 128, 0, 0, 0}, seq_one(64, 500), 1, kv);
    case_attention(h, (attn_case){16, 2, 64, 64, 128, 3, 0}, seq_one(133, 1000), 16, kv);
    case_attention(h, (attn_case){4, 1, 24, 100, 0, 0, 0}, seq_one(17, 31000), 64, kv);
}

/* MLA over f32 latent caches, then over bf16 ones (every case but a few single-sequence ones). */
static void run_mla(harness *h, eng_kv_dtype kv)
{
    const bool f32 = kv == ENG_KV_F32;
    /* one sequence: heads, rank, d_nope, d_rope, d_v, q_pad, kv_b format; n_tokens, pos0, block */
    static const struct { mla_case c; int n_tokens, pos0, block_size; } one[] = {
        {{4, 32, 16, 8, 16, 0, 1}, 1, 0, 64},
        {{4, 32, 16, 8, 16, 0, 3}, 5, 3, 5},
        {{2, 32, 128, 64, 128, 5, 6}, 7, 20, 16},
        {{3, 512, 16, 8, 16, 0, 4}, 2, 3, 1},
        {{8, 512, 128, 64, 128, 0, 3}, 1, 1000, 64},
        {{4, 512, 128, 64, 128, 0, 1}, 64, 0, 64},
        {{3, 512, 16, 8, 16, 0, 6}, 17, 100, 7},
        {{16, 512, 128, 64, 128, 0, 0}, 5, 300, 16},
        {{2, 32, 16, 64, 128, 0, 8}, 64, 64, 64},
        {{2, 512, 128, 8, 16, 3, 5}, 133, 7, 5},
        /* int8 kv_b with every scale dtype: decode, a short prefill, strided q */
        {{4, 32, 16, 8, 16, 0, 9}, 1, 5, 1},
        {{3, 512, 16, 8, 16, 0, 10}, 17, 100, 64},
        {{2, 512, 128, 64, 128, 5, 11}, 7, 20, 5},
    };
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) {
        const mla_case *c = &one[i].c;
        if (h->small && (one[i].n_tokens > 17 || one[i].pos0 > 64 || c->n_head * c->kv_lora_rank > 1600))
            continue;
        if (!f32 && i >= 10) /* the kv_b formats' cases: the cache dtype does not meet them */
            continue;
        case_mla(h, *c, seq_one(one[i].n_tokens, one[i].pos0), one[i].block_size, kv);
    }
    /* batches: decode, a ragged prefill + decode mix with an empty sequence */
    case_mla(h, (mla_case){4, 32, 16, 8, 16, 0, 1}, seq_list(4, (int[]){7, 0, 3, 1}, (int[]){0, 12, 40, 60}), 5, kv);
    case_mla(h, (mla_case){3, 512, 16, 8, 16, 0, 3}, seq_list(3, (int[]){1, 1, 1}, (int[]){0, 17, 64}), 64, kv);
    case_mla(h, (mla_case){2, 32, 16, 64, 128, 3, 9}, seq_decode(8, 0, 70), 1, kv);
    if (h->small)
        return;
    case_mla(h, (mla_case){8, 512, 128, 64, 128, 0, 1}, seq_list(4, (int[]){1, 1, 1, 1}, (int[]){0, 63, 64, 1000}), 64,
             kv);
    case_mla(h, (mla_case){4, 512, 128, 64, 128, 0, 3}, seq_list(4, (int[]){7, 0, 33, 1}, (int[]){0, 12, 100, 300}), 5,
             kv);
    case_mla(h, (mla_case){8, 512, 128, 64, 128, 5, 6}, seq_list(4, (int[]){7, 0, 33, 1}, (int[]){0, 12, 100, 300}), 64,
             kv);
    case_mla(h, (mla_case){16, 512, 128, 64, 128, 0, 1}, seq_decode(16, 1000, 4000), 64, kv);
    case_mla(h, (mla_case){16, 512, 128, 64, 128, 0, 0}, seq_one(1, 8000), 16, kv);
    case_mla(h, (mla_case){4, 512, 128, 64, 128, 0, 10},
             seq_list(5, (int[]){64, 1, 17, 130, 3}, (int[]){0, 3000, 50, 500, 7}), 13, kv);
}

static void run_moe(harness *h)
{
    static const int tok[] = {1, 7, 133};
    for (int i = 0; i < 3; i++) {
        int T = h->small && tok[i] > 17 ? 17 : tok[i];
        case_route(h, (route_case){ENG_ROUTER_SOFTMAX, T, 128, 8, 1, 1, true, false, 1.0f, ENG_DTYPE_UNKNOWN});
        case_route(h, (route_case){ENG_ROUTER_SOFTMAX, T, 64, 6, 1, 1, false, false, 1.0f, ENG_DTYPE_UNKNOWN});
        case_route(h, (route_case){ENG_ROUTER_SIGMOID, T, 256, 8, 8, 4, true, false, 2.5f, ENG_DTYPE_BF16});
        case_route(h, (route_case){ENG_ROUTER_SIGMOID, T, 64, 6, 1, 1, false, false, 1.0f, ENG_DTYPE_F32});
        case_route(h, (route_case){ENG_ROUTER_SIGMOID, T, 64, 4, 4, 2, true, false, 1.5f, ENG_DTYPE_UNKNOWN});
        case_route(h, (route_case){ENG_ROUTER_SIGMOID, T, 16, 4, 4, 2, true, false, 1.0f, ENG_DTYPE_F16});
    }
    case_route(h, (route_case){ENG_ROUTER_SOFTMAX, 7, 8, 2, 1, 1, true, true, 1.0f, ENG_DTYPE_UNKNOWN});
    case_route(h, (route_case){ENG_ROUTER_SOFTMAX, 7, 128, 8, 1, 1, false, true, 1.0f, ENG_DTYPE_UNKNOWN});
    case_route(h, (route_case){ENG_ROUTER_SIGMOID, 7, 256, 8, 8, 4, true, true, 2.5f, ENG_DTYPE_BF16});
    case_route(h, (route_case){ENG_ROUTER_SIGMOID, 7, 64, 6, 1, 1, true, true, 1.0f, ENG_DTYPE_F32});

    static const int moe_tok[] = {1, 7, 64};
    for (int fi = 0; fi < N_FORMATS; fi++) {
        if (h->small) {
            case_moe_experts(h, &FORMATS[fi], 16, 4, fi % 2 ? 7 : 1, 64, 40);
            continue;
        }
        for (int i = 0; i < 3; i++)
            case_moe_experts(h, &FORMATS[fi], 64, 8, moe_tok[i], i % 2 ? 257 : 200, i % 2 ? 100 : 136);
    }

    /* x bf16 (CUDA: gate/up on tensor cores from 64 tokens), then also h bf16 (the bf16 mode;
     * CUDA: down on tensor cores too) over matmul_bf16's formats: 64 tokens over 4 experts each picked by every token (64 pairs each: one full
     * tile), 300 over 8 (about 75 pairs per expert: a full tile and a partial one), 130 over 4
     * (every expert 130 pairs: three tiles), 63 below the threshold; d_model a multiple of 8
     * (vector x loads) and not, d_ff not a multiple of the 64-row tile */
    static const int xb[][5] = {{4, 4, 64, 200, 136}, {8, 2, 300, 136, 100}, {4, 4, 130, 257, 70},
                                {16, 4, 63, 64, 40}};
    for (int fi = 0; fi < N_BF16_FORMATS; fi++)
        for (int i = 0; i < 4; i++)
            if (!h->small || i == 0)
                for (int hb = 0; hb < 2; hb++)
                    case_moe_experts_x(h, &BF16_FORMATS[fi], xb[i][0], xb[i][1], xb[i][2], xb[i][3], xb[i][4], true,
                                       hb);
}

int main(int argc, char **argv)
{
    harness h = {.dut_name = "cuda", .seed = 0x5eed};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--small") == 0) {
            h.small = true;
        } else if (strcmp(argv[i], "--op") == 0 && i + 1 < argc) {
            h.only = argv[++i];
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            h.seed = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "cuda") == 0 || strcmp(argv[i + 1], "cpu") == 0)) {
            h.dut_name = argv[++i];
        } else {
            fprintf(stderr, "usage: test_ops [--small] [--op NAME] [--seed N] [--backend cuda|cpu]\n");
            return 2;
        }
    }
    bool cuda = strcmp(h.dut_name, "cuda") == 0;
    if (cuda) {
        char why[512] = "";
        if (kern_device_count(why, sizeof why) <= 0) {
            printf("skipped: no CUDA device (%s)\n", why[0] ? why : "cudaGetDeviceCount returned 0");
            return 77;
        }
        kern_device_info info;
        if (kern_device_info_get(0, &info, why, sizeof why) == 0)
            printf("device 0: %s, sm_%d%d, %d SMs\n", info.name, info.major, info.minor, info.n_sm);
    }
    eng_err err = {{0}};
    if (eng_backend_cpu_create(0, &h.cpu, &err) != PP_STATUS_OK) {
        fprintf(stderr, "test_ops: %s\n", err.msg);
        return 1;
    }
    printf("test_ops: %s backend against the CPU reference, %s shapes, seed 0x%llx\n", h.dut_name,
           h.small ? "small" : "all", (unsigned long long)h.seed);
    run_embedding(&h);
    run_matmul(&h);
    run_matmul_bf16(&h);
    run_elementwise(&h);
    run_kv_write(&h);
    run_attention(&h, ENG_KV_F32);
    run_attention(&h, ENG_KV_BF16);
    run_attention_bf16(&h);
    run_mla(&h, ENG_KV_F32);
    run_mla(&h, ENG_KV_BF16);
    run_moe(&h);
    run_argmax(&h);
    run_topk(&h);
    if (cuda)
        case_shared_cache(&h);
    eng_backend_destroy(h.cpu);
    printf("test_ops: %d cases, %d failed, %d unsupported; worst relative L2 error: elementwise %.2e "
           "(bound %.0e), reductions %.2e (bound %.0e), attention_bf16 %.2e (bound %.1e), experts with bf16 h "
           "%.2e (bound %.0e)%s\n",
           h.n_cases, h.n_failed, h.n_unsupported, h.worst_elementwise, BOUND_ELEMENTWISE, h.worst_reduction,
           BOUND_REDUCTION, h.worst_attn_bf16, BOUND_ATTN_BF16, h.worst_experts_hbf16, BOUND_EXPERTS_HBF16,
           h.stop ? "; stopped early: the device was lost" : "");
    return h.n_failed || h.n_cases == 0 ? 1 : 0;
}
