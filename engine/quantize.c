/* quantize.c: on-load quantization of linear weights (see quantize.h for the formats). */
#include "quantize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FP8_BLOCK 128
#define INT4_GROUP 128
#define FP8_MAX 448.0f

pp_status eng_load_quant_parse(const char *name, eng_load_quant *out, eng_err *err)
{
    static const char *const names[] = {"none", "fp8", "int8", "int4"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = (eng_load_quant)i;
            return PP_STATUS_OK;
        }
    return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown quantization '%s' (expected none, fp8, int8 or int4)",
                    name ? name : "(null)");
}

const char *eng_load_quant_name(eng_load_quant q)
{
    switch (q) {
    case ENG_LOADQ_FP8: return "fp8";
    case ENG_LOADQ_INT8: return "int8";
    case ENG_LOADQ_INT4: return "int4";
    case ENG_LOADQ_NONE: break;
    }
    return "none";
}

uint8_t eng_f32_to_fp8_e4m3(float x)
{
    if (isnan(x))
        return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0x00;
    float a = fabsf(x);
    if (a >= FP8_MAX)
        return sign | 0x7e;
    if (a < 0x1p-6f) /* subnormal: multiples of 2^-9; code 8 (2^-6) is the first normal */
        return sign | (uint8_t)rintf(a * 512.0f);
    int e2;
    float f = frexpf(a, &e2); /* a = f * 2^e2, f in [0.5, 1) */
    int e = e2 - 1;           /* a = (2f) * 2^e, 2f in [1, 2) */
    int m = (int)rintf((2.0f * f - 1.0f) * 8.0f);
    if (m == 8) {
        m = 0;
        e++;
    }
    int code = ((e + 7) << 3) | m;
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

/* Row n of w as f32 into row[0 .. n_in). */
static void load_row(const eng_weight *w, int64_t n, float *row) { eng_weight_row_f32(w, n, 0, w->n_in, row); }

static float amax(const float *v, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++)
        m = fmaxf(m, fabsf(v[i]));
    return m;
}

static bool all_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

/* Each function reads w row by row (rows: [rows_at_once][n_in] f32 scratch) and fills out. */

static bool quantize_fp8(const eng_weight *w, float *rows, eng_weight *out)
{
    uint8_t *q = (uint8_t *)out->data;
    float *scale = (float *)out->scale;
    int64_t n_bo = (w->n_out + FP8_BLOCK - 1) / FP8_BLOCK;
    for (int64_t bo = 0; bo < n_bo; bo++) {
        int64_t r0 = bo * FP8_BLOCK, r1 = r0 + FP8_BLOCK < w->n_out ? r0 + FP8_BLOCK : w->n_out;
        for (int64_t r = r0; r < r1; r++) {
            load_row(w, r, rows + (r - r0) * w->n_in);
            if (!all_finite(rows + (r - r0) * w->n_in, w->n_in))
                return false;
        }
        for (int64_t bi = 0; bi < out->scale_cols; bi++) {
            int64_t c0 = bi * FP8_BLOCK, c1 = c0 + FP8_BLOCK < w->n_in ? c0 + FP8_BLOCK : w->n_in;
            float m = 0.0f;
            for (int64_t r = r0; r < r1; r++)
                m = fmaxf(m, amax(rows + (r - r0) * w->n_in + c0, c1 - c0));
            float s = m > 0.0f ? m / FP8_MAX : 1.0f;
            scale[bo * out->scale_cols + bi] = s;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t c = c0; c < c1; c++)
                    q[r * w->n_in + c] = eng_f32_to_fp8_e4m3(rows[(r - r0) * w->n_in + c] / s);
        }
    }
    return true;
}

static bool quantize_int8(const eng_weight *w, float *row, eng_weight *out)
{
    int8_t *q = (int8_t *)out->data;
    float *scale = (float *)out->scale;
    for (int64_t r = 0; r < w->n_out; r++) {
        load_row(w, r, row);
        if (!all_finite(row, w->n_in))
            return false;
        float m = amax(row, w->n_in);
        float s = m > 0.0f ? m / 127.0f : 1.0f;
        scale[r] = s;
        for (int64_t c = 0; c < w->n_in; c++)
            q[r * w->n_in + c] = (int8_t)fmaxf(-127.0f, fminf(127.0f, rintf(row[c] / s)));
    }
    return true;
}

/* Squared error of quantizing v[0..n) to int4 with scale s. */
static double int4_sse(const float *v, int64_t n, float s)
{
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float q = fmaxf(-8.0f, fminf(7.0f, rintf(v[i] / s)));
        double d = (double)v[i] - (double)(q * s);
        e += d * d;
    }
    return e;
}

