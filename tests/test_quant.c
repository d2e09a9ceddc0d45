/* test_quant.c: on-load quantization (engine/quantize.c).
 *
 *   - f32 -> e4m3: every finite code round-trips; midpoints between neighbours round to the even
 *     code, a hair above / below to the upper / lower one; saturation at +-448; NaN -> 0x7f.
 *   - fp8 / int8 / int4 of random bf16 and f32 weights with ragged shapes: every element's error
 *     is within half a quantization step (fp8: 2^-4 relative, or 2^-10 of the block scale in the
 *     subnormal range; int8 / int4: half the scale), the largest element of each block / row is
 *     exact, int4 values beyond the grid clip to its end and its searched scales beat amax / 7 in
 *     squared error; rows read
 *     through eng_weight_row_f32 over partial ranges agree with whole rows.
 *   - bad input: NaN in a weight (BAD_FORMAT), an already-quantized weight (UNSUPPORTED), an
 *     unknown name (INVALID_ARG).
 *   - W8A8 activation quantization (quant_act_fp8 on the CPU reference, the bf16 mode's op):
 *     exact e4m3 codes of chosen values (ties to even in the normal and subnormal ranges, the
 *     amax mapping to 448, a quotient just above 448 saturating), an all-zero group (or one of
 *     -0) zeroing its whole row, a partial last group with its own scale, strided rows with
 *     their gaps untouched, in place equal to out of place, random rows within half a step;
 *     then the bf16 decorator: an FP8 matmul equals the inner matmul of the quantized input,
 *     rounded (a row with a zero group gives a zero row), other formats are not quantized, and
 *     FP8 routed experts quantize both inputs (the experts op against the same steps by hand);
 *     its routing: over an inner backend with matmul_bf16 (a spy over the CPU reference), every
 *     matmul but a W8A8 one goes to matmul_bf16, always with bf16-representable x.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quantize.h"

static int failures;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FAIL: %s\n", what);
        failures++;
    }
}

static uint32_t rng = 12345u;
static float frand(void) /* uniform in [-1, 1) */
{
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 23) - 1.0f;
}

static void test_e4m3(void)
{
    int bad = 0;
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f)
            continue;
        bad += eng_f32_to_fp8_e4m3(eng_fp8_e4m3_to_f32((uint8_t)c)) != c;
    }
    check(bad == 0, "every finite e4m3 code round-trips");
    bad = 0;
    for (int c = 0; c < 0x7e; c++) {
        float lo = eng_fp8_e4m3_to_f32((uint8_t)c), hi = eng_fp8_e4m3_to_f32((uint8_t)(c + 1));
        float mid = 0.5f * (lo + hi);
        int even = (c & 1) ? c + 1 : c;
        bad += eng_f32_to_fp8_e4m3(mid) != even;
        bad += eng_f32_to_fp8_e4m3(nextafterf(mid, hi)) != c + 1;
        bad += eng_f32_to_fp8_e4m3(nextafterf(mid, lo)) != c;
        bad += eng_f32_to_fp8_e4m3(-mid) != (0x80 | even);
    }
    check(bad == 0, "midpoints round to even, neighbours to the nearer code");
    check(eng_f32_to_fp8_e4m3(1000.0f) == 0x7e && eng_f32_to_fp8_e4m3(-1e30f) == 0xfe &&
              eng_f32_to_fp8_e4m3(INFINITY) == 0x7e && eng_f32_to_fp8_e4m3(NAN) == 0x7f &&
              eng_f32_to_fp8_e4m3(1e-30f) == 0x00,
          "saturation, NaN, underflow");
}

/* A random weight of fmt (F32 or BF16), every row scaled differently so scales differ. */
static void *random_weight(eng_wfmt fmt, int64_t n_out, int64_t n_in, eng_weight *w)
{
    memset(w, 0, sizeof *w);
    w->fmt = fmt;
    w->n_out = n_out;
    w->n_in = n_in;
    size_t n = (size_t)(n_out * n_in);
    void *data = malloc(n * (fmt == ENG_WFMT_F32 ? 4 : 2));
    for (int64_t r = 0; r < n_out; r++) {
        float row_scale = 0.01f + (float)(r % 7) * 0.3f;
        for (int64_t c = 0; c < n_in; c++) {
            float v = frand() * row_scale * (c % 13 == 0 ? 4.0f : 1.0f);
            if ((r + c) % 97 == 0)
                v = 0.0f;
            size_t i = (size_t)(r * n_in + c);
            if (fmt == ENG_WFMT_F32) {
                ((float *)data)[i] = v;
            } else {
                uint32_t u;
                memcpy(&u, &v, 4);
                ((uint16_t *)data)[i] = (uint16_t)(u >> 16); /* truncation: any bf16 will do */
            }
        }
    }
    w->data = data;
    return data;
}

