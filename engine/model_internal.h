/* model_internal.h: what model.c shares with the per-family forward passes (model_*.c).
 *
 * Invariant: model.c owns loading, the embedding, the final norm, lm_head and the session's
 * memory; a family binds its layer weights and runs its decoder layers over the backend op table
 * only.
 */
#ifndef ENG_MODEL_INTERNAL_H
#define ENG_MODEL_INTERNAL_H

#include "backend.h"
#include "model.h"
#include "rope.h"
#include "safetensors.h"
#include "weights.h"

/* What the families get for one forward pass over a batch of sequences: where each token sits
 * and where its keys and values go. Arrays in backend memory. */
typedef struct eng_fwd {
    eng_kv_batch batch;    /* the sequences and their block tables (attention, MLA) */
    const int32_t *pos;    /* [n_tokens] each token's position (RoPE) */
    const int32_t *slot;   /* [n_tokens] each token's cache row (kv_write) */
    eng_kv_dtype kv_dtype; /* the caches' element type */
    void *const *k_cache;  /* [n_layer] -> rows of k_width elements */
    void *const *v_cache;  /* [n_layer] -> rows of v_width elements */
} eng_fwd;

/* Element `at` of a KV cache of dtype elements. */
static inline void *eng_kv_at(void *cache, eng_kv_dtype dtype, int64_t at)
{
    return (char *)cache + at * (int64_t)eng_kv_elem_bytes(dtype);
}

typedef struct eng_family {
    const char *name;
    /* Binds layer weights into model->layers (allocated by the family). */
    pp_status (*bind)(eng_model *m, eng_err *err);
    void (*unbind)(eng_model *m);
    /* Floats per token per layer in the K and V caches. */
    void (*kv_widths)(const eng_config *c, eng_mla_mode mla, int64_t *k_width, int64_t *v_width);
    /* Scratch floats one forward of n_tokens needs (beyond the hidden state and logits). */
    size_t (*scratch_floats)(const eng_config *c, int n_tokens);
    /* h: [n_tokens][d_model] residual stream (the batch's tokens), updated in place through every
     * layer; scratch: scratch_floats(c, n_tokens) floats of backend memory. Writes every token's
     * keys and values to its cache slot. */
    pp_status (*forward)(eng_model *m, const eng_fwd *f, float *h, int n_tokens, float *scratch,
                         eng_err *err);
} eng_family;

extern const eng_family eng_family_deepseek;
extern const eng_family eng_family_qwen3_moe;
extern const eng_family eng_family_phi3;

struct eng_model {
    eng_config cfg;
    eng_model_opts opts;
    eng_st_set *st;
    eng_backend *be;
    const eng_family *family;
    void *layers; /* family-specific */

    eng_weight embed;   /* [n_vocab][d_model] */
    eng_weight lm_head; /* [n_vocab][d_model] (the embedding when tied) */
    eng_vec final_norm; /* [d_model] */

    eng_kv_dtype kv_dtype; /* its KV caches' element type (opts.kv resolved) */
    eng_rope rope;
    float inv_freq[ENG_MAX_ROPE_DIM / 2];
    float attn_scale;

    const eng_model *weights_owner; /* NULL, or the model whose st/layers this fork borrows */

    void **quant_bufs;    /* [n_quant] the weights quantized at load (owned, freed with the
                             owner of the weights) */
    size_t n_quant, cap_quant, quant_bytes;
};

/* A paged KV cache: per layer, K and V rows for n_blocks * block_size positions in backend
 * memory, handed to sessions a block at a time. Used by one thread at a time. */
struct eng_kv_cache {
    eng_model *m;
    int n_blocks, block_size;
    int64_t k_width, v_width;
    eng_kv_dtype dtype; /* element type of the rows (the model's kv_dtype) */
    void **k_cache;   /* [n_layer] -> [n_blocks * block_size][k_width], backend memory */
    void **v_cache;   /* [n_layer] -> [n_blocks * block_size][v_width], backend memory */
    int32_t *free_ids; /* stack of free block ids: [n_free] */
    int n_free;
    int n_sessions;   /* sessions created in it and not yet freed */
    float *scratch;   /* backend memory, one forward's tables and activations */
    size_t scratch_floats;
    int32_t *meta;    /* host staging of a forward's int32 tables */
    size_t meta_cap;
};

