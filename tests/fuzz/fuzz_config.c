/* fuzz_config.c: libFuzzer entry point for eng_config_parse.
 *
 * An accepted config must satisfy the invariants config.h promises to the forward passes; the
 * harness traps on any breach, so the fuzzer reports it as a crash.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int ok)
{
    if (!ok)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_err err;
    eng_config cfg;
    if (eng_config_parse((const char *)data, size, &cfg, &err) != PP_STATUS_OK) {
        require(memchr(err.msg, '\0', sizeof err.msg) != NULL);
        return 0;
    }
    require(cfg.n_vocab > 0 && cfg.d_model > 0 && cfg.n_layer > 0 && cfg.n_layer <= 1024);
    require(cfg.n_head > 0 && cfg.n_head_kv > 0 && cfg.n_head % cfg.n_head_kv == 0);
    require(cfg.d_head > 0 && cfg.d_v > 0 && cfg.d_rope >= 2 && cfg.d_rope % 2 == 0 &&
            cfg.d_rope <= cfg.d_head);
    require(cfg.norm_eps > 0 && cfg.rope_theta > 0 && cfg.rope_factor > 0);
    require(cfg.max_position_embeddings > 0 && cfg.rope_orig_max_pos > 0);
    require(cfg.n_eos >= 0 && cfg.n_eos <= ENG_MAX_EOS);
    for (int i = 0; i < cfg.n_eos; i++)
        require(cfg.eos_token_ids[i] >= 0 && cfg.eos_token_ids[i] < cfg.n_vocab);
    require(cfg.bos_token_id >= -1 && cfg.bos_token_id < cfg.n_vocab);
    int n_moe = 0;
    for (int l = 0; l < cfg.n_layer; l++) {
        if (eng_config_layer_is_moe(&cfg, l))
            n_moe++;
        else
            require(cfg.d_ff > 0);
    }
    if (n_moe > 0) {
        require(cfg.n_expert > 0 && cfg.n_expert_used >= 1 && cfg.n_expert_used <= cfg.n_expert);
        require(cfg.d_ff_expert > 0 && cfg.n_group >= 1 && cfg.n_expert % cfg.n_group == 0);
        require(cfg.topk_group >= 1 && cfg.topk_group <= cfg.n_group);
        require(cfg.n_expert_used <= cfg.topk_group * (cfg.n_expert / cfg.n_group));
    } else {
        require(cfg.n_expert == 0);
    }
    if (cfg.quant == ENG_QUANT_FP8_BLOCK)
        require(cfg.quant_block_out > 0 && cfg.quant_block_in > 0);
    if (cfg.quant == ENG_QUANT_INT4_GROUP)
        require(cfg.quant_group > 0);
    require(strlen(cfg.model_type) < sizeof cfg.model_type);
    return 0;
}
