/* bench_cpu.c: CPU reference throughput: prefill and decode tokens/s of a model.
 *
 *   bench_cpu --model DIR [--threads N] [--prefill 32,128,256] [--decode 64] [--reps 3]
 *             [--batch 1,4,16]
 *
 * Prefill: one forward of n tokens from position 0 (logits of the last token only), best of reps.
 * Decode: after a prefill of 128 tokens (or the largest prefill below), `decode` single-token steps,
 * reporting tokens/s and p50 / p99 step latency. Batched decode: B sequences in one paged KV
 * cache, each prefilled with 128 tokens, then `decode` steps of eng_forward_batch (one token per
 * sequence per step): tokens/s over all sequences and the step latency. Token ids are a fixed
 * pseudo-random sequence.
 * Prints one JSON object on stdout and a markdown table on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "model.h"

/* B sequences prefilled with ctx tokens each, then n_decode batched steps. Returns 0, or -1 after
 * printing the error. */
static int bench_batch(eng_model *m, const int32_t *ids, int n_ids, int B, int ctx, int n_decode, double *lat,
                       double *tokens_per_s, double *p50, double *p99)
{
    const eng_config *c = eng_model_config(m);
    eng_err err = {{0}};
    int n_ctx = ctx + n_decode;
    eng_kv_cache *kv = NULL;
    eng_session **ss = calloc((size_t)B, sizeof *ss);
    eng_batch_seq *bs = calloc((size_t)B, sizeof *bs);
    float *logits = malloc((size_t)B * (size_t)c->n_vocab * sizeof(float));
    int rc = -1;
    if (eng_kv_cache_create(m, B * ((n_ctx + ENG_KV_BLOCK_SIZE - 1) / ENG_KV_BLOCK_SIZE), 0, &kv, &err) != PP_STATUS_OK)
        goto out;
    for (int b = 0; b < B; b++) {
        /* each sequence its own ids: a rotation of the fixed sequence */
        if (eng_session_create_in(kv, n_ctx, &ss[b], &err) != PP_STATUS_OK)
            goto out;
        bs[b].session = ss[b];
        bs[b].logits = logits + (size_t)b * (size_t)c->n_vocab;
        eng_batch_seq one = {.session = ss[b], .ids = ids + (b * 7) % (n_ids - n_ctx + 1), .n_tokens = ctx};
        if (eng_forward_batch(&one, 1, &err) != PP_STATUS_OK)
            goto out;
    }
    double t0 = bench_now_s();
    for (int i = 0; i < n_decode; i++) {
        for (int b = 0; b < B; b++) {
            bs[b].ids = ids + (b * 7) % (n_ids - n_ctx + 1) + ctx + i;
            bs[b].n_tokens = 1;
        }
        double t1 = bench_now_s();
        if (eng_forward_batch(bs, B, &err) != PP_STATUS_OK)
            goto out;
        lat[i] = bench_now_s() - t1;
    }
    *tokens_per_s = (double)B * n_decode / (bench_now_s() - t0);
    qsort(lat, (size_t)n_decode, sizeof *lat, bench_cmp_double);
    *p50 = lat[n_decode / 2] * 1e3;
    *p99 = lat[(n_decode * 99) / 100] * 1e3;
    rc = 0;
out:
    if (rc != 0)
        fprintf(stderr, "bench_cpu: batch %d: %s\n", B, err.msg);
    for (int b = 0; b < B; b++)
        eng_session_free(ss[b]);
    eng_kv_cache_free(kv);
    free(ss);
    free(bs);
    free(logits);
    return rc;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *prefill_list = "32,128,256", *batch_list = "1,4,16";
    int threads = 0, n_decode = 64, reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefill"))
            prefill_list = argv[i + 1];
        else if (!strcmp(argv[i], "--decode"))
            n_decode = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            batch_list = argv[i + 1];
    }
    if (!dir || n_decode < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_cpu --model DIR [--threads N] [--prefill 32,128,256] [--decode 64] [--reps 3] "
                        "[--batch 1,4,16]\n");
        return 2;
    }
    eng_model_opts mo;
    eng_model_opts_default(&mo);
    mo.n_threads = threads;
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (eng_model_load(dir, &mo, &m, &err) != PP_STATUS_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err.msg);
        return 1;
    }
    const eng_config *c = eng_model_config(m);
    int prefills[16], batches[16];
    int n_prefill = bench_parse_list(prefill_list, prefills, 16), n_batch = bench_parse_list(batch_list, batches, 16);
    int max_ctx = 0;
    for (int i = 0; i < n_prefill; i++)
        max_ctx = prefills[i] > max_ctx ? prefills[i] : max_ctx;
    int ctx_decode = 128;
    if (max_ctx + n_decode < ctx_decode + n_decode)
        max_ctx = ctx_decode;
    max_ctx += n_decode + 16 * 7; /* room for the batched sequences' rotations */
    int32_t *ids = malloc((size_t)max_ctx * sizeof *ids);
    float *logits = malloc((size_t)c->n_vocab * sizeof(float));
    double *lat = malloc((size_t)n_decode * sizeof(double));
    uint32_t x = 12345;
    for (int i = 0; i < max_ctx; i++) {
        x = x * 1664525u + 1013904223u;
        ids[i] = (int32_t)((x >> 8) % (uint32_t)c->n_vocab);
    }
    eng_session *s = NULL;
    if (eng_session_create(m, max_ctx, &s, &err) != PP_STATUS_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err.msg);
        return 1;
    }
    printf("{\"model\": \"%s\", \"model_type\": \"%s\", \"backend\": \"cpu\", \"threads\": %d, \"prefill\": [",
           dir, c->model_type, threads);
    fprintf(stderr, "| model | phase | tokens | tokens/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n");
    for (int i = 0; i < n_prefill; i++) {
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            eng_session_reset(s);
            double t0 = bench_now_s();
            if (eng_session_forward(s, ids, prefills[i], logits, false, &err) != PP_STATUS_OK) {
                fprintf(stderr, "bench_cpu: %s\n", err.msg);
                return 1;
            }
            double dt = bench_now_s() - t0;
            best = dt < best ? dt : best;
        }
        printf("%s{\"tokens\": %d, \"seconds\": %.6f, \"tokens_per_s\": %.1f}", i ? ", " : "", prefills[i], best,
               prefills[i] / best);
        fprintf(stderr, "| %s | prefill | %d | %.1f | | |\n", c->model_type, prefills[i], prefills[i] / best);
    }
    eng_session_reset(s);
    if (eng_session_forward(s, ids, ctx_decode, logits, false, &err) != PP_STATUS_OK) {
        fprintf(stderr, "bench_cpu: %s\n", err.msg);
        return 1;
    }
    double t0 = bench_now_s();
    for (int i = 0; i < n_decode; i++) {
        double t1 = bench_now_s();
        if (eng_session_forward(s, ids + ctx_decode + i, 1, logits, false, &err) != PP_STATUS_OK) {
            fprintf(stderr, "bench_cpu: %s\n", err.msg);
            return 1;
        }
        lat[i] = bench_now_s() - t1;
    }
    double total = bench_now_s() - t0;
    qsort(lat, (size_t)n_decode, sizeof *lat, bench_cmp_double);
    double p50 = lat[n_decode / 2] * 1e3, p99 = lat[(n_decode * 99) / 100] * 1e3;
    printf("], \"decode\": {\"context\": %d, \"steps\": %d, \"tokens_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}",
           ctx_decode, n_decode, n_decode / total, p50, p99);
    fprintf(stderr, "| %s | decode @%d | %d | %.1f | %.3f | %.3f |\n", c->model_type, ctx_decode, n_decode,
            n_decode / total, p50, p99);
    eng_session_free(s);
    printf(", \"batched_decode\": [");
    for (int i = 0; i < n_batch; i++) {
        double tps, bp50, bp99;
        if (batches[i] < 1 || batches[i] > 16 ||
            bench_batch(m, ids, max_ctx, batches[i], ctx_decode, n_decode, lat, &tps, &bp50, &bp99) != 0) {
            fprintf(stderr, "bench_cpu: batch sizes are 1..16\n");
            return 1;
        }
        printf("%s{\"batch\": %d, \"context\": %d, \"steps\": %d, \"tokens_per_s\": %.1f, \"p50_ms\": %.3f, "
               "\"p99_ms\": %.3f}",
               i ? ", " : "", batches[i], ctx_decode, n_decode, tps, bp50, bp99);
        fprintf(stderr, "| %s | batched decode x%d @%d | %d | %.1f | %.3f | %.3f |\n", c->model_type, batches[i],
                ctx_decode, batches[i] * n_decode, tps, bp50, bp99);
    }
    printf("]}\n");
    eng_model_free(m);
    free(ids);
    free(logits);
    free(lat);
    return 0;
}