/* Checks q (a quantization of w) element by element; returns the worst error in steps. */
static double check_quantized(const eng_weight *w, const eng_weight *q, eng_load_quant kind, const char *what)
{
    float *a = malloc((size_t)w->n_in * sizeof *a), *b = malloc((size_t)w->n_in * sizeof *b);
    float *part = malloc((size_t)w->n_in * sizeof *part);
    double worst = 0.0;
    int bad = 0, exact_max = 1;
    for (int64_t r = 0; r < w->n_out; r++) {
        eng_weight_row_f32(w, r, 0, w->n_in, a);
        eng_weight_row_f32(q, r, 0, w->n_in, b);
        int64_t k0 = r % 5, k1 = w->n_in - (r % 3); /* a partial range reads the same values */
        if (k1 > k0) {
            eng_weight_row_f32(q, r, k0, k1, part);
            bad += memcmp(part, b + k0, (size_t)(k1 - k0) * sizeof *part) != 0;
        }
        for (int64_t c = 0; c < w->n_in; c++) {
            float s = 0.0f;
            double step = 0.0;
            switch (kind) {
            case ENG_LOADQ_FP8:
                s = ((const float *)q->scale)[(r / q->block_out) * q->scale_cols + c / q->block_in];
                /* spacing of e4m3 around |a|/s: <= |a|/s * 2^-3, or 2^-9 among subnormals */
                step = fmax(fabs((double)a[c]) * 0x1p-3, (double)s * 0x1p-9);
                exact_max &= fabsf(a[c]) != 448.0f * s || b[c] == a[c];
                break;
            case ENG_LOADQ_INT8:
                s = ((const float *)q->scale)[r];
                step = s;
                exact_max &= fabsf(a[c]) != 127.0f * s || fabsf(b[c] - a[c]) <= 1e-6f * fabsf(a[c]);
                break;
            case ENG_LOADQ_INT4:
                /* values beyond the grid [-8s, 7s] are clipped to its end (the scale search may
                 * clip a few to refine the rest); the others round to the nearest step */
                s = ((const float *)q->scale)[r * q->scale_cols + c / q->group];
                step = s;
                if (a[c] > 7.5f * s || a[c] < -8.5f * s) {
                    exact_max &= b[c] == (a[c] > 0 ? 7.0f : -8.0f) * s;
                    continue;
                }
                break;
            case ENG_LOADQ_NONE: break;
            }
            double err = fabs((double)a[c] - (double)b[c]) / step;
            worst = err > worst ? err : worst;
        }
    }
    if (kind == ENG_LOADQ_INT4) { /* the searched scales beat amax / 7 in squared error */
        double sse = 0.0, sse7 = 0.0;
        for (int64_t r = 0; r < w->n_out; r++) {
            eng_weight_row_f32(w, r, 0, w->n_in, a);
            eng_weight_row_f32(q, r, 0, w->n_in, b);
            for (int64_t c0 = 0; c0 < w->n_in; c0 += q->group) {
                int64_t c1 = c0 + q->group < w->n_in ? c0 + q->group : w->n_in;
                float m = 0.0f;
                for (int64_t c = c0; c < c1; c++)
                    m = fmaxf(m, fabsf(a[c]));
                float s7 = m > 0.0f ? m / 7.0f : 1.0f;
                for (int64_t c = c0; c < c1; c++) {
                    double d7 = (double)a[c] - (double)(fmaxf(-8.0f, fminf(7.0f, rintf(a[c] / s7))) * s7);
                    sse7 += d7 * d7;
                    sse += ((double)a[c] - (double)b[c]) * ((double)a[c] - (double)b[c]);
                }
            }
        }
        check(sse <= sse7 * (1 + 1e-9), "int4: the scale search does not lose to amax / 7");
    }
    printf("%-32s worst error %.4f of a step\n", what, worst);
    check(bad == 0, "partial rows equal whole rows");
    check(worst <= 0.5 * (1 + 1e-5), "error within half a step");
    check(exact_max, "the largest element of a block / row is exact (to 1e-6); int4 clips to the grid's end");
    free(a);
    free(b);
    free(part);
    return worst;
}

