/* registry.c: the built-in key table, finding a key's checkpoint on disk (PARAPHYM_MODEL_PATH,
 * the Hugging Face cache, the embedded model) and the parameter / memory estimates.
 *
 * Invariant: nothing here keeps state between calls; every figure is recomputed from the config
 * and safetensors headers on disk.
 */
#include "registry.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "safetensors.h"
#include "sampler.h"
#include "workspace.h"

/* ---- built-in keys --------------------------------------------------------------------------- */

static const reg_entry entries[] = {
    {"moonshot/kimi-k2", "moonshotai/Kimi-K2-Instruct", ENG_ARCH_DEEPSEEK_V3,
     "Kimi K2 Instruct (0711): 1.03T-parameter MoE, 32B active, FP8 block-quantized", false},
    {"moonshot/kimi-k2-0905", "moonshotai/Kimi-K2-Instruct-0905", ENG_ARCH_DEEPSEEK_V3,
     "Kimi K2 Instruct 0905: 256K context, FP8 block-quantized", false},
    {"moonshot/kimi-k2-thinking", "moonshotai/Kimi-K2-Thinking", ENG_ARCH_DEEPSEEK_V3,
     "Kimi K2 Thinking: reasoning model, INT4 (group 32) routed experts", false},
    {"qwen/qwen3-coder", "Qwen/Qwen3-Coder-480B-A35B-Instruct", ENG_ARCH_QWEN3_MOE,
     "Qwen3-Coder 480B-A35B Instruct: 480B-parameter MoE, 35B active, bf16", false},
    {"qwen/qwen3-coder-fp8", "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", ENG_ARCH_QWEN3_MOE,
     "Qwen3-Coder 480B-A35B Instruct, FP8 block-quantized release", false},
    {"qwen/qwen3-coder-30b-a3b", "Qwen/Qwen3-Coder-30B-A3B-Instruct", ENG_ARCH_QWEN3_MOE,
     "Qwen3-Coder 30B-A3B Instruct: 30.5B-parameter MoE, 3.3B active, bf16", false},
    {"qwen/qwen3-coder-30b-a3b-fp8", "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8", ENG_ARCH_QWEN3_MOE,
     "Qwen3-Coder 30B-A3B Instruct, FP8 block-quantized release", false},
    {"microsoft/phi-4-reasoning", "microsoft/Phi-4-reasoning", ENG_ARCH_PHI3,
     "Phi-4-reasoning: 14.7B dense reasoning model, bf16", false},
    {"microsoft/phi-4-reasoning-plus", "microsoft/Phi-4-reasoning-plus", ENG_ARCH_PHI3,
     "Phi-4-reasoning-plus: Phi-4-reasoning with further RL training, bf16", false},
    {"paraphym/qwen3-coder-nano", NULL, ENG_ARCH_QWEN3_MOE,
     "7M-parameter Qwen3-MoE trained for tests, shipped with paraphym", true},
    {"paraphym/phi-4-reasoning-nano", NULL, ENG_ARCH_PHI3,
     "7M-parameter Phi-3 architecture model trained for tests", false},
    {"paraphym/kimi-k2-nano", NULL, ENG_ARCH_DEEPSEEK_V3,
     "6M-parameter DeepSeek-V3 architecture model trained for tests", false},
};

#define N_ENTRIES (sizeof entries / sizeof entries[0])

size_t reg_count(void) { return N_ENTRIES; }

const reg_entry *reg_at(size_t i) { return i < N_ENTRIES ? &entries[i] : NULL; }

const reg_entry *reg_find(const char *key)
{
    if (!key)
        return NULL;
    for (size_t i = 0; i < N_ENTRIES; i++)
        if (strcmp(entries[i].key, key) == 0)
            return &entries[i];
    return NULL;
}

/* ---- messages -------------------------------------------------------------------------------- */

/* A message being built in a caller's buffer (which may be NULL); appends truncate silently. */
typedef struct msgbuf {
    char *buf;
    size_t cap, len;
} msgbuf;

