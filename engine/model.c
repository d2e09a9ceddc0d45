/* model.c: loading a checkpoint directory, sessions (KV cache + scratch) and the parts of the
 * forward pass every family shares: embedding, final norm, lm_head. */
#include "model_internal.h"
#include "sampler.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void eng_model_opts_default(eng_model_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->backend = "cpu";
    opts->n_threads = 0;
    opts->mla = ENG_MLA_ABSORBED;
    opts->dtype = ENG_DTYPE_MODE_F32;
}

pp_status eng_dtype_mode_parse(const char *name, eng_dtype_mode *out, eng_err *err)
{
    if (name && strcmp(name, "f32") == 0) {
        *out = ENG_DTYPE_MODE_F32;
        return PP_STATUS_OK;
    }
    if (name && strcmp(name, "bf16") == 0) {
        *out = ENG_DTYPE_MODE_BF16;
        return PP_STATUS_OK;
    }
    if (name && strcmp(name, "auto") == 0) {
        *out = ENG_DTYPE_MODE_AUTO;
        return PP_STATUS_OK;
    }
    return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown compute dtype '%s' (expected f32, bf16 or auto)",
                    name ? name : "(null)");
}

pp_status eng_kv_mode_parse(const char *name, eng_kv_mode *out, eng_err *err)
{
    static const char *const names[] = {"auto", "f32", "bf16"};
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = (eng_kv_mode)i;
            return PP_STATUS_OK;
        }
    return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown KV cache dtype '%s' (expected f32, bf16 or auto)",
                    name ? name : "(null)");
}

const char *eng_dtype_mode_name(eng_dtype_mode mode)
{
    switch (mode) {
    case ENG_DTYPE_MODE_F32: return "f32";
    case ENG_DTYPE_MODE_BF16: return "bf16";
    case ENG_DTYPE_MODE_AUTO: return "auto";
    }
    return "?";
}

/* True for the linear weights on-load quantization converts: a decoder layer's projections and
 * experts, not its MoE router ("...mlp.gate", whose choices are kept exact). */
static bool quantizable(const char *prefix, const eng_weight *w)
{
    size_t n = strlen(prefix);
    bool router = n >= 9 && strcmp(prefix + n - 9, ".mlp.gate") == 0;
    return strncmp(prefix, "model.layers.", 13) == 0 && !router &&
           (w->fmt == ENG_WFMT_F32 || w->fmt == ENG_WFMT_BF16 || w->fmt == ENG_WFMT_F16);
}

pp_status eng_bind_linear(eng_model *m, const char *prefix, int64_t n_out, int64_t n_in,
                          eng_weight *out, eng_err *err)
{
    pp_status st = eng_weight_bind(m->st, &m->cfg, prefix, n_out, n_in, out, err);
    if (st != PP_STATUS_OK || m->opts.quant == ENG_LOADQ_NONE || !quantizable(prefix, out))
        return st;
    if (m->n_quant == m->cap_quant) {
        size_t cap = m->cap_quant ? 2 * m->cap_quant : 64;
        void **bufs = realloc(m->quant_bufs, cap * sizeof *bufs);
        if (!bufs)
            return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
        m->quant_bufs = bufs;
        m->cap_quant = cap;
    }
    eng_weight q;
    void *owned = NULL;
    if ((st = eng_weight_quantize(out, m->opts.quant, prefix, &q, &owned, err)) != PP_STATUS_OK)
        return st;
    m->quant_bufs[m->n_quant++] = owned;
    m->quant_bytes += eng_weight_bytes(&q);
    *out = q;
    return PP_STATUS_OK;
}

pp_status eng_bind_vec(eng_model *m, const char *name, int64_t n, eng_vec *out, eng_err *err)
{
    return eng_vec_bind(m->st, name, n, out, err);
}

pp_status eng_bind_layer_linear(eng_model *m, int layer, const char *suffix, int64_t n_out,
                                int64_t n_in, eng_weight *out, eng_err *err)
{
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.%s", layer, suffix);
    return eng_bind_linear(m, name, n_out, n_in, out, err);
}

pp_status eng_bind_layer_vec(eng_model *m, int layer, const char *suffix, int64_t n, eng_vec *out,
                             eng_err *err)
{
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.%s", layer, suffix);
    return eng_bind_vec(m, name, n, out, err);
}

/* ---- backends -------------------------------------------------------------------------------- */

typedef enum backend_kind { BACKEND_CPU, BACKEND_CUDA } backend_kind;

/* Resolves a backend name ("cpu", "cuda", "auto"; NULL is "cpu") and a device index to the
 * backend to create. */
static pp_status backend_pick(const char *name, int device, backend_kind *kind, eng_err *err)
{
    *kind = BACKEND_CPU;
    if (!name || strcmp(name, "cpu") == 0)
        return PP_STATUS_OK;
    bool want_cuda = strcmp(name, "cuda") == 0;
    if (!want_cuda && strcmp(name, "auto") != 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown backend '%s' (choose cpu, cuda or auto)", name);
#ifdef PP_HAVE_CUDA
    char why[256];
    int n = eng_backend_cuda_device_count(why, sizeof why);
    if (n > 0) {
        if (device < 0 || device >= n)
            return eng_fail(err, PP_STATUS_INVALID_ARG, "backend '%s': no CUDA device %d (%d found)", name,
                            device, n);
        *kind = BACKEND_CUDA;
        return PP_STATUS_OK;
    }
    if (want_cuda)
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "backend 'cuda': no CUDA device found (%s)",
                        why[0] ? why : "cudaGetDeviceCount found none");
#else
    (void)device;
    if (want_cuda)
        return eng_fail(err, PP_STATUS_UNSUPPORTED,
                        "backend 'cuda' is not available: this build has no CUDA support (available: cpu)");
#endif
    return PP_STATUS_OK; /* auto without a device */
}

/* Creates a backend of `kind`; a CUDA one shares the weight cache of `share` (a fork's source)
 * and runs on its device when share is given, and runs on `device` otherwise. */
