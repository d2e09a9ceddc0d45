/* model_phi3.c: Phi-3 decoder layers (Phi-4-reasoning), as HF's Phi3DecoderLayer computes them:
 *   x = rmsnorm(h); qkv = qkv_proj(x) split Q | K | V; neox RoPE on the first d_rope dims of
 *   each head (partial_rotary_factor); GQA causal attention; h += o_proj(attn)
 *   x = rmsnorm(h); gate | up = gate_up_proj(x) (gate first); h += down(silu(gate) * up)
 */
#include "model_internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct phi3_layer {
    eng_vec input_norm, post_norm;
    eng_weight qkv_proj, o_proj, gate_up_proj, down_proj;
} phi3_layer;

static pp_status phi3_bind(eng_model *m, eng_err *err)
{
    const eng_config *c = &m->cfg;
    phi3_layer *layers = calloc((size_t)c->n_layer, sizeof *layers);
    if (!layers)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    m->layers = layers;
    int64_t D = c->d_model, dh = c->d_head, F = c->d_ff;
    int64_t q_w = (int64_t)c->n_head * dh, kv_w = (int64_t)c->n_head_kv * dh;
    for (int l = 0; l < c->n_layer; l++) {
        phi3_layer *L = &layers[l];
        pp_status st = eng_bind_layer_vec(m, l, "input_layernorm.weight", D, &L->input_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "post_attention_layernorm.weight", D, &L->post_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.qkv_proj", q_w + 2 * kv_w, D, &L->qkv_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.o_proj", D, q_w, &L->o_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "mlp.gate_up_proj", 2 * F, D, &L->gate_up_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "mlp.down_proj", D, F, &L->down_proj, err);
        if (st != PP_STATUS_OK)
            return st;
    }
    return PP_STATUS_OK;
}

static void phi3_unbind(eng_model *m)
{
    free(m->layers);
    m->layers = NULL;
}

static void phi3_kv_widths(const eng_config *c, eng_mla_mode mla, int64_t *k_width, int64_t *v_width)
{
    (void)mla;
    *k_width = (int64_t)c->n_head_kv * c->d_head;
    *v_width = *k_width;
}

static size_t phi3_scratch(const eng_config *c, int n_tokens)
{
    size_t T = (size_t)n_tokens;
    size_t q_w = (size_t)c->n_head * (size_t)c->d_head, kv_w = (size_t)c->n_head_kv * (size_t)c->d_head;
    return T * (size_t)c->d_model * 2 + T * (q_w + 2 * kv_w) + T * q_w + T * (size_t)c->d_ff * 3;
}

static pp_status phi3_forward(eng_model *m, const eng_fwd *f, float *h, int n_tokens, float *scratch,
                              eng_err *err)
{
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    size_t T = (size_t)n_tokens;
    int64_t D = c->d_model, dh = c->d_head, F = c->d_ff;
    int64_t q_w = (int64_t)c->n_head * dh, kv_w = (int64_t)c->n_head_kv * dh;
    int64_t qkv_w = q_w + 2 * kv_w;
    float *x = scratch;                   /* [T][D] */
    float *o = x + T * (size_t)D;         /* [T][D] */
    float *qkv = o + T * (size_t)D;       /* [T][Q | K | V] */
    float *att = qkv + T * (size_t)qkv_w; /* [T][n_head][d_head] */
    float *gu = att + T * (size_t)q_w;    /* [T][gate | up] */
    float *act = gu + T * 2 * (size_t)F;  /* [T][d_ff] */
    const phi3_layer *layers = m->layers;

    for (int l = 0; l < c->n_layer; l++) {
        const phi3_layer *L = &layers[l];
        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->input_norm, c->norm_eps, x, D, n_tokens));
        ENG_TRY(be->ops->matmul(be, x, D, &L->qkv_proj, qkv, qkv_w, n_tokens));
        float *q = qkv, *k = qkv + q_w, *v = qkv + q_w + kv_w;
        ENG_TRY(be->ops->rope(be, q, n_tokens, c->n_head, qkv_w, dh, 0, f->pos, &m->rope));
        ENG_TRY(be->ops->rope(be, k, n_tokens, c->n_head_kv, qkv_w, dh, 0, f->pos, &m->rope));
        ENG_TRY(be->ops->kv_write(be, f->k_cache[l], f->kv_dtype, kv_w, 0, k, qkv_w, 0, 1, kv_w, f->slot, n_tokens));
        ENG_TRY(be->ops->kv_write(be, f->v_cache[l], f->kv_dtype, kv_w, 0, v, qkv_w, 0, 1, kv_w, f->slot, n_tokens));
        eng_attn_args aa = {
            .batch = f->batch, .n_head = c->n_head, .n_head_kv = c->n_head_kv,
            .d_qk = (int)dh, .d_v = (int)dh, .scale = m->attn_scale,
            .q = q, .q_stride = qkv_w,
            .kv_dtype = f->kv_dtype,
            .k = f->k_cache[l], .k_stride = kv_w,
            .v = f->v_cache[l], .v_stride = kv_w,
            .out = att, .out_stride = q_w,
        };
        ENG_TRY(be->ops->attention(be, &aa));
        ENG_TRY(be->ops->matmul(be, att, q_w, &L->o_proj, o, D, n_tokens));
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));

        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->post_norm, c->norm_eps, x, D, n_tokens));
        ENG_TRY(be->ops->matmul(be, x, D, &L->gate_up_proj, gu, 2 * F, n_tokens));
        ENG_TRY(be->ops->swiglu(be, gu, 2 * F, gu + F, 2 * F, act, F, n_tokens, (int)F));
        ENG_TRY(be->ops->matmul(be, act, F, &L->down_proj, o, D, n_tokens));
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));
    }
    return PP_STATUS_OK;
}

const eng_family eng_family_phi3 = {
    .name = "phi3",
    .bind = phi3_bind,
    .unbind = phi3_unbind,
    .kv_widths = phi3_kv_widths,
    .scratch_floats = phi3_scratch,
    .forward = phi3_forward,
};
