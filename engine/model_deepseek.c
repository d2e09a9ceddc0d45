/* model_deepseek.c: DeepSeek-V3 decoder layers (Kimi K2), as HF's DeepseekV3DecoderLayer
 * computes them:
 *   x = rmsnorm(h)
 *   q = q_b(rmsnorm_1e-6(q_a(x)))  (or q_proj(x) when q_lora_rank is null), per head nope | pe
 *   c_kv | k_pe = kv_a_proj_with_mqa(x); c_kv = rmsnorm_1e-6(c_kv); k_pe shared by all heads
 *   RoPE (interleaved by default, YaRN) on q_pe and k_pe
 *   naive MLA:    k_nope | v = kv_b(c_kv) per head, K = k_nope | k_pe, softmax(QK^T * scale) V
 *   absorbed MLA: the same through the latent cache (c_kv, k_pe), see eng_mla_args
 *   h += o_proj(attn)
 *   x = rmsnorm(h); h += dense SwiGLU (layer < first_k_dense_replace) or sigmoid-routed experts
 *   plus shared experts.
 * q_a_layernorm and kv_a_layernorm use eps 1e-6 whatever rms_norm_eps says (HF's class default).
 */
#include "model_internal.h"

#include <stdio.h>
#include <stdlib.h>

/* DeepseekV3RMSNorm's default eps, used by q_a_layernorm and kv_a_layernorm. */
#define LORA_NORM_EPS 1e-6f

typedef struct ds_layer {
    eng_vec input_norm, post_norm, q_a_norm, kv_a_norm;
    eng_weight q_a_proj, q_b_proj, q_proj, kv_a_proj, kv_b_proj, o_proj;
    eng_ffn ffn;
} ds_layer;

static pp_status ds_bind(eng_model *m, eng_err *err)
{
    const eng_config *c = &m->cfg;
    ds_layer *layers = calloc((size_t)c->n_layer, sizeof *layers);
    if (!layers)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    m->layers = layers;
    int64_t D = c->d_model, H = c->n_head, r = c->kv_lora_rank;
    int64_t d_qk = c->d_nope + c->d_rope;
    for (int l = 0; l < c->n_layer; l++) {
        ds_layer *L = &layers[l];
        pp_status st = eng_bind_layer_vec(m, l, "input_layernorm.weight", D, &L->input_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "post_attention_layernorm.weight", D, &L->post_norm, err);
        if (c->q_lora_rank > 0) {
            if (st == PP_STATUS_OK)
                st = eng_bind_layer_linear(m, l, "self_attn.q_a_proj", c->q_lora_rank, D, &L->q_a_proj, err);
            if (st == PP_STATUS_OK)
                st = eng_bind_layer_vec(m, l, "self_attn.q_a_layernorm.weight", c->q_lora_rank, &L->q_a_norm, err);
            if (st == PP_STATUS_OK)
                st = eng_bind_layer_linear(m, l, "self_attn.q_b_proj", H * d_qk, c->q_lora_rank, &L->q_b_proj, err);
        } else if (st == PP_STATUS_OK) {
            st = eng_bind_layer_linear(m, l, "self_attn.q_proj", H * d_qk, D, &L->q_proj, err);
        }
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.kv_a_proj_with_mqa", r + c->d_rope, D, &L->kv_a_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_vec(m, l, "self_attn.kv_a_layernorm.weight", r, &L->kv_a_norm, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.kv_b_proj", H * (c->d_nope + c->d_v), r, &L->kv_b_proj, err);
        if (st == PP_STATUS_OK)
            st = eng_bind_layer_linear(m, l, "self_attn.o_proj", D, H * c->d_v, &L->o_proj, err);
        if (st != PP_STATUS_OK)
            return st;
        if ((st = eng_ffn_bind(m, l, ENG_ROUTER_SIGMOID, &L->ffn, err)) != PP_STATUS_OK)
            return st;
    }
    return PP_STATUS_OK;
}

static void ds_unbind(eng_model *m)
{
    ds_layer *layers = m->layers;
    for (int l = 0; l < m->cfg.n_layer; l++)
        eng_ffn_unbind(&layers[l].ffn);
    free(layers);
    m->layers = NULL;
}

