/* rope.c: RoPE tables (default, linear, YaRN) and attention scales, following HF's
 * _compute_default_rope_parameters / _compute_linear_scaling_rope_parameters /
 * _compute_yarn_parameters and DeepseekV3Attention's scaling. */
#include "rope.h"

#include <math.h>

static double get_mscale(double scale, double mscale)
{
    if (scale <= 1.0)
        return 1.0;
    return 0.1 * mscale * log(scale) + 1.0;
}

/* find_correction_dim: the dimension whose wavelength turns num_rotations times over orig. */
static double correction_dim(double num_rotations, int dim, double base, int orig)
{
    return (dim * log((double)orig / (num_rotations * 2.0 * M_PI))) / (2.0 * log(base));
}

pp_status eng_rope_init(const eng_config *cfg, float *inv_freq, eng_rope *rope, eng_err *err)
{
    int dim = cfg->d_rope;
    if (dim < 2 || dim % 2 || dim > ENG_MAX_ROPE_DIM)
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "rotary dimension %d must be even and in [2, %d]",
                        dim, ENG_MAX_ROPE_DIM);
    int half = dim / 2;
    float base = (float)cfg->rope_theta;
    float scale = 1.0f;
    for (int j = 0; j < half; j++) {
        /* pos_freqs = base ** (arange(0, dim, 2).float() / dim), in f32 */
        float pos_freq = powf(base, (float)(2 * j) / (float)dim);
        inv_freq[j] = 1.0f / pos_freq;
    }
    if (cfg->rope_kind == ENG_ROPE_LINEAR) {
        for (int j = 0; j < half; j++)
            inv_freq[j] = inv_freq[j] / (float)cfg->rope_factor;
    } else if (cfg->rope_kind == ENG_ROPE_YARN) {
        double factor = cfg->rope_factor;
        double attn = cfg->yarn_attention_factor;
        if (attn < 0) {
            if (cfg->yarn_mscale != 0.0 && cfg->yarn_mscale_all_dim != 0.0)
                attn = get_mscale(factor, cfg->yarn_mscale) / get_mscale(factor, cfg->yarn_mscale_all_dim);
            else
                attn = get_mscale(factor, 1.0);
        }
        scale = (float)attn;
        double low = correction_dim(cfg->yarn_beta_fast, dim, cfg->rope_theta, cfg->rope_orig_max_pos);
        double high = correction_dim(cfg->yarn_beta_slow, dim, cfg->rope_theta, cfg->rope_orig_max_pos);
        if (cfg->yarn_truncate) {
            low = floor(low);
            high = ceil(high);
        }
        if (low < 0)
            low = 0;
        if (high > dim - 1)
            high = dim - 1;
        if (low == high)
            high += 0.001;
        for (int j = 0; j < half; j++) {
            float pos_freq = powf(base, (float)(2 * j) / (float)dim);
            float extrap = 1.0f / pos_freq;
            float interp = 1.0f / ((float)factor * pos_freq);
            float ramp = (float)(((float)j - (float)low) / (float)(high - low));
            ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
            float extrap_factor = 1.0f - ramp;
            inv_freq[j] = interp * (1.0f - extrap_factor) + extrap * extrap_factor;
        }
    }
    rope->d_rope = dim;
    rope->interleaved = cfg->rope_interleave;
    rope->cos_sin_scale = scale;
    rope->inv_freq = inv_freq;
    return PP_STATUS_OK;
}

float eng_attn_scale(const eng_config *cfg)
{
    if (cfg->arch != ENG_ARCH_DEEPSEEK_V3)
        return (float)(1.0 / sqrt((double)cfg->d_head));
    double s = 1.0 / sqrt((double)(cfg->d_nope + cfg->d_rope));
    if (cfg->rope_kind != ENG_ROPE_DEFAULT && cfg->yarn_mscale_all_dim != 0.0) {
        double m = get_mscale(cfg->rope_factor, cfg->yarn_mscale_all_dim);
        s = s * m * m;
    }
    return (float)s;
}