static pp_status backend_create_f32(backend_kind kind, int n_threads, int device, eng_backend *share,
                                    eng_backend **out, eng_err *err)
{
#ifdef PP_HAVE_CUDA
    if (kind == BACKEND_CUDA)
        return eng_backend_cuda_create(share ? -1 : device, share, out, err);
#endif
    (void)kind;
    (void)device;
    (void)share;
    return eng_backend_cpu_create(n_threads, out, err);
}

/* backend_create_f32 in the compute mode `dtype`: for bf16, wrapped in the bf16 decorator. share
 * may be a decorated backend (a bf16 model's); its inner backend is what is shared. */
static pp_status backend_create(backend_kind kind, int n_threads, int device, eng_backend *share,
                                eng_dtype_mode dtype, bool fp8_act_quant, eng_backend **out, eng_err *err)
{
    eng_backend *be = NULL;
    pp_status st = backend_create_f32(kind, n_threads, device, eng_backend_bf16_inner(share), &be, err);
    if (st != PP_STATUS_OK || dtype == ENG_DTYPE_MODE_F32) {
        *out = be;
        return st;
    }
    if ((st = eng_backend_bf16_wrap(be, fp8_act_quant, out, err)) != PP_STATUS_OK)
        eng_backend_destroy(be);
    return st;
}

static const eng_family *family_for(eng_arch arch)
{
    switch (arch) {
    case ENG_ARCH_DEEPSEEK_V3: return &eng_family_deepseek;
    case ENG_ARCH_QWEN3_MOE: return &eng_family_qwen3_moe;
    case ENG_ARCH_PHI3: return &eng_family_phi3;
    }
    return NULL;
}

pp_status eng_model_load(const char *dir, const eng_model_opts *opts, eng_model **out, eng_err *err)
{
    *out = NULL;
    eng_model_opts defaults;
    if (!opts) {
        eng_model_opts_default(&defaults);
        opts = &defaults;
    }
    if (!dir)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "no model directory given");
    if (opts->dtype != ENG_DTYPE_MODE_F32 && opts->dtype != ENG_DTYPE_MODE_BF16 &&
        opts->dtype != ENG_DTYPE_MODE_AUTO)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown compute dtype mode %d (f32, bf16 or auto)",
                        (int)opts->dtype);
    backend_kind kind;
    pp_status st = backend_pick(opts->backend, opts->device, &kind, err);
    if (st != PP_STATUS_OK)
        return st;
    eng_dtype_mode dtype = opts->dtype;
    if (dtype == ENG_DTYPE_MODE_AUTO)
        dtype = kind == BACKEND_CUDA ? ENG_DTYPE_MODE_BF16 : ENG_DTYPE_MODE_F32;
    if (opts->fp8_act_quant && dtype != ENG_DTYPE_MODE_BF16)
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "fp8 activation quantization is part of the bf16 compute mode (the f32 mode "
                        "is the exact reference)");
    if (opts->kv != ENG_KV_MODE_AUTO && opts->kv != ENG_KV_MODE_F32 && opts->kv != ENG_KV_MODE_BF16)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "unknown KV cache mode %d (f32, bf16 or auto)", (int)opts->kv);
    eng_model *m = calloc(1, sizeof *m);
    if (!m)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    m->opts = *opts;
    m->opts.dtype = dtype;
    m->opts.backend = kind == BACKEND_CUDA ? "cuda" : "cpu";
    m->opts.device = kind == BACKEND_CUDA ? opts->device : -1;
    /* config and safetensors errors name their file; later ones are prefixed with the dir */
    st = eng_config_load(dir, &m->cfg, err);
    if (st != PP_STATUS_OK) {
        eng_model_free(m);
        return st;
    }
    const eng_config *c = &m->cfg;
    m->kv_dtype = opts->kv == ENG_KV_MODE_BF16 ? ENG_KV_BF16 : ENG_KV_F32;
    if (opts->kv == ENG_KV_MODE_AUTO && dtype == ENG_DTYPE_MODE_BF16 &&
        !(opts->fp8_act_quant && c->arch == ENG_ARCH_DEEPSEEK_V3))
        m->kv_dtype = ENG_KV_BF16;
    m->family = family_for(c->arch);
    if (!m->family) {
        st = eng_fail(err, PP_STATUS_INTERNAL, "no forward pass for architecture %d", (int)c->arch);
        goto fail;
    }
    if ((st = eng_st_open_dir(dir, &m->st, err)) != PP_STATUS_OK) {
        eng_model_free(m);
        return st;
    }
    if ((st = eng_rope_init(c, m->inv_freq, &m->rope, err)) != PP_STATUS_OK)
        goto fail;
    m->attn_scale = eng_attn_scale(c);
    if ((st = eng_bind_linear(m, "model.embed_tokens", c->n_vocab, c->d_model, &m->embed, err)) != PP_STATUS_OK)
        goto fail;
    if (m->embed.fmt == ENG_WFMT_INT4_GROUP) {
        st = eng_fail(err, PP_STATUS_UNSUPPORTED, "an int4-packed embedding table is not supported");
        goto fail;
    }
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if ((st = eng_bind_linear(m, "lm_head", c->n_vocab, c->d_model, &m->lm_head, err)) != PP_STATUS_OK) {
        goto fail;
    }
    if ((st = eng_bind_vec(m, "model.norm.weight", c->d_model, &m->final_norm, err)) != PP_STATUS_OK)
        goto fail;
    if ((st = backend_create(kind, opts->n_threads, opts->device, NULL, dtype, opts->fp8_act_quant, &m->be, err)) != PP_STATUS_OK)
        goto fail;
    if ((st = m->family->bind(m, err)) != PP_STATUS_OK)
        goto fail;
    *out = m;
    return PP_STATUS_OK;
fail:
    eng_err_prefix(err, "loading %s", dir);
    eng_model_free(m);
    return st;
}

