/* config.c: config.json / generation_config.json -> eng_config, with every value type-checked
 * and every dimension validated.
 *
 * Invariant: eng_config_parse either returns PP_STATUS_OK with a config the forward passes can
 * trust (dimensions positive and bounded, heads grouped evenly, experts divisible into groups,
 * top-k within range, rope and quantization settings of a supported kind), or a status with a
 * message naming the key at fault. A JSON null counts as an absent key everywhere.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bounds that keep every later size computation (products of two dimensions, per-layer arrays)
 * far from overflow; real checkpoints stay well below them (largest: vocab 262144, d_ff 29568). */
#define MAX_DIM (1 << 20)
#define MAX_LAYERS 1024
#define MAX_POSITIONS (1 << 24)
/* config.json is a few KB; anything this large is not one. */
#define MAX_CONFIG_BYTES ((size_t)16 << 20)

#define CONFIG_FILE "config.json"
#define GENERATION_FILE "generation_config.json"

/* ---- typed getters --------------------------------------------------------------------------
 * A reader names the object being read ("config.json", section "rope_scaling") so that every
 * message says which key is at fault: "config.json: key 'rope_scaling.factor' ...". */

typedef struct reader {
    struct json_object *obj;
    const char *file;    /* "config.json" */
    const char *section; /* NULL at the top level, else the enclosing key */
    eng_err *err;
} reader;

static const char *key_prefix(const reader *r)
{
    return r->section ? r->section : "";
}

static const char *key_dot(const reader *r)
{
    return r->section ? "." : "";
}

/* The value of `key`, NULL when absent or null. */
static struct json_object *lookup(const reader *r, const char *key)
{
    struct json_object *v = NULL;
    if (!json_object_object_get_ex(r->obj, key, &v))
        return NULL;
    return v; /* json-c represents null as a NULL object */
}

static pp_status fail_missing(const reader *r, const char *key)
{
    return eng_fail(r->err, PP_STATUS_BAD_FORMAT, "%s: missing required key '%s%s%s'", r->file,
                    key_prefix(r), key_dot(r), key);
}

static pp_status fail_type(const reader *r, const char *key, const char *want,
                           struct json_object *v)
{
    return eng_fail(r->err, PP_STATUS_BAD_FORMAT, "%s: key '%s%s%s' must be %s, got %s", r->file,
                    key_prefix(r), key_dot(r), key, want,
                    json_type_to_name(json_object_get_type(v)));
}

static pp_status fail_value(const reader *r, const char *key, pp_status status, const char *what)
{
    return eng_fail(r->err, status, "%s: key '%s%s%s' %s", r->file, key_prefix(r), key_dot(r),
                    key, what);
}

/* JSON integer (or a double with an integral value) -> int64. */
static pp_status to_int64(const reader *r, const char *key, struct json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v); /* saturates beyond the int64 range */
        return PP_STATUS_OK;
    }
    if (json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        /* 2^53: beyond it doubles are all integral but no longer exact */
        if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: key '%s%s%s' must be an integer, got non-integral number %g",
                            r->file, key_prefix(r), key_dot(r), key, d);
        *out = (int64_t)d;
        return PP_STATUS_OK;
    }
    return fail_type(r, key, "an integer", v);
}

static pp_status int_in_range(const reader *r, const char *key, struct json_object *v, int lo,
                              int hi, int *out)
{
    int64_t x = 0;
    pp_status st = to_int64(r, key, v, &x);
    if (st != PP_STATUS_OK)
        return st;
    if (x < lo || x > hi)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: key '%s%s%s' = %lld is out of range [%d, %d]", r->file,
                        key_prefix(r), key_dot(r), key, (long long)x, lo, hi);
    *out = (int)x;
    return PP_STATUS_OK;
}

static pp_status req_int(const reader *r, const char *key, int lo, int hi, int *out)
{
    struct json_object *v = lookup(r, key);
    if (!v)
        return fail_missing(r, key);
    return int_in_range(r, key, v, lo, hi, out);
}

static pp_status opt_int(const reader *r, const char *key, int def, int lo, int hi, int *out)
{
    struct json_object *v = lookup(r, key);
    if (!v) {
        *out = def;
        return PP_STATUS_OK;
    }
    return int_in_range(r, key, v, lo, hi, out);
}

/* Finite number (integer or double). */
static pp_status to_double(const reader *r, const char *key, struct json_object *v, double *out)
{
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
        return fail_type(r, key, "a number", v);
    double d = json_object_get_double(v);
    if (!isfinite(d))
        return fail_value(r, key, PP_STATUS_BAD_FORMAT, "must be a finite number");
    *out = d;
    return PP_STATUS_OK;
}

static pp_status req_double(const reader *r, const char *key, double *out)
{
    struct json_object *v = lookup(r, key);
    if (!v)
        return fail_missing(r, key);
    return to_double(r, key, v, out);
}