static void test_weights(void)
{
    const int64_t shapes[][2] = {{1, 1}, {3, 7}, {17, 200}, {200, 136}, {257, 300}, {130, 129}};
    const eng_load_quant kinds[] = {ENG_LOADQ_FP8, ENG_LOADQ_INT8, ENG_LOADQ_INT4};
    const eng_wfmt fmts[] = {ENG_WFMT_F32, ENG_WFMT_BF16};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int f = 0; f < 2; f++)
            for (int k = 0; k < 3; k++) {
                eng_weight w, q;
                void *data = random_weight(fmts[f], shapes[s][0], shapes[s][1], &w);
                void *owned = NULL;
                eng_err err = {{0}};
                char what[128];
                snprintf(what, sizeof what, "%s %s [%lld x %lld]", eng_load_quant_name(kinds[k]),
                         fmts[f] == ENG_WFMT_F32 ? "f32" : "bf16", (long long)shapes[s][0], (long long)shapes[s][1]);
                pp_status st = eng_weight_quantize(&w, kinds[k], what, &q, &owned, &err);
                check(st == PP_STATUS_OK && owned, err.msg);
                if (st == PP_STATUS_OK) {
                    check_quantized(&w, &q, kinds[k], what);
                    size_t expect = kinds[k] == ENG_LOADQ_INT4 ? (size_t)(w.n_out * ((w.n_in + 7) / 8) * 4)
                                                               : (size_t)(w.n_out * w.n_in);
                    check(eng_weight_bytes(&q) >= expect, "eng_weight_bytes counts the quantized data");
                    /* quantizing a quantized weight is refused */
                    eng_weight q2;
                    void *owned2 = NULL;
                    check(eng_weight_quantize(&q, ENG_LOADQ_INT8, what, &q2, &owned2, &err) ==
                                  PP_STATUS_UNSUPPORTED && !owned2,
                          "an already-quantized weight is UNSUPPORTED");
                }
                free(owned);
                free(data);
            }
}

static void test_bad_input(void)
{
    eng_weight w, q;
    void *data = random_weight(ENG_WFMT_F32, 4, 9, &w);
    ((float *)data)[17] = NAN;
    void *owned = (void *)1;
    eng_err err = {{0}};
    for (int k = ENG_LOADQ_FP8; k <= ENG_LOADQ_INT4; k++)
        check(eng_weight_quantize(&w, (eng_load_quant)k, "layer.w", &q, &owned, &err) == PP_STATUS_BAD_FORMAT &&
                  !owned && strstr(err.msg, "layer.w") && strstr(err.msg, "NaN"),
              "a NaN weight is BAD_FORMAT, named");
    free(data);
    eng_load_quant lq;
    check(eng_load_quant_parse("int3", &lq, &err) == PP_STATUS_INVALID_ARG && strstr(err.msg, "int3"),
          "unknown quantization name");
    check(eng_load_quant_parse("int4", &lq, &err) == PP_STATUS_OK && lq == ENG_LOADQ_INT4, "int4 parses");
}

/* ---- W8A8 activation quantization ------------------------------------------------------------ */

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Runs the CPU backend's quant_act_fp8 over rows [n_rows][n_cols] of x (x_stride apart) into a
 * buffer of out_stride rows filled with a sentinel, and checks the gaps kept it. */
#define SENTINEL_BITS 0xffbadbadu
static float *quant_rows(eng_backend *cpu, const float *x, int64_t x_stride, int64_t out_stride, int n_rows,
                         int64_t n_cols, int group)
{
    size_t n = (size_t)(out_stride * n_rows);
    float *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = SENTINEL_BITS;
        memcpy(&out[i], &u, 4);
    }
    check(cpu->ops->quant_act_fp8(cpu, x, x_stride, out, out_stride, n_rows, n_cols, group) == PP_STATUS_OK,
          "quant_act_fp8 returns OK");
    int bad = 0;
    for (int r = 0; r < n_rows; r++)
        for (int64_t c = n_cols; c < out_stride; c++)
            bad += bits_of(out[r * out_stride + c]) != SENTINEL_BITS;
    check(bad == 0, "quant_act_fp8 writes nothing between rows");
    return out;
}