pp_status eng_model_fork(const eng_model *src, int n_threads, eng_model **out, eng_err *err)
{
    *out = NULL;
    eng_model *m = malloc(sizeof *m);
    if (!m)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    *m = *src;
    m->rope.inv_freq = m->inv_freq;
    m->opts.n_threads = n_threads;
    m->weights_owner = src->weights_owner ? src->weights_owner : src;
    m->be = NULL;
    backend_kind kind = strcmp(src->opts.backend, "cuda") == 0 ? BACKEND_CUDA : BACKEND_CPU;
    pp_status st = backend_create(kind, n_threads, src->opts.device, src->be, src->opts.dtype, src->opts.fp8_act_quant, &m->be, err);
    if (st != PP_STATUS_OK) {
        free(m);
        return st;
    }
    *out = m;
    return PP_STATUS_OK;
}

void eng_model_free(eng_model *m)
{
    if (!m)
        return;
    if (!m->weights_owner) {
        if (m->family && m->layers)
            m->family->unbind(m);
        eng_st_set_close(m->st);
        for (size_t i = 0; i < m->n_quant; i++)
            free(m->quant_bufs[i]);
        free(m->quant_bufs);
    }
    eng_backend_destroy(m->be);
    free(m);
}

const eng_config *eng_model_config(const eng_model *m) { return &m->cfg; }

void eng_model_quant_stats(const eng_model *m, size_t *n_tensors, size_t *bytes)
{
    const eng_model *owner = m->weights_owner ? m->weights_owner : m;
    *n_tensors = owner->n_quant;
    *bytes = owner->quant_bytes;
}
int eng_model_device(const eng_model *m) { return m->opts.device; }

const char *eng_model_kv_name(const eng_model *m) { return m->kv_dtype == ENG_KV_BF16 ? "bf16" : "f32"; }

const char *eng_model_backend_name(const eng_model *m) { return eng_backend_bf16_inner(m->be)->ops->name; }
const char *eng_model_dtype_name(const eng_model *m) { return eng_dtype_mode_name(m->opts.dtype); }
void eng_model_graph_counts(const eng_model *m, size_t *launched, size_t *fallbacks)
{
    *launched = *fallbacks = 0;
#ifdef PP_HAVE_CUDA
    eng_backend_cuda_graph_counts(eng_backend_bf16_inner(m->be), launched, fallbacks);
#else
    (void)m;
#endif
}
size_t eng_model_weight_bytes(const eng_model *m) { return eng_st_total_bytes(m->st); }

/* ---- shared blocks: SwiGLU MLP and routed experts ------------------------------------------- */

pp_status eng_mlp_bind(eng_model *m, const char *prefix, int64_t d_ff, eng_mlp *mlp, eng_err *err)
{
    char name[256];
    int64_t d = m->cfg.d_model;
    pp_status st;
    snprintf(name, sizeof name, "%s.gate_proj", prefix);
    if ((st = eng_bind_linear(m, name, d_ff, d, &mlp->gate, err)) != PP_STATUS_OK)
        return st;
    snprintf(name, sizeof name, "%s.up_proj", prefix);
    if ((st = eng_bind_linear(m, name, d_ff, d, &mlp->up, err)) != PP_STATUS_OK)
        return st;
    snprintf(name, sizeof name, "%s.down_proj", prefix);
    return eng_bind_linear(m, name, d, d_ff, &mlp->down, err);
}

pp_status eng_mlp_forward(eng_backend *be, const eng_mlp *mlp, const float *x, int n_tokens,
                          float *g, float *u, float *out, eng_err *err)
{
    int64_t d = mlp->gate.n_in, f = mlp->gate.n_out;
    ENG_TRY(be->ops->matmul(be, x, d, &mlp->gate, g, f, n_tokens));
    ENG_TRY(be->ops->matmul(be, x, d, &mlp->up, u, f, n_tokens));
    ENG_TRY(be->ops->swiglu(be, g, f, u, f, g, f, n_tokens, (int)f));
    ENG_TRY(be->ops->matmul(be, g, f, &mlp->down, out, mlp->down.n_out, n_tokens));
    return PP_STATUS_OK;
}

pp_status eng_moe_bind(eng_model *m, int layer, eng_router_kind kind, eng_moe *moe, eng_err *err)
{
    const eng_config *c = &m->cfg;
    char name[256];
    pp_status st;
    memset(moe, 0, sizeof *moe);
    moe->kind = kind;
    snprintf(name, sizeof name, "model.layers.%d.mlp.gate", layer);
    if ((st = eng_bind_linear(m, name, c->n_expert, c->d_model, &moe->router, err)) != PP_STATUS_OK)
        return st;
    if (kind == ENG_ROUTER_SIGMOID) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", layer);
        if (eng_st_find(m->st, name) &&
            (st = eng_bind_vec(m, name, c->n_expert, &moe->bias, err)) != PP_STATUS_OK)
            return st;
    }
    moe->gate = calloc((size_t)c->n_expert, sizeof(eng_weight));
    moe->up = calloc((size_t)c->n_expert, sizeof(eng_weight));
    moe->down = calloc((size_t)c->n_expert, sizeof(eng_weight));
    if (!moe->gate || !moe->up || !moe->down)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory binding experts");
    for (int e = 0; e < c->n_expert; e++) {
        eng_mlp x;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d", layer, e);
        if ((st = eng_mlp_bind(m, name, c->d_ff_expert, &x, err)) != PP_STATUS_OK)
            return st;
        moe->gate[e] = x.gate;
        moe->up[e] = x.up;
        moe->down[e] = x.down;
    }
    if (kind == ENG_ROUTER_SIGMOID && c->n_shared_experts > 0) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.shared_experts", layer);
        if ((st = eng_mlp_bind(m, name, (int64_t)c->d_ff_expert * c->n_shared_experts, &moe->shared,
                               err)) != PP_STATUS_OK)
            return st;
        moe->has_shared = true;
    }
    return PP_STATUS_OK;
}