/* The group's scale: of amax / c for c in 6.0, 6.25, ..., 8.5 (c > 7 trades clipping the largest
 * positive values for finer steps everywhere; 8 maps a negative extreme onto -8 exactly), the
 * one with the least squared error, ties to the larger scale. */
static float int4_scale(const float *v, int64_t n)
{
    float m = amax(v, n);
    if (m == 0.0f)
        return 1.0f;
    float best = m / 7.0f;
    double best_e = INFINITY;
    for (int k = 0; k <= 10; k++) { /* c = 7 (amax / 7, the plain symmetric scale) is k = 4 */
        float s = m / (6.0f + 0.25f * (float)k);
        double e = int4_sse(v, n, s);
        if (e < best_e) {
            best = s;
            best_e = e;
        }
    }
    return best;
}

static bool quantize_int4(const eng_weight *w, float *row, eng_weight *out)
{
    uint32_t *packed = (uint32_t *)out->data;
    float *scale = (float *)out->scale;
    for (int64_t r = 0; r < w->n_out; r++) {
        load_row(w, r, row);
        if (!all_finite(row, w->n_in))
            return false;
        uint32_t *prow = packed + r * out->packed_cols;
        memset(prow, 0, (size_t)out->packed_cols * sizeof *prow);
        for (int64_t g = 0; g < out->scale_cols; g++) {
            int64_t c0 = g * INT4_GROUP, c1 = c0 + INT4_GROUP < w->n_in ? c0 + INT4_GROUP : w->n_in;
            float s = int4_scale(row + c0, c1 - c0);
            scale[r * out->scale_cols + g] = s;
            for (int64_t c = c0; c < c1; c++) {
                int qv = (int)fmaxf(-8.0f, fminf(7.0f, rintf(row[c] / s)));
                prow[c >> 3] |= (uint32_t)(qv + 8) << (4 * (c & 7));
            }
        }
    }
    return true;
}

pp_status eng_weight_quantize(const eng_weight *w, eng_load_quant q, const char *name, eng_weight *out,
                              void **owned, eng_err *err)
{
    *owned = NULL;
    if (w->fmt != ENG_WFMT_F32 && w->fmt != ENG_WFMT_BF16 && w->fmt != ENG_WFMT_F16)
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "%s is already quantized; --quant converts F32/BF16/F16 weights",
                        name);
    memset(out, 0, sizeof *out);
    out->n_out = w->n_out;
    out->n_in = w->n_in;
    out->scale_dtype = ENG_DTYPE_F32;
    size_t data_bytes = 0, n_scales = 0;
    int rows_at_once = 1;
    switch (q) {
    case ENG_LOADQ_FP8:
        out->fmt = ENG_WFMT_FP8_BLOCK;
        out->block_out = out->block_in = FP8_BLOCK;
        out->scale_cols = (w->n_in + FP8_BLOCK - 1) / FP8_BLOCK;
        data_bytes = (size_t)(w->n_out * w->n_in);
        n_scales = (size_t)((w->n_out + FP8_BLOCK - 1) / FP8_BLOCK * out->scale_cols);
        rows_at_once = FP8_BLOCK;
        break;
    case ENG_LOADQ_INT8:
        out->fmt = ENG_WFMT_INT8_CHANNEL;
        out->scale_cols = 1;
        data_bytes = (size_t)(w->n_out * w->n_in);
        n_scales = (size_t)w->n_out;
        break;
    case ENG_LOADQ_INT4:
        out->fmt = ENG_WFMT_INT4_GROUP;
        out->group = INT4_GROUP;
        out->packed_cols = (w->n_in + 7) / 8;
        out->scale_cols = (w->n_in + INT4_GROUP - 1) / INT4_GROUP;
        data_bytes = (size_t)(w->n_out * out->packed_cols) * 4;
        n_scales = (size_t)(w->n_out * out->scale_cols);
        break;
    case ENG_LOADQ_NONE:
        return eng_fail(err, PP_STATUS_INVALID_ARG, "%s: no quantization asked for", name);
    }
    size_t scale_off = (data_bytes + 15) & ~(size_t)15;
    char *block = malloc(scale_off + n_scales * sizeof(float));
    float *rows = malloc((size_t)rows_at_once * (size_t)w->n_in * sizeof(float));
    if (!block || !rows) {
        free(block);
        free(rows);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory quantizing to %s", name,
                        eng_load_quant_name(q));
    }
    out->data = block;
    out->scale = block + scale_off;
    bool ok = q == ENG_LOADQ_FP8    ? quantize_fp8(w, rows, out)
              : q == ENG_LOADQ_INT8 ? quantize_int8(w, rows, out)
                                    : quantize_int4(w, rows, out);
    free(rows);
    if (!ok) {
        free(block);
        memset(out, 0, sizeof *out);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s holds NaN or Inf; it cannot be quantized", name);
    }
    *owned = block;
    return PP_STATUS_OK;
}
