/* test_registry.c: the model registry: the built-in key table, finding a key's weights
 * (PARAPHYM_MODEL_PATH, the Hugging Face cache, the embedded model, and the NOT_FOUND message),
 * parameter counts (the full-size models against MODELS.md, the nano models against their
 * safetensors and reference.json), and the honesty of the memory estimate: for each nano model the
 * estimated host MB of one CPU worker is within 20% of the resident memory loading it and running
 * a forward actually adds (measured in a fresh process), and likewise for a second worker.
 *
 * Usage: test_registry QWEN_NANO_DIR [OTHER_NANO_DIR ...]
 *   QWEN_NANO_DIR is required (models/qwen3_coder_nano); the others (the shared nano fixtures)
 *   are skipped with a note when missing. Exit 0 on success, 1 on failure.
 * Internal mode: test_registry --measure-worker DIR N_CTX N_BATCH N_THREADS measures one worker
 *   and a second of the same model in a fresh process (see measure_worker_main).
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "model.h"
#include "registry.h"
#include "safetensors.h"
#include "sampler.h"

static int n_fail;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            n_fail++;                                                                              \
        }                                                                                          \
    } while (0)

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* The honesty check's shape: the whole cache is written by one forward of n_ctx tokens. */
#define HONEST_N_CTX 256
#define HONEST_N_BATCH 256
/* The bound: estimate within 20% of the measured growth. */
#define HONEST_TOLERANCE 0.20

/* ---- files ----------------------------------------------------------------------------------- */

static void mkdirs(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        CHECK(0, "mkdir %s: %s", tmp, strerror(errno));
}

static void write_file(const char *path, const char *text)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        mkdirs(dir);
    }
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                    continue;
                char child[PATH_MAX];
                snprintf(child, sizeof child, "%s/%s", path, de->d_name);
                remove_tree(child);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static bool dir_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* ---- 1. the key table ------------------------------------------------------------------------ */

static const struct {
    const char *key, *repo;
    eng_arch arch;
} expected_keys[] = {
    {"moonshot/kimi-k2", "moonshotai/Kimi-K2-Instruct", ENG_ARCH_DEEPSEEK_V3},
    {"moonshot/kimi-k2-0905", "moonshotai/Kimi-K2-Instruct-0905", ENG_ARCH_DEEPSEEK_V3},
    {"moonshot/kimi-k2-thinking", "moonshotai/Kimi-K2-Thinking", ENG_ARCH_DEEPSEEK_V3},
    {"qwen/qwen3-coder", "Qwen/Qwen3-Coder-480B-A35B-Instruct", ENG_ARCH_QWEN3_MOE},
    {"qwen/qwen3-coder-fp8", "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", ENG_ARCH_QWEN3_MOE},
    {"qwen/qwen3-coder-30b-a3b", "Qwen/Qwen3-Coder-30B-A3B-Instruct", ENG_ARCH_QWEN3_MOE},
    {"qwen/qwen3-coder-30b-a3b-fp8", "Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8", ENG_ARCH_QWEN3_MOE},
    {"microsoft/phi-4-reasoning", "microsoft/Phi-4-reasoning", ENG_ARCH_PHI3},
    {"microsoft/phi-4-reasoning-plus", "microsoft/Phi-4-reasoning-plus", ENG_ARCH_PHI3},
    {"paraphym/qwen3-coder-nano", NULL, ENG_ARCH_QWEN3_MOE},
    {"paraphym/phi-4-reasoning-nano", NULL, ENG_ARCH_PHI3},
    {"paraphym/kimi-k2-nano", NULL, ENG_ARCH_DEEPSEEK_V3},
};
#define N_EXPECTED (sizeof expected_keys / sizeof expected_keys[0])

static void test_table(void)
{
    CHECK(reg_count() == N_EXPECTED, "reg_count() = %zu, expected %zu", reg_count(), N_EXPECTED);
    for (size_t i = 0; i < N_EXPECTED; i++) {
        const reg_entry *e = reg_find(expected_keys[i].key);
        CHECK(e != NULL, "key %s missing", expected_keys[i].key);
        if (!e)
            continue;
        const char *want = expected_keys[i].repo;
        CHECK((want == NULL && e->hf_repo == NULL) ||
                  (want && e->hf_repo && strcmp(want, e->hf_repo) == 0),
              "%s maps to %s, expected %s", e->key, e->hf_repo ? e->hf_repo : "(none)",
              want ? want : "(none)");
        CHECK(e->arch == expected_keys[i].arch, "%s: family %s", e->key, eng_arch_name(e->arch));
        CHECK(e->description && e->description[0], "%s has no description", e->key);
        CHECK(e->embedded == (strcmp(e->key, "paraphym/qwen3-coder-nano") == 0),
              "%s: embedded flag %d", e->key, e->embedded);
    }
    for (size_t i = 0; i < reg_count(); i++) {
        const reg_entry *e = reg_at(i);
        CHECK(e && reg_find(e->key) == e, "reg_at(%zu) is not found by its own key", i);
        for (const char *p = e->key; *p; p++)
            CHECK(*p == '/' || *p == '-' || *p == '.' || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9'),
                  "key %s is not lowercase org/name", e->key);
        CHECK(strchr(e->key, '/') && strchr(e->key, '/') == strrchr(e->key, '/'),
              "key %s is not org/name", e->key);
    }
    CHECK(reg_at(reg_count()) == NULL, "reg_at past the end is not NULL");
    CHECK(reg_find("qwen/qwen3-coder-nano") == NULL, "unknown key found");
    CHECK(reg_find("QWEN/QWEN3-CODER") == NULL, "keys are case-sensitive");
    CHECK(reg_find(NULL) == NULL, "reg_find(NULL) is not NULL");

    char buf[64];
    CHECK(reg_key_folder("qwen/qwen3-coder", buf, sizeof buf) == PP_STATUS_OK &&
              strcmp(buf, "qwen--qwen3-coder") == 0,
          "reg_key_folder: %s", buf);
    CHECK(reg_key_folder("qwen/qwen3-coder", buf, 17) == PP_STATUS_INVALID_ARG,
          "reg_key_folder overflow not reported");
    CHECK(reg_key_folder("qwen/qwen3-coder", buf, 18) == PP_STATUS_OK, "exact fit refused");
}