static void test_quant_act_codes(eng_backend *cpu)
{
    /* group 8, amax 448 in each group: s = 1 exactly, so out = the e4m3 value of x */
    const float x[16] = {
        448.0f, 17.0f, 19.0f, -17.0f, 0x1p-10f, 3 * 0x1p-10f, 1.0f + 0x1p-4f, 0.0f, /* ties */
        -448.0f, 1.0f + 3 * 0x1p-4f, 240.0f, 232.0f, 0x1p-9f, 0x1p-10f + 0x1p-30f, 5 * 0x1p-10f, -0.0f,
    };
    const float want[16] = {
        448.0f, 16.0f, 20.0f, -16.0f, 0.0f, 0x1p-8f, 1.0f, 0.0f,          /* to even: 16, 20, 0, 2^-8, 1 */
        -448.0f, 1.25f, 240.0f, 224.0f, 0x1p-9f, 0x1p-9f, 0x1p-8f, -0.0f, /* 232 ties to 224, 5*2^-10 to 4*2^-10 */
    };
    float *out = quant_rows(cpu, x, 16, 16, 1, 16, 8);
    int bad = 0;
    for (int i = 0; i < 16; i++)
        if (bits_of(out[i]) != bits_of(want[i])) {
            fprintf(stderr, "  quant_act_fp8 code: x = %a gives %a, want %a\n", (double)x[i], (double)out[i],
                    (double)want[i]);
            bad++;
        }
    check(bad == 0, "quant_act_fp8: exact e4m3 values, ties to even (normal and subnormal)");
    free(out);

    /* a scale that is not a power of two: the amax maps to 448 * s, every value to code * s */
    const float y[5] = {3.0f, -1.0f, 0.1f, 2.9f, 0.0f};
    out = quant_rows(cpu, y, 5, 5, 1, 5, 5);
    float s = 3.0f / 448.0f;
    bad = 0;
    for (int i = 0; i < 5; i++)
        bad += bits_of(out[i]) != bits_of(eng_fp8_e4m3_to_f32(eng_f32_to_fp8_e4m3(y[i] / s)) * s);
    check(bad == 0 && out[0] == 448.0f * s && eng_f32_to_fp8_e4m3(y[0] / s) == 0x7e,
          "quant_act_fp8: out = e4m3(x / s) * s with s = amax / 448, the amax at code 0x7e");
    free(out);

    /* saturation: an amax whose quotient amax / (amax / 448) rounds above 448 still gets 448 */
    float a = 1.0f;
    for (int i = 0; i < 1 << 20 && a / (a / 448.0f) <= 448.0f; i++)
        a = nextafterf(a, 2.0f);
    check(a / (a / 448.0f) > 448.0f, "found an amax whose quotient exceeds 448");
    float z[2] = {a, -a};
    out = quant_rows(cpu, z, 2, 2, 1, 2, 2);
    check(out[0] == 448.0f * (a / 448.0f) && out[1] == -out[0], "quant_act_fp8 saturates at +-448");
    free(out);
}