static pp_status opt_double(const reader *r, const char *key, double def, double *out)
{
    struct json_object *v = lookup(r, key);
    if (!v) {
        *out = def;
        return PP_STATUS_OK;
    }
    return to_double(r, key, v, out);
}

static pp_status opt_bool(const reader *r, const char *key, bool def, bool *out)
{
    struct json_object *v = lookup(r, key);
    if (!v) {
        *out = def;
        return PP_STATUS_OK;
    }
    if (!json_object_is_type(v, json_type_boolean))
        return fail_type(r, key, "a boolean", v);
    *out = json_object_get_boolean(v) != 0;
    return PP_STATUS_OK;
}

/* *out = the string value, or def (may be NULL) when absent. */
static pp_status opt_string(const reader *r, const char *key, const char *def, const char **out)
{
    struct json_object *v = lookup(r, key);
    if (!v) {
        *out = def;
        return PP_STATUS_OK;
    }
    if (!json_object_is_type(v, json_type_string))
        return fail_type(r, key, "a string", v);
    *out = json_object_get_string(v);
    return PP_STATUS_OK;
}

/* *out = the object value, or NULL when absent. */
static pp_status opt_object(const reader *r, const char *key, struct json_object **out)
{
    struct json_object *v = lookup(r, key);
    *out = NULL;
    if (!v)
        return PP_STATUS_OK;
    if (!json_object_is_type(v, json_type_object))
        return fail_type(r, key, "an object", v);
    *out = v;
    return PP_STATUS_OK;
}

static reader sub_reader(const reader *r, struct json_object *obj, const char *section)
{
    reader s = {obj, r->file, section, r->err};
    return s;
}

#define TRY(expr)                                                                                 \
    do {                                                                                          \
        pp_status try_st_ = (expr);                                                               \
        if (try_st_ != PP_STATUS_OK)                                                              \
            return try_st_;                                                                       \
    } while (0)

/* ---- JSON text ------------------------------------------------------------------------------- */

static pp_status parse_json_object(const char *text, size_t len, const char *file,
                                   struct json_object **out, eng_err *err)
{
    *out = NULL;
    if (!text && len > 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "%s: NULL text", file);
    if (len > MAX_CONFIG_BYTES)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: %zu bytes is too large for a config",
                        file, len);
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", file);
    struct json_object *obj = json_tokener_parse_ex(tok, text ? text : "", (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!obj || jerr != json_tokener_success) {
        json_object_put(obj);
        if (jerr == json_tokener_continue || jerr == json_tokener_success)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: truncated or empty JSON", file);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: invalid JSON at byte %zu: %s", file, end,
                        json_tokener_error_desc(jerr));
    }
    for (size_t i = end; i < len; i++) {
        char c = text[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            json_object_put(obj);
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: unexpected data after the JSON object at byte %zu", file, i);
        }
    }
    if (!json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: top level is not a JSON object", file);
    }
    *out = obj;
    return PP_STATUS_OK;
}

/* ---- sections -------------------------------------------------------------------------------- */

static pp_status parse_common(const reader *r, eng_config *cfg)
{
    TRY(req_int(r, "vocab_size", 1, MAX_DIM, &cfg->n_vocab));
    TRY(req_int(r, "hidden_size", 1, MAX_DIM, &cfg->d_model));
    TRY(req_int(r, "num_hidden_layers", 1, MAX_LAYERS, &cfg->n_layer));
    TRY(req_int(r, "num_attention_heads", 1, MAX_DIM, &cfg->n_head));
    TRY(opt_int(r, "num_key_value_heads", cfg->n_head, 1, cfg->n_head, &cfg->n_head_kv));
    if (cfg->n_head % cfg->n_head_kv != 0)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads "
                        "(%d)",
                        r->file, cfg->n_head, cfg->n_head_kv);
    /* 0 means absent here; parse_ffn decides whether a dense MLP needs it */
    TRY(opt_int(r, "intermediate_size", 0, 0, MAX_DIM, &cfg->d_ff));

    double eps = 0;
    TRY(req_double(r, "rms_norm_eps", &eps));
    if (!(eps > 0 && eps <= FLT_MAX) || !((float)eps > 0))
        return fail_value(r, "rms_norm_eps", PP_STATUS_BAD_FORMAT,
                          "must be a positive float32 value");
    cfg->norm_eps = (float)eps;

    TRY(opt_double(r, "rope_theta", 10000.0, &cfg->rope_theta));
    TRY(opt_bool(r, "tie_word_embeddings", false, &cfg->tie_word_embeddings));
    TRY(opt_int(r, "max_position_embeddings", 4096, 1, MAX_POSITIONS,
                &cfg->max_position_embeddings));

    bool attention_bias = false;
    TRY(opt_bool(r, "attention_bias", false, &attention_bias));
    if (attention_bias)
        return fail_value(r, "attention_bias", PP_STATUS_UNSUPPORTED,
                          "= true is not supported (no attention biases)");
    const char *act;
    TRY(opt_string(r, "hidden_act", "silu", &act));
    if (strcmp(act, "silu") != 0)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: hidden_act '%s' is not supported (supported: silu)", r->file, act);
    return PP_STATUS_OK;
}

