/* paraphym.c: the command line.
 *
 *   paraphym run        [--model DIR] --prompt TEXT [--chat] [--system TEXT] [sampling options]
 *   paraphym logits     [--model DIR] --ids 3,17,42 [--prefill N] [--mla naive|absorbed]
 *   paraphym perplexity [--model DIR] --file F [--ctx 256] [--max-tokens 32768]
 *   (run, logits and perplexity take --backend cpu|cuda|auto, default auto: cuda when a CUDA
 *   device is present, else cpu, --quant none|fp8|int8|int4: on-load quantization, and
 *   --dtype f32|bf16|auto: the compute mode, default auto: bf16 on cuda, f32 on cpu)
 *   paraphym tokenize   [--model DIR]          (text on stdin -> JSON array of ids)
 *   paraphym detokenize [--model DIR]          (JSON array of ids on stdin -> text)
 *   paraphym info       [--model DIR]
 *
 * Without --model, the embedded default model (the Qwen3-Coder nano model committed under
 * models/) is used. stdout carries only the result; progress, timings and errors go to stderr;
 * a failure exits non-zero (2 for bad usage, 1 otherwise).
 */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "eval.h"
#include "generate.h"
#include "model.h"
#include "tokenizer.h"

#ifndef PP_DEFAULT_MODEL_DIR
#define PP_DEFAULT_MODEL_DIR "models/qwen3_coder_nano"
#endif

#define MAX_STOP 16

static void usage(FILE *f)
{
    fprintf(f,
            "paraphym %s: LLM inference for Kimi K2, Qwen3-Coder and Phi-4-reasoning\n"
            "\n"
            "usage:\n"
            "  paraphym run [--model DIR] --prompt TEXT [--chat] [--system TEXT] [--max-tokens N]\n"
            "               [--temperature T] [--top-k K] [--top-p P] [--min-p P]\n"
            "               [--repetition-penalty R] [--stop S]... [--seed S] [--ctx N]\n"
            "               [--backend cpu|cuda|auto] [--dtype f32|bf16|auto] [--kv-dtype f32|bf16|auto]\n"
            "               [--act-quant none|fp8]\n"
            "      stream a completion of TEXT (with --chat: of a one-turn chat in the model's\n"
            "      template) to stdout. Sampling defaults come from generation_config.json;\n"
            "      --temperature 0 is greedy.\n"
            "  paraphym logits [--model DIR] --ids ID,ID,... [--backend cpu|cuda|auto] [--prefill N]\n"
            "                  [--mla naive|absorbed] [--threads N] [--dtype f32|bf16|auto]\n"
            "      print {\"logits\": [[...], ...]}, one row of n_vocab floats per input id.\n"
            "  paraphym perplexity [--model DIR] --file F [--ctx 256] [--max-tokens 32768]\n"
            "                      [--backend cpu|cuda|auto] [--dtype f32|bf16|auto]\n"
            "      print {\"perplexity\": x, \"tokens\": n} over the first max-tokens tokens of F in\n"
            "      windows of ctx tokens (n = predicted tokens).\n"
            "  paraphym tokenize [--model DIR]     read text on stdin, print its ids as JSON\n"
            "  paraphym detokenize [--model DIR]   read a JSON array of ids on stdin, print the text\n"
            "  paraphym info [--model DIR]         print the model's configuration as JSON\n"
            "\n"
            "--backend picks where the forward pass runs: cpu, cuda or auto (the default: cuda when a\n"
            "CUDA device is present, else cpu); --device N picks the CUDA device (default 0).\n"
            "--dtype picks the compute mode: f32 (f32 activations, the reference), bf16 (Hugging Face's\n"
            "bf16 path: every op's output rounded to bf16, accumulation in f32) or auto (the default:\n"
            "bf16 on cuda, f32 on cpu). The load line on stderr says which ran.\n"
            "--kv-dtype f32|bf16|auto: the KV cache's element type; auto (the default) is bf16 in the bf16\n"
            "mode (lossless there: half the memory and the bytes attention reads), f32 in the f32 mode.\n"
            "--quant none|fp8|int8|int4 (run, logits, perplexity) converts the decoder layers' bf16/f16/f32\n"
            "linear weights at load: fp8 e4m3 with 128x128 block scales, int8 with a scale per row, int4\n"
            "with a scale per 128 columns.\n"
            "--act-quant none|fp8 (with --dtype bf16) quantizes the input of every fp8 weight to e4m3 per\n"
            "128 columns (W8A8, as Hugging Face's FP8Linear); default none.\n"
            "\n"
            "Without --model the embedded Qwen3-Coder nano model is used (%s,\n"
            "or $PARAPHYM_DEFAULT_MODEL). DIR is a Hugging Face checkpoint directory.\n",
            pp_version(), PP_DEFAULT_MODEL_DIR);
}

