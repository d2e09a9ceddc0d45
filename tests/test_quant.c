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
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(void)
{
    test_e4m3();
    test_weights();
    test_bad_input();
    printf("quant: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