/* Requires intermediate_size when some layer uses a dense MLP. */
static pp_status require_dense_ffn(const reader *r, const eng_config *cfg)
{
    for (int l = 0; l < cfg->n_layer; l++) {
        if (eng_config_layer_is_moe(cfg, l))
            continue;
        if (cfg->d_ff > 0)
            return PP_STATUS_OK;
        if (!lookup(r, "intermediate_size"))
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: missing required key 'intermediate_size' (layer %d uses a dense "
                            "MLP)",
                            r->file, l);
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: key 'intermediate_size' must be positive (layer %d uses a dense MLP)",
                        r->file, l);
    }
    return PP_STATUS_OK;
}

static bool any_moe_layer(const eng_config *cfg)
{
    for (int l = 0; l < cfg->n_layer; l++)
        if (eng_config_layer_is_moe(cfg, l))
            return true;
    return false;
}

/* Dense configs carry no routing: zero the expert fields so "n_expert == 0" means dense. */
static void clear_moe(eng_config *cfg)
{
    cfg->n_expert = 0;
    cfg->n_expert_used = 0;
    cfg->d_ff_expert = 0;
    cfg->n_shared_experts = 0;
    cfg->n_group = 1;
    cfg->topk_group = 1;
    cfg->routed_scaling_factor = 1.0;
}

static pp_status parse_phi3(const reader *r, eng_config *cfg)
{
    if (cfg->d_model % cfg->n_head != 0)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d)",
                        r->file, cfg->d_model, cfg->n_head);
    cfg->d_head = cfg->d_model / cfg->n_head;
    int head_dim = 0;
    TRY(opt_int(r, "head_dim", cfg->d_head, 1, MAX_DIM, &head_dim));
    if (head_dim != cfg->d_head)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: head_dim (%d) differs from hidden_size / num_attention_heads (%d)",
                        r->file, head_dim, cfg->d_head);
    cfg->d_v = cfg->d_head;

    /* transformers 5 may move partial_rotary_factor into rope_parameters */
    struct json_object *rope_params;
    TRY(opt_object(r, "rope_parameters", &rope_params));
    double prf = 1.0;
    if (rope_params) {
        reader rp = sub_reader(r, rope_params, "rope_parameters");
        TRY(opt_double(&rp, "partial_rotary_factor", 1.0, &prf));
    }
    TRY(opt_double(r, "partial_rotary_factor", prf, &prf));
    if (!(prf > 0.0 && prf <= 1.0))
        return fail_value(r, "partial_rotary_factor", PP_STATUS_BAD_FORMAT,
                          "must be in (0, 1]");
    cfg->partial_rotary_factor = prf;
    cfg->d_rope = (int)(cfg->d_head * prf);
    if (cfg->d_rope < 2 || cfg->d_rope % 2 != 0)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: rotary width int(head_dim %d * partial_rotary_factor %g) = %d must "
                        "be even and >= 2",
                        r->file, cfg->d_head, prf, cfg->d_rope);

    struct json_object *sw = lookup(r, "sliding_window");
    if (sw) {
        if (json_object_is_type(sw, json_type_int) || json_object_is_type(sw, json_type_double))
            return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                            "%s: sliding_window attention is not supported", r->file);
        return fail_type(r, "sliding_window", "null or a number", sw);
    }

    clear_moe(cfg);
    return require_dense_ffn(r, cfg);
}