static void test_quant_act_rows(eng_backend *cpu)
{
    /* 4 rows of 10 columns, group 4: groups [0,4) [4,8) [8,10) (partial), rows 13 apart in and
     * 11 apart out. Row 1's middle group is zero, row 2's last group is -0 only: both rows come
     * out +0 throughout (HF's nan_to_num); rows 0 and 3 are quantized group by group. */
    enum { R = 4, C = 10, XS = 13, OS = 11, G = 4 };
    float x[R * XS];
    for (int i = 0; i < R * XS; i++)
        x[i] = NAN; /* gaps: never read */
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            x[r * XS + c] = frand() * (c >= 8 ? 0.01f : 3.0f); /* the last group much smaller */
    for (int c = 4; c < 8; c++)
        x[1 * XS + c] = 0.0f;
    x[2 * XS + 8] = x[2 * XS + 9] = -0.0f;
    float *out = quant_rows(cpu, x, XS, OS, R, C, G);
    int bad = 0, zeros = 0;
    for (int r = 0; r < R; r++)
        for (int c0 = 0; c0 < C; c0 += G) {
            int c1 = c0 + G < C ? c0 + G : C;
            float m = 0.0f;
            for (int c = c0; c < c1; c++)
                m = fmaxf(m, fabsf(x[r * XS + c]));
            float s = m / 448.0f;
            for (int c = c0; c < c1; c++) {
                float got = out[r * OS + c];
                if (r == 1 || r == 2) {
                    zeros += bits_of(got) == 0u;
                    continue;
                }
                bad += bits_of(got) != bits_of(eng_fp8_e4m3_to_f32(eng_f32_to_fp8_e4m3(x[r * XS + c] / s)) * s);
            }
        }
    check(bad == 0, "quant_act_fp8: each group (the partial last one too) with its own scale");
    check(zeros == 2 * C, "quant_act_fp8: a row with an all-zero (or -0) group is +0 throughout");

    /* in place, same stride: the same bits */
    float *inplace = malloc(sizeof x);
    memcpy(inplace, x, sizeof x);
    check(cpu->ops->quant_act_fp8(cpu, inplace, XS, inplace, XS, R, C, G) == PP_STATUS_OK, "in place runs");
    bad = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            bad += bits_of(inplace[r * XS + c]) != bits_of(out[r * OS + c]);
    check(bad == 0, "quant_act_fp8 in place equals out of place");
    free(inplace);
    free(out);
    check(cpu->ops->quant_act_fp8(cpu, x, XS, x, XS, R, C, 0) == PP_STATUS_INVALID_ARG, "group 0 is INVALID_ARG");

    /* random rows, group 128 with a ragged end: within half a step of e4m3 (2^-4 relative, or
     * 2^-10 of the scale among subnormals), the group's largest element exact */
    enum { RR = 5, CC = 300 };
    float *v = malloc(RR * CC * sizeof *v);
    for (int i = 0; i < RR * CC; i++)
        v[i] = frand() * (float)(1 + i % 7) * ((i / CC) % 2 ? 1e-3f : 10.0f);
    out = quant_rows(cpu, v, CC, CC, RR, CC, 128);
    double worst = 0.0;
    int exact_max = 1;
    for (int r = 0; r < RR; r++)
        for (int c0 = 0; c0 < CC; c0 += 128) {
            int c1 = c0 + 128 < CC ? c0 + 128 : CC;
            float m = 0.0f;
            for (int c = c0; c < c1; c++)
                m = fmaxf(m, fabsf(v[r * CC + c]));
            float s = m / 448.0f;
            for (int c = c0; c < c1; c++) {
                float a = v[r * CC + c], b = out[r * CC + c];
                double step = fmax(fabs((double)a) * 0x1p-3, (double)s * 0x1p-9);
                worst = fmax(worst, fabs((double)a - (double)b) / step);
                if (fabsf(a) == m)
                    exact_max &= fabsf(b) == 448.0f * s;
            }
        }
    printf("%-32s worst error %.4f of a step\n", "quant_act_fp8 [5 x 300] g128", worst);
    check(worst <= 0.5 * (1 + 1e-5), "quant_act_fp8: error within half a step");
    check(exact_max, "quant_act_fp8: a group's largest element becomes 448 * s");
    free(out);
    free(v);
}

/* A random f32 weight quantized to FP8_BLOCK (on-load quantization); *owned frees both. */
static void fp8_weight(int64_t n_out, int64_t n_in, eng_weight *q, void **owned, void **data)
{
    eng_weight w;
    *data = random_weight(ENG_WFMT_F32, n_out, n_in, &w);
    eng_err err = {{0}};
    check(eng_weight_quantize(&w, ENG_LOADQ_FP8, "fp8 test weight", q, owned, &err) == PP_STATUS_OK, err.msg);
}

static int n_bits_differ(const float *a, const float *b, size_t n)
{
    int d = 0;
    for (size_t i = 0; i < n; i++)
        d += bits_of(a[i]) != bits_of(b[i]);
    return d;
}