typedef struct cli_opts {
    const char *model;
    const char *ids;
    const char *backend;
    int device; /* --device: the CUDA device */
    const char *mla;
    const char *quant;
    const char *dtype;
    const char *kv_dtype;
    const char *act_quant;
    const char *prompt;
    const char *system;
    const char *file;
    const char *stop[MAX_STOP];
    int n_stop;
    bool chat;
    int prefill; /* 0 = all */
    int threads;
    int ctx;
    int max_tokens;
    bool has_temperature, has_top_k, has_top_p, has_min_p, has_rep, has_seed;
    float temperature, top_p, min_p, rep;
    int top_k;
    uint64_t seed;
} cli_opts;

static int parse_int(const char *s, const char *flag, int lo, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > 1 << 30) {
        fprintf(stderr, "paraphym: %s expects an integer >= %d, got '%s'\n", flag, lo, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, const char *flag, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v)) {
        fprintf(stderr, "paraphym: %s expects a finite number, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, cli_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backend = NULL; /* the command's default: auto, cpu for info */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--chat") == 0) {
            o->chat = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "paraphym: %s needs a value (or is not an option); see paraphym --help\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (strcmp(a, "--model") == 0)
            o->model = v;
        else if (strcmp(a, "--ids") == 0)
            o->ids = v;
        else if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--device") == 0)
            rc = parse_int(v, a, 0, &o->device);
        else if (strcmp(a, "--mla") == 0)
            o->mla = v;
        else if (strcmp(a, "--quant") == 0)
            o->quant = v;
        else if (strcmp(a, "--dtype") == 0)
            o->dtype = v;
        else if (strcmp(a, "--kv-dtype") == 0)
            o->kv_dtype = v;
        else if (strcmp(a, "--act-quant") == 0)
            o->act_quant = v;
        else if (strcmp(a, "--prompt") == 0)
            o->prompt = v;
        else if (strcmp(a, "--system") == 0)
            o->system = v;
        else if (strcmp(a, "--file") == 0)
            o->file = v;
        else if (strcmp(a, "--stop") == 0) {
            if (o->n_stop == MAX_STOP || !v[0]) {
                fprintf(stderr, "paraphym: --stop takes a non-empty string, at most %d times\n", MAX_STOP);
                return -1;
            }
            o->stop[o->n_stop++] = v;
        } else if (strcmp(a, "--prefill") == 0)
            rc = parse_int(v, a, 1, &o->prefill);
        else if (strcmp(a, "--threads") == 0)
            rc = parse_int(v, a, 1, &o->threads);
        else if (strcmp(a, "--ctx") == 0)
            rc = parse_int(v, a, 2, &o->ctx);
        else if (strcmp(a, "--max-tokens") == 0)
            rc = parse_int(v, a, 1, &o->max_tokens);
        else if (strcmp(a, "--top-k") == 0) {
            rc = parse_int(v, a, 0, &o->top_k);
            o->has_top_k = true;
        } else if (strcmp(a, "--temperature") == 0) {
            rc = parse_float(v, a, &o->temperature);
            o->has_temperature = true;
        } else if (strcmp(a, "--top-p") == 0) {
            rc = parse_float(v, a, &o->top_p);
            o->has_top_p = true;
        } else if (strcmp(a, "--min-p") == 0) {
            rc = parse_float(v, a, &o->min_p);
            o->has_min_p = true;
        } else if (strcmp(a, "--repetition-penalty") == 0) {
            rc = parse_float(v, a, &o->rep);
            o->has_rep = true;
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (errno || end == v || *end || v[0] == '-') {
                fprintf(stderr, "paraphym: --seed expects a non-negative integer, got '%s'\n", v);
                return -1;
            }
            o->seed = s;
            o->has_seed = true;
        } else {
            fprintf(stderr, "paraphym: unknown option %s; see paraphym --help\n", a);
            return -1;
        }
        if (rc)
            return -1;
    }
    if (!o->model) {
        const char *env = getenv("PARAPHYM_DEFAULT_MODEL");
        o->model = env && env[0] ? env : PP_DEFAULT_MODEL_DIR;
    }
    return 0;
}