/* ---- 2. resolution --------------------------------------------------------------------------- */

static void expect_resolved(const char *key, const char *embedded, const char *want)
{
    char dir[PATH_MAX], msg[4096];
    pp_status st = reg_resolve_dir(key, embedded, dir, sizeof dir, msg, sizeof msg);
    CHECK(st == PP_STATUS_OK, "%s: %s: %s", key, pp_status_str(st), msg);
    if (st == PP_STATUS_OK)
        CHECK(strcmp(dir, want) == 0, "%s resolved to %s, expected %s", key, dir, want);
}

/* Resolves a key expected to be missing; returns its message in msg. */
static void expect_missing(const char *key, const char *embedded, char *msg, size_t msg_len)
{
    char dir[PATH_MAX];
    strcpy(dir, "junk");
    pp_status st = reg_resolve_dir(key, embedded, dir, sizeof dir, msg, msg_len);
    CHECK(st == PP_STATUS_NOT_FOUND, "%s: expected NOT_FOUND, got %s (%s)", key,
          pp_status_str(st), dir);
    CHECK(dir[0] == '\0', "%s: dir not cleared on failure", key);
}

static void expect_in(const char *msg, const char *needle)
{
    CHECK(strstr(msg, needle) != NULL, "message lacks \"%s\":\n%s", needle, msg);
}

