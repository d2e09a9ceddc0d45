/* weights.c: binding stored tensors to eng_weight / eng_vec and exact row dequantization. */
#include "weights.h"

#include <stdio.h>

static bool is_float_dtype(eng_dtype d)
{
    return d == ENG_DTYPE_F32 || d == ENG_DTYPE_BF16 || d == ENG_DTYPE_F16;
}

static bool shape_is(const eng_st_tensor *t, int64_t rows, int64_t cols)
{
    return t->n_dim == 2 && t->shape[0] == rows && t->shape[1] == cols;
}

size_t eng_weight_bytes(const eng_weight *w)
{
    size_t scale_bytes = 0;
    size_t data_bytes = 0;
    switch (w->fmt) {
    case ENG_WFMT_F32: data_bytes = (size_t)(w->n_out * w->n_in) * 4; break;
    case ENG_WFMT_BF16:
    case ENG_WFMT_F16: data_bytes = (size_t)(w->n_out * w->n_in) * 2; break;
    case ENG_WFMT_FP8_BLOCK:
        data_bytes = (size_t)(w->n_out * w->n_in);
        scale_bytes = (size_t)(eng_ceil_div(w->n_out, w->block_out) * w->scale_cols) *
                      eng_dtype_size(w->scale_dtype);
        break;
    case ENG_WFMT_INT4_GROUP:
        data_bytes = (size_t)(w->n_out * w->packed_cols) * 4;
        scale_bytes = (size_t)(w->n_out * w->scale_cols) * eng_dtype_size(w->scale_dtype);
        break;
    case ENG_WFMT_INT8_CHANNEL:
        data_bytes = (size_t)(w->n_out * w->n_in);
        scale_bytes = (size_t)w->n_out * eng_dtype_size(w->scale_dtype);
        break;
    }
    return data_bytes + scale_bytes;
}

void eng_weight_row_f32(const eng_weight *w, int64_t n, int64_t k0, int64_t k1, float *out)
{
    switch (w->fmt) {
    case ENG_WFMT_F32: {
        const float *row = (const float *)w->data + n * w->n_in;
        memcpy(out, row + k0, (size_t)(k1 - k0) * sizeof(float));
        break;
    }
    case ENG_WFMT_BF16: {
        const uint16_t *row = (const uint16_t *)w->data + n * w->n_in;
        for (int64_t k = k0; k < k1; k++)
            out[k - k0] = eng_bf16_to_f32(row[k]);
        break;
    }
    case ENG_WFMT_F16: {
        const uint16_t *row = (const uint16_t *)w->data + n * w->n_in;
        for (int64_t k = k0; k < k1; k++)
            out[k - k0] = eng_f16_to_f32(row[k]);
        break;
    }
    case ENG_WFMT_FP8_BLOCK: {
        const uint8_t *row = (const uint8_t *)w->data + n * w->n_in;
        size_t srow = (size_t)(n / w->block_out) * (size_t)w->scale_cols;
        int64_t k = k0;
        while (k < k1) {
            int64_t blk = k / w->block_in;
            int64_t end = (blk + 1) * w->block_in;
            if (end > k1)
                end = k1;
            float s = eng_load_f32(w->scale, w->scale_dtype, srow + (size_t)blk);
            for (; k < end; k++)
                out[k - k0] = eng_fp8_e4m3_to_f32(row[k]) * s;
        }
        break;
    }
    case ENG_WFMT_INT4_GROUP: {
        const uint32_t *row = (const uint32_t *)w->data + n * w->packed_cols;
        size_t srow = (size_t)n * (size_t)w->scale_cols;
        for (int64_t k = k0; k < k1; k++) {
            uint32_t word = row[k >> 3];
            int q = (int)((word >> (4 * (k & 7))) & 0xfu) - 8;
            float s = eng_load_f32(w->scale, w->scale_dtype, srow + (size_t)(k / w->group));
            out[k - k0] = (float)q * s;
        }
        break;
    }
    case ENG_WFMT_INT8_CHANNEL: {
        const int8_t *row = (const int8_t *)w->data + n * w->n_in;
        float s = eng_load_f32(w->scale, w->scale_dtype, (size_t)n);
        for (int64_t k = k0; k < k1; k++)
            out[k - k0] = (float)row[k] * s;
        break;
    }
    }
}