static void test_bf16_decorator(void)
{
    eng_backend *cpu = NULL, *bf = NULL, *inner = NULL;
    eng_err err = {{0}};
    if (eng_backend_cpu_create(2, &inner, &err) != PP_STATUS_OK ||
        eng_backend_bf16_wrap(inner, true, &bf, &err) != PP_STATUS_OK || eng_backend_cpu_create(2, &cpu, &err) != PP_STATUS_OK) {
        check(0, err.msg);
        return;
    }
    /* matmul: [3 tokens][300] x FP8 [70][300]^T; token 1 has its second 128-group zero */
    enum { T = 3, N_IN = 300, N_OUT = 70 };
    eng_weight q;
    void *owned = NULL, *data = NULL;
    fp8_weight(N_OUT, N_IN, &q, &owned, &data);
    float x[T * N_IN], xq[T * N_IN], want[T * N_OUT], got[T * N_OUT];
    for (int i = 0; i < T * N_IN; i++)
        x[i] = eng_round_bf16(frand() * 2.0f);
    for (int c = 128; c < 256; c++)
        x[1 * N_IN + c] = 0.0f;
    check(cpu->ops->quant_act_fp8(cpu, x, N_IN, xq, N_IN, T, N_IN, 128) == PP_STATUS_OK &&
              cpu->ops->matmul(cpu, xq, N_IN, &q, want, N_OUT, T) == PP_STATUS_OK &&
              cpu->ops->round_bf16(cpu, want, N_OUT, T, N_OUT) == PP_STATUS_OK &&
              bf->ops->matmul(bf, x, N_IN, &q, got, N_OUT, T) == PP_STATUS_OK,
          "bf16 decorator FP8 matmul runs");
    check(n_bits_differ(got, want, T * N_OUT) == 0, "bf16 mode FP8 matmul = round(matmul(quant_act_fp8(x)))");
    int zero_row = 1;
    for (int n = 0; n < N_OUT; n++)
        zero_row &= bits_of(got[1 * N_OUT + n]) == 0u;
    check(zero_row, "bf16 mode FP8 matmul: a token with an all-zero group gets a +0 output row");
    /* the same weight unquantized (f32): no activation quantization */
    eng_weight wf;
    void *fdata = random_weight(ENG_WFMT_F32, N_OUT, N_IN, &wf);
    check(cpu->ops->matmul(cpu, x, N_IN, &wf, want, N_OUT, T) == PP_STATUS_OK &&
              cpu->ops->round_bf16(cpu, want, N_OUT, T, N_OUT) == PP_STATUS_OK &&
              bf->ops->matmul(bf, x, N_IN, &wf, got, N_OUT, T) == PP_STATUS_OK &&
              n_bits_differ(got, want, T * N_OUT) == 0,
          "bf16 mode f32 matmul: activations not quantized");
    free(fdata);
    free(owned);
    free(data);

    /* routed experts: 4 FP8 experts [d_ff 136][d_model 200] / [200][136], 3 tokens, 2 each;
     * token 2's first group is zero (its expert outputs, hence its row, are zero) */
    enum { E = 4, K = 2, D = 200, F = 136 };
    eng_weight gate[E], up[E], down[E];
    void *bufs[6 * E];
    for (int e = 0; e < E; e++) {
        fp8_weight(F, D, &gate[e], &bufs[6 * e], &bufs[6 * e + 1]);
        fp8_weight(F, D, &up[e], &bufs[6 * e + 2], &bufs[6 * e + 3]);
        fp8_weight(D, F, &down[e], &bufs[6 * e + 4], &bufs[6 * e + 5]);
    }
    float mx[T * D], mxq[T * D], out[T * D], ref[T * D], ref16[T * D], g[F], g16[F], u[F], y[D], y16[D];
    for (int i = 0; i < T * D; i++)
        mx[i] = eng_round_bf16(frand());
    for (int c = 0; c < 128; c++)
        mx[2 * D + c] = 0.0f;
    const int32_t idx[T * K] = {0, 3, 2, 0, 1, 3};
    const float wts[T * K] = {0.7f, 0.3f, 0.55f, 0.45f, 0.9f, 0.1f};
    eng_moe_args ma = {
        .n_tokens = T, .d_model = D, .d_ff_expert = F, .n_expert = E, .n_expert_used = K,
        .x = mx, .gate = gate, .up = up, .down = down, .idx = idx, .weight = wts, .out = out,
    };
    /* by hand, in the CPU experts' order: out[t] = (0 + w0 y0) + w1 y1; ref16 with h rounded to
     * bf16 before its quantization (h_bf16, the bf16 mode) */
    bool ok = cpu->ops->quant_act_fp8(cpu, mx, D, mxq, D, T, D, 128) == PP_STATUS_OK;
    memset(ref, 0, sizeof ref);
    memset(ref16, 0, sizeof ref16);
    for (int e = 0; e < E && ok; e++)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < K; i++) {
                if (idx[t * K + i] != e)
                    continue;
                ok = ok && cpu->ops->matmul(cpu, mxq + t * D, D, &gate[e], g, F, 1) == PP_STATUS_OK &&
                     cpu->ops->matmul(cpu, mxq + t * D, D, &up[e], u, F, 1) == PP_STATUS_OK &&
                     cpu->ops->swiglu(cpu, g, F, u, F, g, F, 1, F) == PP_STATUS_OK;
                for (int f = 0; f < F; f++)
                    g16[f] = eng_round_bf16(g[f]);
                ok = ok && cpu->ops->quant_act_fp8(cpu, g, F, g, F, 1, F, 128) == PP_STATUS_OK &&
                     cpu->ops->matmul(cpu, g, F, &down[e], y, D, 1) == PP_STATUS_OK &&
                     cpu->ops->quant_act_fp8(cpu, g16, F, g16, F, 1, F, 128) == PP_STATUS_OK &&
                     cpu->ops->matmul(cpu, g16, F, &down[e], y16, D, 1) == PP_STATUS_OK;
                for (int d = 0; d < D; d++) {
                    ref[t * D + d] += wts[t * K + i] * y[d];
                    ref16[t * D + d] += wts[t * K + i] * y16[d];
                }
            }
    ma.act_quant_group = 128;
    check(ok && cpu->ops->moe_experts(cpu, &ma) == PP_STATUS_OK && n_bits_differ(out, ref, T * D) == 0,
          "experts with act_quant_group 128 = quantized x, gate/up, SwiGLU, quantized h, down, by hand");
    int zero = 1;
    for (int d = 0; d < D; d++)
        zero &= out[2 * D + d] == 0.0f;
    check(zero, "experts: a token with an all-zero group of x gets a zero row");
    check(n_bits_differ(ref, ref16, T * D) > 0, "rounding h changes the experts' output");
    check(cpu->ops->round_bf16(cpu, ref16, D, T, D) == PP_STATUS_OK, "round");
    ma.act_quant_group = 0; /* the decorator sets it for FP8 experts, and h_bf16 */
    check(bf->ops->moe_experts(bf, &ma) == PP_STATUS_OK && n_bits_differ(out, ref16, T * D) == 0,
          "bf16 mode FP8 experts = round(experts with h rounded to bf16 and act_quant_group 128)");
    check(cpu->ops->moe_experts(cpu, &ma) == PP_STATUS_OK && n_bits_differ(out, ref, T * D) > T * D / 2,
          "experts without act_quant_group differ (f32 mode: no quantization)");
    for (int i = 0; i < 6 * E; i++)
        free(bufs[i]);
    eng_backend_destroy(bf);
    eng_backend_destroy(cpu);
}