/* Parses "3,17,42" into a new array; returns the count or -1 with a message. */
static int parse_ids(const char *s, int32_t **out)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        fprintf(stderr, "paraphym: out of memory\n");
        return -1;
    }
    int n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "paraphym: --ids expects non-negative integers separated by commas, got '%s'\n", s);
            free(ids);
            return -1;
        }
        ids[n++] = (int32_t)v;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    *out = ids;
    return n;
}

static int load_model(const cli_opts *o, eng_model **model)
{
    eng_model_opts mo;
    eng_model_opts_default(&mo);
    mo.backend = o->backend ? o->backend : "auto";
    mo.n_threads = o->threads;
    mo.device = o->device;
    if (o->mla) {
        if (strcmp(o->mla, "naive") == 0)
            mo.mla = ENG_MLA_NAIVE;
        else if (strcmp(o->mla, "absorbed") == 0)
            mo.mla = ENG_MLA_ABSORBED;
        else {
            fprintf(stderr, "paraphym: --mla expects naive or absorbed, got '%s'\n", o->mla);
            return -1;
        }
    }
    eng_err err = {{0}};
    pp_status st = PP_STATUS_OK;
    if (o->quant && (st = eng_load_quant_parse(o->quant, &mo.quant, &err)) != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: --quant: %s\n", err.msg);
        return -1;
    }
    mo.dtype = ENG_DTYPE_MODE_AUTO;
    if (o->dtype && (st = eng_dtype_mode_parse(o->dtype, &mo.dtype, &err)) != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: --dtype: %s\n", err.msg);
        return -1;
    }
    if (o->kv_dtype && (st = eng_kv_mode_parse(o->kv_dtype, &mo.kv, &err)) != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: --kv-dtype: %s\n", err.msg);
        return -1;
    }
    if (o->act_quant && strcmp(o->act_quant, "fp8") != 0 && strcmp(o->act_quant, "none") != 0) {
        fprintf(stderr, "paraphym: --act-quant: unknown activation quantization '%s' (none or fp8)\n", o->act_quant);
        return -1;
    }
    mo.fp8_act_quant = o->act_quant && strcmp(o->act_quant, "fp8") == 0;
    st = eng_model_load(o->model, &mo, model, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
        return -1;
    }
    const eng_config *c = eng_model_config(*model);
    char quant[160] = "weights as stored";
    size_t n_quant, quant_bytes;
    eng_model_quant_stats(*model, &n_quant, &quant_bytes);
    if (mo.quant != ENG_LOADQ_NONE)
        snprintf(quant, sizeof quant, "%zu decoder weights quantized to %s at load (%.1f MiB)", n_quant,
                 eng_load_quant_name(mo.quant), (double)quant_bytes / (1 << 20));
    char device[32] = "";
    if (eng_model_device(*model) >= 0)
        snprintf(device, sizeof device, " (device %d)", eng_model_device(*model));
    fprintf(stderr,
            "paraphym: loaded %s (%s, %d layers, d_model %d, vocab %d) on backend %s%s%s, %s compute%s, %s KV cache, "
            "%s\n",
            o->model, c->model_type, c->n_layer, c->d_model, c->n_vocab, eng_model_backend_name(*model), device,
            strcmp(mo.backend, "auto") == 0 ? " (picked by --backend auto)" : "", eng_model_dtype_name(*model),
            mo.fp8_act_quant ? " with fp8 activations for fp8 weights" : "", eng_model_kv_name(*model), quant);
    return 0;
}

static int load_tokenizer(const cli_opts *o, eng_tokenizer **tok)
{
    eng_err err = {{0}};
    pp_status st = eng_tokenizer_load(o->model, tok, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
        return -1;
    }
    return 0;
}

/* Reads a whole stream into a malloc'ed buffer (NUL-terminated; *len excludes the NUL). */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
        if (n + 1 == cap) {
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
            cap *= 2;
        }
    }
    if (!buf || ferror(f)) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void print_row(const float *row, int n)
{
    putchar('[');
    for (int i = 0; i < n; i++)
        printf(i ? ",%.9g" : "%.9g", (double)row[i]);
    putchar(']');
}

