/* model_qwen3_moe.c: Qwen3-MoE decoder layers (Qwen3-Coder 480B-A35B / 30B-A3B), as HF's
 * Qwen3MoeDecoderLayer computes them:
 *   x = rmsnorm(h); q,k,v = proj(x); q,k = per-head rmsnorm (q_norm/k_norm, shared across heads)
 *   then neox RoPE; GQA causal attention; h += o_proj(attn)
 *   x = rmsnorm(h); h += softmax-top-k routed experts (or a dense SwiGLU MLP on mlp_only layers)
 */
#include "model_internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct qwen_layer {
    eng_vec input_norm, post_norm, q_norm, k_norm;
    eng_weight q_proj, k_proj, v_proj, o_proj;
    eng_ffn ffn;
} qwen_layer;

static pp_status qwen_bind(eng_model *m, eng_err *err)
{
    const eng_config *c = &m->cfg;
    qwen_layer *layers = calloc((size_t)c->n_layer, sizeof *layers);
    if (!layers)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    m->layers = layers;
    int64_t D = c->d_model, dh = c->d_head;
    int64_t q_w = (int64_t)c->n_head * dh, kv_w = (int64_t)c->n_head_kv * dh;
    pp_status st;
    for (int l = 0; l < c->n_layer; l++) {
        qwen_layer *L = &layers[l];
        st = eng_bind_layer_vec(m, l, "input_layernorm.weight", D, &L->input_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "post_attention_layernorm.weight", D, &L->post_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "self_attn.q_norm.weight", dh, &L->q_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "self_attn.k_norm.weight", dh, &L->k_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.q_proj", q_w, D, &L->q_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.k_proj", kv_w, D, &L->k_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.v_proj", kv_w, D, &L->v_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.o_proj", D, q_w, &L->o_proj, err);
        if (st != PP_STATUS_OK)
            return st;
        if ((st = eng_ffn_bind(m, l, ENG_ROUTER_SOFTMAX, &L->ffn, err)) != PP_STATUS_OK)
            return st;
    }
    return PP_STATUS_OK;
}

static void qwen_unbind(eng_model *m)
{
    qwen_layer *layers = m->layers;
    for (int l = 0; l < m->cfg.n_layer; l++)
        eng_ffn_unbind(&layers[l].ffn);
    free(layers);
    m->layers = NULL;
}

static void qwen_kv_widths(const eng_config *c, eng_mla_mode mla, int64_t *k_width, int64_t *v_width)
{
    (void)mla;
    *k_width = (int64_t)c->n_head_kv * c->d_head;
    *v_width = *k_width;
}

static size_t qwen_scratch(const eng_config *c, int n_tokens)
{
    size_t T = (size_t)n_tokens;
    size_t q_w = (size_t)c->n_head * (size_t)c->d_head, kv_w = (size_t)c->n_head_kv * (size_t)c->d_head;
    return T * (size_t)c->d_model * 2 + T * q_w * 2 + T * kv_w * 2 + eng_ffn_scratch_floats(c, n_tokens);
}

static pp_status qwen_forward(eng_model *m, const eng_fwd *f, float *h, int n_tokens, float *scratch,
                              eng_err *err)
{
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    size_t T = (size_t)n_tokens;
    int64_t D = c->d_model, dh = c->d_head;
    int64_t q_w = (int64_t)c->n_head * dh, kv_w = (int64_t)c->n_head_kv * dh;
    float *x = scratch;                    /* [T][D] */
    float *o = x + T * (size_t)D;          /* [T][D] */
    float *q = o + T * (size_t)D;          /* [T][n_head][d_head] */
    float *att = q + T * (size_t)q_w;      /* [T][n_head][d_head] */
    float *k = att + T * (size_t)q_w;      /* [T][n_head_kv][d_head] */
    float *v = k + T * (size_t)kv_w;       /* [T][n_head_kv][d_head] */
    float *ffn = v + T * (size_t)kv_w;     /* MoE or dense MLP scratch */
    const qwen_layer *layers = m->layers;

    for (int l = 0; l < c->n_layer; l++) {
        const qwen_layer *L = &layers[l];
        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->input_norm, c->norm_eps, x, D, n_tokens));
        ENG_TRY(be->ops->matmul(be, x, D, &L->q_proj, q, q_w, n_tokens));
        ENG_TRY(be->ops->matmul(be, x, D, &L->k_proj, k, kv_w, n_tokens));
        ENG_TRY(be->ops->matmul(be, x, D, &L->v_proj, v, kv_w, n_tokens));
        ENG_TRY(be->ops->rmsnorm(be, q, dh, &L->q_norm, c->norm_eps, q, dh, n_tokens * c->n_head));
        ENG_TRY(be->ops->rmsnorm(be, k, dh, &L->k_norm, c->norm_eps, k, dh, n_tokens * c->n_head_kv));
        ENG_TRY(be->ops->rope(be, q, n_tokens, c->n_head, q_w, dh, 0, f->pos, &m->rope));
        ENG_TRY(be->ops->rope(be, k, n_tokens, c->n_head_kv, kv_w, dh, 0, f->pos, &m->rope));
        ENG_TRY(be->ops->kv_write(be, f->k_cache[l], f->kv_dtype, kv_w, 0, k, kv_w, 0, 1, kv_w, f->slot, n_tokens));
        ENG_TRY(be->ops->kv_write(be, f->v_cache[l], f->kv_dtype, kv_w, 0, v, kv_w, 0, 1, kv_w, f->slot, n_tokens));
        eng_attn_args aa = {
            .batch = f->batch, .n_head = c->n_head, .n_head_kv = c->n_head_kv,
            .d_qk = (int)dh, .d_v = (int)dh, .scale = m->attn_scale,
            .q = q, .q_stride = q_w,
            .kv_dtype = f->kv_dtype,
            .k = f->k_cache[l], .k_stride = kv_w,
            .v = f->v_cache[l], .v_stride = kv_w,
            .out = att, .out_stride = q_w,
        };
        ENG_TRY(be->ops->attention(be, &aa));
        ENG_TRY(be->ops->matmul(be, att, q_w, &L->o_proj, o, D, n_tokens));
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));

        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->post_norm, c->norm_eps, x, D, n_tokens));
        pp_status st = eng_ffn_forward(m, &L->ffn, x, n_tokens, ffn, o, err);
        if (st != PP_STATUS_OK)
            return st;
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));
    }
    return PP_STATUS_OK;
}

const eng_family eng_family_qwen3_moe = {
    .name = "qwen3_moe",
    .bind = qwen_bind,
    .unbind = qwen_unbind,
    .kv_widths = qwen_kv_widths,
    .scratch_floats = qwen_scratch,
    .forward = qwen_forward,
};