/* A spy inner backend: the CPU reference plus a matmul_bf16 (the CPU's matmul) that counts its
 * calls and the x elements that are not bf16 values; the ops the decorator's matmul uses are
 * forwarded. */
typedef struct spy_backend {
    eng_backend base;
    eng_backend *cpu;
    int n_matmul, n_matmul_bf16, n_not_bf16;
} spy_backend;

static eng_backend *spy_cpu(eng_backend *be) { return ((spy_backend *)be)->cpu; }

static void spy_destroy(eng_backend *be)
{
    eng_backend_destroy(spy_cpu(be));
    free(be);
}

static pp_status spy_alloc(eng_backend *be, size_t bytes, void **out)
{
    return spy_cpu(be)->ops->alloc(spy_cpu(be), bytes, out);
}

static void spy_free(eng_backend *be, void *p) { spy_cpu(be)->ops->free(spy_cpu(be), p); }

static pp_status spy_matmul(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w, float *y,
                            int64_t y_stride, int n_tokens)
{
    ((spy_backend *)be)->n_matmul++;
    return spy_cpu(be)->ops->matmul(spy_cpu(be), x, x_stride, w, y, y_stride, n_tokens);
}

static pp_status spy_matmul_bf16(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w, float *y,
                                 int64_t y_stride, int n_tokens)
{
    spy_backend *s = (spy_backend *)be;
    s->n_matmul_bf16++;
    for (int t = 0; t < n_tokens; t++)
        for (int64_t k = 0; k < w->n_in; k++)
            s->n_not_bf16 += eng_round_bf16(x[t * x_stride + k]) != x[t * x_stride + k];
    return s->cpu->ops->matmul(s->cpu, x, x_stride, w, y, y_stride, n_tokens);
}

static pp_status spy_quant_act_fp8(eng_backend *be, const float *x, int64_t x_stride, float *out, int64_t out_stride,
                                   int n_rows, int64_t n_cols, int group)
{
    return spy_cpu(be)->ops->quant_act_fp8(spy_cpu(be), x, x_stride, out, out_stride, n_rows, n_cols, group);
}