void eng_moe_unbind(eng_moe *moe)
{
    free(moe->gate);
    free(moe->up);
    free(moe->down);
    moe->gate = moe->up = moe->down = NULL;
}

size_t eng_moe_scratch_floats(const eng_config *c, int n_tokens)
{
    size_t T = (size_t)n_tokens;
    size_t f_shared = (size_t)c->d_ff_expert * (size_t)(c->n_shared_experts > 0 ? c->n_shared_experts : 1);
    return T * (size_t)c->n_expert              /* router logits */
           + 2 * T * (size_t)c->n_expert_used   /* idx, weight */
           + T * (size_t)c->d_model             /* shared output */
           + 2 * T * f_shared;                  /* shared g, u */
}

pp_status eng_moe_forward(eng_model *m, const eng_moe *moe, const float *x, int n_tokens,
                          float *scratch, float *out, eng_err *err)
{
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    size_t T = (size_t)n_tokens;
    float *logits = scratch;                                   /* [T][n_expert] */
    int32_t *idx = (int32_t *)(logits + T * (size_t)c->n_expert); /* [T][n_expert_used] */
    float *w = (float *)(idx + T * (size_t)c->n_expert_used);    /* [T][n_expert_used] */
    float *sh = w + T * (size_t)c->n_expert_used;               /* [T][d_model] */
    float *g = sh + T * (size_t)c->d_model;
    size_t f_shared = (size_t)c->d_ff_expert * (size_t)(c->n_shared_experts > 0 ? c->n_shared_experts : 1);
    float *u = g + T * f_shared;

    /* the router's logits: a bf16 Linear in HF's Qwen3-MoE (rounded in the bf16 mode), but fp32 in
     * DeepSeek-V3 (x.float() @ gate.weight.float()), so the sigmoid router's matmul runs on the
     * backend under any bf16 decorator */
    eng_backend *rbe = moe->kind == ENG_ROUTER_SIGMOID ? eng_backend_bf16_inner(be) : be;
    ENG_TRY(rbe->ops->matmul(rbe, x, c->d_model, &moe->router, logits, c->n_expert, n_tokens));
    eng_route_args ra = {
        .kind = moe->kind,
        .n_tokens = n_tokens,
        .n_expert = c->n_expert,
        .n_expert_used = c->n_expert_used,
        .n_group = c->n_group,
        .topk_group = c->topk_group,
        .norm_topk_prob = c->norm_topk_prob,
        .routed_scaling_factor = (float)c->routed_scaling_factor,
        .bias = moe->bias.data ? &moe->bias : NULL,
        .logits = logits,
        .idx = idx,
        .weight = w,
    };
    ENG_TRY(be->ops->moe_route(be, &ra));
    eng_moe_args ma = {
        .n_tokens = n_tokens,
        .d_model = c->d_model,
        .d_ff_expert = c->d_ff_expert,
        .n_expert = c->n_expert,
        .n_expert_used = c->n_expert_used,
        .x = x,
        .gate = moe->gate,
        .up = moe->up,
        .down = moe->down,
        .idx = idx,
        .weight = w,
        .out = out,
    };
    ENG_TRY(be->ops->moe_experts(be, &ma));
    if (moe->has_shared) {
        pp_status st = eng_mlp_forward(be, &moe->shared, x, n_tokens, g, u, sh, err);
        if (st != PP_STATUS_OK)
            return st;
        ENG_TRY(be->ops->add(be, out, sh, out, T * (size_t)c->d_model));
    }
    return PP_STATUS_OK;
}

pp_status eng_ffn_bind(eng_model *m, int layer, eng_router_kind kind, eng_ffn *ffn, eng_err *err)
{
    ffn->is_moe = eng_config_layer_is_moe(&m->cfg, layer);
    if (ffn->is_moe)
        return eng_moe_bind(m, layer, kind, &ffn->moe, err);
    char name[64];
    snprintf(name, sizeof name, "model.layers.%d.mlp", layer);
    return eng_mlp_bind(m, name, m->cfg.d_ff, &ffn->mlp, err);
}

void eng_ffn_unbind(eng_ffn *ffn) { eng_moe_unbind(&ffn->moe); }

size_t eng_ffn_scratch_floats(const eng_config *c, int n_tokens)
{
    size_t moe = eng_moe_scratch_floats(c, n_tokens);
    size_t dense = 2 * (size_t)n_tokens * (size_t)c->d_ff; /* g, u */
    return moe > dense ? moe : dense;
}

pp_status eng_ffn_forward(eng_model *m, const eng_ffn *ffn, const float *x, int n_tokens,
                          float *scratch, float *out, eng_err *err)
{
    if (ffn->is_moe)
        return eng_moe_forward(m, &ffn->moe, x, n_tokens, scratch, out, err);
    float *u = scratch + (size_t)n_tokens * (size_t)m->cfg.d_ff;
    return eng_mlp_forward(m->be, &ffn->mlp, x, n_tokens, scratch, u, out, err);
}

/* ---- KV caches and sessions ----------------------------------------------------------------- */

pp_status eng_session_bytes(const eng_config *c, eng_mla_mode mla, int n_ctx, int n_batch,
                            uint64_t *kv_bytes, uint64_t *scratch_bytes)
{
    const eng_family *f = family_for(c->arch);
    if (!f || n_ctx <= 0 || n_batch <= 0)
        return PP_STATUS_INVALID_ARG;
    int64_t kw, vw;
    f->kv_widths(c, mla, &kw, &vw);
    uint64_t rows = (uint64_t)eng_ceil_div(n_ctx, ENG_KV_BLOCK_SIZE) * ENG_KV_BLOCK_SIZE;
    *kv_bytes = rows * (uint64_t)c->n_layer * (uint64_t)(kw + vw) * sizeof(float);
    /* one forward of n_batch tokens: its tables, hidden state, logits of every row, the
     * family's scratch */
    size_t floats = 4096 + (size_t)eng_ceil_div(n_ctx, ENG_KV_BLOCK_SIZE) + 2 * (size_t)n_batch +
                    (size_t)n_batch * (size_t)c->d_model + (size_t)n_batch * (size_t)c->n_vocab +
                    f->scratch_floats(c, n_batch);
    *scratch_bytes = (uint64_t)floats * sizeof(float);
    return PP_STATUS_OK;
}