static pp_status parse_qwen3_moe(const reader *r, eng_config *cfg)
{
    struct json_object *hd = lookup(r, "head_dim");
    if (hd) {
        TRY(int_in_range(r, "head_dim", hd, 1, MAX_DIM, &cfg->d_head));
    } else {
        if (cfg->d_model % cfg->n_head != 0)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: hidden_size (%d) is not a multiple of num_attention_heads (%d) "
                            "and head_dim is absent",
                            r->file, cfg->d_model, cfg->n_head);
        cfg->d_head = cfg->d_model / cfg->n_head;
    }
    if (cfg->d_head % 2 != 0)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT, "%s: head_dim (%d) must be even for RoPE",
                        r->file, cfg->d_head);
    cfg->d_v = cfg->d_head;
    cfg->d_rope = cfg->d_head;

    bool sliding = false;
    TRY(opt_bool(r, "use_sliding_window", false, &sliding));
    if (sliding)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: sliding_window attention is not supported", r->file);
    int shared_width = 0;
    TRY(opt_int(r, "shared_expert_intermediate_size", 0, 0, MAX_DIM, &shared_width));
    if (shared_width != 0)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: shared experts (shared_expert_intermediate_size %d) are not "
                        "supported for qwen3_moe",
                        r->file, shared_width);

    TRY(req_int(r, "num_experts", 0, MAX_DIM, &cfg->n_expert));
    TRY(opt_int(r, "decoder_sparse_step", 1, 1, MAX_LAYERS, &cfg->decoder_sparse_step));
    TRY(opt_bool(r, "norm_topk_prob", false, &cfg->norm_topk_prob));

    struct json_object *mlp_only = lookup(r, "mlp_only_layers");
    if (mlp_only) {
        if (!json_object_is_type(mlp_only, json_type_array))
            return fail_type(r, "mlp_only_layers", "an array of integers", mlp_only);
        size_t n = json_object_array_length(mlp_only);
        int cap = (int)(sizeof cfg->mlp_only_layers / sizeof cfg->mlp_only_layers[0]);
        if (n > (size_t)cap)
            return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                            "%s: mlp_only_layers has %zu entries (at most %d supported)",
                            r->file, n, cap);
        for (size_t i = 0; i < n; i++) {
            char key[48];
            snprintf(key, sizeof key, "mlp_only_layers[%zu]", i);
            struct json_object *v = json_object_array_get_idx(mlp_only, i);
            if (!v)
                return fail_type(r, key, "an integer", v);
            TRY(int_in_range(r, key, v, 0, cfg->n_layer - 1, &cfg->mlp_only_layers[i]));
        }
        cfg->n_mlp_only_layers = (int)n;
    }

    cfg->n_group = 1;
    cfg->topk_group = 1;
    cfg->routed_scaling_factor = 1.0;
    if (any_moe_layer(cfg)) {
        TRY(req_int(r, "num_experts_per_tok", 1, cfg->n_expert, &cfg->n_expert_used));
        TRY(req_int(r, "moe_intermediate_size", 1, MAX_DIM, &cfg->d_ff_expert));
    } else {
        clear_moe(cfg);
    }
    return require_dense_ffn(r, cfg);
}

static pp_status parse_deepseek_v3(const reader *r, eng_config *cfg)
{
    TRY(opt_int(r, "q_lora_rank", 0, 0, MAX_DIM, &cfg->q_lora_rank));
    TRY(req_int(r, "kv_lora_rank", 1, MAX_DIM, &cfg->kv_lora_rank));
    TRY(req_int(r, "qk_nope_head_dim", 1, MAX_DIM, &cfg->d_nope));
    TRY(req_int(r, "qk_rope_head_dim", 1, MAX_DIM, &cfg->d_rope));
    TRY(req_int(r, "v_head_dim", 1, MAX_DIM, &cfg->d_v));
    if (cfg->d_rope % 2 != 0)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT, "%s: qk_rope_head_dim (%d) must be even",
                        r->file, cfg->d_rope);
    cfg->d_head = cfg->d_nope + cfg->d_rope;
    TRY(opt_bool(r, "rope_interleave", true, &cfg->rope_interleave));

    TRY(req_int(r, "n_routed_experts", 0, MAX_DIM, &cfg->n_expert));
    TRY(opt_int(r, "first_k_dense_replace", 0, 0, cfg->n_layer, &cfg->first_k_dense_replace));
    TRY(opt_int(r, "n_shared_experts", 0, 0, MAX_DIM, &cfg->n_shared_experts));
    TRY(opt_int(r, "n_group", 1, 1, MAX_DIM, &cfg->n_group));
    TRY(opt_int(r, "topk_group", 1, 1, MAX_DIM, &cfg->topk_group));
    TRY(opt_double(r, "routed_scaling_factor", 1.0, &cfg->routed_scaling_factor));
    TRY(opt_bool(r, "norm_topk_prob", false, &cfg->norm_topk_prob));

    const char *scoring;
    TRY(opt_string(r, "scoring_func", "sigmoid", &scoring));
    if (strcmp(scoring, "sigmoid") != 0)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: scoring_func '%s' is not supported (supported: sigmoid)", r->file,
                        scoring);
    cfg->scoring_sigmoid = true;
    const char *topk_method;
    TRY(opt_string(r, "topk_method", "noaux_tc", &topk_method));
    if (strcmp(topk_method, "noaux_tc") != 0 && strcmp(topk_method, "greedy") != 0 &&
        strcmp(topk_method, "group_limited_greedy") != 0)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: topk_method '%s' is not supported (supported: noaux_tc, greedy, "
                        "group_limited_greedy)",
                        r->file, topk_method);

    if (any_moe_layer(cfg)) {
        TRY(req_int(r, "num_experts_per_tok", 1, cfg->n_expert, &cfg->n_expert_used));
        TRY(req_int(r, "moe_intermediate_size", 1, MAX_DIM, &cfg->d_ff_expert));
        if (!(cfg->routed_scaling_factor > 0))
            return fail_value(r, "routed_scaling_factor", PP_STATUS_BAD_FORMAT,
                              "must be positive");
        if (cfg->n_expert % cfg->n_group != 0)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: n_routed_experts (%d) is not a multiple of n_group (%d)",
                            r->file, cfg->n_expert, cfg->n_group);
        int per_group = cfg->n_expert / cfg->n_group;
        if (cfg->topk_group > cfg->n_group)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: topk_group (%d) exceeds n_group (%d)", r->file, cfg->topk_group,
                            cfg->n_group);
        /* a group's score is the sum of its top-2 experts (DeepseekV3TopkRouter) */
        if (cfg->n_group > 1 && per_group < 2)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: n_group %d leaves %d expert(s) per group (at least 2 needed)",
                            r->file, cfg->n_group, per_group);
        if (cfg->n_expert_used > cfg->topk_group * per_group)
            return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                            "%s: num_experts_per_tok (%d) exceeds the %d experts of the topk_group "
                            "(%d) selected groups",
                            r->file, cfg->n_expert_used, cfg->topk_group * per_group,
                            cfg->topk_group);
    } else {
        clear_moe(cfg);
    }
    return require_dense_ffn(r, cfg);
}