static void test_resolution(const char *qwen_nano)
{
    char base[] = "/tmp/test_registry.XXXXXX";
    CHECK(mkdtemp(base) != NULL, "mkdtemp: %s", strerror(errno));
    char m1[256], m2[256], hub[256], p[PATH_MAX], want[PATH_MAX], env[600];
    char msg[8192];
    snprintf(m1, sizeof m1, "%s/m1", base);
    snprintf(m2, sizeof m2, "%s/m2", base);
    snprintf(hub, sizeof hub, "%s/hub", base);
    mkdirs(m1);
    mkdirs(m2);
    snprintf(p, sizeof p, "%s/qwen--qwen3-coder-30b-a3b/config.json", m2);
    write_file(p, "{}\n");
    snprintf(p, sizeof p, "%s/models--Qwen--Qwen3-Coder-480B-A35B-Instruct/refs/main", hub);
    write_file(p, "abc123");
    snprintf(p, sizeof p, "%s/models--Qwen--Qwen3-Coder-480B-A35B-Instruct/snapshots/abc123/config.json",
             hub);
    write_file(p, "{}\n");

    unsetenv("HF_HOME");
    unsetenv("XDG_CACHE_HOME");
    snprintf(env, sizeof env, "%s:%s/", m1, m2); /* a trailing slash is tolerated */
    setenv("PARAPHYM_MODEL_PATH", env, 1);
    setenv("HF_HUB_CACHE", hub, 1);

    /* helpers */
    char buf[PATH_MAX];
    CHECK(reg_hub_cache_dir(buf, sizeof buf) == PP_STATUS_OK && strcmp(buf, hub) == 0,
          "hub cache dir %s", buf);
    snprintf(want, sizeof want, "%s/models--Qwen--Qwen3-Coder-30B-A3B-Instruct", hub);
    CHECK(reg_repo_cache_dir("Qwen/Qwen3-Coder-30B-A3B-Instruct", buf, sizeof buf) == PP_STATUS_OK &&
              strcmp(buf, want) == 0,
          "repo cache dir %s", buf);
    CHECK(reg_repo_cache_dir("no-slash", buf, sizeof buf) == PP_STATUS_INVALID_ARG, "bad repo id");
    CHECK(reg_repo_cache_dir("a/b/c", buf, sizeof buf) == PP_STATUS_INVALID_ARG, "bad repo id");

    /* the second PARAPHYM_MODEL_PATH directory */
    snprintf(want, sizeof want, "%s/qwen--qwen3-coder-30b-a3b", m2);
    expect_resolved("qwen/qwen3-coder-30b-a3b", NULL, want);
    /* the Hugging Face cache through refs/main */
    snprintf(want, sizeof want, "%s/models--Qwen--Qwen3-Coder-480B-A35B-Instruct/snapshots/abc123", hub);
    expect_resolved("qwen/qwen3-coder", NULL, want);
    /* refs/main with a trailing newline, as git writes it */
    snprintf(p, sizeof p, "%s/models--Qwen--Qwen3-Coder-480B-A35B-Instruct/refs/main", hub);
    write_file(p, "abc123\n");
    expect_resolved("qwen/qwen3-coder", NULL, want);

    /* precedence: PARAPHYM_MODEL_PATH before the cache, and its first directory first */
    snprintf(p, sizeof p, "%s/qwen--qwen3-coder/config.json", m2);
    write_file(p, "{}\n");
    snprintf(want, sizeof want, "%s/qwen--qwen3-coder", m2);
    expect_resolved("qwen/qwen3-coder", NULL, want);
    snprintf(p, sizeof p, "%s/qwen--qwen3-coder/config.json", m1);
    write_file(p, "{}\n");
    snprintf(want, sizeof want, "%s/qwen--qwen3-coder", m1);
    expect_resolved("qwen/qwen3-coder", NULL, want);
    /* a folder without config.json is passed over */
    snprintf(p, sizeof p, "%s/qwen--qwen3-coder/config.json", m1);
    unlink(p);
    snprintf(want, sizeof want, "%s/qwen--qwen3-coder", m2);
    expect_resolved("qwen/qwen3-coder", NULL, want);

    /* NOT_FOUND lists every place searched */
    snprintf(p, sizeof p, "%s/moonshot--kimi-k2", m1);
    mkdirs(p); /* present but without config.json */
    expect_missing("moonshot/kimi-k2", NULL, msg, sizeof msg);
    expect_in(msg, "moonshot/kimi-k2");
    snprintf(p, sizeof p, "%s/moonshot--kimi-k2 (PARAPHYM_MODEL_PATH): no config.json", m1);
    expect_in(msg, p);
    snprintf(p, sizeof p, "%s/moonshot--kimi-k2 (PARAPHYM_MODEL_PATH): not present", m2);
    expect_in(msg, p);
    snprintf(p, sizeof p, "%s/models--moonshotai--Kimi-K2-Instruct/snapshots/<refs/main>", hub);
    expect_in(msg, p);
    expect_in(msg, "huggingface-cli download moonshotai/Kimi-K2-Instruct");
    printf("NOT_FOUND message:\n%s\n", msg);

    /* refs/main naming a snapshot that is not there */
    snprintf(p, sizeof p, "%s/models--moonshotai--Kimi-K2-Thinking/refs/main", hub);
    write_file(p, "deadbeef\n");
    expect_missing("moonshot/kimi-k2-thinking", NULL, msg, sizeof msg);
    snprintf(p, sizeof p, "%s/models--moonshotai--Kimi-K2-Thinking/snapshots/deadbeef", hub);
    expect_in(msg, p);
    /* a malformed refs/main is not followed out of snapshots/ */
    snprintf(p, sizeof p, "%s/models--moonshotai--Kimi-K2-Thinking/refs/main", hub);
    write_file(p, "../../x\n");
    expect_missing("moonshot/kimi-k2-thinking", NULL, msg, sizeof msg);
    expect_in(msg, "malformed");

    /* unknown key: NOT_FOUND listing the known keys */
    expect_missing("acme/unknown", NULL, msg, sizeof msg);
    expect_in(msg, "acme/unknown");
    for (size_t i = 0; i < reg_count(); i++)
        expect_in(msg, reg_at(i)->key);

    /* the embedded model: after PARAPHYM_MODEL_PATH, only for its own key */
    expect_resolved("paraphym/qwen3-coder-nano", qwen_nano, qwen_nano);
    expect_missing("paraphym/qwen3-coder-nano", NULL, msg, sizeof msg);
    expect_in(msg, "paraphym--qwen3-coder-nano");
    expect_missing("paraphym/kimi-k2-nano", qwen_nano, msg, sizeof msg);
    snprintf(p, sizeof p, "%s/paraphym--qwen3-coder-nano/config.json", m2);
    write_file(p, "{}\n");
    snprintf(want, sizeof want, "%s/paraphym--qwen3-coder-nano", m2);
    expect_resolved("paraphym/qwen3-coder-nano", qwen_nano, want);
    snprintf(want, sizeof want, "%s/does-not-exist", base);
    expect_missing("paraphym/phi-4-reasoning-nano", want, msg, sizeof msg);

    /* HF_HOME: used only when HF_HUB_CACHE is unset */
    char hf_home[256];
    snprintf(hf_home, sizeof hf_home, "%s/hfhome", base);
    snprintf(p, sizeof p, "%s/hub/models--microsoft--Phi-4-reasoning/refs/main", hf_home);
    write_file(p, "0123abcd\n");
    snprintf(p, sizeof p, "%s/hub/models--microsoft--Phi-4-reasoning/snapshots/0123abcd/config.json",
             hf_home);
    write_file(p, "{}\n");
    setenv("HF_HOME", hf_home, 1);
    expect_missing("microsoft/phi-4-reasoning", NULL, msg, sizeof msg); /* HF_HUB_CACHE wins */
    unsetenv("HF_HUB_CACHE");
    snprintf(want, sizeof want, "%s/hub/models--microsoft--Phi-4-reasoning/snapshots/0123abcd", hf_home);
    expect_resolved("microsoft/phi-4-reasoning", NULL, want);
    /* ...and the cache moved with it */
    expect_missing("qwen/qwen3-coder-30b-a3b-fp8", NULL, msg, sizeof msg);
    snprintf(p, sizeof p, "%s/hub/models--Qwen--Qwen3-Coder-30B-A3B-Instruct-FP8", hf_home);
    expect_in(msg, p);

    /* XDG_CACHE_HOME, then HOME */
    unsetenv("HF_HOME");
    char xdg[256], home[256];
    snprintf(xdg, sizeof xdg, "%s/xdg", base);
    snprintf(home, sizeof home, "%s/home", base);
    snprintf(p, sizeof p, "%s/huggingface/hub/models--microsoft--Phi-4-reasoning-plus/refs/main", xdg);
    write_file(p, "v1");
    snprintf(p, sizeof p,
             "%s/huggingface/hub/models--microsoft--Phi-4-reasoning-plus/snapshots/v1/config.json", xdg);
    write_file(p, "{}\n");
    snprintf(p, sizeof p, "%s/.cache/huggingface/hub/models--moonshotai--Kimi-K2-Instruct-0905/refs/main",
             home);
    write_file(p, "v2");
    snprintf(p, sizeof p,
             "%s/.cache/huggingface/hub/models--moonshotai--Kimi-K2-Instruct-0905/snapshots/v2/config.json",
             home);
    write_file(p, "{}\n");
    char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    setenv("HOME", home, 1);
    setenv("XDG_CACHE_HOME", xdg, 1);
    snprintf(want, sizeof want, "%s/huggingface/hub/models--microsoft--Phi-4-reasoning-plus/snapshots/v1",
             xdg);
    expect_resolved("microsoft/phi-4-reasoning-plus", NULL, want);
    expect_missing("moonshot/kimi-k2-0905", NULL, msg, sizeof msg);
    unsetenv("XDG_CACHE_HOME");
    snprintf(want, sizeof want,
             "%s/.cache/huggingface/hub/models--moonshotai--Kimi-K2-Instruct-0905/snapshots/v2", home);
    expect_resolved("moonshot/kimi-k2-0905", NULL, want);

    /* no PARAPHYM_MODEL_PATH: said so */
    unsetenv("PARAPHYM_MODEL_PATH");
    expect_missing("qwen/qwen3-coder", NULL, msg, sizeof msg);
    expect_in(msg, "PARAPHYM_MODEL_PATH: not set");

    /* argument errors and a buffer too small */
    char small[8];
    CHECK(reg_resolve_dir("moonshot/kimi-k2-0905", NULL, small, sizeof small, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "a too-small buffer is not INVALID_ARG");
    CHECK(small[0] == '\0', "dir not cleared");
    CHECK(reg_resolve_dir(NULL, NULL, buf, sizeof buf, msg, sizeof msg) == PP_STATUS_INVALID_ARG,
          "NULL key");
    CHECK(reg_resolve_dir("qwen/qwen3-coder", NULL, NULL, 0, NULL, 0) == PP_STATUS_INVALID_ARG,
          "NULL dir");
    CHECK(reg_resolve_dir("acme/unknown", NULL, buf, sizeof buf, NULL, 0) == PP_STATUS_NOT_FOUND,
          "NULL msg");
    CHECK(reg_resolve_dir("acme/unknown", NULL, buf, sizeof buf, msg, 5) == PP_STATUS_NOT_FOUND &&
              strlen(msg) == 4,
          "message not truncated to its buffer");

    if (old_home) {
        setenv("HOME", old_home, 1);
        free(old_home);
    } else {
        unsetenv("HOME");
    }
    remove_tree(base);
    CHECK(!dir_exists(base), "temp dir %s not removed", base);
}

/* ---- 3. parameter counts of the full-size models (MODELS.md 1.10, 2.7, 3.7) ------------------ */

static const char k2_config[] =
    "{\"model_type\": \"kimi_k2\", \"vocab_size\": 163840, \"hidden_size\": 7168,"
    " \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048, \"num_hidden_layers\": 61,"
    " \"first_k_dense_replace\": 1, \"num_attention_heads\": 64, \"num_key_value_heads\": 64,"
    " \"q_lora_rank\": 1536, \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128,"
    " \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"n_routed_experts\": 384,"
    " \"num_experts_per_tok\": 8, \"n_shared_experts\": 1, \"routed_scaling_factor\": 2.827,"
    " \"norm_topk_prob\": true, \"rms_norm_eps\": 1e-6, \"rope_theta\": 50000,"
    " \"max_position_embeddings\": 131072, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 32.0,"
    " \"original_max_position_embeddings\": 4096, \"beta_fast\": 1.0, \"beta_slow\": 1.0,"
    " \"mscale\": 1.0, \"mscale_all_dim\": 1.0}}";
static const char qwen480_config[] =
    "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 151936, \"hidden_size\": 6144,"
    " \"intermediate_size\": 8192, \"moe_intermediate_size\": 2560, \"num_hidden_layers\": 62,"
    " \"num_attention_heads\": 96, \"num_key_value_heads\": 8, \"head_dim\": 128,"
    " \"num_experts\": 160, \"num_experts_per_tok\": 8, \"norm_topk_prob\": true,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000000, \"max_position_embeddings\": 262144}";
static const char qwen30_config[] =
    "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 151936, \"hidden_size\": 2048,"
    " \"intermediate_size\": 6144, \"moe_intermediate_size\": 768, \"num_hidden_layers\": 48,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 4, \"head_dim\": 128,"
    " \"num_experts\": 128, \"num_experts_per_tok\": 8, \"norm_topk_prob\": true,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000000, \"max_position_embeddings\": 262144}";
static const char phi4_config[] =
    "{\"model_type\": \"phi3\", \"vocab_size\": 100352, \"hidden_size\": 5120,"
    " \"intermediate_size\": 17920, \"num_hidden_layers\": 40, \"num_attention_heads\": 40,"
    " \"num_key_value_heads\": 10, \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000,"
    " \"max_position_embeddings\": 32768}";

static void test_full_size(void)
{
    static const struct {
        const char *name, *json;
        double total_b, active_b; /* billions, as MODELS.md rounds them (0.01 B) */
        uint64_t kv_bf16_per_token; /* the GPU plan's KV bytes per token (MODELS.md) */
    } models[] = {
        {"Kimi K2", k2_config, 1026.41, 32.86, 61 * 576 * 2},                /* 68.6 KiB latent */
        {"Qwen3-Coder-480B-A35B", qwen480_config, 480.15, 35.47, 248 * 1024}, /* 248 KiB */
        {"Qwen3-Coder-30B-A3B", qwen30_config, 30.53, 3.35, 96 * 1024},       /* 96 KiB */
        {"Phi-4-reasoning", phi4_config, 14.66, 14.66, 200 * 1024},           /* 200 KiB */
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        eng_config cfg;
        eng_err err = {{0}};
        pp_status st = eng_config_parse(models[i].json, strlen(models[i].json), &cfg, &err);
        CHECK(st == PP_STATUS_OK, "%s config: %s", models[i].name, err.msg);
        if (st != PP_STATUS_OK)
            continue;
        reg_params p;
        reg_count_params(&cfg, &p);
        double total = (double)p.total / 1e9, active = (double)p.active / 1e9;
        printf("%-22s total %.3f B (MODELS.md %.2f), active %.3f B (%.2f), embedding %.3f B\n",
               models[i].name, total, models[i].total_b, active, models[i].active_b,
               (double)p.embedding / 1e9);
        CHECK(total > models[i].total_b - 0.006 && total < models[i].total_b + 0.006,
              "%s total %.4f B, MODELS.md %.2f B", models[i].name, total, models[i].total_b);
        CHECK(active > models[i].active_b - 0.006 && active < models[i].active_b + 0.006,
              "%s active %.4f B, MODELS.md %.2f B", models[i].name, active, models[i].active_b);

        /* the estimate's arithmetic, with made-up weights */
        reg_model_info a, b;
        uint64_t w = 123456789;
        /* the cache is allocated in whole blocks: one block's worth per block of positions */
        CHECK(reg_estimate_config(&cfg, w, 1000, ENG_KV_BLOCK_SIZE, 1, 4, &a) == PP_STATUS_OK, "estimate");
        CHECK(a.kv_bytes / 2 / ENG_KV_BLOCK_SIZE == models[i].kv_bf16_per_token, "%s KV/token bf16 %" PRIu64
              ", MODELS.md %" PRIu64, models[i].name, a.kv_bytes / 2 / ENG_KV_BLOCK_SIZE,
              models[i].kv_bf16_per_token);
        uint64_t kv_one = 0, scratch_one = 0;
        CHECK(eng_session_bytes(&cfg, ENG_MLA_ABSORBED, 1, 1, &kv_one, &scratch_one) == PP_STATUS_OK &&
                  kv_one == a.kv_bytes,
              "%s: one position takes a whole block", models[i].name);
        CHECK(reg_estimate_config(&cfg, w, 1000, 4096, 256, 4, &b) == PP_STATUS_OK, "estimate");
        CHECK(b.kv_bytes == 4096 * 2 * models[i].kv_bf16_per_token, "%s f32 KV of 4096", models[i].name);
        uint64_t mib = 1u << 20;
        CHECK(b.cpu_first.host_mb == (w + b.kv_bytes + b.act_bytes + b.overhead_bytes + mib - 1) / mib,
              "cpu_first");
        CHECK(b.cpu_second.host_mb == (b.kv_bytes + b.act_bytes + b.overhead_bytes + mib - 1) / mib,
              "cpu_second");
        CHECK(b.cpu_first.vram_mb == 0 && b.cpu_second.vram_mb == 0, "CPU workers use no VRAM");
        /* GPU workers (bf16 mode): a bf16 KV cache; scratch plus the kernels' workspace, which
         * holds at least the cuBLAS workspace and matmul_bf16's bf16 copy of a 256-token input */
        uint64_t kv_b = 0, scratch_b = 0;
        CHECK(eng_session_bytes(&cfg, ENG_MLA_ABSORBED, 4096, 256, &kv_b, &scratch_b) == PP_STATUS_OK &&
                  b.gpu_kv_bytes == kv_b / 2 && b.gpu_kv_bytes == 4096 * models[i].kv_bf16_per_token &&
                  b.gpu_act_bytes == scratch_b + b.gpu_workspace_bytes &&
                  b.gpu_workspace_bytes >= REG_CUDA_BLAS_WORKSPACE_BYTES + 256 * (uint64_t)cfg.d_model * 2 &&
                  b.n_tensors == 1000,
              "%s: GPU KV, scratch and workspace", models[i].name);
        CHECK(b.gpu_first.vram_mb == (w + 1000 * REG_CUDA_ALLOC_ROUND + b.gpu_kv_bytes + b.gpu_act_bytes +
                                      REG_CUDA_DEVICE_RESERVE_BYTES + mib - 1) / mib,
              "gpu_first");
        CHECK(b.gpu_second.vram_mb == (b.gpu_kv_bytes + b.gpu_act_bytes + mib - 1) / mib, "gpu_second");
        CHECK(b.gpu_first.host_mb == b.gpu_second.host_mb &&
                  b.gpu_first.host_mb * mib >= REG_CUDA_HOST_RESERVE_BYTES + (uint64_t)REG_MAX_BATCH *
                                                   ((uint64_t)cfg.n_vocab * 4 + ENG_TOPK_MAX * 8) &&
                  b.gpu_first.host_mb < b.cpu_second.host_mb + (REG_CUDA_HOST_RESERVE_BYTES >> 20) + 1,
              "gpu host: the logits and the CUDA allowance, no weights");
        CHECK(b.n_threads == 4 && b.overhead_bytes == REG_WORKER_OVERHEAD_BYTES + 4 * REG_THREAD_OVERHEAD_BYTES +
                                                        (uint64_t)REG_MAX_BATCH *
                                                            ((uint64_t)cfg.n_vocab * 4 + ENG_TOPK_MAX * 8),
              "overhead: structures, threads, the batch's host logits and sampling candidates");
        CHECK(b.arch == cfg.arch && strcmp(b.family, eng_arch_name(cfg.arch)) == 0, "family");
        CHECK(reg_estimate_config(&cfg, w, 1000, 0, 1, 4, &b) == PP_STATUS_INVALID_ARG, "n_ctx 0");
        CHECK(reg_estimate_config(&cfg, w, 1000, 1, -1, 4, &b) == PP_STATUS_INVALID_ARG, "n_batch -1");
    }
}

/* ---- 4. the nano models: counts against their checkpoints ------------------------------------ */

static int64_t reference_params(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    struct json_object *root = json_object_from_file(path), *training, *params;
    int64_t v = -1;
    if (root && json_object_object_get_ex(root, "training", &training) &&
        json_object_object_get_ex(training, "params", &params))
        v = json_object_get_int64(params);
    json_object_put(root);
    return v;
}

static uint64_t expected_nano_params(const char *model_type)
{
    if (strcmp(model_type, "qwen3_moe") == 0)
        return 7053440;
    if (strcmp(model_type, "phi3") == 0)
        return 6998272;
    if (strcmp(model_type, "kimi_k2") == 0)
        return 6236480;
    return 0;
}

static void test_nano_counts(const char *dir)
{
    reg_model_info info;
    char msg[1024];
    pp_status st = reg_estimate(dir, HONEST_N_CTX, HONEST_N_BATCH, 0, &info, msg, sizeof msg);
    CHECK(st == PP_STATUS_OK, "estimate %s: %s", dir, msg);
    if (st != PP_STATUS_OK)
        return;
    eng_st_set *set = NULL;
    eng_err err = {{0}};
    CHECK(eng_st_open_dir(dir, &set, &err) == PP_STATUS_OK, "%s", err.msg);
    uint64_t elems = 0;
    for (size_t i = 0; set && i < eng_st_count(set); i++) {
        const eng_st_tensor *t = eng_st_at(set, i);
        uint64_t n = 1;
        for (int d = 0; d < t->n_dim; d++)
            n *= (uint64_t)t->shape[d];
        elems += n;
    }
    uint64_t bytes = set ? eng_st_total_bytes(set) : 0;
    eng_st_set_close(set);
    int64_t ref = reference_params(dir);
    uint64_t want = expected_nano_params(info.model_type);
    printf("%s (%s, %s): params %" PRIu64 " (reference.json %" PRId64 "), buffers %" PRIu64
           ", tensor elements %" PRIu64 ", active %" PRIu64 ", weights %" PRIu64 " B %s\n",
           dir, info.model_type, info.family, info.params.total, ref, info.params.buffers, elems,
           info.params.active, info.weight_bytes, info.weight_dtypes);
    CHECK(info.params.total + info.params.buffers == elems,
          "%s: params %" PRIu64 " + buffers %" PRIu64 " != safetensors elements %" PRIu64, dir,
          info.params.total, info.params.buffers, elems);
    CHECK(ref < 0 || (uint64_t)ref == info.params.total, "%s: reference.json says %" PRId64, dir, ref);
    CHECK(info.params.total == want, "%s: %" PRIu64 " params, expected %" PRIu64, dir,
          info.params.total, want);
    CHECK(info.params.active < info.params.total || info.arch == ENG_ARCH_PHI3, "active params");
    CHECK(info.weight_bytes == bytes, "weight bytes %" PRIu64 " vs %" PRIu64, info.weight_bytes, bytes);
    CHECK(strcmp(info.weight_dtypes, "BF16") == 0, "weight dtypes %s", info.weight_dtypes);
}

/* ---- 5. honesty: estimate against measured resident memory ----------------------------------- */

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* A "Key:   N kB" line of /proc/self/status, in bytes; 0 when absent. */
static uint64_t status_bytes(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    uint64_t kb = 0;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            sscanf(line + n + 1, "%" SCNu64, &kb);
            break;
        }
    if (f)
        fclose(f);
    return kb * 1024;
}

