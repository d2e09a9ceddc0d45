/* paraphym.c: the command line.
 *
 *   paraphym logits --model DIR --ids 3,17,42 [--backend cpu] [--prefill N] [--mla naive|absorbed]
 *                   [--threads N]
 *   paraphym info   --model DIR
 *
 * stdout carries only the result (one JSON object); errors and progress go to stderr, and a
 * failure exits non-zero.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static void usage(FILE *f)
{
    fprintf(f,
            "paraphym %s: LLM inference for Kimi K2, Qwen3-Coder and Phi-4-reasoning\n"
            "\n"
            "usage:\n"
            "  paraphym logits --model DIR --ids ID,ID,... [--backend cpu] [--prefill N]\n"
            "                  [--mla naive|absorbed] [--threads N]\n"
            "      print {\"logits\": [[...], ...]}, one row of n_vocab floats per input id.\n"
            "      --prefill N runs the first N ids as one prefill and each later id as a\n"
            "      single-token decode step through the KV cache (default: all ids at once).\n"
            "  paraphym info --model DIR\n"
            "      print the model's configuration and weight size as JSON.\n",
            pp_version());
}

typedef struct cli_opts {
    const char *model;
    const char *ids;
    const char *backend;
    const char *mla;
    int prefill; /* 0 = all */
    int threads;
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

static int parse_opts(int argc, char **argv, cli_opts *o)
{
    memset(o, 0, sizeof *o);
    o->backend = "cpu";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "paraphym: %s needs a value (or is not an option); see paraphym --help\n", a);
            return -1;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--model") == 0)
            o->model = v;
        else if (strcmp(a, "--ids") == 0)
            o->ids = v;
        else if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--mla") == 0)
            o->mla = v;
        else if (strcmp(a, "--prefill") == 0) {
            if (parse_int(v, a, 1, &o->prefill))
                return -1;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_int(v, a, 1, &o->threads))
                return -1;
        } else {
            fprintf(stderr, "paraphym: unknown option %s; see paraphym --help\n", a);
            return -1;
        }
    }
    if (!o->model) {
        fprintf(stderr, "paraphym: --model DIR is required\n");
        return -1;
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
    mo.backend = o->backend;
    mo.n_threads = o->threads;
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
    pp_status st = eng_model_load(o->model, &mo, model, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", err.msg, pp_status_str(st));
        return -1;
    }
    const eng_config *c = eng_model_config(*model);
    fprintf(stderr, "paraphym: loaded %s (%s, %d layers, d_model %d, vocab %d) on backend %s, f32 compute\n",
            o->model, c->model_type, c->n_layer, c->d_model, c->n_vocab, eng_model_backend_name(*model));
    return 0;
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
    pp_status st = logits ? eng_session_create(model, n, &sess, &err) : PP_STATUS_OUT_OF_MEMORY;
    if (st == PP_STATUS_OK)
        st = eng_session_forward(sess, ids, prefill, logits, true, &err);
    for (int i = prefill; i < n && st == PP_STATUS_OK; i++)
        st = eng_session_forward(sess, ids + i, 1, logits + (size_t)i * (size_t)n_vocab, true, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "paraphym: %s (%s)\n", st == PP_STATUS_OUT_OF_MEMORY && !err.msg[0] ? "out of memory" : err.msg,
                pp_status_str(st));
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
    if (load_model(o, &model))
        return 1;
    const eng_config *c = eng_model_config(model);
    printf("{\"model_type\": \"%s\", \"arch\": \"%s\", \"n_vocab\": %d, \"d_model\": %d, \"n_layer\": %d, "
           "\"n_head\": %d, \"n_head_kv\": %d, \"n_expert\": %d, \"n_expert_used\": %d, "
           "\"weight_bytes\": %zu}\n",
           c->model_type, eng_arch_name(c->arch), c->n_vocab, c->d_model, c->n_layer, c->n_head,
           c->n_head_kv, c->n_expert, c->n_expert_used, eng_model_weight_bytes(model));
    eng_model_free(model);
    return 0;
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
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    cli_opts o;
    const char *cmd = argv[1];
    if (strcmp(cmd, "logits") != 0 && strcmp(cmd, "info") != 0) {
        fprintf(stderr, "paraphym: unknown command '%s'; see paraphym --help\n", cmd);
        return 2;
    }
    if (parse_opts(argc, argv, &o))
        return 2;
    return strcmp(cmd, "logits") == 0 ? cmd_logits(&o) : cmd_info(&o);
}
