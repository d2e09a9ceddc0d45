/* test_loaders.c: the safetensors and config loaders against malformed inputs (each must give
 * its documented status, never a crash or a leak) and against the checked-in fixtures.
 *
 * Usage: test_loaders FIXTURES_DIR [QWEN_NANO_DIR]
 *   FIXTURES_DIR   tests/fixtures (holds tiny/<name>/)
 *   QWEN_NANO_DIR  the sharded qwen3_coder_nano model; default FIXTURES_DIR/../../models/
 *                  qwen3_coder_nano, skipped (with a note) when that default is absent.
 * Exit status 0 when every check passes, 1 otherwise; each failure is printed.
 */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "safetensors.h"

static int n_checks, n_failed;
static int verbose; /* TEST_LOADERS_VERBOSE=1 prints every expected error message */
static char tmp_root[] = "/tmp/pp_test_loaders_XXXXXX";

static void check_impl(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void check_impl(int ok, const char *file, int line, const char *fmt, ...)
{
    n_checks++;
    if (ok)
        return;
    n_failed++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

#define CHECK(cond, ...) check_impl((cond) ? 1 : 0, __FILE__, __LINE__, __VA_ARGS__)

/* ---- files ----------------------------------------------------------------------------------- */

static char *path_of(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char *path = path_of(dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
    free(path);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

/* A fresh empty directory under the temp root. */
static char *new_dir(const char *name)
{
    char *path = path_of(tmp_root, name);
    if (mkdir(path, 0700) != 0) {
        fprintf(stderr, "cannot create %s\n", path);
        exit(1);
    }
    return path;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- safetensors images ---------------------------------------------------------------------- */

/* A safetensors image: header (padded with spaces to a multiple of 8) then data_len bytes whose
 * values are 1, 2, 3, ... (mod 251). The image is 8-byte aligned (malloc). */
typedef struct image {
    uint8_t *bytes;
    size_t len;
} image;

static image make_image(const char *header, size_t data_len)
{
    size_t hlen = strlen(header);
    size_t padded = (hlen + 7) / 8 * 8;
    image im;
    im.len = 8 + padded + data_len;
    im.bytes = malloc(im.len);
    if (!im.bytes) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int i = 0; i < 8; i++)
        im.bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(im.bytes + 8, header, hlen);
    memset(im.bytes + 8 + hlen, ' ', padded - hlen);
    for (size_t i = 0; i < data_len; i++)
        im.bytes[8 + padded + i] = (uint8_t)(1 + i % 251);
    return im;
}

static void free_image(image *im)
{
    free(im->bytes);
    im->bytes = NULL;
}

static const char *st_name(pp_status st)
{
    return pp_status_str(st);
}

/* Parses the image from memory and from a file; both must give `want` (and msg_part, when
 * given, must occur in the message). */
static void expect_st(const char *what, const uint8_t *bytes, size_t len, pp_status want,
                      const char *msg_part)
{
    eng_err err = {{0}};
    eng_st_file *file = (eng_st_file *)1;
    pp_status st = eng_st_parse(bytes, len, what, &file, &err);
    CHECK(st == want, "%s: eng_st_parse gave %s (%s), want %s", what, st_name(st), err.msg,
          st_name(want));
    CHECK(st == PP_STATUS_OK || file == NULL, "%s: *out not NULL on failure", what);
    if (st != PP_STATUS_OK && msg_part)
        CHECK(strstr(err.msg, msg_part) != NULL, "%s: message '%s' lacks '%s'", what, err.msg,
              msg_part);
    if (st != PP_STATUS_OK && verbose)
        printf("  %-40s %s\n", what, err.msg);
    if (st == PP_STATUS_OK)
        eng_st_file_close(file);

    char name[128];
    snprintf(name, sizeof name, "case_%d.safetensors", n_checks);
    write_file(tmp_root, name, bytes, len);
    char *path = path_of(tmp_root, name);
    memset(&err, 0, sizeof err);
    file = (eng_st_file *)1;
    st = eng_st_open_file(path, &file, &err);
    CHECK(st == want, "%s: eng_st_open_file gave %s (%s), want %s", what, st_name(st), err.msg,
          st_name(want));
    CHECK(st == PP_STATUS_OK || file == NULL, "%s: *out not NULL on failure (file)", what);
    if (st != PP_STATUS_OK)
        CHECK(strstr(err.msg, path) != NULL, "%s: message '%s' does not name the file", what,
              err.msg);
    if (st == PP_STATUS_OK)
        eng_st_file_close(file);
    free(path);
}

static void expect_header(const char *what, const char *header, size_t data_len, pp_status want,
                          const char *msg_part)
{
    image im = make_image(header, data_len);
    expect_st(what, im.bytes, im.len, want, msg_part);
    free_image(&im);
}

static void test_st_malformed(void)
{
    static const uint8_t short_file[5] = {1, 0, 0, 0, 0};
    expect_st("truncated (5 bytes)", short_file, sizeof short_file, PP_STATUS_BAD_FORMAT,
              "too short");
    expect_st("empty file", short_file, 0, PP_STATUS_BAD_FORMAT, "too short");

    image im = make_image("{}", 0);
    im.bytes[0] = 0xe8; /* header length 1000, file is 16 bytes */
    im.bytes[1] = 0x03;
    expect_st("header length past EOF", im.bytes, im.len, PP_STATUS_BAD_FORMAT, "past the end");
    memset(im.bytes, 0xff, 8); /* 2^64 - 1 */
    expect_st("header length 2^64-1", im.bytes, im.len, PP_STATUS_BAD_FORMAT, "past the end");
    free_image(&im);

    expect_header("header not JSON", "hello, world", 0, PP_STATUS_BAD_FORMAT, "JSON");
    expect_header("header truncated JSON", "{\"a\": {", 0, PP_STATUS_BAD_FORMAT, "JSON");
    expect_header("header is an array", "[1, 2]", 0, PP_STATUS_BAD_FORMAT, "not a JSON object");
    expect_header("header trailing garbage", "{} x", 0, PP_STATUS_BAD_FORMAT, "JSON");
    expect_header("unknown dtype",
                  "{\"w\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  PP_STATUS_BAD_FORMAT, "unknown dtype F7 for tensor w");
    expect_header("dtype not a string",
                  "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  PP_STATUS_BAD_FORMAT, "dtype");
    expect_header("entry not an object", "{\"w\":[1,2]}", 0, PP_STATUS_BAD_FORMAT, "w");
    expect_header("offsets past the data section",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                  PP_STATUS_BAD_FORMAT, "out of range");
    expect_header("offsets reversed",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 8,
                  PP_STATUS_BAD_FORMAT, "out of range");
    expect_header("negative offset",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[-1,0]}}", 8,
                  PP_STATUS_BAD_FORMAT, "data_offsets");
    expect_header("offsets with three entries",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 8,
                  PP_STATUS_BAD_FORMAT, "data_offsets");
    expect_header("overlapping tensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, PP_STATUS_BAD_FORMAT, "overlap");
    expect_header("tensor inside another",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[16],\"data_offsets\":[0,16]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
                  16, PP_STATUS_BAD_FORMAT, "overlap");
    expect_header("byte count does not match shape",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  PP_STATUS_BAD_FORMAT, "needs 12");
    expect_header("negative dimension",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                  PP_STATUS_BAD_FORMAT, "shape[0]");
    expect_header("fractional dimension",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1,
                  PP_STATUS_BAD_FORMAT, "shape[0]");
    expect_header("nine dimensions",
                  "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                  "\"data_offsets\":[0,1]}}",
                  1, PP_STATUS_BAD_FORMAT, "dimensions");
    expect_header("element count overflow",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                  "\"data_offsets\":[0,0]}}",
                  0, PP_STATUS_BAD_FORMAT, "overflow");
    expect_header("byte count overflow",
                  "{\"w\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
                  "\"data_offsets\":[0,0]}}",
                  0, PP_STATUS_BAD_FORMAT, "overflow");
    expect_header("duplicate tensor name",
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                  2, PP_STATUS_BAD_FORMAT, "duplicate tensor name 'a'");
    expect_header("names equal up to an escaped NUL",
                  "{\"a\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\\u0000y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                  2, PP_STATUS_BAD_FORMAT, "duplicate");
    expect_header("misaligned F32",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]}}", 8,
                  PP_STATUS_BAD_FORMAT, "aligned");
    expect_header("__metadata__ not an object", "{\"__metadata__\":[1]}", 0,
                  PP_STATUS_BAD_FORMAT, "__metadata__");
    expect_header("__metadata__ with a number", "{\"__metadata__\":{\"format\":1}}", 0,
                  PP_STATUS_BAD_FORMAT, "__metadata__");
}

static void test_st_valid(void)
{
    /* e_score_correction_bias-like F32 vector beside a BF16 matrix, metadata, a scalar and an
     * empty tensor */
    const char *header = "{\"__metadata__\":{\"format\":\"pt\"},"
                         "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"gate\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]},"
                         "\"scalar\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[16,20]},"
                         "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,3],\"data_offsets\":[8,8]}}";
    image im = make_image(header, 20);
    size_t data_at = im.len - 20;
    const float bias[2] = {1.5f, -2.25f};
    const uint16_t gate[4] = {0x3f80, 0xc000, 0x0000, 0x3e80}; /* 1, -2, 0, 0.25 in bf16 */
    memcpy(im.bytes + data_at, bias, sizeof bias);
    memcpy(im.bytes + data_at + 8, gate, sizeof gate);
    expect_st("valid F32 + BF16", im.bytes, im.len, PP_STATUS_OK, NULL);

    eng_err err = {{0}};
    eng_st_file *file = NULL;
    pp_status st = eng_st_parse(im.bytes, im.len, "valid", &file, &err);
    CHECK(st == PP_STATUS_OK, "valid image: %s", err.msg);
    if (st == PP_STATUS_OK) {
        CHECK(eng_st_file_count(file) == 4, "valid image: %zu tensors, want 4",
              eng_st_file_count(file));
        const char *order[4] = {"bias", "empty", "gate", "scalar"};
        for (size_t i = 0; i < 4; i++) {
            const eng_st_tensor *t = eng_st_file_tensor(file, i);
            CHECK(t && strcmp(t->name, order[i]) == 0, "tensor %zu is '%s', want '%s'", i,
                  t ? t->name : "(null)", order[i]);
        }
        CHECK(eng_st_file_tensor(file, 4) == NULL, "tensor index past the end is not NULL");
        const eng_st_tensor *b = eng_st_file_tensor(file, 0);
        const eng_st_tensor *g = eng_st_file_tensor(file, 2);
        const eng_st_tensor *s = eng_st_file_tensor(file, 3);
        CHECK(b->dtype == ENG_DTYPE_F32 && b->n_dim == 1 && b->shape[0] == 2 && b->n_bytes == 8,
              "bias descriptor wrong");
        CHECK(eng_load_f32(b->data, b->dtype, 1) == -2.25f, "bias[1] = %g",
              eng_load_f32(b->data, b->dtype, 1));
        CHECK(g->dtype == ENG_DTYPE_BF16 && g->n_dim == 2 && g->shape[1] == 2 && g->n_bytes == 8,
              "gate descriptor wrong");
        CHECK(eng_load_f32(g->data, g->dtype, 1) == -2.0f &&
                  eng_load_f32(g->data, g->dtype, 3) == 0.25f,
              "gate values wrong");
        CHECK(s->n_dim == 0 && s->n_bytes == 4, "scalar descriptor wrong");
        eng_st_file_close(file);
    }
    free_image(&im);

    expect_header("empty header", "{}", 0, PP_STATUS_OK, NULL);
    expect_header("header with trailing spaces and newline", "{}\n   ", 0, PP_STATUS_OK, NULL);
    eng_st_file_close(NULL);
    eng_st_set_close(NULL);
    CHECK(eng_st_count(NULL) == 0 && eng_st_find(NULL, "x") == NULL, "NULL set accessors");
}

/* ---- directories ----------------------------------------------------------------------------- */

static const char one_u8[] = "{\"%s\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";

static void write_one_tensor_file(const char *dir, const char *file, const char *tensor)
{
    char header[256];
    snprintf(header, sizeof header, one_u8, tensor);
    image im = make_image(header, 1);
    write_file(dir, file, im.bytes, im.len);
    free_image(&im);
}

static void expect_dir(const char *what, const char *dir, pp_status want, const char *msg_part,
                       size_t want_count)
{
    eng_err err = {{0}};
    eng_st_set *set = (eng_st_set *)1;
    pp_status st = eng_st_open_dir(dir, &set, &err);
    CHECK(st == want, "%s: eng_st_open_dir gave %s (%s), want %s", what, st_name(st), err.msg,
          st_name(want));
    CHECK(st == PP_STATUS_OK || set == NULL, "%s: *out not NULL on failure", what);
    if (st != PP_STATUS_OK && msg_part)
        CHECK(strstr(err.msg, msg_part) != NULL, "%s: message '%s' lacks '%s'", what, err.msg,
              msg_part);
    if (st != PP_STATUS_OK && verbose)
        printf("  %-40s %s\n", what, err.msg);
    if (st == PP_STATUS_OK) {
        CHECK(eng_st_count(set) == want_count, "%s: %zu tensors, want %zu", what,
              eng_st_count(set), want_count);
        eng_st_set_close(set);
    }
}

static void test_st_dirs(void)
{
    char *d = new_dir("sharded_ok");
    write_one_tensor_file(d, "s1.safetensors", "a");
    write_one_tensor_file(d, "s2.safetensors", "b");
    write_text(d, "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":2},"
               "\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_dir("two shards", d, PP_STATUS_OK, NULL, 2);
    eng_err err = {{0}};
    eng_st_set *set = NULL;
    if (eng_st_open_dir(d, &set, &err) == PP_STATUS_OK) {
        const eng_st_tensor *a = eng_st_find(set, "a"), *b = eng_st_find(set, "b");
        CHECK(a && b && eng_st_find(set, "c") == NULL && eng_st_find(set, "") == NULL,
              "find in a sharded set");
        CHECK(eng_st_at(set, 0) == a && eng_st_at(set, 1) == b && eng_st_at(set, 2) == NULL,
              "eng_st_at order");
        CHECK(eng_st_total_bytes(set) == 2, "total bytes %zu", eng_st_total_bytes(set));
        eng_st_set_close(set);
    }
    free(d);

    d = new_dir("missing_shard");
    write_one_tensor_file(d, "s1.safetensors", "a");
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_dir("index naming a missing shard", d, PP_STATUS_NOT_FOUND, "'s2.safetensors'", 0);
    free(d);

    d = new_dir("tensor_not_in_shard");
    write_one_tensor_file(d, "s1.safetensors", "a");
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"zz\":\"s1.safetensors\"}}");
    expect_dir("index naming a tensor not in its shard", d, PP_STATUS_BAD_FORMAT, "'zz'", 0);
    free(d);

    d = new_dir("tensor_in_two_shards");
    write_one_tensor_file(d, "s1.safetensors", "a");
    image two = make_image("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                           "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                           2);
    write_file(d, "s2.safetensors", two.bytes, two.len);
    free_image(&two);
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}}");
    expect_dir("tensor present in two shards", d, PP_STATUS_BAD_FORMAT, "present in two shards",
               0);
    free(d);

    d = new_dir("shard_path_escape");
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"../s1.safetensors\"}}");
    expect_dir("shard name with a path", d, PP_STATUS_BAD_FORMAT, "plain file name", 0);
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"..\"}}");
    expect_dir("shard name '..'", d, PP_STATUS_BAD_FORMAT, "plain file name", 0);
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":3}}");
    expect_dir("shard name not a string", d, PP_STATUS_BAD_FORMAT, NULL, 0);
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"");
    expect_dir("index not JSON", d, PP_STATUS_BAD_FORMAT, NULL, 0);
    write_text(d, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_dir("index without weight_map", d, PP_STATUS_BAD_FORMAT, "weight_map", 0);
    free(d);

    d = new_dir("bad_shard");
    write_text(d, "s1.safetensors", "junk");
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"}}");
    expect_dir("index naming a malformed shard", d, PP_STATUS_BAD_FORMAT, "s1.safetensors", 0);
    free(d);

    d = new_dir("empty");
    expect_dir("no safetensors", d, PP_STATUS_NOT_FOUND, "no safetensors weights in", 0);
    write_text(d, "config.json", "{}");
    expect_dir("config but no safetensors", d, PP_STATUS_NOT_FOUND, "no safetensors weights", 0);
    write_one_tensor_file(d, "weights.safetensors", "only");
    expect_dir("single oddly named file", d, PP_STATUS_OK, NULL, 1);
    write_one_tensor_file(d, "more.safetensors", "other");
    expect_dir("two files, no index", d, PP_STATUS_BAD_FORMAT, NULL, 0);
    write_one_tensor_file(d, "model.safetensors", "main");
    expect_dir("model.safetensors preferred", d, PP_STATUS_OK, NULL, 1);
    free(d);

    d = path_of(tmp_root, "does_not_exist");
    expect_dir("missing directory", d, PP_STATUS_NOT_FOUND, NULL, 0);
    free(d);
}