static void kv_cache_release(eng_kv_cache *kv)
{
    eng_backend *be = kv->m->be;
    for (int l = 0; l < kv->m->cfg.n_layer; l++) {
        if (kv->k_cache && kv->k_cache[l])
            be->ops->free(be, kv->k_cache[l]);
        if (kv->v_cache && kv->v_cache[l])
            be->ops->free(be, kv->v_cache[l]);
    }
    if (kv->scratch)
        be->ops->free(be, kv->scratch);
    free(kv->k_cache);
    free(kv->v_cache);
    free(kv->free_ids);
    free(kv->meta);
    free(kv);
}

pp_status eng_kv_cache_create(eng_model *m, int n_blocks, int block_size, eng_kv_cache **out,
                              eng_err *err)
{
    *out = NULL;
    if (block_size <= 0)
        block_size = ENG_KV_BLOCK_SIZE;
    if (!m || n_blocks < 1 || (int64_t)n_blocks * block_size > INT32_MAX)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "KV cache: %d blocks of %d positions is not a valid size",
                        n_blocks, block_size);
    eng_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "KV cache: out of memory");
    kv->m = m;
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    m->family->kv_widths(&m->cfg, m->opts.mla, &kv->k_width, &kv->v_width);
    int L = m->cfg.n_layer;
    kv->k_cache = calloc((size_t)L, sizeof *kv->k_cache);
    kv->v_cache = calloc((size_t)L, sizeof *kv->v_cache);
    kv->free_ids = malloc((size_t)n_blocks * sizeof *kv->free_ids);
    if (!kv->k_cache || !kv->v_cache || !kv->free_ids)
        goto oom;
    kv->dtype = m->kv_dtype;
    size_t rows = (size_t)n_blocks * (size_t)block_size, elem = eng_kv_elem_bytes(kv->dtype);
    for (int l = 0; l < L; l++)
        if (m->be->ops->alloc(m->be, rows * (size_t)kv->k_width * elem, &kv->k_cache[l]) != PP_STATUS_OK ||
            m->be->ops->alloc(m->be, rows * (size_t)kv->v_width * elem, &kv->v_cache[l]) != PP_STATUS_OK)
            goto oom;
    /* a stack popped from the top: block 0 is handed out first */
    for (int b = 0; b < n_blocks; b++)
        kv->free_ids[b] = n_blocks - 1 - b;
    kv->n_free = n_blocks;
    *out = kv;
    return PP_STATUS_OK;
oom:
    kv_cache_release(kv);
    return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "KV cache: cannot allocate %d blocks of %d positions (%zu MiB)",
                    n_blocks, block_size,
                    (size_t)(((uint64_t)n_blocks * (uint64_t)block_size * (uint64_t)L *
                              (uint64_t)(kv->k_width + kv->v_width) * eng_kv_elem_bytes(m->kv_dtype)) >> 20));
}

void eng_kv_cache_free(eng_kv_cache *kv)
{
    if (!kv)
        return;
    if (kv->n_sessions > 0) {
        fprintf(stderr, "paraphym: eng_kv_cache_free: %d sessions still use the cache; not freed\n",
                kv->n_sessions);
        return;
    }
    kv_cache_release(kv);
}

int eng_kv_cache_free_blocks(const eng_kv_cache *kv) { return kv->n_free; }
int eng_kv_cache_n_blocks(const eng_kv_cache *kv) { return kv->n_blocks; }
int eng_kv_cache_block_size(const eng_kv_cache *kv) { return kv->block_size; }

pp_status eng_session_create_in(eng_kv_cache *kv, int n_ctx, eng_session **out, eng_err *err)
{
    *out = NULL;
    if (!kv || n_ctx <= 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "session: n_ctx must be positive (got %d)", n_ctx);
    eng_session *s = calloc(1, sizeof *s);
    if (!s)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "session: out of memory");
    s->m = kv->m;
    s->kv = kv;
    s->n_ctx = n_ctx;
    s->max_blocks = (int)eng_ceil_div(n_ctx, kv->block_size);
    s->blocks = malloc((size_t)s->max_blocks * sizeof *s->blocks);
    if (!s->blocks) {
        free(s);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "session: out of memory");
    }
    kv->n_sessions++;
    *out = s;
    return PP_STATUS_OK;
}

pp_status eng_session_create(eng_model *m, int n_ctx, eng_session **out, eng_err *err)
{
    *out = NULL;
    if (!m || n_ctx <= 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "session: n_ctx must be positive (got %d)", n_ctx);
    eng_kv_cache *kv;
    pp_status st = eng_kv_cache_create(m, (int)eng_ceil_div(n_ctx, ENG_KV_BLOCK_SIZE), ENG_KV_BLOCK_SIZE, &kv, err);
    if (st != PP_STATUS_OK) {
        eng_err_prefix(err, "session of %d positions", n_ctx);
        return st;
    }
    if ((st = eng_session_create_in(kv, n_ctx, out, err)) != PP_STATUS_OK) {
        eng_kv_cache_free(kv);
        return st;
    }
    (*out)->owns_kv = true;
    return PP_STATUS_OK;
}

/* Gives the session's blocks back to its cache. */
static void session_release_blocks(eng_session *s)
{
    for (int b = s->n_blocks - 1; b >= 0; b--)
        s->kv->free_ids[s->kv->n_free++] = s->blocks[b];
    s->n_blocks = 0;
}