/* Reads one byte of every page of every mapping of a file under dir: the weights a forward may
 * skip (embedding rows of unused ids, experts no token chose) become resident as a worker's would
 * over its life. */
static uint64_t touch_mapped_weights(const char *dir)
{
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return 0;
    size_t n_real = strlen(real);
    FILE *f = fopen("/proc/self/maps", "r");
    char line[PATH_MAX + 256];
    uint64_t pages = 0, sum = 0;
    long page = sysconf(_SC_PAGESIZE);
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        int off = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &lo, &hi, perms, &off) < 3 || off == 0)
            continue;
        char *path = line + off;
        path[strcspn(path, "\n")] = '\0';
        if (perms[0] != 'r' || strncmp(path, real, n_real) != 0 || path[n_real] != '/')
            continue;
        for (unsigned long a = lo; a < hi; a += (unsigned long)page) {
            sum += *(volatile const unsigned char *)a;
            pages++;
        }
    }
    if (f)
        fclose(f);
    (void)sum;
    return pages;
}

/* One worker: a model and a session of n_ctx positions. */
static int open_worker(const char *dir, int n_ctx, int n_threads, eng_model **model,
                       eng_session **session)
{
    eng_model_opts opts;
    eng_model_opts_default(&opts);
    opts.n_threads = n_threads;
    eng_err err = {{0}};
    if (eng_model_load(dir, &opts, model, &err) != PP_STATUS_OK ||
        eng_session_create(*model, n_ctx, session, &err) != PP_STATUS_OK) {
        fprintf(stderr, "worker %s: %s\n", dir, err.msg);
        return 1;
    }
    return 0;
}