/* rope_parameters (transformers 5) or rope_scaling. */
static pp_status parse_rope(const reader *r, eng_config *cfg)
{
    cfg->rope_kind = ENG_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_orig_max_pos = cfg->max_position_embeddings;
    cfg->yarn_beta_fast = 32.0;
    cfg->yarn_beta_slow = 1.0;
    cfg->yarn_mscale = 0.0;
    cfg->yarn_mscale_all_dim = 0.0;
    cfg->yarn_attention_factor = -1.0;
    cfg->yarn_truncate = true;

    struct json_object *obj;
    const char *section = "rope_parameters";
    TRY(opt_object(r, section, &obj));
    if (obj) {
        reader rp = sub_reader(r, obj, section);
        TRY(opt_double(&rp, "rope_theta", cfg->rope_theta, &cfg->rope_theta));
    } else {
        section = "rope_scaling";
        TRY(opt_object(r, section, &obj));
    }
    if (!(cfg->rope_theta > 0))
        return fail_value(r, "rope_theta", PP_STATUS_BAD_FORMAT, "must be positive");
    if (!obj)
        return PP_STATUS_OK;

    reader s = sub_reader(r, obj, section);
    const char *type;
    TRY(opt_string(&s, "rope_type", NULL, &type));
    if (!type)
        TRY(opt_string(&s, "type", NULL, &type));
    if (!type)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT, "%s: %s has no 'rope_type' or 'type'",
                        r->file, section);

    if (strcmp(type, "default") == 0)
        return PP_STATUS_OK;
    if (strcmp(type, "linear") != 0 && strcmp(type, "yarn") != 0)
        return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                        "%s: %s type '%s' is not supported (supported: default, linear, yarn)",
                        r->file, section, type);
    TRY(req_double(&s, "factor", &cfg->rope_factor));
    if (!(cfg->rope_factor > 0))
        return fail_value(&s, "factor", PP_STATUS_BAD_FORMAT, "must be positive");
    if (strcmp(type, "linear") == 0) {
        cfg->rope_kind = ENG_ROPE_LINEAR;
        return PP_STATUS_OK;
    }

    cfg->rope_kind = ENG_ROPE_YARN;
    TRY(opt_int(&s, "original_max_position_embeddings", cfg->max_position_embeddings, 1,
                MAX_POSITIONS, &cfg->rope_orig_max_pos));
    TRY(opt_double(&s, "beta_fast", 32.0, &cfg->yarn_beta_fast));
    TRY(opt_double(&s, "beta_slow", 1.0, &cfg->yarn_beta_slow));
    TRY(opt_double(&s, "mscale", 0.0, &cfg->yarn_mscale));
    TRY(opt_double(&s, "mscale_all_dim", 0.0, &cfg->yarn_mscale_all_dim));
    TRY(opt_double(&s, "attention_factor", -1.0, &cfg->yarn_attention_factor));
    TRY(opt_bool(&s, "truncate", true, &cfg->yarn_truncate));
    /* find_correction_dim divides by ln(base) and takes ln(orig / (2 pi beta)) */
    if (!(cfg->rope_theta > 1.0))
        return fail_value(r, "rope_theta", PP_STATUS_BAD_FORMAT, "must exceed 1 for yarn");
    if (!(cfg->yarn_beta_fast > 0))
        return fail_value(&s, "beta_fast", PP_STATUS_BAD_FORMAT, "must be positive");
    if (!(cfg->yarn_beta_slow > 0))
        return fail_value(&s, "beta_slow", PP_STATUS_BAD_FORMAT, "must be positive");
    if (cfg->yarn_mscale < 0)
        return fail_value(&s, "mscale", PP_STATUS_BAD_FORMAT, "must not be negative");
    if (cfg->yarn_mscale_all_dim < 0)
        return fail_value(&s, "mscale_all_dim", PP_STATUS_BAD_FORMAT, "must not be negative");
    if (lookup(&s, "attention_factor") && !(cfg->yarn_attention_factor > 0))
        return fail_value(&s, "attention_factor", PP_STATUS_BAD_FORMAT, "must be positive");
    return PP_STATUS_OK;
}