void eng_session_free(eng_session *s)
{
    if (!s)
        return;
    session_release_blocks(s);
    s->kv->n_sessions--;
    if (s->owns_kv)
        eng_kv_cache_free(s->kv);
    free(s->blocks);
    free(s);
}

void eng_session_reset(eng_session *s)
{
    s->pos = 0;
    session_release_blocks(s);
}

int eng_session_pos(const eng_session *s) { return s->pos; }
int eng_session_n_ctx(const eng_session *s) { return s->n_ctx; }

/* Grows the cache's scratch to at least n floats (backend memory). */
static pp_status kv_scratch(eng_kv_cache *kv, size_t n, float **out, eng_err *err)
{
    eng_backend *be = kv->m->be;
    if (kv->scratch_floats < n) {
        if (kv->scratch)
            be->ops->free(be, kv->scratch);
        kv->scratch = NULL;
        kv->scratch_floats = 0;
        if (be->ops->alloc(be, n * sizeof(float), (void **)&kv->scratch) != PP_STATUS_OK)
            return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "cannot allocate %zu bytes of scratch",
                            n * sizeof(float));
        kv->scratch_floats = n;
    }
    *out = kv->scratch;
    return PP_STATUS_OK;
}

/* Appends the backend's own message for its failed op (a CUDA error's name and text) to err. */
static pp_status backend_fail(eng_backend *be, pp_status st, eng_err *err)
{
    const char *detail = be->ops->last_error ? be->ops->last_error(be) : NULL;
    if (err && detail && detail[0]) {
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof err->msg - len, ": %s", detail);
    }
    return st;
}

/* Checks a batch before anything changes: distinct sessions of one cache, ids in range, room in
 * each context and enough free blocks. *blocks_needed: blocks the batch must take. */
static pp_status batch_check(const eng_batch_seq *seqs, int n_seq, int *blocks_needed, eng_err *err)
{
    if (!seqs || n_seq < 1 || !seqs[0].session)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: no sequences given");
    eng_kv_cache *kv = seqs[0].session->kv;
    const eng_config *c = &kv->m->cfg;
    if (n_seq > 1 && seqs[0].session->owns_kv)
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "forward: a session with a private KV cache cannot share a batch "
                        "(create the sessions with eng_session_create_in)");
    int need = 0;
    for (int i = 0; i < n_seq; i++) {
        const eng_session *s = seqs[i].session;
        if (!s || s->kv != kv)
            return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: sequence %d is not in the batch's KV cache", i);
        for (int j = 0; j < i; j++)
            if (seqs[j].session == s)
                return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: session appears twice in the batch (%d, %d)",
                                j, i);
        int n = seqs[i].n_tokens;
        if (n <= 0 || !seqs[i].ids)
            return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: no tokens given%s",
                            n_seq > 1 ? " for a sequence of the batch" : "");
        if (n > s->n_ctx - s->pos)
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "forward: %d tokens at position %d overflow the context of %d", n, s->pos,
                            s->n_ctx);
        for (int t = 0; t < n; t++)
            if (seqs[i].ids[t] < 0 || seqs[i].ids[t] >= c->n_vocab)
                return eng_fail(err, PP_STATUS_INVALID_ARG, "token id %d at index %d is outside [0, %d)",
                                seqs[i].ids[t], t, c->n_vocab);
        if ((seqs[i].token || seqs[i].cand_k) && seqs[i].token_vocab > c->n_vocab)
            return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: token_vocab %d exceeds the vocabulary of %d",
                            seqs[i].token_vocab, c->n_vocab);
        if (seqs[i].cand_k && (seqs[i].cand_k < 0 || seqs[i].cand_k > ENG_TOPK_MAX || !seqs[i].cand_logits ||
                               !seqs[i].cand_ids))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "forward: cand_k %d (want 0, or 1 .. %d with cand_logits and cand_ids given)",
                            seqs[i].cand_k, ENG_TOPK_MAX);
        int want = (int)eng_ceil_div(s->pos + n, kv->block_size);
        need += want > s->n_blocks ? want - s->n_blocks : 0;
    }
    if (need > kv->n_free)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY,
                        "forward: the KV cache has %d free blocks of %d positions, the batch needs %d",
                        kv->n_free, kv->block_size, need);
    *blocks_needed = need;
    return PP_STATUS_OK;
}

/* A forward's device work after the embedding, and where its results go. */
typedef struct step_device {
    const eng_batch_seq *seqs;
    int n_seq;
    bool all_logits;
    eng_model *m;
    const eng_fwd *f;
    const int32_t *seq_start; /* [n_seq + 1] host */
    int n_tokens;
    float *h;                 /* [n_tokens][d_model]: the embedded rows */
    float *g;                 /* [n_seq][d_model]: each sequence's last row gathered (batches) */
    float *lg;                /* [n_out][n_vocab] logits, then n_logits floats of family scratch */
    size_t n_logits;
    int32_t *dpick;           /* [n_seq] greedy picks */
    float *dcand_logits;      /* the candidates' logits and ids, in batch order */
    int32_t *dcand_ids;
    bool any_pick;            /* out: some sequence asked for a greedy pick */
} step_device;

/* The layers, the final norm and lm_head over the rows that get logits (all, the last one, or
 * each sequence's last, gathered), then the greedy picks and sampling candidates made where the
 * logits are. Device-side ops only (no upload, download or host read of their results), so a
 * decode step can record it whole. */