/* Two forwards of n_batch tokens with every row's logits, from position 0: the first writes the
 * whole KV cache (n_batch == n_ctx) and every page of the scratch; the second runs as every later
 * forward does, with the scratch resident and the backend's transient buffers on top of it. */
static int run_worker(const eng_model *model, eng_session *session, int n_batch)
{
    int n_vocab = eng_model_config(model)->n_vocab;
    int32_t *ids = malloc((size_t)n_batch * sizeof *ids);
    if (!ids)
        return 1;
    for (int i = 0; i < n_batch; i++) /* spread over the vocabulary */
        ids[i] = (int32_t)(((int64_t)i * 7919 + 13) % n_vocab);
    eng_err err = {{0}};
    pp_status st = PP_STATUS_OK;
    for (int pass = 0; pass < 2 && st == PP_STATUS_OK; pass++) {
        eng_session_reset(session);
        st = eng_session_forward(session, ids, n_batch, NULL, true, &err);
    }
    free(ids);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* The --measure-worker mode, run in a fresh process so no freed heap of earlier tests is reused.
 * Prints "first=<bytes> second=<bytes> detail=<text>":
 *   first:  the peak RSS (VmHWM) of one worker over the RSS before it was loaded: its weights
 *           (every page of the mapping read, as a long-lived worker ends up reading them), KV
 *           cache, scratch and transient buffers, tables, threads;
 *   second: the same for a second worker of the same model, less the pages of its weight mapping
 *           (RssFile counts the shared file pages once per mapping; they are the first's memory).
 */
static int measure_worker_main(int argc, char **argv)
{
    if (argc != 6)
        return 2;
    const char *dir = argv[2];
    int n_ctx = atoi(argv[3]), n_batch = atoi(argv[4]), n_threads = atoi(argv[5]);
    eng_model *m1 = NULL, *m2 = NULL;
    eng_session *s1 = NULL, *s2 = NULL;
    uint64_t rss0 = rss_bytes();
    if (open_worker(dir, n_ctx, n_threads, &m1, &s1) != 0)
        return 1;
    touch_mapped_weights(dir);
    if (run_worker(m1, s1, n_batch) != 0)
        return 1;
    uint64_t hwm1 = status_bytes("VmHWM"), rss1 = rss_bytes();
    uint64_t file1 = status_bytes("RssFile"), anon1 = status_bytes("RssAnon");

    if (open_worker(dir, n_ctx, n_threads, &m2, &s2) != 0)
        return 1;
    touch_mapped_weights(dir);
    uint64_t rss2 = rss_bytes(), file2 = status_bytes("RssFile");
    if (run_worker(m2, s2, n_batch) != 0)
        return 1;
    uint64_t hwm2 = status_bytes("VmHWM"), anon2 = status_bytes("RssAnon");
    double mib = 1024.0 * 1024.0;
    printf("first=%" PRIu64 " second=%" PRIu64 " detail=RSS after the forwards: first %+.2f MiB, "
           "second's anonymous %+.2f MiB\n",
           hwm1 - rss0, hwm2 - rss2 + (rss2 - rss1) - (file2 - file1),
           ((double)rss1 - (double)rss0) / mib, ((double)anon2 - (double)anon1) / mib);
    eng_session_free(s2);
    eng_model_free(m2);
    eng_session_free(s1);
    eng_model_free(m1);
    return 0;
}

/* Runs --measure-worker in a child process; false when it failed. */
static bool measure_worker(const char *self, const char *dir, int n_threads, uint64_t *first,
                           uint64_t *second, char *detail, size_t detail_len)
{
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd, "'%s' --measure-worker '%s' %d %d %d", self, dir, HONEST_N_CTX,
             HONEST_N_BATCH, n_threads);
    FILE *p = popen(cmd, "r");
    if (!p)
        return false;
    char line[512] = "";
    int off = 0;
    bool ok = fgets(line, sizeof line, p) != NULL &&
              sscanf(line, "first=%" SCNu64 " second=%" SCNu64 " detail=%n", first, second, &off) == 2 &&
              off > 0;
    if (ok) {
        line[strcspn(line, "\n")] = '\0';
        snprintf(detail, detail_len, "%s", line + off);
    }
    int rc = pclose(p);
    return ok && rc == 0;
}

/* True when the estimate is within the tolerance of the measurement. */
static bool within(double est, double got)
{
    return got > 0 && est >= got * (1.0 - HONEST_TOLERANCE) && est <= got * (1.0 + HONEST_TOLERANCE);
}

static void test_honesty(const char *self, const char *dir)
{
    /* fixed counts, so the check does not depend on the machine's cores; 16 exercises the
     * per-thread terms (stacks, dequantization scratch) */
    static const int thread_counts[] = {1, 4, 16};
    for (size_t i = 0; i < sizeof thread_counts / sizeof thread_counts[0]; i++) {
        int n_threads = thread_counts[i];
        reg_model_info info;
        char msg[1024], detail[256] = "";
        pp_status st = reg_estimate(dir, HONEST_N_CTX, HONEST_N_BATCH, n_threads, &info, msg, sizeof msg);
        CHECK(st == PP_STATUS_OK, "%s", msg);
        if (st != PP_STATUS_OK)
            return;
        uint64_t first = 0, second = 0;
        bool ok = measure_worker(self, dir, n_threads, &first, &second, detail, sizeof detail);
        CHECK(ok, "measuring %s failed", dir);
        if (!ok)
            return;
        double mib = 1024.0 * 1024.0;
        double got1 = (double)first / mib, est1 = (double)info.cpu_first.host_mb;
        double got2 = (double)second / mib, est2 = (double)info.cpu_second.host_mb;
        printf("%s (%s, %d threads, n_ctx %d, n_batch %d): weights %.2f MiB, kv %.2f, act %.2f, "
               "overhead %.2f\n"
               "  first worker:  estimate %3.0f MB, measured peak growth %6.2f MiB (%+.1f%%)\n"
               "  second worker: estimate %3.0f MB, measured peak growth %6.2f MiB (%+.1f%%; "
               "KV + activations %.2f MiB, %+.1f%%)\n"
               "  (%s)\n",
               dir, info.model_type, info.n_threads, info.n_ctx, info.n_batch,
               (double)info.weight_bytes / mib, (double)info.kv_bytes / mib,
               (double)info.act_bytes / mib, (double)info.overhead_bytes / mib, est1, got1,
               100.0 * (est1 - got1) / got1, est2, got2, 100.0 * (est2 - got2) / got2,
               (double)(info.kv_bytes + info.act_bytes) / mib,
               100.0 * ((double)(info.kv_bytes + info.act_bytes) / mib - got2) / got2, detail);
        if (UNDER_ASAN) {
            printf("  (AddressSanitizer build: resident memory is not comparable; not checked)\n");
            continue;
        }
        CHECK(within(est1, got1), "%s: first worker estimate %.0f MB vs measured %.2f MiB", dir,
              est1, got1);
        /* The second worker: what it adds besides the shared weights is its KV cache and
         * activations (the fixed overhead is mostly the process's first load: code pages, library
         * state; a second worker measures ~0 of it), so those two are held to the tolerance. */
        double kv_act = (double)(info.kv_bytes + info.act_bytes) / mib;
        CHECK(within(kv_act, got2), "%s: second worker KV + activations %.2f MiB vs measured %.2f MiB",
              dir, kv_act, got2);
    }
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--measure-worker") == 0)
        return measure_worker_main(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: %s QWEN_NANO_DIR [OTHER_NANO_DIR ...]\n", argv[0]);
        return 1;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "cannot find /proc/self/exe\n");
        return 1;
    }
    self[n] = '\0';

    test_table();
    test_full_size();
    CHECK(dir_exists(argv[1]), "the Qwen nano model %s is missing", argv[1]);
    test_resolution(argv[1]);

    reg_model_info info;
    char msg[1024];
    CHECK(reg_estimate("/nonexistent/model", 16, 16, 1, &info, msg, sizeof msg) == PP_STATUS_NOT_FOUND,
          "estimate of a missing directory");
    CHECK(reg_estimate(argv[1], 0, 16, 1, &info, msg, sizeof msg) == PP_STATUS_INVALID_ARG, "n_ctx 0");

    for (int i = 1; i < argc; i++) {
        if (!dir_exists(argv[i])) {
            printf("skipped: %s is missing\n", argv[i]);
            continue;
        }
        test_nano_counts(argv[i]);
        test_honesty(self, argv[i]);
    }
    if (n_fail) {
        fprintf(stderr, "%d check(s) failed\n", n_fail);
        return 1;
    }
    printf("all registry checks passed\n");
    return 0;
}
