/* bench_cpu.c: CPU reference throughput: prefill and decode tokens/s of a model.
 *
 *   bench_cpu --model DIR [--threads N] [--prefill 32,128,256] [--decode 64] [--reps 3]
 *
 * Prefill: one forward of n tokens from position 0 (logits of the last token only), best of reps.
 * Decode: after a prefill of 128 tokens (or the largest prefill below), `decode` single-token steps,
 * reporting tokens/s and p50 / p99 step latency. Token ids are a fixed pseudo-random sequence.
 * Prints one JSON object on stdout and a markdown table on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *prefill_list = "32,128,256";
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
    }
    if (!dir || n_decode < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_cpu --model DIR [--threads N] [--prefill 32,128,256] [--decode 64] [--reps 3]\n");
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
    int prefills[16], n_prefill = 0;
    for (const char *p = prefill_list; *p && n_prefill < 16;) {
        prefills[n_prefill++] = atoi(p);
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    int max_ctx = 0;
    for (int i = 0; i < n_prefill; i++)
        max_ctx = prefills[i] > max_ctx ? prefills[i] : max_ctx;
    int ctx_decode = 128;
    if (max_ctx + n_decode < ctx_decode + n_decode)
        max_ctx = ctx_decode;
    max_ctx += n_decode;
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
            double t0 = now_s();
            if (eng_session_forward(s, ids, prefills[i], logits, false, &err) != PP_STATUS_OK) {
                fprintf(stderr, "bench_cpu: %s\n", err.msg);
                return 1;
            }
            double dt = now_s() - t0;
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
    double t0 = now_s();
    for (int i = 0; i < n_decode; i++) {
        double t1 = now_s();
        if (eng_session_forward(s, ids + ctx_decode + i, 1, logits, false, &err) != PP_STATUS_OK) {
            fprintf(stderr, "bench_cpu: %s\n", err.msg);
            return 1;
        }
        lat[i] = now_s() - t1;
    }
    double total = now_s() - t0;
    qsort(lat, (size_t)n_decode, sizeof *lat, cmp_double);
    double p50 = lat[n_decode / 2] * 1e3, p99 = lat[(n_decode * 99) / 100] * 1e3;
    printf("], \"decode\": {\"context\": %d, \"steps\": %d, \"tokens_per_s\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}}\n",
           ctx_decode, n_decode, n_decode / total, p50, p99);
    fprintf(stderr, "| %s | decode @%d | %d | %.1f | %.3f | %.3f |\n", c->model_type, ctx_decode, n_decode,
            n_decode / total, p50, p99);
    eng_session_free(s);
    eng_model_free(m);
    free(ids);
    free(logits);
    free(lat);
    return 0;
}