struct eng_session {
    eng_model *m;
    eng_kv_cache *kv;
    bool owns_kv;     /* a private cache made by eng_session_create */
    int n_ctx;
    int pos;
    int32_t *blocks;  /* [max_blocks] the blocks holding positions 0 .. n_blocks * block_size */
    int n_blocks, max_blocks;
};

/* A SwiGLU MLP: out = down(silu(gate(x)) * up(x)). g, u: [n_tokens][gate->n_out] scratch. */
typedef struct eng_mlp {
    eng_weight gate, up, down;
} eng_mlp;
pp_status eng_mlp_forward(eng_backend *be, const eng_mlp *mlp, const float *x, int n_tokens,
                          float *g, float *u, float *out, eng_err *err);

/* A routed-expert block (router, experts, optional shared MLP). */
typedef struct eng_moe {
    eng_router_kind kind;
    eng_weight router;       /* [n_expert][d_model] */
    eng_vec bias;            /* e_score_correction_bias, data NULL when absent */
    eng_weight *gate, *up, *down; /* [n_expert] */
    bool has_shared;
    eng_mlp shared;
} eng_moe;
/* Floats of scratch eng_moe_forward needs for n_tokens. */
size_t eng_moe_scratch_floats(const eng_config *c, int n_tokens);
pp_status eng_moe_bind(eng_model *m, int layer, eng_router_kind kind, eng_moe *moe, eng_err *err);
void eng_moe_unbind(eng_moe *moe);
/* out[t] = sum of routed experts (+ shared MLP) for x[t]. */
pp_status eng_moe_forward(eng_model *m, const eng_moe *moe, const float *x, int n_tokens,
                          float *scratch, float *out, eng_err *err);
pp_status eng_mlp_bind(eng_model *m, const char *prefix, int64_t d_ff, eng_mlp *mlp, eng_err *err);

/* A decoder layer's feed-forward sublayer: routed experts (eng_config_layer_is_moe) or a dense
 * SwiGLU MLP of width d_ff, both named "model.layers.<layer>.mlp...". */
typedef struct eng_ffn {
    bool is_moe;
    eng_moe moe;
    eng_mlp mlp;
} eng_ffn;
pp_status eng_ffn_bind(eng_model *m, int layer, eng_router_kind kind, eng_ffn *ffn, eng_err *err);
void eng_ffn_unbind(eng_ffn *ffn);
/* Floats of scratch eng_ffn_forward needs for n_tokens (the larger of the MoE and dense needs). */
size_t eng_ffn_scratch_floats(const eng_config *c, int n_tokens);
/* out[t] = ffn(x[t]). */
pp_status eng_ffn_forward(eng_model *m, const eng_ffn *ffn, const float *x, int n_tokens,
                          float *scratch, float *out, eng_err *err);

/* Helper for the families: binds "<prefix>" as an [n_out][n_in] linear weight, reporting the
 * name on failure. */
pp_status eng_bind_linear(eng_model *m, const char *prefix, int64_t n_out, int64_t n_in,
                          eng_weight *out, eng_err *err);
pp_status eng_bind_vec(eng_model *m, const char *name, int64_t n, eng_vec *out, eng_err *err);
/* The same for "model.layers.<layer>.<suffix>". */
pp_status eng_bind_layer_linear(eng_model *m, int layer, const char *suffix, int64_t n_out,
                                int64_t n_in, eng_weight *out, eng_err *err);
pp_status eng_bind_layer_vec(eng_model *m, int layer, const char *suffix, int64_t n, eng_vec *out,
                             eng_err *err);

/* Checks a backend call: on failure records which op failed. */
#define ENG_TRY(call)                                                                              \
    do {                                                                                           \
        pp_status try_st_ = (call);                                                                \
        if (try_st_ != PP_STATUS_OK)                                                               \
            return eng_fail(err, try_st_, "%s failed (%s) at %s:%d", #call,                       \
                            pp_status_str(try_st_), __FILE__, __LINE__);                           \
    } while (0)

#endif /* ENG_MODEL_INTERNAL_H */
