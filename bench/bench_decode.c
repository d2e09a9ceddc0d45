/* bench_decode.c: decode-step throughput of a model on a backend, with CUDA graphs off and on.
 *
 *   bench_decode --model DIR [--backend cpu|cuda|auto] [--dtype f32|bf16|auto] [--batch 1,16,64]
 *                [--context 128] [--decode 64] [--graphs off,on]
 *
 * For each graphs setting (PARAPHYM_CUDA_GRAPHS=0 / 1, read when the backend is made, so the
 * model is loaded once per setting) and each batch size B: B sequences in one paged KV cache,
 * each prefilled with `context` tokens (a fixed pseudo-random sequence, rotated per sequence),
 * then 4 untimed decode steps (a new batch shape's first recordings may fall back: its workspace
 * grows) and `decode` timed steps of eng_forward_batch, one token per sequence, each sequence
 * fed its own greedy pick as a server decodes (the backend's argmax op: one int32 per sequence
 * comes back, no logits). Reports tokens/s over all sequences, p50 / p99 step latency and the
 * timed steps that ran as one CUDA graph. On the CPU there is nothing to record: "on" measures
 * the same path as "off".
 * Prints one JSON object per measurement on stdout and a markdown table on stderr. Exits 77 when
 * the cuda backend is asked for and there is no device.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "model.h"

#define MAX_LIST 16

typedef struct result {
    double tokens_per_s, p50_ms, p99_ms;
    size_t graphs, fallbacks; /* of the timed steps */
} result;

/* B sequences prefilled with ctx tokens each, 4 warm-up steps, then n_decode timed steps. Returns
 * 0, or -1 after printing the error. */