static int cmd_logits(const cli_opts *o)
{
    if (!o->ids) {
        fprintf(stderr, "paraphym: logits needs --ids ID,ID,...\n");
        return 2;
    }
    int32_t *ids = NULL;
    int n = parse_ids(o->ids, &ids);
    if (n < 0)
        return 2;
    int prefill = o->prefill ? o->prefill : n;
    if (prefill > n) {
        fprintf(stderr, "paraphym: --prefill %d exceeds the %d ids given\n", prefill, n);
        free(ids);
        return 2;
    }
    eng_model *model = NULL;
    if (load_model(o, &model)) {
        free(ids);
        return 1;
    }
    int rc = 1;
    int n_vocab = eng_model_config(model)->n_vocab;
    float *logits = malloc((size_t)n * (size_t)n_vocab * sizeof(float));
    eng_session *sess = NULL;
    eng_err err = {{0}};
    pp_status st = logits ? eng_session_create(model, n, &sess, &err)
                          : eng_fail(&err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st == PP_STATUS_OK)
        st = eng_session_forward(sess, ids, prefill, logits, true, &err);
    for (int i = prefill; i < n && st == PP_STATUS_OK; i++)
        st = eng_session_forward(sess, ids + i, 1, logits + (size_t)i * (size_t)n_vocab, true, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
    } else {
        fputs("{\"logits\": [", stdout);
        for (int i = 0; i < n; i++) {
            if (i)
                putchar(',');
            print_row(logits + (size_t)i * (size_t)n_vocab, n_vocab);
        }
        fputs("]}\n", stdout);
        rc = fflush(stdout) == 0 ? 0 : 1;
    }
    eng_session_free(sess);
    eng_model_free(model);
    free(logits);
    free(ids);
    return rc;
}

static int cmd_info(const cli_opts *o)
{
    eng_model *model = NULL;
    cli_opts io = *o;
    if (!io.backend)
        io.backend = "cpu"; /* nothing is computed */
    if (load_model(&io, &model))
        return 1;
    const eng_config *c = eng_model_config(model);
    printf("{\"model_type\": \"%s\", \"arch\": \"%s\", \"n_vocab\": %d, \"d_model\": %d, \"n_layer\": %d, "
           "\"n_head\": %d, \"n_head_kv\": %d, \"n_expert\": %d, \"n_expert_used\": %d, "
           "\"max_position_embeddings\": %d, \"weight_bytes\": %zu}\n",
           c->model_type, eng_arch_name(c->arch), c->n_vocab, c->d_model, c->n_layer, c->n_head,
           c->n_head_kv, c->n_expert, c->n_expert_used, c->max_position_embeddings,
           eng_model_weight_bytes(model));
    eng_model_free(model);
    return 0;
}

static int cmd_tokenize(const cli_opts *o)
{
    eng_tokenizer *tok = NULL;
    if (load_tokenizer(o, &tok))
        return 1;
    size_t len = 0;
    char *text = read_all(stdin, &len);
    if (!text) {
        fprintf(stderr, "paraphym: cannot read stdin\n");
        eng_tokenizer_free(tok);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    eng_err err = {{0}};
    pp_status st = eng_tokenizer_encode(tok, text, len, true, &ids, &n, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++)
            printf(i ? ", %d" : "%d", ids[i]);
        fputs("]\n", stdout);
    }
    free(ids);
    free(text);
    eng_tokenizer_free(tok);
    return st == PP_STATUS_OK && fflush(stdout) == 0 ? 0 : 1;
}

static int cmd_detokenize(const cli_opts *o)
{
    eng_tokenizer *tok = NULL;
    if (load_tokenizer(o, &tok))
        return 1;
    size_t len = 0;
    char *text = read_all(stdin, &len);
    json_tokener *jt = json_tokener_new();
    json_object *arr = text && jt ? json_tokener_parse_ex(jt, text, (int)len) : NULL;
    int rc = 1;
    if (!arr || json_object_get_type(arr) != json_type_array) {
        fprintf(stderr, "paraphym: detokenize expects a JSON array of token ids on stdin\n");
        goto out;
    }
    size_t n = json_object_array_length(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_object *v = json_object_array_get_idx(arr, i);
        int64_t x = json_object_get_int64(v);
        if (json_object_get_type(v) != json_type_int || x < 0 || x > INT32_MAX) {
            fprintf(stderr, "paraphym: element %zu of the input is not a token id\n", i);
            free(ids);
            goto out;
        }
        ids[i] = (int32_t)x;
    }
    char *out = NULL;
    size_t out_len = 0;
    eng_err err = {{0}};
    pp_status st = eng_tokenizer_decode(tok, ids, n, &out, &out_len, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
    } else {
        fwrite(out, 1, out_len, stdout);
        rc = fflush(stdout) == 0 ? 0 : 1;
    }
    free(out);
    free(ids);
out:
    json_object_put(arr);
    if (jt)
        json_tokener_free(jt);
    free(text);
    eng_tokenizer_free(tok);
    return rc;
}