static void ds_kv_widths(const eng_config *c, eng_mla_mode mla, int64_t *k_width, int64_t *v_width)
{
    if (mla == ENG_MLA_ABSORBED) {
        *k_width = c->kv_lora_rank; /* c_kv */
        *v_width = c->d_rope;       /* k_pe */
    } else {
        *k_width = (int64_t)c->n_head * (c->d_nope + c->d_rope);
        *v_width = (int64_t)c->n_head * c->d_v;
    }
}

static size_t ds_scratch(const eng_config *c, int n_tokens)
{
    size_t T = (size_t)n_tokens, H = (size_t)c->n_head;
    size_t d_qk = (size_t)(c->d_nope + c->d_rope);
    return T * (size_t)c->d_model * 3                    /* x, o, ffn out */
           + T * (size_t)c->q_lora_rank                  /* q_a */
           + T * H * d_qk                                /* q */
           + T * (size_t)(c->kv_lora_rank + c->d_rope)   /* c_kv | k_pe */
           + T * H * (size_t)(c->d_nope + c->d_v)        /* kv (naive) */
           + T * H * (size_t)c->d_v                      /* attn */
           + eng_ffn_scratch_floats(c, n_tokens);
}

static pp_status ds_forward(eng_model *m, const eng_fwd *f, float *h, int n_tokens, float *scratch,
                            eng_err *err)
{
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    size_t T = (size_t)n_tokens;
    int64_t D = c->d_model, H = c->n_head, r = c->kv_lora_rank;
    int64_t d_nope = c->d_nope, d_rope = c->d_rope, d_v = c->d_v, d_qk = d_nope + d_rope;
    int64_t kva_w = r + d_rope, kvb_w = H * (d_nope + d_v);
    float *x = scratch;                            /* [T][D] */
    float *o = x + T * (size_t)D;                  /* [T][D] */
    float *qa = o + T * (size_t)D;                 /* [T][q_lora_rank] */
    float *q = qa + T * (size_t)c->q_lora_rank;    /* [T][H][d_nope | d_rope] */
    float *ckv = q + T * (size_t)(H * d_qk);       /* [T][r | d_rope] */
    float *kv = ckv + T * (size_t)kva_w;           /* [T][H][d_nope | d_v] (naive) */
    float *att = kv + T * (size_t)kvb_w;           /* [T][H][d_v] */
    float *ffn = att + T * (size_t)(H * d_v);      /* MoE / MLP scratch */
    const ds_layer *layers = m->layers;
    bool absorbed = m->opts.mla == ENG_MLA_ABSORBED;

    for (int l = 0; l < c->n_layer; l++) {
        const ds_layer *L = &layers[l];
        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->input_norm, c->norm_eps, x, D, n_tokens));
        if (c->q_lora_rank > 0) {
            ENG_TRY(be->ops->matmul(be, x, D, &L->q_a_proj, qa, c->q_lora_rank, n_tokens));
            ENG_TRY(be->ops->rmsnorm(be, qa, c->q_lora_rank, &L->q_a_norm, LORA_NORM_EPS, qa,
                                     c->q_lora_rank, n_tokens));
            ENG_TRY(be->ops->matmul(be, qa, c->q_lora_rank, &L->q_b_proj, q, H * d_qk, n_tokens));
        } else {
            ENG_TRY(be->ops->matmul(be, x, D, &L->q_proj, q, H * d_qk, n_tokens));
        }
        ENG_TRY(be->ops->matmul(be, x, D, &L->kv_a_proj, ckv, kva_w, n_tokens));
        ENG_TRY(be->ops->rmsnorm(be, ckv, kva_w, &L->kv_a_norm, LORA_NORM_EPS, ckv, kva_w, n_tokens));
        ENG_TRY(be->ops->rope(be, q, n_tokens, (int)H, H * d_qk, d_qk, (int)d_nope, f->pos, &m->rope));
        ENG_TRY(be->ops->rope(be, ckv + r, n_tokens, 1, kva_w, 0, 0, f->pos, &m->rope));

        if (absorbed) {
            /* The bf16 mode runs an FP8 kv_b as HF's FP8Linear does, W8A8 on its input c_kv
             * (backend_bf16.c); the absorbed form never runs kv_b as a matmul, and c_kv reaches
             * nothing but kv_b, so the latent cache stores it quantized: the values the naive
             * form's kv_b matmul quantizes. */
            if (L->kv_b_proj.fmt == ENG_WFMT_FP8_BLOCK && eng_backend_bf16_fp8_act_quant(be))
                ENG_TRY(be->ops->quant_act_fp8(be, ckv, kva_w, ckv, kva_w, n_tokens, r, L->kv_b_proj.block_in));
            /* the latent cache: c_kv rows in k_cache, k_pe rows in v_cache */
            ENG_TRY(be->ops->kv_write(be, f->k_cache[l], f->kv_dtype, r, 0, ckv, kva_w, 0, 1, r, f->slot,
                                      n_tokens));
            ENG_TRY(be->ops->kv_write(be, f->v_cache[l], f->kv_dtype, d_rope, 0, ckv + r, kva_w, 0, 1, d_rope,
                                      f->slot, n_tokens));
            eng_mla_args ma = {
                .batch = f->batch, .n_head = (int)H,
                .d_nope = (int)d_nope, .d_rope = (int)d_rope, .d_v = (int)d_v, .kv_lora_rank = (int)r,
                .scale = m->attn_scale,
                .q = q, .q_stride = H * d_qk,
                .kv_dtype = f->kv_dtype, .ckv = f->k_cache[l], .kpe = f->v_cache[l],
                .kv_b = &L->kv_b_proj,
                .out = att,
            };
            ENG_TRY(be->ops->mla_absorbed(be, &ma));
        } else {
            /* HF's cache: per head K = k_nope_h | k_pe (k_pe shared by the heads), V = v_h */
            ENG_TRY(be->ops->matmul(be, ckv, kva_w, &L->kv_b_proj, kv, kvb_w, n_tokens));
            ENG_TRY(be->ops->kv_write(be, f->k_cache[l], f->kv_dtype, H * d_qk, d_qk, kv, kvb_w, d_nope + d_v,
                                      (int)H, d_nope, f->slot, n_tokens));
            ENG_TRY(be->ops->kv_write(be, eng_kv_at(f->k_cache[l], f->kv_dtype, d_nope), f->kv_dtype, H * d_qk,
                                      d_qk, ckv + r, kva_w, 0, (int)H, d_rope, f->slot, n_tokens));
            ENG_TRY(be->ops->kv_write(be, f->v_cache[l], f->kv_dtype, H * d_v, d_v, kv + d_nope, kvb_w,
                                      d_nope + d_v, (int)H, d_v, f->slot, n_tokens));
            eng_attn_args aa = {
                .batch = f->batch, .n_head = (int)H, .n_head_kv = (int)H,
                .d_qk = (int)d_qk, .d_v = (int)d_v, .scale = m->attn_scale,
                .q = q, .q_stride = H * d_qk, .kv_dtype = f->kv_dtype,
                .k = f->k_cache[l], .k_stride = H * d_qk,
                .v = f->v_cache[l], .v_stride = H * d_v,
                .out = att, .out_stride = H * d_v,
            };
            ENG_TRY(be->ops->attention(be, &aa));
        }
        ENG_TRY(be->ops->matmul(be, att, H * d_v, &L->o_proj, o, D, n_tokens));
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));

        ENG_TRY(be->ops->rmsnorm(be, h, D, &L->post_norm, c->norm_eps, x, D, n_tokens));
        pp_status st = eng_ffn_forward(m, &L->ffn, x, n_tokens, ffn, o, err);
        if (st != PP_STATUS_OK)
            return st;
        ENG_TRY(be->ops->add(be, h, o, h, T * (size_t)D));
    }
    return PP_STATUS_OK;
}

const eng_family eng_family_deepseek = {
    .name = "deepseek_v3",
    .bind = ds_bind,
    .unbind = ds_unbind,
    .kv_widths = ds_kv_widths,
    .scratch_floats = ds_scratch,
    .forward = ds_forward,
};