/* ---- config ---------------------------------------------------------------------------------- */

static const char qwen_cfg[] =
    "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 512, \"hidden_size\": 128,"
    " \"intermediate_size\": 256, \"moe_intermediate_size\": 64, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 48,"
    " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000000.0, \"rope_scaling\": null,"
    " \"num_experts\": 8, \"num_experts_per_tok\": 2, \"norm_topk_prob\": true,"
    " \"decoder_sparse_step\": 1, \"mlp_only_layers\": [], \"tie_word_embeddings\": false,"
    " \"sliding_window\": null, \"bos_token_id\": 509, \"eos_token_id\": 510}";

static const char phi_cfg[] =
    "{\"model_type\": \"phi3\", \"vocab_size\": 512, \"hidden_size\": 128,"
    " \"intermediate_size\": 352, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-05,"
    " \"rope_theta\": 500000.0, \"rope_scaling\": null, \"partial_rotary_factor\": 1.0,"
    " \"attention_bias\": false, \"sliding_window\": null, \"bos_token_id\": 500,"
    " \"eos_token_id\": 501}";

static const char kimi_cfg[] =
    "{\"model_type\": \"kimi_k2\", \"vocab_size\": 512, \"hidden_size\": 128,"
    " \"intermediate_size\": 320, \"moe_intermediate_size\": 48, \"num_hidden_layers\": 3,"
    " \"first_k_dense_replace\": 1, \"num_attention_heads\": 4, \"num_key_value_heads\": 4,"
    " \"q_lora_rank\": 96, \"kv_lora_rank\": 64, \"qk_nope_head_dim\": 32,"
    " \"qk_rope_head_dim\": 16, \"v_head_dim\": 32, \"n_routed_experts\": 8,"
    " \"num_experts_per_tok\": 2, \"n_shared_experts\": 1, \"n_group\": 1, \"topk_group\": 1,"
    " \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\","
    " \"routed_scaling_factor\": 2.827, \"norm_topk_prob\": true,"
    " \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-06, \"rope_theta\": 50000.0,"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 32.0,"
    " \"original_max_position_embeddings\": 4096, \"beta_fast\": 1.0, \"beta_slow\": 1.0,"
    " \"mscale\": 1.0, \"mscale_all_dim\": 1.0}, \"bos_token_id\": 507, \"eos_token_id\": 508}";