static int run_batch(eng_model *m, int B, int ctx, int n_decode, result *r)
{
    const eng_config *c = eng_model_config(m);
    enum { WARMUP = 4 };
    int n_ctx = ctx + WARMUP + n_decode;
    eng_err err = {{0}};
    eng_kv_cache *kv = NULL;
    eng_session **ss = calloc((size_t)B, sizeof *ss);
    eng_batch_seq *bs = calloc((size_t)B, sizeof *bs);
    int32_t *next = calloc((size_t)B, sizeof *next), *prompt = malloc((size_t)ctx * sizeof *prompt);
    double *lat = malloc((size_t)n_decode * sizeof *lat);
    int rc = -1;
    if (!ss || !bs || !next || !prompt || !lat) {
        snprintf(err.msg, sizeof err.msg, "out of memory");
        goto out;
    }
    if (eng_kv_cache_create(m, B * ((n_ctx + ENG_KV_BLOCK_SIZE - 1) / ENG_KV_BLOCK_SIZE), 0, &kv, &err) != PP_STATUS_OK)
        goto out;
    for (int b = 0; b < B; b++) {
        uint32_t x = 12345u + 7u * (uint32_t)b;
        for (int i = 0; i < ctx; i++) {
            x = x * 1664525u + 1013904223u;
            prompt[i] = (int32_t)((x >> 8) % (uint32_t)c->n_vocab);
        }
        if (eng_session_create_in(kv, n_ctx, &ss[b], &err) != PP_STATUS_OK)
            goto out;
        eng_batch_seq one = {.session = ss[b], .ids = prompt, .n_tokens = ctx, .token = &next[b]};
        if (eng_forward_batch(&one, 1, &err) != PP_STATUS_OK)
            goto out;
        bs[b] = (eng_batch_seq){.session = ss[b], .n_tokens = 1, .ids = &next[b], .token = &next[b]};
    }
    size_t g0 = 0, f0 = 0, g1 = 0, f1 = 0;
    double t0 = 0;
    for (int i = -WARMUP; i < n_decode; i++) {
        if (i == 0) {
            eng_model_graph_counts(m, &g0, &f0);
            t0 = bench_now_s();
        }
        double t1 = bench_now_s();
        if (eng_forward_batch(bs, B, &err) != PP_STATUS_OK) /* reads next, then overwrites it */
            goto out;
        if (i >= 0)
            lat[i] = bench_now_s() - t1;
    }
    r->tokens_per_s = (double)B * n_decode / (bench_now_s() - t0);
    eng_model_graph_counts(m, &g1, &f1);
    r->graphs = g1 - g0;
    r->fallbacks = f1 - f0;
    qsort(lat, (size_t)n_decode, sizeof *lat, bench_cmp_double);
    r->p50_ms = lat[n_decode / 2] * 1e3;
    r->p99_ms = lat[(n_decode * 99) / 100] * 1e3;
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench_decode: batch %d: %s\n", B, err.msg);
    for (int b = 0; ss && b < B; b++)
        eng_session_free(ss[b]);
    eng_kv_cache_free(kv);
    free(ss);
    free(bs);
    free(next);
    free(prompt);
    free(lat);
    return rc;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *backend = "auto", *dtype = "auto", *batch_list = "1,16,64", *graphs_list = "off,on";
    int ctx = 128, n_decode = 64;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--backend"))
            backend = argv[i + 1];
        else if (!strcmp(argv[i], "--dtype"))
            dtype = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch_list = argv[i + 1];
        else if (!strcmp(argv[i], "--context"))
            ctx = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode"))
            n_decode = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--graphs"))
            graphs_list = argv[i + 1];
        else
            dir = NULL, i = argc; /* unknown option: usage */
    }
    int batches[MAX_LIST], n_batch = bench_parse_list(batch_list, batches, MAX_LIST);
    bool graph_set[2] = {strstr(graphs_list, "off") != NULL, strstr(graphs_list, "on") != NULL};
    bool batches_ok = n_batch > 0;
    for (int i = 0; i < n_batch; i++)
        batches_ok = batches_ok && batches[i] >= 1 && batches[i] <= 1024;
    if (!dir || ctx < 1 || n_decode < 1 || !batches_ok || !(graph_set[0] || graph_set[1])) {
        fprintf(stderr, "usage: bench_decode --model DIR [--backend cpu|cuda|auto] [--dtype f32|bf16|auto] "
                        "[--batch 1,16,64] [--context 128] [--decode 64] [--graphs off,on]\n");
        return 2;
    }
    eng_model_opts mo;
    eng_model_opts_default(&mo);
    mo.backend = backend;
    eng_err err = {{0}};
    if (eng_dtype_mode_parse(dtype, &mo.dtype, &err) != PP_STATUS_OK) {
        fprintf(stderr, "bench_decode: --dtype: %s\n", err.msg);
        return 2;
    }
    bool header = false;
    for (int on = 0; on < 2; on++) {
        if (!graph_set[on])
            continue;
        setenv("PARAPHYM_CUDA_GRAPHS", on ? "1" : "0", 1);
        eng_model *m = NULL;
        pp_status st = eng_model_load(dir, &mo, &m, &err);
        if (st != PP_STATUS_OK) {
            fprintf(stderr, "bench_decode: %s\n", err.msg);
            return st == PP_STATUS_UNSUPPORTED && strcmp(backend, "cuda") == 0 ? 77 : 1;
        }
        const eng_config *c = eng_model_config(m);
        if (!header) {
            fprintf(stderr, "| model | backend | compute | graphs | batch | context | tokens/s | p50 ms | p99 ms | "
                            "steps as graphs |\n|---|---|---|---|---|---|---|---|---|---|\n");
            header = true;
        }
        for (int i = 0; i < n_batch; i++) {
            result r;
            if (run_batch(m, batches[i], ctx, n_decode, &r) != 0)
                return 1;
            printf("{\"model\": \"%s\", \"model_type\": \"%s\", \"backend\": \"%s\", \"dtype\": \"%s\", \"graphs\": "
                   "\"%s\", \"batch\": %d, \"context\": %d, \"steps\": %d, \"tokens_per_s\": %.1f, \"p50_ms\": %.4f, "
                   "\"p99_ms\": %.4f, \"steps_as_graphs\": %zu, \"fallbacks\": %zu}\n",
                   dir, c->model_type, eng_model_backend_name(m), eng_model_dtype_name(m), on ? "on" : "off",
                   batches[i], ctx, n_decode, r.tokens_per_s, r.p50_ms, r.p99_ms, r.graphs, r.fallbacks);
            fprintf(stderr, "| %s | %s | %s | %s | %d | %d | %.1f | %.4f | %.4f | %zu of %d |\n", c->model_type,
                    eng_model_backend_name(m), eng_model_dtype_name(m), on ? "on" : "off", batches[i], ctx,
                    r.tokens_per_s, r.p50_ms, r.p99_ms, r.graphs, n_decode);
            fflush(stdout);
        }
        eng_model_free(m);
    }
    return 0;
}