static void progress(void *user, size_t done, size_t total)
{
    (void)user;
    fprintf(stderr, "\rparaphym: perplexity %zu / %zu tokens", done, total);
    if (done == total)
        fputc('\n', stderr);
}

static int cmd_perplexity(const cli_opts *o)
{
    if (!o->file) {
        fprintf(stderr, "paraphym: perplexity needs --file F\n");
        return 2;
    }
    FILE *f = fopen(o->file, "rb");
    if (!f) {
        fprintf(stderr, "paraphym: cannot open %s: %s\n", o->file, strerror(errno));
        return 1;
    }
    size_t len = 0;
    char *text = read_all(f, &len);
    fclose(f);
    if (!text) {
        fprintf(stderr, "paraphym: cannot read %s\n", o->file);
        return 1;
    }
    eng_tokenizer *tok = NULL;
    eng_model *model = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    eng_err err = {{0}};
    if (load_tokenizer(o, &tok) || load_model(o, &model))
        goto out;
    pp_status st = eng_tokenizer_encode(tok, text, len, false, &ids, &n, &err);
    if (st == PP_STATUS_OK) {
        size_t limit = o->max_tokens ? (size_t)o->max_tokens : 32768;
        if (n > limit)
            n = limit;
        double ppl;
        size_t n_pred;
        st = eng_perplexity(model, ids, n, o->ctx ? o->ctx : 256, &ppl, &n_pred, progress, NULL, &err);
        if (st == PP_STATUS_OK) {
            printf("{\"perplexity\": %.9g, \"tokens\": %zu}\n", ppl, n_pred);
            rc = fflush(stdout) == 0 ? 0 : 1;
        }
    }
    if (st != PP_STATUS_OK)
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
out:
    free(ids);
    free(text);
    eng_model_free(model);
    eng_tokenizer_free(tok);
    return rc;
}

typedef struct run_stats {
    size_t prompt_tokens, completion_tokens;
    eng_finish finish;
    double t_first; /* time of the first chunk */
} run_stats;

static double now_s(void);

static bool write_chunk(void *user, const eng_chunk *ch)
{
    run_stats *rs = user;
    if (rs->t_first == 0.0)
        rs->t_first = now_s();
    rs->prompt_tokens = ch->prompt_tokens;
    rs->completion_tokens = ch->completion_tokens;
    rs->finish = ch->finish;
    if (ch->text_len) {
        fwrite(ch->text, 1, ch->text_len, stdout);
        fflush(stdout);
    }
    return !ferror(stdout);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Builds the one-turn chat's messages JSON: [{system}?, {user}]. */
static char *chat_messages_json(const char *system, const char *user)
{
    json_object *arr = json_object_new_array();
    if (system) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "role", json_object_new_string("system"));
        json_object_object_add(m, "content", json_object_new_string(system));
        json_object_array_add(arr, m);
    }
    json_object *m = json_object_new_object();
    json_object_object_add(m, "role", json_object_new_string("user"));
    json_object_object_add(m, "content", json_object_new_string(user));
    json_object_array_add(arr, m);
    char *s = strdup(json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN));
    json_object_put(arr);
    return s;
}