static msgbuf msg_start(char *buf, size_t cap)
{
    msgbuf m = {cap > 0 ? buf : NULL, cap, 0};
    if (m.buf)
        m.buf[0] = '\0';
    return m;
}

static void msg_add(msgbuf *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void msg_add(msgbuf *m, const char *fmt, ...)
{
    if (!m->buf || m->len + 1 >= m->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->buf + m->len, m->cap - m->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        m->len = m->len + (size_t)n < m->cap ? m->len + (size_t)n : m->cap - 1;
}

/* ---- paths ----------------------------------------------------------------------------------- */

/* Large enough for any path this module builds; longer ones are reported, never truncated. */
#define PATH_CAP 4096

/* snprintf into out; INVALID_ARG when it does not fit. */
static pp_status path_fmt(char *out, size_t out_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static pp_status path_fmt(char *out, size_t out_len, const char *fmt, ...)
{
    if (!out || out_len == 0)
        return PP_STATUS_INVALID_ARG;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, out_len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= out_len) {
        out[0] = '\0';
        return PP_STATUS_INVALID_ARG;
    }
    return PP_STATUS_OK;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && v[0] ? v : NULL;
}

/* True when dir/config.json is a regular file. */
static bool has_config(const char *dir)
{
    char path[PATH_CAP];
    struct stat sb;
    if (path_fmt(path, sizeof path, "%s/config.json", dir) != PP_STATUS_OK)
        return false;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

pp_status reg_key_folder(const char *key, char *out, size_t out_len)
{
    if (!key || !out || out_len == 0)
        return PP_STATUS_INVALID_ARG;
    size_t n = 0;
    for (const char *p = key; *p; p++) {
        const char *piece = *p == '/' ? "--" : NULL;
        size_t len = piece ? 2 : 1;
        if (n + len >= out_len) {
            out[0] = '\0';
            return PP_STATUS_INVALID_ARG;
        }
        if (piece) {
            memcpy(out + n, piece, 2);
        } else {
            out[n] = *p;
        }
        n += len;
    }
    out[n] = '\0';
    return PP_STATUS_OK;
}

pp_status reg_hub_cache_dir(char *out, size_t out_len)
{
    const char *v;
    if ((v = env_nonempty("HF_HUB_CACHE")))
        return path_fmt(out, out_len, "%s", v);
    if ((v = env_nonempty("HF_HOME")))
        return path_fmt(out, out_len, "%s/hub", v);
    if ((v = env_nonempty("XDG_CACHE_HOME")))
        return path_fmt(out, out_len, "%s/huggingface/hub", v);
    if ((v = env_nonempty("HOME")))
        return path_fmt(out, out_len, "%s/.cache/huggingface/hub", v);
    if (out && out_len > 0)
        out[0] = '\0';
    return PP_STATUS_NOT_FOUND;
}

pp_status reg_repo_cache_dir(const char *hf_repo, char *out, size_t out_len)
{
    if (!hf_repo || !out || out_len == 0)
        return PP_STATUS_INVALID_ARG;
    const char *slash = strchr(hf_repo, '/');
    if (!slash || slash == hf_repo || !slash[1] || strchr(slash + 1, '/')) {
        out[0] = '\0';
        return PP_STATUS_INVALID_ARG;
    }
    char hub[PATH_CAP];
    pp_status st = reg_hub_cache_dir(hub, sizeof hub);
    if (st != PP_STATUS_OK) {
        out[0] = '\0';
        return st;
    }
    return path_fmt(out, out_len, "%s/models--%.*s--%s", hub, (int)(slash - hf_repo), hf_repo,
                    slash + 1);
}

/* Reads <repo_dir>/refs/main into rev (a commit hash or tag), whitespace stripped. false (with
 * the reason in why) when missing, empty, too long or naming a path. */
static bool read_ref_main(const char *repo_dir, char *rev, size_t rev_len, const char **why)
{
    char path[PATH_CAP];
    if (path_fmt(path, sizeof path, "%s/refs/main", repo_dir) != PP_STATUS_OK) {
        *why = "path too long";
        return false;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        *why = is_dir(repo_dir) ? "no refs/main" : "not present";
        return false;
    }
    size_t n = fread(rev, 1, rev_len - 1, f);
    bool overflow = n == rev_len - 1 && fgetc(f) != EOF;
    fclose(f);
    rev[n] = '\0';
    while (n > 0 && isspace((unsigned char)rev[n - 1]))
        rev[--n] = '\0';
    size_t skip = 0;
    while (skip < n && isspace((unsigned char)rev[skip]))
        skip++;
    memmove(rev, rev + skip, n - skip + 1);
    if (overflow || !rev[0] || strchr(rev, '/') || strcmp(rev, ".") == 0 || strcmp(rev, "..") == 0) {
        *why = "refs/main is empty or malformed";
        return false;
    }
    return true;
}

/* Copies a found directory into the caller's buffer. */
static pp_status found(const char *path, char *dir, size_t dir_len, char *msg, size_t msg_len)
{
    if (path_fmt(dir, dir_len, "%s", path) != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "model directory %s does not fit in a buffer of %zu bytes", path,
                dir_len);
        return PP_STATUS_INVALID_ARG;
    }
    return PP_STATUS_OK;
}

pp_status reg_resolve_dir(const char *key, const char *embedded_dir, char *dir, size_t dir_len,
                          char *msg, size_t msg_len)
{
    if (dir && dir_len > 0)
        dir[0] = '\0';
    if (!key || !dir || dir_len == 0) {
        eng_msgf(msg, msg_len, "reg_resolve_dir: %s is NULL or empty",
                !key ? "the key" : "the output buffer");
        return PP_STATUS_INVALID_ARG;
    }
    const reg_entry *e = reg_find(key);
    if (!e) {
        msgbuf m = msg_start(msg, msg_len);
        msg_add(&m, "unknown model key '%s'; known keys:", key);
        for (size_t i = 0; i < N_ENTRIES; i++)
            msg_add(&m, "%s %s", i ? "," : "", entries[i].key);
        msg_add(&m, " (any other checkpoint directory can be registered by path)");
        return PP_STATUS_NOT_FOUND;
    }
    char folder[256];
    if (reg_key_folder(key, folder, sizeof folder) != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "model key '%s' is too long", key);
        return PP_STATUS_INVALID_ARG;
    }
    /* Everything searched, for the NOT_FOUND message. */
    char searched[PATH_CAP * 2];
    msgbuf s = msg_start(searched, sizeof searched);
    char path[PATH_CAP];

    /* 1. PARAPHYM_MODEL_PATH */
    const char *mp = env_nonempty("PARAPHYM_MODEL_PATH");
    if (!mp)
        msg_add(&s, "\n  PARAPHYM_MODEL_PATH: not set");
    for (const char *p = mp; p && *p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *next = end ? end + 1 : p + len;
        while (len > 1 && p[len - 1] == '/') /* "a/" -> "a" so paths print cleanly */
            len--;
        if (len > 0) {
            if (path_fmt(path, sizeof path, "%.*s/%s", (int)len, p, folder) != PP_STATUS_OK) {
                msg_add(&s, "\n  %.*s/%s (PARAPHYM_MODEL_PATH): path too long", (int)len, p, folder);
            } else if (has_config(path)) {
                return found(path, dir, dir_len, msg, msg_len);
            } else {
                msg_add(&s, "\n  %s (PARAPHYM_MODEL_PATH): %s", path,
                        is_dir(path) ? "no config.json" : "not present");
            }
        }
        p = next;
    }

    /* 2. the Hugging Face cache */
    if (e->hf_repo) {
        char repo_dir[PATH_CAP];
        pp_status st = reg_repo_cache_dir(e->hf_repo, repo_dir, sizeof repo_dir);
        if (st == PP_STATUS_NOT_FOUND) {
            msg_add(&s, "\n  Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, "
                        "HOME is set");
        } else if (st != PP_STATUS_OK) {
            msg_add(&s, "\n  Hugging Face cache for %s: path too long", e->hf_repo);
        } else {
            char rev[128];
            const char *why = NULL;
            if (!read_ref_main(repo_dir, rev, sizeof rev, &why)) {
                msg_add(&s, "\n  %s/snapshots/<refs/main> (Hugging Face cache): %s", repo_dir, why);
            } else if (path_fmt(path, sizeof path, "%s/snapshots/%s", repo_dir, rev) != PP_STATUS_OK) {
                msg_add(&s, "\n  %s/snapshots/%s (Hugging Face cache): path too long", repo_dir, rev);
            } else if (has_config(path)) {
                return found(path, dir, dir_len, msg, msg_len);
            } else {
                msg_add(&s, "\n  %s (Hugging Face cache, refs/main): %s", path,
                        is_dir(path) ? "no config.json" : "snapshot not present");
            }
        }
    }

    /* 3. the embedded model */
    if (e->embedded && embedded_dir) {
        if (has_config(embedded_dir))
            return found(embedded_dir, dir, dir_len, msg, msg_len);
        msg_add(&s, "\n  %s (embedded model): %s", embedded_dir,
                is_dir(embedded_dir) ? "no config.json" : "not present");
    } else if (e->embedded) {
        msg_add(&s, "\n  embedded model: no directory given");
    }

    msgbuf m = msg_start(msg, msg_len);
    msg_add(&m, "model '%s' not found; searched:%s", key, searched);
    if (e->hf_repo)
        msg_add(&m, "\n(download it with `huggingface-cli download %s`, or put it in a "
                    "PARAPHYM_MODEL_PATH directory as %s/)", e->hf_repo, folder);
    else
        msg_add(&m, "\n(put it in a PARAPHYM_MODEL_PATH directory as %s/)", folder);
    return PP_STATUS_NOT_FOUND;
}

/* ---- parameter counts ------------------------------------------------------------------------ */

/* Attention parameters of one layer, its norms included (HF module trees, MODELS.md 1.6, 2.3, 3.3). */
static uint64_t attn_params(const eng_config *c)
{
    uint64_t D = (uint64_t)c->d_model, H = (uint64_t)c->n_head, Hkv = (uint64_t)c->n_head_kv;
    switch (c->arch) {
    case ENG_ARCH_DEEPSEEK_V3: {
        uint64_t d_qk = (uint64_t)(c->d_nope + c->d_rope), r = (uint64_t)c->kv_lora_rank;
        uint64_t q = c->q_lora_rank > 0
                         ? D * (uint64_t)c->q_lora_rank + (uint64_t)c->q_lora_rank /* q_a + norm */
                               + (uint64_t)c->q_lora_rank * H * d_qk              /* q_b */
                         : D * H * d_qk;                                          /* q_proj */
        return q + D * (r + (uint64_t)c->d_rope) /* kv_a_proj_with_mqa */
               + r                               /* kv_a_layernorm */
               + r * H * (uint64_t)(c->d_nope + c->d_v) /* kv_b_proj */
               + H * (uint64_t)c->d_v * D;       /* o_proj */
    }
    case ENG_ARCH_QWEN3_MOE: {
        uint64_t dh = (uint64_t)c->d_head;
        return D * H * dh + 2 * D * Hkv * dh /* q, k, v */
               + H * dh * D                  /* o */
               + 2 * dh;                     /* q_norm, k_norm */
    }
    case ENG_ARCH_PHI3: {
        uint64_t dh = (uint64_t)c->d_head;
        return D * (H + 2 * Hkv) * dh /* qkv_proj */
               + H * dh * D;          /* o_proj */
    }
    }
    return 0;
}

void reg_count_params(const eng_config *c, reg_params *out)
{
    memset(out, 0, sizeof *out);
    uint64_t D = (uint64_t)c->d_model;
    uint64_t emb = (uint64_t)c->n_vocab * D * (c->tie_word_embeddings ? 1 : 2);
    uint64_t total = emb + D; /* + final norm */
    uint64_t active = total;
    uint64_t expert = 3 * D * (uint64_t)c->d_ff_expert; /* gate, up, down */
    for (int l = 0; l < c->n_layer; l++) {
        uint64_t shared = attn_params(c) + 2 * D; /* + input / post-attention norms */
        if (eng_config_layer_is_moe(c, l)) {
            shared += (uint64_t)c->n_expert * D;                          /* router */
            shared += expert * (uint64_t)c->n_shared_experts;             /* shared experts */
            total += shared + expert * (uint64_t)c->n_expert;
            active += shared + expert * (uint64_t)c->n_expert_used;
            if (c->arch == ENG_ARCH_DEEPSEEK_V3)
                out->buffers += (uint64_t)c->n_expert; /* e_score_correction_bias */
        } else {
            shared += 3 * D * (uint64_t)c->d_ff;
            total += shared;
            active += shared;
        }
    }
    out->total = total;
    out->active = active;
    out->embedding = emb;
}

/* ---- memory estimate ------------------------------------------------------------------------- */

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static uint64_t ceil_mib(uint64_t bytes) { return (bytes + (1u << 20) - 1) >> 20; }

/* Bytes of the CPU backend's own scratch (backend_cpu.c) for forwards of up to n_batch tokens
 * over a cache of n_ctx: every thread's buffer sized for the largest of a matmul's dequantized
 * rows, one attention row of scores, the absorbed-MLA per-head matrices; plus the routed-expert
 * gather buffers cpu_moe_experts allocates for the whole batch. */
/* Whether any layer of c has routed experts. */
static bool any_moe_layer(const eng_config *c)
{
    for (int l = 0; l < c->n_layer; l++)
        if (eng_config_layer_is_moe(c, l))
            return true;
    return false;
}

/* The widest input (n_in) of any linear weight the forward runs as a matmul op: the embedding
 * width, o_proj (d_v = d_head outside DeepSeek), the MLA low-rank inputs, a dense MLP's down or a
 * shared expert's (routed experts run inside the experts op). */
static uint64_t widest_linear_in(const eng_config *c)
{
    uint64_t widest = max_u64((uint64_t)c->d_model, (uint64_t)c->n_head * (uint64_t)c->d_v);
    widest = max_u64(widest, (uint64_t)c->q_lora_rank);
    widest = max_u64(widest, (uint64_t)c->kv_lora_rank);
    bool any_dense = false;
    for (int l = 0; l < c->n_layer; l++)
        any_dense = any_dense || !eng_config_layer_is_moe(c, l);
    if (any_dense)
        widest = max_u64(widest, (uint64_t)c->d_ff);
    if (any_moe_layer(c))
        widest = max_u64(widest, (uint64_t)c->d_ff_expert *
                                     (uint64_t)(c->n_shared_experts > 1 ? c->n_shared_experts : 1));
    return widest;
}

static uint64_t backend_scratch_bytes(const eng_config *c, int n_ctx, int n_batch, int n_threads)
{
    uint64_t D = (uint64_t)c->d_model;
    uint64_t widest = widest_linear_in(c);
    bool any_moe = any_moe_layer(c);
    uint64_t per_thread = max_u64((uint64_t)REG_CPU_MATMUL_ROWS * widest, (uint64_t)n_ctx);
    if (c->arch == ENG_ARCH_DEEPSEEK_V3) { /* absorbed MLA: W_UK_h, W_UV_h, q/o latents, scores */
        uint64_t r = (uint64_t)c->kv_lora_rank;
        per_thread = max_u64(per_thread, (uint64_t)(c->d_nope + c->d_v) * r + 2 * r + (uint64_t)n_ctx);
    }
    uint64_t floats = per_thread * (uint64_t)n_threads;
    if (any_moe) {
        uint64_t T = (uint64_t)n_batch;
        floats += 2 * T * D + 2 * T * (uint64_t)c->d_ff_expert /* gathered x, y, g, u */
                  + 2 * T                                      /* token ids, weights */
                  + 2 * (uint64_t)c->n_expert;                 /* router probabilities */
    }
    return floats * sizeof(float);
}

/* The most device workspace the CUDA backend of a bf16-mode worker holds for forwards of up to
 * n_tokens tokens. It keeps one buffer for the largest of its ops' needs (kernels/workspace.h's
 * attention, MLA, MoE and top-k bounds, and matmul_bf16's bf16 copy of a product's input: n_tokens
 * rows of the widest input, padded to 8 columns), grown to half again the need whenever a need
 * exceeds it (backend_cuda.c's scratch_reserve), so up to 1.5 times the largest need; plus the
 * cuBLAS workspace of the bf16 products. */
static uint64_t cuda_workspace_bytes(const eng_config *c, int n_tokens)
{
    uint64_t ws = 0;
    if (c->arch == ENG_ARCH_DEEPSEEK_V3) /* absorbed MLA (the pool's form) */
        ws = kern_mla_workspace_max(n_tokens, c->n_head, c->kv_lora_rank);
    else
        ws = kern_attention_workspace_max(c->d_v);
    if (any_moe_layer(c))
        ws = max_u64(ws, kern_moe_workspace_max(n_tokens, c->d_model, c->d_ff_expert, c->n_expert,
                                                c->n_expert_used, 0));
    ws = max_u64(ws, kern_topk_workspace_max()); /* the sampling candidates' split rows */
    ws = max_u64(ws, (uint64_t)n_tokens * ((widest_linear_in(c) + 7) / 8 * 8) * 2);
    return ws + ws / 2 + REG_CUDA_ALLOC_ROUND + REG_CUDA_BLAS_WORKSPACE_BYTES;
}

pp_status reg_estimate_config(const eng_config *cfg, uint64_t weight_bytes, uint64_t n_tensors, int n_ctx,
                              int n_batch, int n_threads, reg_model_info *out)
{
    memset(out, 0, sizeof *out);
    if (!cfg || n_ctx <= 0 || n_batch <= 0)
        return PP_STATUS_INVALID_ARG;
    if (n_threads <= 0) { /* as eng_backend_cpu_create */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256)
        n_threads = 256;
    uint64_t kv = 0, scratch = 0;
    pp_status st = eng_session_bytes(cfg, ENG_MLA_ABSORBED, n_ctx, n_batch, &kv, &scratch);
    if (st != PP_STATUS_OK)
        return st;
    out->arch = cfg->arch;
    out->family = eng_arch_name(cfg->arch);
    snprintf(out->model_type, sizeof out->model_type, "%s", cfg->model_type);
    reg_count_params(cfg, &out->params);
    out->n_ctx = n_ctx;
    out->n_batch = n_batch;
    out->n_threads = n_threads;
    out->weight_bytes = weight_bytes;
    out->kv_bytes = kv;
    out->act_bytes = scratch + backend_scratch_bytes(cfg, n_ctx, n_batch, n_threads);
    /* the batch's host rows: logits, and sampling candidates (ENG_TOPK_MAX logits and ids) */
    uint64_t batch_host = (uint64_t)REG_MAX_BATCH * ((uint64_t)cfg->n_vocab * sizeof(float) +
                                                    (uint64_t)ENG_TOPK_MAX * (sizeof(float) + sizeof(int32_t)));
    out->overhead_bytes = REG_WORKER_OVERHEAD_BYTES + (uint64_t)n_threads * REG_THREAD_OVERHEAD_BYTES + batch_host;

    out->cpu_first.host_mb = ceil_mib(weight_bytes + kv + out->act_bytes + out->overhead_bytes);
    out->cpu_second.host_mb = ceil_mib(kv + out->act_bytes + out->overhead_bytes);

    out->n_tensors = n_tensors;
    out->gpu_kv_bytes = kv / 2; /* bf16 elements (GPU workers run the bf16 mode) */
    out->gpu_workspace_bytes = cuda_workspace_bytes(cfg, n_batch > REG_MAX_BATCH ? n_batch : REG_MAX_BATCH);
    out->gpu_act_bytes = scratch + out->gpu_workspace_bytes;
    out->gpu_first.vram_mb = ceil_mib(weight_bytes + n_tensors * REG_CUDA_ALLOC_ROUND + out->gpu_kv_bytes +
                                      out->gpu_act_bytes + REG_CUDA_DEVICE_RESERVE_BYTES);
    out->gpu_second.vram_mb = ceil_mib(out->gpu_kv_bytes + out->gpu_act_bytes);
    out->gpu_first.host_mb = ceil_mib(REG_WORKER_OVERHEAD_BYTES + batch_host + REG_CUDA_HOST_RESERVE_BYTES);
    out->gpu_second.host_mb = out->gpu_first.host_mb;
    return PP_STATUS_OK;
}

/* Names the stored dtypes of a tensor set, most bytes first, joined by '+'. */
static void describe_dtypes(const eng_st_set *set, char *out, size_t out_len)
{
    enum { N_DT = ENG_DTYPE_BOOL + 1 };
    uint64_t bytes[N_DT] = {0};
    for (size_t i = 0; i < eng_st_count(set); i++) {
        const eng_st_tensor *t = eng_st_at(set, i);
        if ((int)t->dtype >= 0 && (int)t->dtype < N_DT)
            bytes[t->dtype] += t->n_bytes;
    }
    msgbuf m = msg_start(out, out_len);
    for (;;) {
        int best = -1;
        for (int d = 0; d < N_DT; d++)
            if (bytes[d] > 0 && (best < 0 || bytes[d] > bytes[best]))
                best = d;
        if (best < 0)
            break;
        msg_add(&m, "%s%s", m.len ? "+" : "", eng_dtype_name((eng_dtype)best));
        bytes[best] = 0;
    }
}

pp_status reg_estimate(const char *model_dir, int n_ctx, int n_batch, int n_threads,
                       reg_model_info *out, char *msg, size_t msg_len)
{
    memset(out, 0, sizeof *out);
    if (!model_dir) {
        eng_msgf(msg, msg_len, "reg_estimate: no model directory given");
        return PP_STATUS_INVALID_ARG;
    }
    if (n_ctx <= 0 || n_batch <= 0) {
        eng_msgf(msg, msg_len, "estimate for %s: n_ctx (%d) and n_batch (%d) must be positive",
                model_dir, n_ctx, n_batch);
        return PP_STATUS_INVALID_ARG;
    }
    eng_err err = {{0}};
    eng_config cfg;
    pp_status st = eng_config_load(model_dir, &cfg, &err);
    if (st != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "%s", err.msg);
        return st;
    }
    eng_st_set *set = NULL;
    if ((st = eng_st_open_dir(model_dir, &set, &err)) != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "%s", err.msg);
        return st;
    }
    uint64_t weight_bytes = eng_st_total_bytes(set), n_tensors = eng_st_count(set);
    char dtypes[sizeof out->weight_dtypes];
    describe_dtypes(set, dtypes, sizeof dtypes);
    eng_st_set_close(set);
    st = reg_estimate_config(&cfg, weight_bytes, n_tensors, n_ctx, n_batch, n_threads, out);
    if (st != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "estimate for %s failed (%s)", model_dir, pp_status_str(st));
        return st;
    }
    memcpy(out->weight_dtypes, dtypes, sizeof dtypes);
    return PP_STATUS_OK;
}