pp_status eng_weight_bind(const eng_st_set *set, const eng_config *cfg, const char *prefix,
                          int64_t n_out, int64_t n_in, eng_weight *out, eng_err *err)
{
    char name[512];
    memset(out, 0, sizeof *out);
    out->n_out = n_out;
    out->n_in = n_in;

    snprintf(name, sizeof name, "%s.weight", prefix);
    const eng_st_tensor *t = eng_st_find(set, name);
    if (t) {
        if (!shape_is(t, n_out, n_in))
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "tensor %s: expected shape [%lld, %lld], found %d-d [%lld, %lld]", name,
                            (long long)n_out, (long long)n_in, t->n_dim,
                            (long long)(t->n_dim > 0 ? t->shape[0] : 0),
                            (long long)(t->n_dim > 1 ? t->shape[1] : 0));
        out->data = t->data;
        switch (t->dtype) {
        case ENG_DTYPE_F32: out->fmt = ENG_WFMT_F32; return PP_STATUS_OK;
        case ENG_DTYPE_BF16: out->fmt = ENG_WFMT_BF16; return PP_STATUS_OK;
        case ENG_DTYPE_F16: out->fmt = ENG_WFMT_F16; return PP_STATUS_OK;
        case ENG_DTYPE_F8_E4M3: break;
        default:
            return eng_fail(err, PP_STATUS_UNSUPPORTED, "tensor %s: dtype %s is not supported for a linear weight",
                            name, eng_dtype_name(t->dtype));
        }
        /* FP8 block-quantized */
        int bo = cfg->quant == ENG_QUANT_FP8_BLOCK ? cfg->quant_block_out : 128;
        int bi = cfg->quant == ENG_QUANT_FP8_BLOCK ? cfg->quant_block_in : 128;
        snprintf(name, sizeof name, "%s.weight_scale_inv", prefix);
        const eng_st_tensor *s = eng_st_find(set, name);
        if (!s)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "F8_E4M3 tensor %s.weight has no %s", prefix,
                            name);
        int64_t sr = eng_ceil_div(n_out, bo), sc = eng_ceil_div(n_in, bi);
        if (!is_float_dtype(s->dtype) || !shape_is(s, sr, sc))
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "tensor %s: expected F32/BF16/F16 [%lld, %lld] for %dx%d blocks, found %s %d-d",
                            name, (long long)sr, (long long)sc, bo, bi, eng_dtype_name(s->dtype),
                            s->n_dim);
        out->fmt = ENG_WFMT_FP8_BLOCK;
        out->scale = s->data;
        out->scale_dtype = s->dtype;
        out->block_out = bo;
        out->block_in = bi;
        out->scale_cols = sc;
        return PP_STATUS_OK;
    }

    snprintf(name, sizeof name, "%s.weight_packed", prefix);
    t = eng_st_find(set, name);
    if (!t)
        return eng_fail(err, PP_STATUS_NOT_FOUND, "tensor %s.weight not found", prefix);
    if (cfg->quant != ENG_QUANT_INT4_GROUP)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "tensor %s found but config.json has no compressed-tensors int4 quantization_config",
                        name);
    int g = cfg->quant_group;
    int64_t pc = eng_ceil_div(n_in, 8), sc = eng_ceil_div(n_in, g);
    if (t->dtype != ENG_DTYPE_I32 || !shape_is(t, n_out, pc))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "tensor %s: expected I32 [%lld, %lld], found %s %d-d",
                        name, (long long)n_out, (long long)pc, eng_dtype_name(t->dtype), t->n_dim);
    snprintf(name, sizeof name, "%s.weight_scale", prefix);
    const eng_st_tensor *s = eng_st_find(set, name);
    if (!s || !is_float_dtype(s->dtype) || !shape_is(s, n_out, sc))
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "tensor %s: expected F32/BF16/F16 [%lld, %lld] (group %d)%s", name,
                        (long long)n_out, (long long)sc, g, s ? "" : ", not found");
    snprintf(name, sizeof name, "%s.weight_shape", prefix);
    const eng_st_tensor *shp = eng_st_find(set, name);
    if (shp) {
        int64_t dims[2] = {0, 0};
        if (shp->n_dim == 1 && shp->shape[0] == 2 && shp->dtype == ENG_DTYPE_I32) {
            const int32_t *v = shp->data;
            dims[0] = v[0];
            dims[1] = v[1];
        } else if (shp->n_dim == 1 && shp->shape[0] == 2 && shp->dtype == ENG_DTYPE_I64) {
            const int64_t *v = shp->data;
            dims[0] = v[0];
            dims[1] = v[1];
        }
        if (dims[0] != n_out || dims[1] != n_in)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "tensor %s: expected [%lld, %lld]", name,
                            (long long)n_out, (long long)n_in);
    }
    out->fmt = ENG_WFMT_INT4_GROUP;
    out->data = t->data;
    out->scale = s->data;
    out->scale_dtype = s->dtype;
    out->group = g;
    out->packed_cols = pc;
    out->scale_cols = sc;
    return PP_STATUS_OK;
}

pp_status eng_vec_bind(const eng_st_set *set, const char *name, int64_t n, eng_vec *out,
                       eng_err *err)
{
    memset(out, 0, sizeof *out);
    const eng_st_tensor *t = eng_st_find(set, name);
    if (!t)
        return eng_fail(err, PP_STATUS_NOT_FOUND, "tensor %s not found", name);
    if (!is_float_dtype(t->dtype) || t->n_dim != 1 || t->shape[0] != n)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "tensor %s: expected F32/BF16/F16 [%lld], found %s %d-d",
                        name, (long long)n, eng_dtype_name(t->dtype), t->n_dim);
    out->data = t->data;
    out->dtype = t->dtype;
    out->n = n;
    return PP_STATUS_OK;
}