static int cmd_run(const cli_opts *o)
{
    if (!o->prompt) {
        fprintf(stderr, "paraphym: run needs --prompt TEXT\n");
        return 2;
    }
    if (o->system && !o->chat) {
        fprintf(stderr, "paraphym: --system needs --chat\n");
        return 2;
    }
    eng_tokenizer *tok = NULL;
    eng_model *model = NULL;
    char *prompt = NULL, *messages = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, prompt_len = 0;
    int rc = 1;
    eng_err err = {{0}};
    pp_status st = PP_STATUS_OK;
    if (load_tokenizer(o, &tok) || load_model(o, &model))
        goto out;
    eng_gen_params gp;
    eng_gen_params_default(&gp, model);
    if ((st = eng_sampling_load_defaults(o->model, &gp.sampling, &err)) != PP_STATUS_OK)
        goto fail;
    if (o->has_temperature)
        gp.sampling.temperature = o->temperature;
    if (o->has_top_k)
        gp.sampling.top_k = o->top_k;
    if (o->has_top_p)
        gp.sampling.top_p = o->top_p;
    if (o->has_min_p)
        gp.sampling.min_p = o->min_p;
    if (o->has_rep)
        gp.sampling.repetition_penalty = o->rep;
    gp.sampling.seed = o->has_seed ? o->seed : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    if ((st = eng_sampling_validate(&gp.sampling, &err)) != PP_STATUS_OK)
        goto fail;
    if (o->max_tokens)
        gp.max_tokens = o->max_tokens;
    gp.n_ctx = o->ctx;
    gp.stop = o->stop;
    gp.n_stop = (size_t)o->n_stop;
    if (o->chat) {
        const eng_config *c = eng_model_config(model);
        messages = chat_messages_json(o->system, o->prompt);
        if (!messages) {
            st = eng_fail(&err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
            goto fail;
        }
        if ((st = eng_chat_render(eng_chat_format_for(c->arch), messages, NULL, true, &prompt, &prompt_len,
                                  &err)) != PP_STATUS_OK)
            goto fail;
        int32_t end_turn = eng_tokenizer_special_id(tok, "<|im_end|>");
        if (end_turn >= 0 && gp.n_stop_ids < ENG_MAX_STOP_IDS)
            gp.stop_ids[gp.n_stop_ids++] = end_turn;
    }
    const char *text = prompt ? prompt : o->prompt;
    size_t text_len = prompt ? prompt_len : strlen(o->prompt);
    if ((st = eng_tokenizer_encode(tok, text, text_len, true, &ids, &n_ids, &err)) != PP_STATUS_OK)
        goto fail;
    fprintf(stderr, "paraphym: %zu prompt tokens; temperature %g, top_k %d, top_p %g, min_p %g, "
                    "repetition_penalty %g, seed %llu, max_tokens %d\n",
            n_ids, (double)gp.sampling.temperature, gp.sampling.top_k, (double)gp.sampling.top_p,
            (double)gp.sampling.min_p, (double)gp.sampling.repetition_penalty,
            (unsigned long long)gp.sampling.seed, gp.max_tokens);
    double t0 = now_s();
    run_stats rs = {0, 0, ENG_FINISH_NONE, 0.0};
    st = eng_generate(model, tok, ids, n_ids, &gp, write_chunk, &rs, &err);
    double t1 = now_s();
    if (st != PP_STATUS_OK)
        goto fail;
    fflush(stdout);
    double decode_s = t1 - (rs.t_first > 0 ? rs.t_first : t0);
    fprintf(stderr, "\nparaphym: finish %s; %zu prompt + %zu generated tokens in %.2f s "
                    "(first text after %.3f s, then %.1f tokens/s)\n",
            eng_finish_name(rs.finish), rs.prompt_tokens, rs.completion_tokens, t1 - t0,
            (rs.t_first > 0 ? rs.t_first : t1) - t0,
            rs.completion_tokens > 1 && decode_s > 0 ? (double)(rs.completion_tokens - 1) / decode_s : 0.0);
    if (strcmp(eng_model_backend_name(model), "cuda") == 0) {
        size_t graphs = 0, fallbacks = 0;
        eng_model_graph_counts(model, &graphs, &fallbacks);
        fprintf(stderr, "paraphym: %zu decode steps ran as CUDA graphs, %zu op by op (a first use, or a capture that failed) "
                        "(PARAPHYM_CUDA_GRAPHS=0 turns graphs off)\n", graphs, fallbacks);
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
out:
    free(ids);
    free(prompt);
    free(messages);
    eng_model_free(model);
    eng_tokenizer_free(tok);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("paraphym %s\n", pp_version());
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(const cli_opts *);
    } cmds[] = {
        {"run", cmd_run},           {"logits", cmd_logits},         {"perplexity", cmd_perplexity},
        {"tokenize", cmd_tokenize}, {"detokenize", cmd_detokenize}, {"info", cmd_info},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(argv[1], cmds[i].name) != 0)
            continue;
        cli_opts o;
        if (parse_opts(argc, argv, &o))
            return 2;
        if (strcmp(cmds[i].name, "logits") == 0 || strcmp(cmds[i].name, "info") == 0) {
            static char outbuf[1 << 16];
            setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
        }
        return cmds[i].fn(&o);
    }
    fprintf(stderr, "paraphym: unknown command '%s'; see paraphym --help\n", argv[1]);
    return 2;
}