static pp_status parse_fp8(const reader *q, eng_config *cfg)
{
    const char *fmt;
    TRY(opt_string(q, "fmt", "e4m3", &fmt));
    if (strcmp(fmt, "e4m3") != 0)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: fp8 format '%s' is not supported (supported: e4m3)", q->file, fmt);
    cfg->quant = ENG_QUANT_FP8_BLOCK;
    cfg->quant_block_out = 128;
    cfg->quant_block_in = 128;
    struct json_object *bs;
    if (!json_object_object_get_ex(q->obj, "weight_block_size", &bs))
        return PP_STATUS_OK;
    if (!bs)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: fp8 without weight_block_size (per-tensor scales) is not supported",
                        q->file);
    if (!json_object_is_type(bs, json_type_array) || json_object_array_length(bs) != 2)
        return fail_type(q, "weight_block_size", "an array [block_out, block_in]", bs);
    struct json_object *bo = json_object_array_get_idx(bs, 0);
    struct json_object *bi = json_object_array_get_idx(bs, 1);
    if (!bo || !bi)
        return fail_value(q, "weight_block_size", PP_STATUS_BAD_FORMAT,
                          "must hold two positive integers");
    TRY(int_in_range(q, "weight_block_size[0]", bo, 1, MAX_DIM, &cfg->quant_block_out));
    TRY(int_in_range(q, "weight_block_size[1]", bi, 1, MAX_DIM, &cfg->quant_block_in));
    return PP_STATUS_OK;
}

static pp_status parse_compressed_tensors(const reader *q, eng_config *cfg)
{
    struct json_object *groups;
    TRY(opt_object(q, "config_groups", &groups));
    if (!groups)
        return fail_missing(q, "config_groups");
    int n_groups = json_object_object_length(groups);
    if (n_groups != 1)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: compressed-tensors with %d config_groups is not supported (exactly "
                        "one group)",
                        q->file, n_groups);
    struct json_object *group = NULL;
    const char *group_name = NULL;
    json_object_object_foreach(groups, name, val) {
        group_name = name;
        group = val;
    }
    if (!json_object_is_type(group, json_type_object)) {
        reader gs = sub_reader(q, groups, "quantization_config.config_groups");
        return fail_type(&gs, group_name, "an object", group);
    }
    char section[128];
    snprintf(section, sizeof section, "quantization_config.config_groups.%s", group_name);
    reader g = sub_reader(q, group, section);

    const char *format;
    TRY(opt_string(q, "format", NULL, &format));
    if (!format)
        TRY(opt_string(&g, "format", NULL, &format));
    if (!format || strcmp(format, "pack-quantized") != 0)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: compressed-tensors format '%s' is not supported (supported: "
                        "pack-quantized)",
                        q->file, format ? format : "(absent)");
    struct json_object *acts = lookup(&g, "input_activations");
    if (acts)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: compressed-tensors activation quantization (input_activations) is "
                        "not supported",
                        q->file);

    struct json_object *weights;
    TRY(opt_object(&g, "weights", &weights));
    if (!weights)
        return fail_missing(&g, "weights");
    char wsection[160];
    snprintf(wsection, sizeof wsection, "%s.weights", section);
    reader w = sub_reader(q, weights, wsection);
    int num_bits = 0, group_size = 0;
    const char *type, *strategy;
    bool symmetric = false, dynamic = false;
    TRY(req_int(&w, "num_bits", INT_MIN, INT_MAX, &num_bits));
    TRY(opt_string(&w, "type", NULL, &type));
    TRY(opt_bool(&w, "symmetric", false, &symmetric));
    TRY(opt_string(&w, "strategy", NULL, &strategy));
    TRY(opt_bool(&w, "dynamic", false, &dynamic));
    if (num_bits != 4 || !type || strcmp(type, "int") != 0 || !symmetric || !strategy ||
        strcmp(strategy, "group") != 0 || dynamic)
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: compressed-tensors weights (num_bits %d, type %s, symmetric %s, "
                        "strategy %s%s) are not supported (supported: num_bits 4, type int, "
                        "symmetric true, strategy group)",
                        q->file, num_bits, type ? type : "(absent)", symmetric ? "true" : "false",
                        strategy ? strategy : "(absent)", dynamic ? ", dynamic" : "");
    struct json_object *actorder = lookup(&w, "actorder");
    if (actorder && !(json_object_is_type(actorder, json_type_boolean) &&
                      !json_object_get_boolean(actorder)))
        return eng_fail(q->err, PP_STATUS_UNSUPPORTED,
                        "%s: compressed-tensors activation ordering (actorder) is not supported",
                        q->file);
    TRY(req_int(&w, "group_size", 1, MAX_DIM, &group_size));
    cfg->quant = ENG_QUANT_INT4_GROUP;
    cfg->quant_group = group_size;
    return PP_STATUS_OK;
}