/* base with the first occurrence of `from` replaced by `to` (malloc'd). */
static char *edit(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    if (!at) {
        fprintf(stderr, "test bug: '%s' not in base config\n", from);
        exit(1);
    }
    size_t n = strlen(base) - strlen(from) + strlen(to) + 1;
    char *s = malloc(n);
    if (!s) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    size_t head = (size_t)(at - base);
    memcpy(s, base, head);
    strcpy(s + head, to);
    strcat(s, at + strlen(from));
    return s;
}

static pp_status parse_cfg(const char *what, const char *text, pp_status want,
                           const char *msg_part, eng_config *cfg)
{
    eng_err err = {{0}};
    pp_status st = eng_config_parse(text, strlen(text), cfg, &err);
    CHECK(st == want, "%s: eng_config_parse gave %s (%s), want %s", what, st_name(st), err.msg,
          st_name(want));
    if (st != PP_STATUS_OK && msg_part)
        CHECK(strstr(err.msg, msg_part) != NULL, "%s: message '%s' lacks '%s'", what, err.msg,
              msg_part);
    if (st != PP_STATUS_OK && verbose)
        printf("  %-40s %s\n", what, err.msg);
    return st;
}

/* Parses base with one edit applied. */
static pp_status parse_edit(const char *what, const char *base, const char *from, const char *to,
                            pp_status want, const char *msg_part, eng_config *cfg)
{
    char *text = edit(base, from, to);
    pp_status st = parse_cfg(what, text, want, msg_part, cfg);
    free(text);
    return st;
}

