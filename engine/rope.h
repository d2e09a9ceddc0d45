/* rope.h: RoPE frequency tables and softmax scales derived from a config, as HF computes them
 * (modeling_rope_utils: default, linear, YaRN with mscale; DeepSeek's mscale^2 softmax factor).
 *
 * Invariant: tables are computed in f32 step by step like HF's (inv_freq, then the YaRN blend),
 * so the CPU reference's angles match Hugging Face's to the last bit where the math library does.
 */
#ifndef ENG_ROPE_H
#define ENG_ROPE_H

#include "backend.h"
#include "config.h"

#define ENG_MAX_ROPE_DIM 1024

/* Fills inv_freq[0 .. cfg->d_rope/2) and *rope (which points at inv_freq). */
pp_status eng_rope_init(const eng_config *cfg, float *inv_freq, eng_rope *rope, eng_err *err);

/* Softmax scale of q.k: d_head^-0.5 (Qwen3, Phi3); DeepSeek: (d_nope + d_rope)^-0.5, times
 * mscale^2 when YaRN has mscale_all_dim. */
float eng_attn_scale(const eng_config *cfg);

#endif /* ENG_ROPE_H */