static pp_status spy_round_bf16(eng_backend *be, float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    return spy_cpu(be)->ops->round_bf16(spy_cpu(be), x, stride, n_rows, n_cols);
}

static const eng_backend_ops spy_ops = {
    .name = "spy",
    .destroy = spy_destroy,
    .alloc = spy_alloc,
    .free = spy_free,
    .matmul = spy_matmul,
    .matmul_bf16 = spy_matmul_bf16,
    .quant_act_fp8 = spy_quant_act_fp8,
    .round_bf16 = spy_round_bf16,
};

/* The decorator's matmul over an inner backend with matmul_bf16: BF16 and FP8 weights go to
 * matmul_bf16 without fp8_act_quant; with it, FP8 goes to matmul (its x quantized, not bf16)
 * and BF16 still to matmul_bf16. Results equal round(cpu matmul) bit for bit (the spy's
 * matmul_bf16 is the CPU's matmul). */
static void test_bf16_decorator_routing(void)
{
    enum { T = 3, N_IN = 300, N_OUT = 70 };
    eng_weight q, wb;
    void *owned = NULL, *data = NULL, *bdata = random_weight(ENG_WFMT_BF16, N_OUT, N_IN, &wb);
    fp8_weight(N_OUT, N_IN, &q, &owned, &data);
    float x[T * N_IN], want[T * N_OUT], got[T * N_OUT];
    for (int i = 0; i < T * N_IN; i++)
        x[i] = eng_round_bf16(frand() * 2.0f);
    for (int w8a8 = 0; w8a8 < 2; w8a8++) {
        eng_backend *cpu = NULL, *bf = NULL;
        eng_err err = {{0}};
        spy_backend *spy = calloc(1, sizeof *spy);
        if (!spy || eng_backend_cpu_create(2, &spy->cpu, &err) != PP_STATUS_OK ||
            eng_backend_cpu_create(2, &cpu, &err) != PP_STATUS_OK) {
            check(0, "spy backend");
            return;
        }
        spy->base.ops = &spy_ops;
        if (eng_backend_bf16_wrap(&spy->base, w8a8, &bf, &err) != PP_STATUS_OK) {
            check(0, err.msg);
            return;
        }
        check(bf->ops->matmul(bf, x, N_IN, &wb, got, N_OUT, T) == PP_STATUS_OK &&
                  cpu->ops->matmul(cpu, x, N_IN, &wb, want, N_OUT, T) == PP_STATUS_OK &&
                  cpu->ops->round_bf16(cpu, want, N_OUT, T, N_OUT) == PP_STATUS_OK &&
                  n_bits_differ(got, want, T * N_OUT) == 0,
              "bf16 mode BF16 matmul through matmul_bf16 = round(matmul(x))");
        check(spy->n_matmul_bf16 == 1 && spy->n_matmul == 0, "bf16 mode: a BF16 matmul runs matmul_bf16");
        check(bf->ops->matmul(bf, x, N_IN, &q, got, N_OUT, T) == PP_STATUS_OK, "bf16 mode FP8 matmul runs");
        check(w8a8 ? spy->n_matmul == 1 && spy->n_matmul_bf16 == 1 : spy->n_matmul == 0 && spy->n_matmul_bf16 == 2,
              w8a8 ? "bf16 mode W8A8: an FP8 matmul (quantized x) runs matmul, not matmul_bf16"
                   : "bf16 mode without W8A8: an FP8 matmul runs matmul_bf16");
        check(spy->n_not_bf16 == 0, "bf16 mode: matmul_bf16 only ever gets bf16 values");
        eng_backend_destroy(bf);
        eng_backend_destroy(cpu);
    }
    free(bdata);
    free(owned);
    free(data);
}

int main(void)
{
    test_e4m3();
    test_weights();
    test_bad_input();
    eng_backend *cpu = NULL;
    eng_err err = {{0}};
    if (eng_backend_cpu_create(1, &cpu, &err) == PP_STATUS_OK) {
        test_quant_act_codes(cpu);
        test_quant_act_rows(cpu);
        eng_backend_destroy(cpu);
    } else {
        check(0, err.msg);
    }
    test_bf16_decorator();
    test_bf16_decorator_routing();
    printf("quant: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