static void test_config_errors(void)
{
    eng_config cfg;
    parse_edit("hidden_size as string", qwen_cfg, "\"hidden_size\": 128", "\"hidden_size\": \"128\"",
               PP_STATUS_BAD_FORMAT, "key 'hidden_size' must be an integer, got string", &cfg);
    parse_edit("hidden_size as bool", qwen_cfg, "\"hidden_size\": 128", "\"hidden_size\": true",
               PP_STATUS_BAD_FORMAT, "must be an integer, got boolean", &cfg);
    parse_edit("hidden_size fractional", qwen_cfg, "\"hidden_size\": 128",
               "\"hidden_size\": 128.5", PP_STATUS_BAD_FORMAT, "non-integral", &cfg);
    parse_edit("hidden_size huge", qwen_cfg, "\"hidden_size\": 128",
               "\"hidden_size\": 1000000000000", PP_STATUS_BAD_FORMAT, "out of range", &cfg);
    parse_edit("hidden_size zero", qwen_cfg, "\"hidden_size\": 128", "\"hidden_size\": 0",
               PP_STATUS_BAD_FORMAT, "hidden_size", &cfg);
    parse_edit("layers absurd", qwen_cfg, "\"num_hidden_layers\": 3",
               "\"num_hidden_layers\": 5000", PP_STATUS_BAD_FORMAT, "num_hidden_layers", &cfg);
    parse_edit("unknown model_type", qwen_cfg, "qwen3_moe", "llama", PP_STATUS_UNSUPPORTED,
               "unsupported model_type 'llama' (supported: kimi_k2, deepseek_v3, qwen3_moe, phi3)",
               &cfg);
    parse_edit("missing model_type", qwen_cfg, "\"model_type\": \"qwen3_moe\",", "",
               PP_STATUS_BAD_FORMAT, "model_type", &cfg);
    parse_edit("missing hidden_size", qwen_cfg, "\"hidden_size\": 128,", "",
               PP_STATUS_BAD_FORMAT, "missing required key 'hidden_size'", &cfg);
    parse_edit("missing rms_norm_eps", phi_cfg, "\"rms_norm_eps\": 1e-05,", "",
               PP_STATUS_BAD_FORMAT, "rms_norm_eps", &cfg);
    parse_edit("rms_norm_eps zero", phi_cfg, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0",
               PP_STATUS_BAD_FORMAT, "rms_norm_eps", &cfg);
    parse_edit("kv heads not dividing heads", qwen_cfg, "\"num_key_value_heads\": 2",
               "\"num_key_value_heads\": 3", PP_STATUS_BAD_FORMAT, "not a multiple", &cfg);
    parse_edit("hidden not divisible by heads (phi3)", phi_cfg, "\"num_attention_heads\": 4",
               "\"num_attention_heads\": 6", PP_STATUS_BAD_FORMAT, "hidden_size", &cfg);
    parse_edit("hidden not divisible by heads (phi3, kv ok)", phi_cfg,
               "\"num_attention_heads\": 4, \"num_key_value_heads\": 2",
               "\"num_attention_heads\": 3, \"num_key_value_heads\": 3", PP_STATUS_BAD_FORMAT,
               "not a multiple of num_attention_heads", &cfg);
    parse_edit("rope_scaling longrope", phi_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1], "
               "\"long_factor\": [1]}",
               PP_STATUS_UNSUPPORTED, "longrope", &cfg);
    parse_edit("rope_scaling dynamic", qwen_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}",
               PP_STATUS_UNSUPPORTED, "dynamic", &cfg);
    parse_edit("rope_scaling without type", qwen_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": {\"factor\": 2.0}", PP_STATUS_BAD_FORMAT, "rope_type", &cfg);
    parse_edit("rope_scaling yarn without factor", qwen_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": {\"rope_type\": \"yarn\"}", PP_STATUS_BAD_FORMAT,
               "rope_scaling.factor", &cfg);
    parse_edit("rope_scaling factor negative", qwen_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": -2}",
               PP_STATUS_BAD_FORMAT, "factor", &cfg);
    parse_edit("rope_scaling a string", qwen_cfg, "\"rope_scaling\": null",
               "\"rope_scaling\": \"yarn\"", PP_STATUS_BAD_FORMAT, "rope_scaling", &cfg);
    parse_edit("tie_word_embeddings as string", qwen_cfg, "\"tie_word_embeddings\": false",
               "\"tie_word_embeddings\": \"false\"", PP_STATUS_BAD_FORMAT,
               "tie_word_embeddings", &cfg);
    parse_edit("eps as string", qwen_cfg, "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": \"1e-6\"",
               PP_STATUS_BAD_FORMAT, "must be a number, got string", &cfg);
    parse_edit("top-k above experts", qwen_cfg, "\"num_experts_per_tok\": 2",
               "\"num_experts_per_tok\": 9", PP_STATUS_BAD_FORMAT, "num_experts_per_tok", &cfg);
    parse_edit("mlp_only_layers out of range", qwen_cfg, "\"mlp_only_layers\": []",
               "\"mlp_only_layers\": [3]", PP_STATUS_BAD_FORMAT, "mlp_only_layers[0]", &cfg);
    parse_edit("all-MoE model without intermediate_size", qwen_cfg, "\"intermediate_size\": 256,",
               "", PP_STATUS_OK, NULL, &cfg);
    {
        char *a = edit(qwen_cfg, "\"intermediate_size\": 256,", "");
        char *b = edit(a, "\"mlp_only_layers\": []", "\"mlp_only_layers\": [1]");
        parse_cfg("dense layer needs intermediate_size", b, PP_STATUS_BAD_FORMAT,
                  "intermediate_size", &cfg);
        free(b);
        free(a);
    }
    parse_edit("decoder_sparse_step zero", qwen_cfg, "\"decoder_sparse_step\": 1",
               "\"decoder_sparse_step\": 0", PP_STATUS_BAD_FORMAT, "decoder_sparse_step", &cfg);
    parse_edit("odd head_dim", qwen_cfg, "\"head_dim\": 48", "\"head_dim\": 47",
               PP_STATUS_BAD_FORMAT, "head_dim", &cfg);
    parse_edit("sliding window (phi3)", phi_cfg, "\"sliding_window\": null",
               "\"sliding_window\": 2047", PP_STATUS_UNSUPPORTED, "sliding_window", &cfg);
    parse_edit("attention_bias (phi3)", phi_cfg, "\"attention_bias\": false",
               "\"attention_bias\": true", PP_STATUS_UNSUPPORTED, "attention_bias", &cfg);
    parse_edit("partial_rotary_factor > 1", phi_cfg, "\"partial_rotary_factor\": 1.0",
               "\"partial_rotary_factor\": 1.5", PP_STATUS_BAD_FORMAT, "partial_rotary_factor",
               &cfg);
    parse_edit("partial_rotary_factor odd width", phi_cfg, "\"partial_rotary_factor\": 1.0",
               "\"partial_rotary_factor\": 0.3", PP_STATUS_BAD_FORMAT, "even", &cfg);
    parse_edit("n_group not dividing experts", kimi_cfg, "\"n_group\": 1", "\"n_group\": 3",
               PP_STATUS_BAD_FORMAT, "n_group", &cfg);
    parse_edit("topk_group above n_group", kimi_cfg, "\"topk_group\": 1", "\"topk_group\": 2",
               PP_STATUS_BAD_FORMAT, "topk_group", &cfg);
    parse_edit("groups of one expert", kimi_cfg, "\"n_group\": 1", "\"n_group\": 8",
               PP_STATUS_BAD_FORMAT, "per group", &cfg);
    {
        char *a = edit(kimi_cfg, "\"n_group\": 1, \"topk_group\": 1",
                       "\"n_group\": 4, \"topk_group\": 1");
        char *b = edit(a, "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 3");
        parse_cfg("top-k above the selected groups", b, PP_STATUS_BAD_FORMAT, "topk_group", &cfg);
        free(b);
        free(a);
    }
    parse_edit("scoring softmax", kimi_cfg, "\"scoring_func\": \"sigmoid\"",
               "\"scoring_func\": \"softmax\"", PP_STATUS_UNSUPPORTED, "scoring_func", &cfg);
    parse_edit("topk_method unknown", kimi_cfg, "\"topk_method\": \"noaux_tc\"",
               "\"topk_method\": \"magic\"", PP_STATUS_UNSUPPORTED, "topk_method", &cfg);
    parse_edit("odd rope dim", kimi_cfg, "\"qk_rope_head_dim\": 16", "\"qk_rope_head_dim\": 15",
               PP_STATUS_BAD_FORMAT, "qk_rope_head_dim", &cfg);
    parse_edit("missing kv_lora_rank", kimi_cfg, "\"kv_lora_rank\": 64,", "",
               PP_STATUS_BAD_FORMAT, "kv_lora_rank", &cfg);
    parse_edit("eos list too long", qwen_cfg, "\"eos_token_id\": 510",
               "\"eos_token_id\": [1,2,3,4,5,6,7,8,9]", PP_STATUS_UNSUPPORTED, "eos_token_id",
               &cfg);
    parse_edit("eos out of vocab", qwen_cfg, "\"eos_token_id\": 510", "\"eos_token_id\": 512",
               PP_STATUS_BAD_FORMAT, "eos_token_id", &cfg);
    parse_edit("eos as string", qwen_cfg, "\"eos_token_id\": 510", "\"eos_token_id\": \"510\"",
               PP_STATUS_BAD_FORMAT, "eos_token_id", &cfg);
    parse_edit("quant method gptq", qwen_cfg, "\"sliding_window\": null",
               "\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}",
               PP_STATUS_UNSUPPORTED, "gptq", &cfg);
    parse_edit("fp8 bad block", qwen_cfg, "\"sliding_window\": null",
               "\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": "
               "[128, 0]}",
               PP_STATUS_BAD_FORMAT, "weight_block_size", &cfg);
    parse_edit("compressed-tensors 8 bit", kimi_cfg, "\"bos_token_id\"",
               "\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
               "\"pack-quantized\", \"config_groups\": {\"group_0\": {\"weights\": {\"num_bits\": "
               "8, \"type\": \"int\", \"symmetric\": true, \"strategy\": \"group\", "
               "\"group_size\": 32}}}}, \"bos_token_id\"",
               PP_STATUS_UNSUPPORTED, "num_bits 8", &cfg);
    parse_edit("compressed-tensors float format", kimi_cfg, "\"bos_token_id\"",
               "\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": "
               "\"float-quantized\", \"config_groups\": {}}, \"bos_token_id\"",
               PP_STATUS_UNSUPPORTED, NULL, &cfg);
    parse_cfg("not JSON", "{\"model_type\": ", PP_STATUS_BAD_FORMAT, "JSON", &cfg);
    parse_cfg("empty text", "", PP_STATUS_BAD_FORMAT, "JSON", &cfg);
    parse_cfg("array", "[]", PP_STATUS_BAD_FORMAT, "object", &cfg);
    parse_edit("trailing garbage", qwen_cfg, "\"eos_token_id\": 510}",
               "\"eos_token_id\": 510} {", PP_STATUS_BAD_FORMAT, "after", &cfg);
}