static pp_status parse_quant(const reader *r, eng_config *cfg)
{
    cfg->quant = ENG_QUANT_NONE;
    struct json_object *obj;
    TRY(opt_object(r, "quantization_config", &obj));
    if (!obj)
        return PP_STATUS_OK;
    reader q = sub_reader(r, obj, "quantization_config");
    const char *method;
    TRY(opt_string(&q, "quant_method", NULL, &method));
    if (!method)
        return fail_missing(&q, "quant_method");
    if (strcmp(method, "fp8") == 0)
        return parse_fp8(&q, cfg);
    if (strcmp(method, "compressed-tensors") == 0)
        return parse_compressed_tensors(&q, cfg);
    return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                    "%s: quant_method '%s' is not supported (supported: fp8, compressed-tensors)",
                    r->file, method);
}

/* bos_token_id / eos_token_id when present (non-null); leaves cfg untouched otherwise. */
static pp_status parse_token_ids(const reader *r, eng_config *cfg)
{
    int hi = cfg->n_vocab - 1;
    struct json_object *bos = lookup(r, "bos_token_id");
    if (bos)
        TRY(int_in_range(r, "bos_token_id", bos, 0, hi, &cfg->bos_token_id));

    struct json_object *eos = lookup(r, "eos_token_id");
    if (!eos)
        return PP_STATUS_OK;
    int ids[ENG_MAX_EOS];
    int n = 0;
    if (json_object_is_type(eos, json_type_array)) {
        size_t len = json_object_array_length(eos);
        if (len > ENG_MAX_EOS)
            return eng_fail(r->err, PP_STATUS_UNSUPPORTED,
                            "%s: eos_token_id lists %zu ids (at most %d supported)", r->file, len,
                            ENG_MAX_EOS);
        for (size_t i = 0; i < len; i++) {
            char key[32];
            snprintf(key, sizeof key, "eos_token_id[%zu]", i);
            struct json_object *v = json_object_array_get_idx(eos, i);
            if (!v)
                return fail_type(r, key, "an integer", v);
            TRY(int_in_range(r, key, v, 0, hi, &ids[n]));
            n++;
        }
    } else if (json_object_is_type(eos, json_type_int) ||
               json_object_is_type(eos, json_type_double)) {
        TRY(int_in_range(r, "eos_token_id", eos, 0, hi, &ids[0]));
        n = 1;
    } else {
        return fail_type(r, "eos_token_id", "an integer or an array of integers", eos);
    }
    cfg->n_eos = n;
    for (int i = 0; i < ENG_MAX_EOS; i++)
        cfg->eos_token_ids[i] = i < n ? ids[i] : -1;
    return PP_STATUS_OK;
}

/* Cross-field limits that keep products of dimensions bounded. */
static pp_status validate(const reader *r, const eng_config *cfg)
{
    if (cfg->d_head > MAX_DIM || (int64_t)cfg->n_head * cfg->d_head > MAX_DIM ||
        (int64_t)cfg->n_head * cfg->d_v > MAX_DIM)
        return eng_fail(r->err, PP_STATUS_BAD_FORMAT,
                        "%s: attention width (%d heads x %d) exceeds %d", r->file, cfg->n_head,
                        cfg->d_head > cfg->d_v ? cfg->d_head : cfg->d_v, MAX_DIM);
    if (cfg->d_rope > cfg->d_head)
        return eng_fail(r->err, PP_STATUS_INTERNAL, "%s: d_rope %d exceeds d_head %d", r->file,
                        cfg->d_rope, cfg->d_head);
    return PP_STATUS_OK;
}