static pp_status forward_device(step_device *d, eng_err *err)
{
    eng_model *m = d->m;
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    const eng_batch_seq *seqs = d->seqs;
    int n_seq = d->n_seq, n_tokens = d->n_tokens;
    int n_out = d->all_logits ? n_tokens : n_seq;
    float *lg = d->lg;
    pp_status st = m->family->forward(m, d->f, d->h, n_tokens, lg + d->n_logits, err);
    if (st != PP_STATUS_OK)
        return st;
    float *hf = d->h;
    if (!d->all_logits && n_seq == 1) {
        hf = d->h + (size_t)(n_tokens - 1) * (size_t)c->d_model;
    } else if (!d->all_logits) {
        for (int i = 0; i < n_seq; i++)
            ENG_TRY(be->ops->copy(be, d->g + (size_t)i * (size_t)c->d_model,
                                  d->h + (size_t)(d->seq_start[i + 1] - 1) * (size_t)c->d_model, (size_t)c->d_model));
        hf = d->g;
    }
    ENG_TRY(be->ops->rmsnorm(be, hf, c->d_model, &m->final_norm, c->norm_eps, hf, c->d_model, n_out));
    ENG_TRY(be->ops->matmul(be, hf, c->d_model, &m->lm_head, lg, c->n_vocab, n_out));
    d->any_pick = false;
    for (int i = 0; i < n_seq;) { /* one launch per run of sequences picking from the same columns */
        if (!seqs[i].token) {
            i++;
            continue;
        }
        int cols = seqs[i].token_vocab > 0 ? seqs[i].token_vocab : c->n_vocab, j = i + 1;
        while (j < n_seq && seqs[j].token && (seqs[j].token_vocab > 0 ? seqs[j].token_vocab : c->n_vocab) == cols)
            j++;
        const float *row = lg + (size_t)(d->all_logits ? n_tokens - 1 : i) * (size_t)c->n_vocab;
        ENG_TRY(be->ops->argmax(be, row, c->n_vocab, j - i, cols, d->dpick + i));
        d->any_pick = true;
        i = j;
    }
    /* the candidates of the sequences asking for them, in batch order, k apart: a run of
     * sequences with the same columns and k is one launch writing consecutive rows */
    size_t at = 0;
    for (int i = 0; i < n_seq;) {
        if (!seqs[i].cand_k) {
            i++;
            continue;
        }
        int cols = seqs[i].token_vocab > 0 ? seqs[i].token_vocab : c->n_vocab, k = seqs[i].cand_k, j = i + 1;
        while (j < n_seq && seqs[j].cand_k == k && (seqs[j].token_vocab > 0 ? seqs[j].token_vocab : c->n_vocab) == cols)
            j++;
        const float *row = lg + (size_t)(d->all_logits ? n_tokens - 1 : i) * (size_t)c->n_vocab;
        ENG_TRY(be->ops->topk(be, row, c->n_vocab, j - i, cols, k, d->dcand_logits + at, d->dcand_ids + at));
        at += (size_t)(j - i) * (size_t)k;
        i = j;
    }
    return PP_STATUS_OK;
}

/* The forward pass proper. With all_logits (one sequence only) every row's logits go to
 * seqs[0].logits, else each sequence's last row to its own logits. */
