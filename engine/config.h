/* config.h: a model's config.json (and generation_config.json) read into one validated struct.
 *
 * Invariant: an eng_config returned by eng_config_parse is internally consistent (dimensions
 * positive and compatible, top-k <= experts, groups divide experts, ...); the forward passes
 * never re-check it.
 */
#ifndef ENG_CONFIG_H
#define ENG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef enum eng_arch {
    ENG_ARCH_DEEPSEEK_V3 = 0, /* model_type kimi_k2 / deepseek_v3 */
    ENG_ARCH_QWEN3_MOE,       /* model_type qwen3_moe */
    ENG_ARCH_PHI3,            /* model_type phi3 */
} eng_arch;

typedef enum eng_rope_kind {
    ENG_ROPE_DEFAULT = 0, /* rope_scaling null / "default" */
    ENG_ROPE_LINEAR,      /* positions divided by factor */
    ENG_ROPE_YARN,
} eng_rope_kind;

typedef enum eng_quant {
    ENG_QUANT_NONE = 0,
    ENG_QUANT_FP8_BLOCK,  /* quant_method fp8, weight_block_size [bo, bi] */
    ENG_QUANT_INT4_GROUP, /* compressed-tensors pack-quantized, int 4 bits, group, symmetric */
} eng_quant;

#define ENG_MAX_EOS 8

typedef struct eng_config {
    eng_arch arch;
    char model_type[32];    /* as written in config.json */

    int n_vocab;
    int d_model;            /* hidden_size */
    int n_layer;
    int n_head;
    int n_head_kv;
    int d_head;             /* Qwen3 head_dim (default d_model / n_head); Phi3 d_model / n_head;
                               DeepSeek: d_nope + d_rope (the q/k width) */
    int d_ff;               /* intermediate_size (dense MLPs) */
    float norm_eps;         /* rms_norm_eps */
    bool tie_word_embeddings;
    int max_position_embeddings;

    /* RoPE */
    double rope_theta;
    double partial_rotary_factor; /* Phi3 (1.0 when absent) */
    int d_rope;             /* rotated width per head: DeepSeek qk_rope_head_dim; others
                               int(d_head * partial_rotary_factor) */
    bool rope_interleave;   /* DeepSeek: rope_interleave, default true; others false */
    eng_rope_kind rope_kind;
    double rope_factor;     /* linear / yarn factor */
    int rope_orig_max_pos;  /* yarn original_max_position_embeddings (else max_position_embeddings) */
    double yarn_beta_fast;  /* default 32 */
    double yarn_beta_slow;  /* default 1 */
    double yarn_mscale;     /* 0 when absent */
    double yarn_mscale_all_dim; /* 0 when absent */
    double yarn_attention_factor; /* < 0 when absent */
    bool yarn_truncate;     /* default true */

    /* MoE (Qwen3-MoE and DeepSeek) */
    int n_expert;           /* num_experts / n_routed_experts; 0 = dense model */
    int n_expert_used;      /* num_experts_per_tok */
    int d_ff_expert;        /* moe_intermediate_size */
    bool norm_topk_prob;

    /* Qwen3-MoE */
    int decoder_sparse_step;  /* default 1 */
    int n_mlp_only_layers;
    int mlp_only_layers[64];  /* layer indices that use a dense MLP */

    /* DeepSeek-V3 / Kimi K2 */
    int q_lora_rank;        /* 0 = null (plain q_proj) */
    int kv_lora_rank;
    int d_nope;             /* qk_nope_head_dim */
    int d_v;                /* v_head_dim (Qwen3/Phi3: d_head) */
    int n_shared_experts;
    int first_k_dense_replace;
    int n_group;            /* default 1 */
    int topk_group;         /* default 1 */
    double routed_scaling_factor; /* default 1.0 */
    bool scoring_sigmoid;   /* scoring_func "sigmoid" (only one supported for DeepSeek) */

    /* quantization_config */
    eng_quant quant;
    int quant_block_out, quant_block_in; /* fp8: weight_block_size (default 128, 128) */
    int quant_group;        /* int4: group_size */

    /* token ids: eos from generation_config.json when present, else config.json; -1 when none */
    int bos_token_id;
    int n_eos;
    int eos_token_ids[ENG_MAX_EOS];
} eng_config;

/* Parses config.json text (len bytes, not necessarily NUL-terminated). Unknown keys are ignored;
 * missing required keys, mistyped values (a string where a number belongs), unknown model_type,
 * unsupported rope_scaling / quantization and inconsistent dimensions give
 * PP_STATUS_BAD_FORMAT or PP_STATUS_UNSUPPORTED with a message naming the key. `cfg` is fully
 * written on success and unspecified on failure. This is the fuzzed entry point. */
pp_status eng_config_parse(const char *json_text, size_t len, eng_config *cfg, eng_err *err);

/* Reads DIR/config.json and, when present, DIR/generation_config.json (its eos_token_id /
 * bos_token_id take precedence). PP_STATUS_NOT_FOUND when DIR has no config.json. */
pp_status eng_config_load(const char *dir, eng_config *cfg, eng_err *err);

/* Human-readable family name: "deepseek_v3", "qwen3_moe", "phi3". */
const char *eng_arch_name(eng_arch arch);

/* True when layer `layer` of this config uses routed experts (else a dense MLP). */
bool eng_config_layer_is_moe(const eng_config *cfg, int layer);

#endif /* ENG_CONFIG_H */