static void test_config_values(void)
{
    eng_config cfg;
    if (parse_cfg("qwen base", qwen_cfg, PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK) {
        CHECK(cfg.arch == ENG_ARCH_QWEN3_MOE && cfg.d_head == 48 && cfg.d_rope == 48 &&
                  cfg.d_v == 48 && cfg.n_head_kv == 2 && cfg.n_expert == 8 &&
                  cfg.n_expert_used == 2 && cfg.d_ff_expert == 64 && cfg.norm_topk_prob &&
                  !cfg.rope_interleave && cfg.rope_kind == ENG_ROPE_DEFAULT &&
                  cfg.rope_theta == 1e7 && cfg.max_position_embeddings == 4096,
              "qwen base values");
        CHECK(cfg.n_eos == 1 && cfg.eos_token_ids[0] == 510 && cfg.bos_token_id == 509,
              "qwen eos as int");
        CHECK(eng_config_layer_is_moe(&cfg, 0) && eng_config_layer_is_moe(&cfg, 2) &&
                  !eng_config_layer_is_moe(&cfg, 3),
              "qwen layer kinds");
    }
    if (parse_edit("eos as list", qwen_cfg, "\"eos_token_id\": 510", "\"eos_token_id\": [510, 3]",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.n_eos == 2 && cfg.eos_token_ids[0] == 510 && cfg.eos_token_ids[1] == 3 &&
                  cfg.eos_token_ids[2] == -1,
              "eos list");
    if (parse_edit("eos null", qwen_cfg, "\"eos_token_id\": 510", "\"eos_token_id\": null",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.n_eos == 0, "eos null gives none");
    if (parse_edit("integral double", qwen_cfg, "\"hidden_size\": 128", "\"hidden_size\": 128.0",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.d_model == 128, "hidden_size 128.0");
    if (parse_edit("mlp_only_layers + sparse step", qwen_cfg,
                   "\"decoder_sparse_step\": 1, \"mlp_only_layers\": []",
                   "\"decoder_sparse_step\": 2, \"mlp_only_layers\": [0]", PP_STATUS_OK, NULL,
                   &cfg) == PP_STATUS_OK)
        CHECK(!eng_config_layer_is_moe(&cfg, 0) && eng_config_layer_is_moe(&cfg, 1) &&
                  !eng_config_layer_is_moe(&cfg, 2) && cfg.d_ff == 256,
              "sparse step layer kinds");
    if (parse_edit("rope_type yarn", qwen_cfg, "\"rope_scaling\": null",
                   "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0, "
                   "\"original_max_position_embeddings\": 262144}",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.rope_kind == ENG_ROPE_YARN && cfg.rope_factor == 4.0 &&
                  cfg.rope_orig_max_pos == 262144 && cfg.yarn_beta_fast == 32.0 &&
                  cfg.yarn_beta_slow == 1.0 && cfg.yarn_mscale == 0.0 &&
                  cfg.yarn_mscale_all_dim == 0.0 && cfg.yarn_attention_factor < 0 &&
                  cfg.yarn_truncate,
              "rope_type yarn defaults");
    if (parse_edit("rope linear", qwen_cfg, "\"rope_scaling\": null",
                   "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", PP_STATUS_OK, NULL,
                   &cfg) == PP_STATUS_OK)
        CHECK(cfg.rope_kind == ENG_ROPE_LINEAR && cfg.rope_factor == 2.0, "rope linear");
    if (parse_edit("rope_parameters default", qwen_cfg, "\"rope_scaling\": null",
                   "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 12345.0}",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.rope_kind == ENG_ROPE_DEFAULT && cfg.rope_theta == 12345.0,
              "rope_parameters theta");
    if (parse_edit("rope_parameters yarn", qwen_cfg, "\"rope_scaling\": null",
                   "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 8, "
                   "\"rope_theta\": 20000, \"beta_fast\": 16, \"truncate\": false, "
                   "\"attention_factor\": 1.5}",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.rope_kind == ENG_ROPE_YARN && cfg.rope_factor == 8.0 &&
                  cfg.rope_theta == 20000.0 && cfg.yarn_beta_fast == 16.0 && !cfg.yarn_truncate &&
                  cfg.yarn_attention_factor == 1.5 && cfg.rope_orig_max_pos == 4096,
              "rope_parameters yarn");
    if (parse_cfg("phi base", phi_cfg, PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.arch == ENG_ARCH_PHI3 && cfg.d_head == 32 && cfg.d_rope == 32 &&
                  cfg.n_expert == 0 && cfg.d_ff == 352 && !eng_config_layer_is_moe(&cfg, 0) &&
                  cfg.norm_eps == 1e-5f && cfg.partial_rotary_factor == 1.0,
              "phi base values");
    if (parse_edit("phi partial rotary", phi_cfg, "\"partial_rotary_factor\": 1.0",
                   "\"partial_rotary_factor\": 0.75", PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.d_rope == 24, "phi partial rotary d_rope = %d", cfg.d_rope);
    if (parse_cfg("kimi base", kimi_cfg, PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK) {
        CHECK(cfg.arch == ENG_ARCH_DEEPSEEK_V3 && cfg.d_head == 48 && cfg.d_rope == 16 &&
                  cfg.d_nope == 32 && cfg.d_v == 32 && cfg.q_lora_rank == 96 &&
                  cfg.kv_lora_rank == 64 && cfg.rope_interleave && cfg.scoring_sigmoid &&
                  cfg.routed_scaling_factor == 2.827 && cfg.n_shared_experts == 1 &&
                  cfg.first_k_dense_replace == 1 && cfg.rope_kind == ENG_ROPE_YARN &&
                  cfg.rope_factor == 32.0 && cfg.rope_orig_max_pos == 4096 &&
                  cfg.yarn_beta_fast == 1.0 && cfg.yarn_mscale == 1.0 &&
                  cfg.yarn_mscale_all_dim == 1.0 && cfg.quant == ENG_QUANT_NONE,
              "kimi base values");
        CHECK(!eng_config_layer_is_moe(&cfg, 0) && eng_config_layer_is_moe(&cfg, 1) &&
                  eng_config_layer_is_moe(&cfg, 2),
              "kimi layer kinds");
        CHECK(strcmp(cfg.model_type, "kimi_k2") == 0 &&
                  strcmp(eng_arch_name(cfg.arch), "deepseek_v3") == 0,
              "kimi names");
    }
    if (parse_edit("q_lora_rank null, interleave false", kimi_cfg, "\"q_lora_rank\": 96",
                   "\"q_lora_rank\": null, \"rope_interleave\": false", PP_STATUS_OK, NULL,
                   &cfg) == PP_STATUS_OK)
        CHECK(cfg.q_lora_rank == 0 && !cfg.rope_interleave, "q_lora_rank null");
    if (parse_edit("grouped routing", kimi_cfg, "\"n_group\": 1, \"topk_group\": 1",
                   "\"n_group\": 4, \"topk_group\": 2", PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.n_group == 4 && cfg.topk_group == 2, "grouped routing");
    if (parse_edit("fp8 default block", kimi_cfg, "\"bos_token_id\"",
                   "\"quantization_config\": {\"quant_method\": \"fp8\", \"activation_scheme\": "
                   "\"dynamic\"}, \"bos_token_id\"",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.quant == ENG_QUANT_FP8_BLOCK && cfg.quant_block_out == 128 &&
                  cfg.quant_block_in == 128,
              "fp8 default block");
    if (parse_edit("fp8 ragged block", kimi_cfg, "\"bos_token_id\"",
                   "\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": "
                   "[64, 32]}, \"bos_token_id\"",
                   PP_STATUS_OK, NULL, &cfg) == PP_STATUS_OK)
        CHECK(cfg.quant_block_out == 64 && cfg.quant_block_in == 32, "fp8 block [64, 32]");
}

static void test_config_load(void)
{
    eng_config cfg;
    eng_err err = {{0}};
    char *d = new_dir("cfg_none");
    pp_status st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_NOT_FOUND && strstr(err.msg, "is not a model directory: no config.json"),
          "directory without config.json gave %s (%s)", st_name(st), err.msg);

    write_text(d, "config.json", qwen_cfg);
    write_text(d, "generation_config.json",
               "{\"bos_token_id\": 7, \"eos_token_id\": [11, 12], \"temperature\": 0.6}");
    st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_OK, "config + generation_config: %s (%s)", st_name(st), err.msg);
    if (st == PP_STATUS_OK)
        CHECK(cfg.bos_token_id == 7 && cfg.n_eos == 2 && cfg.eos_token_ids[0] == 11 &&
                  cfg.eos_token_ids[1] == 12,
              "generation_config overrides token ids");

    write_text(d, "generation_config.json", "{\"temperature\": 0.6}");
    st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_OK && cfg.n_eos == 1 && cfg.eos_token_ids[0] == 510,
          "generation_config without ids keeps config.json's");

    write_text(d, "generation_config.json", "{\"eos_token_id\": ");
    st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_BAD_FORMAT && strstr(err.msg, "generation_config.json"),
          "malformed generation_config gave %s (%s)", st_name(st), err.msg);

    write_text(d, "generation_config.json", "{\"eos_token_id\": \"x\"}");
    st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_BAD_FORMAT, "generation_config eos string gave %s", st_name(st));

    char *bad = edit(qwen_cfg, "\"hidden_size\": 128", "\"hidden_size\": \"x\"");
    write_text(d, "config.json", bad);
    free(bad);
    st = eng_config_load(d, &cfg, &err);
    CHECK(st == PP_STATUS_BAD_FORMAT && strstr(err.msg, d) && strstr(err.msg, "hidden_size"),
          "bad config.json in a directory gave %s (%s)", st_name(st), err.msg);
    free(d);

    CHECK(strcmp(eng_arch_name(ENG_ARCH_QWEN3_MOE), "qwen3_moe") == 0 &&
              strcmp(eng_arch_name(ENG_ARCH_PHI3), "phi3") == 0,
          "eng_arch_name");
}

/* ---- fixtures -------------------------------------------------------------------------------- */

struct fixture {
    const char *name;
    eng_arch arch;
    int d_model, n_layer, n_head, n_head_kv, d_head, n_expert;
    eng_quant quant;
    size_t n_tensors;
    eng_dtype bias_dtype; /* layer-1 e_score_correction_bias, UNKNOWN when none */
};

static const struct fixture fixtures[] = {
    {"kimi_k2_fp8_tiny", ENG_ARCH_DEEPSEEK_V3, 256, 3, 4, 4, 96, 8, ENG_QUANT_FP8_BLOCK, 163,
     ENG_DTYPE_F32},
    {"kimi_k2_int4_tiny", ENG_ARCH_DEEPSEEK_V3, 128, 3, 4, 4, 48, 8, ENG_QUANT_INT4_GROUP, 187,
     ENG_DTYPE_UNKNOWN},
    {"kimi_k2_tiny", ENG_ARCH_DEEPSEEK_V3, 128, 3, 4, 4, 48, 8, ENG_QUANT_NONE, 91,
     ENG_DTYPE_BF16},
    {"phi4_tiny", ENG_ARCH_PHI3, 128, 3, 4, 2, 32, 0, ENG_QUANT_NONE, 21, ENG_DTYPE_UNKNOWN},
    {"qwen3_moe_tiny", ENG_ARCH_QWEN3_MOE, 128, 3, 4, 2, 48, 8, ENG_QUANT_NONE, 102,
     ENG_DTYPE_UNKNOWN},
};

static void test_fixture(const char *fixtures_dir, const struct fixture *fx)
{
    char rel[256];
    snprintf(rel, sizeof rel, "tiny/%s", fx->name);
    char *dir = path_of(fixtures_dir, rel);
    eng_err err = {{0}};
    eng_config cfg;
    pp_status st = eng_config_load(dir, &cfg, &err);
    CHECK(st == PP_STATUS_OK, "%s: eng_config_load: %s (%s)", fx->name, st_name(st), err.msg);
    if (st == PP_STATUS_OK) {
        CHECK(cfg.arch == fx->arch && cfg.d_model == fx->d_model && cfg.n_layer == fx->n_layer &&
                  cfg.n_head == fx->n_head && cfg.n_head_kv == fx->n_head_kv &&
                  cfg.d_head == fx->d_head && cfg.n_expert == fx->n_expert &&
                  cfg.quant == fx->quant && cfg.n_vocab == 512,
              "%s: config values (arch %d d_model %d n_layer %d heads %d/%d d_head %d experts %d "
              "quant %d)",
              fx->name, cfg.arch, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_head_kv,
              cfg.d_head, cfg.n_expert, cfg.quant);
        if (fx->quant == ENG_QUANT_INT4_GROUP)
            CHECK(cfg.quant_group == 32, "%s: group size %d", fx->name, cfg.quant_group);
    }

    eng_st_set *set = NULL;
    st = eng_st_open_dir(dir, &set, &err);
    CHECK(st == PP_STATUS_OK, "%s: eng_st_open_dir: %s (%s)", fx->name, st_name(st), err.msg);
    if (st == PP_STATUS_OK) {
        CHECK(eng_st_count(set) == fx->n_tensors, "%s: %zu tensors, want %zu", fx->name,
              eng_st_count(set), fx->n_tensors);
        const eng_st_tensor *emb = eng_st_find(set, "model.embed_tokens.weight");
        CHECK(emb && emb->dtype == ENG_DTYPE_BF16 && emb->n_dim == 2 && emb->shape[0] == 512 &&
                  emb->shape[1] == fx->d_model,
              "%s: embed_tokens descriptor", fx->name);
        const eng_st_tensor *bias =
            eng_st_find(set, "model.layers.1.mlp.gate.e_score_correction_bias");
        if (fx->bias_dtype != ENG_DTYPE_UNKNOWN)
            CHECK(bias && bias->dtype == fx->bias_dtype && bias->n_dim == 1 &&
                      bias->shape[0] == fx->n_expert,
                  "%s: e_score_correction_bias is %s", fx->name,
                  bias ? eng_dtype_name(bias->dtype) : "absent");
        size_t total = 0;
        for (size_t i = 0; i < eng_st_count(set); i++) {
            const eng_st_tensor *t = eng_st_at(set, i);
            total += t->n_bytes;
            CHECK(eng_st_find(set, t->name) == t, "%s: find(%s)", fx->name, t->name);
            if (i > 0)
                CHECK(strcmp(eng_st_at(set, i - 1)->name, t->name) < 0, "%s: order at %zu",
                      fx->name, i);
        }
        CHECK(total == eng_st_total_bytes(set), "%s: total bytes", fx->name);
        eng_st_set_close(set);
    }
    free(dir);
}

static size_t weight_map_size(const char *dir)
{
    char *path = path_of(dir, "model.safetensors.index.json");
    struct json_object *root = json_object_from_file(path);
    free(path);
    struct json_object *map = NULL;
    size_t n = 0;
    if (root && json_object_object_get_ex(root, "weight_map", &map))
        n = (size_t)json_object_object_length(map);
    json_object_put(root);
    return n;
}

static void test_nano(const char *dir)
{
    eng_err err = {{0}};
    eng_config cfg;
    pp_status st = eng_config_load(dir, &cfg, &err);
    CHECK(st == PP_STATUS_OK, "qwen nano config: %s (%s)", st_name(st), err.msg);
    if (st == PP_STATUS_OK)
        CHECK(cfg.arch == ENG_ARCH_QWEN3_MOE && cfg.n_vocab == 8000 && cfg.d_head == 64 &&
                  cfg.n_eos == 2 && cfg.eos_token_ids[0] == 7999 &&
                  cfg.eos_token_ids[1] == 7997 && cfg.bos_token_id == 7997,
              "qwen nano config values (eos from generation_config.json)");
    eng_st_set *set = NULL;
    st = eng_st_open_dir(dir, &set, &err);
    CHECK(st == PP_STATUS_OK, "qwen nano weights: %s (%s)", st_name(st), err.msg);
    if (st == PP_STATUS_OK) {
        size_t want = weight_map_size(dir);
        CHECK(want > 0 && eng_st_count(set) == want, "qwen nano: %zu tensors, weight_map has %zu",
              eng_st_count(set), want);
        CHECK(eng_st_find(set, "lm_head.weight") != NULL &&
                  eng_st_find(set, "model.layers.2.mlp.gate.weight") != NULL,
              "qwen nano lookups");
        eng_st_set_close(set);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s FIXTURES_DIR [QWEN_NANO_DIR]\n", argv[0]);
        return 1;
    }
    const char *v = getenv("TEST_LOADERS_VERBOSE");
    verbose = v && v[0] && strcmp(v, "0") != 0;
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }

    test_st_malformed();
    test_st_valid();
    test_st_dirs();
    test_config_errors();
    test_config_values();
    test_config_load();
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        test_fixture(argv[1], &fixtures[i]);

    if (argc == 3) {
        test_nano(argv[2]);
    } else {
        char *nano = path_of(argv[1], "../../models/qwen3_coder_nano");
        struct stat sb;
        if (stat(nano, &sb) == 0)
            test_nano(nano);
        else
            printf("note: %s absent, sharded nano check skipped\n", nano);
        free(nano);
    }

    nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    printf("test_loaders: %d checks, %d failed\n", n_checks, n_failed);
    return n_failed ? 1 : 0;
}