static pp_status parse_root(struct json_object *root, eng_config *cfg, eng_err *err)
{
    reader r = {root, CONFIG_FILE, NULL, err};
    const char *model_type;
    TRY(opt_string(&r, "model_type", NULL, &model_type));
    if (!model_type)
        return fail_missing(&r, "model_type");
    if (strcmp(model_type, "kimi_k2") == 0 || strcmp(model_type, "deepseek_v3") == 0)
        cfg->arch = ENG_ARCH_DEEPSEEK_V3;
    else if (strcmp(model_type, "qwen3_moe") == 0)
        cfg->arch = ENG_ARCH_QWEN3_MOE;
    else if (strcmp(model_type, "phi3") == 0)
        cfg->arch = ENG_ARCH_PHI3;
    else
        return eng_fail(err, PP_STATUS_UNSUPPORTED,
                        "%s: unsupported model_type '%.64s' (supported: kimi_k2, deepseek_v3, "
                        "qwen3_moe, phi3)",
                        CONFIG_FILE, model_type);
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", model_type);

    cfg->partial_rotary_factor = 1.0;
    cfg->bos_token_id = -1;
    cfg->n_eos = 0;
    for (int i = 0; i < ENG_MAX_EOS; i++)
        cfg->eos_token_ids[i] = -1;

    TRY(parse_common(&r, cfg));
    switch (cfg->arch) {
    case ENG_ARCH_DEEPSEEK_V3: TRY(parse_deepseek_v3(&r, cfg)); break;
    case ENG_ARCH_QWEN3_MOE: TRY(parse_qwen3_moe(&r, cfg)); break;
    case ENG_ARCH_PHI3: TRY(parse_phi3(&r, cfg)); break;
    }
    TRY(parse_rope(&r, cfg));
    TRY(parse_quant(&r, cfg));
    TRY(parse_token_ids(&r, cfg));
    return validate(&r, cfg);
}

pp_status eng_config_parse(const char *json_text, size_t len, eng_config *cfg, eng_err *err)
{
    if (!cfg)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_config_parse: cfg is NULL");
    memset(cfg, 0, sizeof *cfg);
    struct json_object *root;
    pp_status st = parse_json_object(json_text, len, CONFIG_FILE, &root, err);
    if (st != PP_STATUS_OK)
        return st;
    st = parse_root(root, cfg, err);
    json_object_put(root);
    return st;
}

/* ---- files ----------------------------------------------------------------------------------- */

/* Applies DIR/generation_config.json's token ids when the file exists. */
static pp_status load_generation_config(const char *dir, eng_config *cfg, eng_err *err)
{
    char *path = eng_path_join(dir, GENERATION_FILE);
    if (!path)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    char *text;
    size_t len;
    pp_status st = eng_read_file(path, MAX_CONFIG_BYTES, &text, &len, err);
    free(path);
    if (st == PP_STATUS_NOT_FOUND)
        return PP_STATUS_OK;
    if (st != PP_STATUS_OK)
        return st;
    struct json_object *root;
    st = parse_json_object(text, len, GENERATION_FILE, &root, err);
    free(text);
    if (st == PP_STATUS_OK) {
        reader r = {root, GENERATION_FILE, NULL, err};
        st = parse_token_ids(&r, cfg);
        json_object_put(root);
    }
    if (st != PP_STATUS_OK)
        eng_err_prefix(err, "%s", dir);
    return st;
}

pp_status eng_config_load(const char *dir, eng_config *cfg, eng_err *err)
{
    if (!dir || !cfg)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_config_load: NULL argument");
    char *path = eng_path_join(dir, CONFIG_FILE);
    if (!path)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    char *text;
    size_t len;
    pp_status st = eng_read_file(path, MAX_CONFIG_BYTES, &text, &len, err);
    free(path);
    if (st == PP_STATUS_NOT_FOUND)
        return eng_fail(err, PP_STATUS_NOT_FOUND, "%s is not a model directory: no config.json",
                        dir);
    if (st != PP_STATUS_OK)
        return st;
    st = eng_config_parse(text, len, cfg, err);
    free(text);
    if (st != PP_STATUS_OK) {
        eng_err_prefix(err, "%s", dir);
        return st;
    }
    return load_generation_config(dir, cfg, err);
}

const char *eng_arch_name(eng_arch arch)
{
    switch (arch) {
    case ENG_ARCH_DEEPSEEK_V3: return "deepseek_v3";
    case ENG_ARCH_QWEN3_MOE: return "qwen3_moe";
    case ENG_ARCH_PHI3: return "phi3";
    }
    return "unknown";
}

bool eng_config_layer_is_moe(const eng_config *cfg, int layer)
{
    if (!cfg || layer < 0 || layer >= cfg->n_layer || cfg->n_expert <= 0)
        return false;
    switch (cfg->arch) {
    case ENG_ARCH_DEEPSEEK_V3: return layer >= cfg->first_k_dense_replace;
    case ENG_ARCH_QWEN3_MOE:
        if (cfg->decoder_sparse_step <= 0)
            return false;
        for (int i = 0; i < cfg->n_mlp_only_layers; i++)
            if (cfg->mlp_only_layers[i] == layer)
                return false;
        return (layer + 1) % cfg->decoder_sparse_step == 0;
    case ENG_ARCH_PHI3: return false;
    }
    return false;
}