static pp_status batch_forward(const eng_batch_seq *seqs, int n_seq, bool all_logits, eng_err *err)
{
    int need = 0;
    pp_status st = batch_check(seqs, n_seq, &need, err);
    if (st != PP_STATUS_OK)
        return st;
    eng_kv_cache *kv = seqs[0].session->kv;
    eng_model *m = kv->m;
    const eng_config *c = &m->cfg;
    eng_backend *be = m->be;
    int bs = kv->block_size;

    /* blocks first (they stay with their session even if the pass fails) */
    int n_tokens = 0, max_seq_tokens = 0, max_ctx = 0, max_blocks = 1;
    for (int i = 0; i < n_seq; i++) {
        eng_session *s = seqs[i].session;
        int ctx = s->pos + seqs[i].n_tokens;
        while (s->n_blocks < (int)eng_ceil_div(ctx, bs))
            s->blocks[s->n_blocks++] = kv->free_ids[--kv->n_free];
        n_tokens += seqs[i].n_tokens;
        max_seq_tokens = seqs[i].n_tokens > max_seq_tokens ? seqs[i].n_tokens : max_seq_tokens;
        max_ctx = ctx > max_ctx ? ctx : max_ctx;
        max_blocks = s->n_blocks > max_blocks ? s->n_blocks : max_blocks;
    }
    (void)need;

    /* the int32 tables, staged on the host and uploaded at the start of the scratch:
     * seq_start [n_seq + 1], seq_pos0 [n_seq], pos [T], slot [T], ids [T], block_table
     * [n_seq][max_blocks] */
    size_t n_meta = (size_t)(2 * n_seq + 1) + 3 * (size_t)n_tokens + (size_t)n_seq * (size_t)max_blocks;
    /* what the backend picks comes back to the same host buffer: n_seq greedy picks, then the
     * candidates' n_cand logits and n_cand ids */
    size_t n_cand = 0;
    for (int i = 0; i < n_seq; i++)
        n_cand += (size_t)seqs[i].cand_k;
    size_t n_picked = (size_t)n_seq + 2 * n_cand;
    size_t n_host = n_meta > n_picked ? n_meta : n_picked;
    if (kv->meta_cap < n_host) {
        int32_t *p = realloc(kv->meta, n_host * sizeof *p);
        if (!p)
            return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "forward: out of memory");
        kv->meta = p;
        kv->meta_cap = n_host;
    }
    int32_t *seq_start = kv->meta, *seq_pos0 = seq_start + n_seq + 1, *pos = seq_pos0 + n_seq;
    int32_t *slot = pos + n_tokens, *ids = slot + n_tokens, *table = ids + n_tokens;
    seq_start[0] = 0;
    for (int i = 0; i < n_seq; i++) {
        const eng_session *s = seqs[i].session;
        seq_start[i + 1] = seq_start[i] + seqs[i].n_tokens;
        seq_pos0[i] = s->pos;
        for (int t = 0; t < seqs[i].n_tokens; t++) {
            int row = seq_start[i] + t, p = s->pos + t;
            pos[row] = p;
            slot[row] = s->blocks[p / bs] * bs + p % bs;
            ids[row] = seqs[i].ids[t];
        }
        for (int b = 0; b < max_blocks; b++)
            table[(size_t)i * (size_t)max_blocks + (size_t)b] = b < s->n_blocks ? s->blocks[b] : 0;
    }

    int n_out = all_logits ? n_tokens : n_seq;
    /* device int32: the tables, then each sequence's greedy pick and the candidates' logits and
     * ids (n_cand of each; not uploaded) */
    size_t meta_floats = (n_meta + n_picked + 63) & ~(size_t)63; /* float arrays 256-byte aligned */
    size_t n_h = (size_t)n_tokens * (size_t)c->d_model;
    size_t n_g = all_logits || n_seq == 1 ? 0 : (size_t)n_seq * (size_t)c->d_model;
    size_t n_logits = (size_t)n_out * (size_t)c->n_vocab;
    size_t n_fam = m->family->scratch_floats(c, n_tokens);
    float *base = NULL;
    if ((st = kv_scratch(kv, meta_floats + n_h + n_g + n_logits + n_fam, &base, err)) != PP_STATUS_OK)
        return st;
    int32_t *dmeta = (int32_t *)base;
    float *h = base + meta_floats; /* [n_tokens][d_model] */
    float *g = h + n_h;            /* [n_seq][d_model] last rows gathered (batches) */
    float *lg = g + n_g;           /* [n_out][n_vocab] */
    ENG_TRY(be->ops->upload(be, dmeta, kv->meta, n_meta * sizeof(int32_t)));
    eng_fwd f = {
        .batch = {
            .n_seq = n_seq, .n_tokens = n_tokens, .max_seq_tokens = max_seq_tokens, .max_ctx = max_ctx,
            .block_size = bs, .max_blocks = max_blocks,
            .seq_start = dmeta, .seq_pos0 = dmeta + (seq_pos0 - seq_start),
            .block_table = dmeta + (table - seq_start),
        },
        .pos = dmeta + (pos - seq_start),
        .slot = dmeta + (slot - seq_start),
        .kv_dtype = kv->dtype,
        .k_cache = kv->k_cache,
        .v_cache = kv->v_cache,
    };

    ENG_TRY(be->ops->embedding(be, &m->embed, ids, n_tokens, h));
    int32_t *dpick = dmeta + n_meta;
    step_device dev = {
        .seqs = seqs, .n_seq = n_seq, .all_logits = all_logits, .m = m, .f = &f, .seq_start = seq_start,
        .n_tokens = n_tokens, .h = h, .g = g, .lg = lg, .n_logits = n_logits,
        .dpick = dpick, .dcand_logits = (float *)(dpick + n_seq), .dcand_ids = dpick + n_seq + n_cand,
    };
    /* a decode step (one token per sequence: the same kernels step after step) runs its device
     * work as one recorded unit (a CUDA graph); when recording falls short (a first use
     * uploads or allocates, backend.h) nothing of it ran, and it runs op by op */
    bool recording = max_seq_tokens == 1 && be->ops->record_begin && be->ops->record_begin(be) == PP_STATUS_OK;
    st = forward_device(&dev, err);
    if (recording) {
        pp_status end = be->ops->record_end(be, st == PP_STATUS_OK);
        if (end == PP_STATUS_UNSUPPORTED && (st == PP_STATUS_OK || st == PP_STATUS_UNSUPPORTED)) {
            if (err)
                err->msg[0] = '\0';
            st = forward_device(&dev, err);
        } else if (end != PP_STATUS_OK && end != PP_STATUS_UNSUPPORTED) { /* a device fault */
            st = eng_fail(err, end, "running the recorded decode step failed (%s)", pp_status_str(end));
        }
    }
    if (st != PP_STATUS_OK)
        return st;
    if (all_logits) {
        if (seqs[0].logits)
            ENG_TRY(be->ops->download(be, seqs[0].logits, lg, n_logits * sizeof(float)));
    } else {
        for (int i = 0; i < n_seq; i++)
            if (seqs[i].logits)
                ENG_TRY(be->ops->download(be, seqs[i].logits, lg + (size_t)i * (size_t)c->n_vocab,
                                          (size_t)c->n_vocab * sizeof(float)));
    }
    /* one download of n_seq picks and the candidates' n_cand logits and n_cand ids */
    if (dev.any_pick || n_cand) {
        ENG_TRY(be->ops->download(be, kv->meta, dpick, n_picked * sizeof(int32_t)));
        size_t at = 0;
        for (int i = 0; i < n_seq; i++) {
            if (seqs[i].token)
                *seqs[i].token = kv->meta[i];
            if (seqs[i].cand_k) {
                size_t k = (size_t)seqs[i].cand_k;
                memcpy(seqs[i].cand_logits, kv->meta + n_seq + at, k * sizeof(float));
                memcpy(seqs[i].cand_ids, kv->meta + n_seq + n_cand + at, k * sizeof(int32_t));
                at += k;
            }
        }
    }
    for (int i = 0; i < n_seq; i++)
        seqs[i].session->pos += seqs[i].n_tokens;
    return PP_STATUS_OK;
}

static pp_status forward_with_detail(const eng_batch_seq *seqs, int n_seq, bool all_logits, eng_err *err)
{
    pp_status st = batch_forward(seqs, n_seq, all_logits, err);
    if (st != PP_STATUS_OK && st != PP_STATUS_INVALID_ARG && st != PP_STATUS_OUT_OF_MEMORY)
        return backend_fail(seqs[0].session->m->be, st, err);
    return st;
}

pp_status eng_session_forward(eng_session *s, const int32_t *ids, int n_tokens, float *logits,
                              bool all_logits, eng_err *err)
{
    if (!s)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "forward: no session given");
    eng_batch_seq one = {.session = s, .ids = ids, .n_tokens = n_tokens, .logits = logits};
    return forward_with_detail(&one, 1, all_logits, err);
}

pp_status eng_forward_batch(const eng_batch_seq *seqs, int n_seq, eng_err *err)
{
    return forward_with_detail(seqs, n_seq, false, err);
}
