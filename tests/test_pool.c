/* test_pool.c: the registry, the worker pool and the stream API end to end, written only
 * against paraphym.h, on the committed Qwen3-Coder nano model.
 *
 *   test_pool MODELS_DIR         (the directory holding qwen3_coder_nano): CPU workers
 *                                (PARAPHYM_WORKER_BACKEND=cpu, also on a GPU machine)
 *   test_pool --gpu MODELS_DIR   GPU workers (test_gpu below); exit 77 when the pool finds no
 *                                CUDA device
 *
 * Memory totals are simulated with PARAPHYM_HOST_MEM_MB, faults with the fault-injection
 * variables (PARAPHYM_FAULT_SPAWN_FAIL, PARAPHYM_FAULT_KILL_AFTER_TOKENS) and the queue bound
 * with PARAPHYM_MAX_QUEUE; all are read when a pool is created, so each scenario shuts the pool
 * down and sets them first. Every wait is bounded (120 s per chunk, 20 s for a replacement).
 * The load phase runs 16 threads x PP_TEST_POOL_PER_THREAD prompts (default 13: 208 prompts);
 * under ThreadSanitizer, which is ~20x slower, run it with PP_TEST_POOL_PER_THREAD=2.
 */
#include <math.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "paraphym.h"

static int failures;

static void check(int cond, const char *what, const char *detail)
{
    if (!cond) {
        fprintf(stderr, "FAIL: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
        failures++;
    }
}

/* Reference greedy continuations of the nano model (its reference.json). */
static const char *const prompts[2] = {"def fibonacci(n):\n", "# Licensed under the Apache License"};
static const char *const greedy[2] = {
    "    return fibonacci(n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,",
    ", Version 2.0 (the \"License\");\n# you may not use this file except in compliance with the License.\n# You may obtain a copy of the License at\n#\n#"};

typedef struct result {
    pp_status status; /* the terminal status: PP_STATUS_END on success */
    char text[4096];
    size_t len;
    int n_final;      /* chunks with a finish reason */
    pp_finish_reason finish;
    char error[512];
} result;

static void drain(pp_stream *s, result *r)
{
    memset(r, 0, sizeof *r);
    for (;;) {
        pp_chunk ch;
        pp_status st = pp_stream_next(s, &ch, 120000);
        if (st != PP_STATUS_OK) {
            r->status = st;
            snprintf(r->error, sizeof r->error, "%s", pp_stream_error(s));
            return;
        }
        if (r->len + ch.text_len < sizeof r->text) {
            memcpy(r->text + r->len, ch.text, ch.text_len);
            r->len += ch.text_len;
        }
        if (ch.finish_reason != PP_FINISH_NONE) {
            r->n_final++;
            r->finish = ch.finish_reason;
        }
    }
}

static int log_spawned;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static void on_log(void *user, const char *line)
{
    (void)user;
    pthread_mutex_lock(&log_mu);
    if (strstr(line, "Spawned worker 1") || strstr(line, "Spawned worker 2"))
        log_spawned++;
    if (getenv("PP_TEST_POOL_LOG")) /* the pool's log, for reading what a scenario did */
        fprintf(stderr, "log: %s\n", line);
    pthread_mutex_unlock(&log_mu);
}

static void set_host_mb(uint64_t mb)
{
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)mb);
    setenv("PARAPHYM_HOST_MEM_MB", v, 1);
}

static pp_stream *greedy_prompt(pp_model *m, int which, int max_tokens)
{
    pp_prompt p = {prompts[which], NULL, 0};
    pp_completion_params cp;
    pp_completion_params_default(&cp);
    cp.max_tokens = max_tokens;
    return pp_model_prompt(m, &p, &cp);
}

typedef struct load_arg {
    pp_model *models[2];
    int id;
    int n;
    int bad;
} load_arg;

static void *load_thread(void *p)
{
    load_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        int which = (a->id + i) % 2;
        pp_stream *s = greedy_prompt(a->models[(a->id + i / 2) % 2], which, 48);
        result r;
        drain(s, &r);
        if (r.status != PP_STATUS_END || r.n_final != 1 || strncmp(r.text, greedy[which], r.len) != 0 ||
            r.len != strlen(greedy[which])) {
            if (a->bad++ == 0)
                fprintf(stderr, "thread %d prompt %d: status %s, %d final chunks, error '%s', text '%s'\n", a->id, i,
                        pp_status_str(r.status), r.n_final, r.error, r.text);
        }
        pp_stream_free(s);
    }
    return NULL;
}

/* Waits up to 20 s for the model to have `n` live workers. */
static bool wait_workers(pp_pool *pool, const char *key, size_t n)
{
    for (int i = 0; i < 200 && pp_pool_worker_count(pool, key) != n; i++)
        usleep(100 * 1000);
    return pp_pool_worker_count(pool, key) == n;
}

/* Waits up to 20 s for the pool to hold no memory. */
static bool wait_no_memory(pp_pool *pool)
{
    for (int i = 0; i < 200 && pp_pool_total_memory_mb(pool) != 0; i++)
        usleep(100 * 1000);
    return pp_pool_total_memory_mb(pool) == 0;
}

/* A fresh pool with the given host total and fault settings (0 = unset). */
/* A fresh pool with the fault-injection and bound variables set (0: unset). max_batch 1 keeps
 * one request running per worker, so that later ones wait in its queue. */
static pp_pool *fresh_pool(uint64_t host_mb, int spawn_fail, int kill_after, int max_queue, int max_batch)
{
    char v[32];
    set_host_mb(host_mb);
    const char *names[4] = {"PARAPHYM_FAULT_SPAWN_FAIL", "PARAPHYM_FAULT_KILL_AFTER_TOKENS", "PARAPHYM_MAX_QUEUE",
                            "PARAPHYM_MAX_BATCH"};
    int values[4] = {spawn_fail, kill_after, max_queue, max_batch};
    for (int i = 0; i < 4; i++) {
        snprintf(v, sizeof v, "%d", values[i]);
        if (values[i])
            setenv(names[i], v, 1);
        else
            unsetenv(names[i]);
    }
    return pp_text_to_text_pool();
}

/* A prompt whose prefill takes long enough (many tokens, prefilled 4 at a time after
 * pp_model_set_context) that prompts submitted right after it queue behind it before it dies. */
static pp_stream *long_prompt(pp_model *m, int max_tokens)
{
    static char text[4096];
    if (!text[0])
        for (int i = 0; i < 120; i++)
            strcat(text, "word ");
    pp_prompt p = {text, NULL, 0};
    pp_completion_params cp;
    pp_completion_params_default(&cp);
    cp.max_tokens = max_tokens;
    return pp_model_prompt(m, &p, &cp);
}

/* Faults through the documented injection hook: failed spawns (first and second worker), a
 * worker killed mid-stream (with and without queued work, with a failing replacement), a full
 * queue. Every affected stream ends with one clear error; nothing hangs. */
static void test_faults(pp_model *a, const pp_model_info *info)
{
    result r, r2, r3;
    setenv("PARAPHYM_IDLE_TIMEOUT_S", "3600", 1);
    check(pp_model_set_context(a, 4096, 4) == PP_STATUS_OK, "prefill in steps of 4", NULL);
    uint64_t w1 = info->memory.first_worker_host_mb;
    uint64_t one_fits = (w1 * 5 + 3) / 4; /* floor(0.8 total) >= w1 but < w1 + w2 */

    /* the first worker start fails: SPAWN_FAILED naming the hook, memory back to zero; retry works */
    pp_pool *pool = fresh_pool(1 << 20, 1, 0, 0, 0);
    pp_stream *s = greedy_prompt(a, 0, 4);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_SPAWN_FAILED && strstr(r.error, "fault injection") && pp_pool_total_memory_mb(pool) == 0,
          "injected spawn failure ends the stream with SPAWN_FAILED and returns the memory", r.error);
    s = greedy_prompt(a, 0, 48);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strcmp(r.text, greedy[0]) == 0 && pp_pool_worker_count(pool, "test/nano-a") == 2,
          "the next prompt cold-starts two workers", r.error);
    pp_pool_shutdown(pool);

    /* the second worker fails to start: the model runs with one, the second's memory released */
    pool = fresh_pool(1 << 20, 2, 0, 0, 0);
    s = greedy_prompt(a, 1, 8);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && pp_pool_worker_count(pool, "test/nano-a") == 1 &&
              pp_pool_total_memory_mb(pool) == w1,
          "a failed second worker leaves one worker holding one worker's memory", r.error);
    pp_pool_shutdown(pool);

    /* a worker killed mid-stream: that stream ends with WORKER_DIED after a correct prefix; the
     * worker is replaced and serves again */
    pool = fresh_pool(1 << 20, 0, 6, 0, 0);
    s = greedy_prompt(a, 0, 48);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_WORKER_DIED && strstr(r.error, "died") && r.n_final == 0 &&
              strncmp(r.text, greedy[0], r.len) == 0,
          "a killed worker's stream ends with WORKER_DIED after a correct prefix", r.error);
    check(wait_workers(pool, "test/nano-a", 2), "the dead worker is replaced within 20 s", NULL);
    pp_pool_stats st;
    pp_pool_get_stats(pool, &st);
    size_t restarts = 0;
    for (size_t i = 0; i < st.n_workers; i++)
        restarts += st.workers[i].restarts;
    check(restarts == 1, "stats count one restart", NULL);
    s = greedy_prompt(a, 0, 48);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strcmp(r.text, greedy[0]) == 0, "the replaced worker serves", r.error);
    pp_pool_shutdown(pool);

    /* one worker, killed with requests queued behind it: they are served by its replacement */
    pool = fresh_pool(one_fits, 0, 6, 0, 1);
    pp_stream *s1 = long_prompt(a, 48);
    pp_stream *s2 = greedy_prompt(a, 0, 48), *s3 = greedy_prompt(a, 1, 8);
    drain(s1, &r);
    drain(s2, &r2);
    drain(s3, &r3);
    check(r.status == PP_STATUS_WORKER_DIED, "the running stream ends with WORKER_DIED", r.error);
    check(r2.status == PP_STATUS_END && strcmp(r2.text, greedy[0]) == 0 && r3.status == PP_STATUS_END &&
              r3.n_final == 1,
          "requests queued on the dead worker are served by its replacement", r2.error);
    pp_stream_free(s1);
    pp_stream_free(s2);
    pp_stream_free(s3);
    pp_pool_shutdown(pool);

    /* one worker, killed, and its replacement fails: queued work ends with SPAWN_FAILED, the
     * memory goes back, and the next prompt cold-starts again */
    pool = fresh_pool(one_fits, 2, 6, 0, 1);
    s1 = long_prompt(a, 48);
    s2 = greedy_prompt(a, 0, 48);
    drain(s1, &r);
    drain(s2, &r2);
    pp_stream_free(s1);
    pp_stream_free(s2);
    check(r.status == PP_STATUS_WORKER_DIED && r2.status == PP_STATUS_SPAWN_FAILED && strstr(r2.error, "worker 1"),
          "a failed replacement ends the queued stream with SPAWN_FAILED", r2.error);
    check(wait_no_memory(pool) && !pp_pool_has_workers(pool, "test/nano-a"),
          "a model whose last worker cannot be replaced releases its memory", NULL);
    s = greedy_prompt(a, 1, 8);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END, "and cold-starts on the next prompt", r.error);
    pp_pool_shutdown(pool);

    /* continuous batching: one worker generates six prompts together, each exactly as alone */
    pool = fresh_pool(one_fits, 0, 0, 0, 0);
    pp_stream *many[6];
    result rm;
    for (int i = 0; i < 6; i++)
        many[i] = greedy_prompt(a, i % 2, 48);
    int right = 0;
    for (int i = 0; i < 6; i++) {
        drain(many[i], &rm);
        right += rm.status == PP_STATUS_END && rm.n_final == 1 && strcmp(rm.text, greedy[i % 2]) == 0;
        pp_stream_free(many[i]);
    }
    /* a stream's final chunk goes out just before the worker counts the request served */
    for (int i = 0; i < 100; i++) {
        pp_pool_get_stats(pool, &st);
        if (st.n_workers != 1 || st.workers[0].served == 6)
            break;
        usleep(50 * 1000);
    }
    check(right == 6, "six prompts batched on one worker each equal the greedy reference", NULL);
    check(st.n_workers == 1 && st.workers[0].max_batch >= 2 && st.workers[0].served == 6,
          "the worker generated several of them in one decode step", NULL);
    check(st.n_workers == 1 && st.workers[0].mixed_steps > 0,
          "later prompts were prefilled in the same forwards as the earlier ones' decoding", NULL);
    if (st.n_workers != 1 || st.workers[0].served != 6)
        fprintf(stderr, "  workers %zu, served %zu\n", st.n_workers, st.n_workers ? st.workers[0].served : 0);
    printf("batching: one worker, 6 prompts, largest decode step %zu requests, %zu mixed steps\n",
           st.n_workers ? st.workers[0].max_batch : 0, st.n_workers ? st.workers[0].mixed_steps : 0);
    pp_pool_shutdown(pool);

    /* a worker killed with several requests in its batch: each ends with WORKER_DIED after a
     * correct prefix; the replacement serves the next prompt */
    pool = fresh_pool(one_fits, 0, 6, 0, 0);
    for (int i = 0; i < 3; i++)
        many[i] = greedy_prompt(a, 0, 48);
    int died = 0;
    for (int i = 0; i < 3; i++) {
        drain(many[i], &rm);
        died += rm.status == PP_STATUS_WORKER_DIED && rm.n_final == 0 && strncmp(rm.text, greedy[0], rm.len) == 0;
        pp_stream_free(many[i]);
    }
    check(died == 3, "every request of a dead worker's batch ends with WORKER_DIED after a correct prefix", NULL);
    check(wait_workers(pool, "test/nano-a", 1), "the dead worker is replaced", NULL);
    s = greedy_prompt(a, 1, 48);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strcmp(r.text, greedy[1]) == 0, "and its replacement serves", r.error);
    pp_pool_shutdown(pool);

    /* a full queue: one worker busy, one request waiting (PARAPHYM_MAX_QUEUE=1), the next refused */
    pool = fresh_pool(one_fits, 0, 0, 1, 1);
    s1 = greedy_prompt(a, 0, 3000);
    pp_chunk ch;
    check(pp_stream_next(s1, &ch, 120000) == PP_STATUS_OK, "first chunk", NULL);
    s2 = greedy_prompt(a, 0, 8);
    s3 = greedy_prompt(a, 1, 8);
    drain(s3, &r3);
    check(r3.status == PP_STATUS_QUEUE_FULL && strstr(r3.error, "test/nano-a") && strstr(r3.error, "full"),
          "a prompt beyond the queue bound ends with QUEUE_FULL", r3.error);
    pp_stream_cancel(s1);
    drain(s1, &r);
    drain(s2, &r2);
    check(r.status == PP_STATUS_CANCELLED && r2.status == PP_STATUS_END, "the others end normally", r2.error);
    pp_stream_free(s1);
    pp_stream_free(s2);
    pp_stream_free(s3);
    pp_pool_shutdown(pool);
    check(pp_model_set_context(a, 4096, 256) == PP_STATUS_OK, "default context", NULL);
}

/* GPU workers: the pool counts the device, loads the model onto it (the weights uploaded during
 * the cold start), serves greedy prompts equal to the references (the bf16 CUDA path; both
 * continuations are the same in the bf16 mode as in f32: `paraphym run --dtype bf16` on the CPU
 * gives them to the byte), concurrent
 * ones too, replaces a killed worker on the device, and its VRAM reservation covers what the
 * device has in use (measured device-wide: the GPU machine runs nothing else). */
static int test_gpu(const char *nano)
{
    unsetenv("PARAPHYM_WORKER_BACKEND");
    unsetenv("PARAPHYM_VRAM_MB");
    pp_pool *pool = fresh_pool(1 << 20, 0, 0, 0, 0);
    pp_pool_stats st;
    pp_pool_get_stats(pool, &st);
    if (!pool || st.n_devices == 0) {
        printf("skipped: the pool found no CUDA device (%s)\n", pool ? "a build without CUDA or no GPU" : pp_last_error());
        pp_pool_shutdown(pool);
        return 77;
    }
    pp_model *a = NULL;
    check(pp_registry_register("gpu/nano", nano, &a) == PP_STATUS_OK, "register", pp_last_error());
    if (!a)
        return 1;
    const pp_model_info *info = pp_model_info_get(a);
    printf("estimate: first GPU worker %llu MB VRAM, second %llu MB, %llu MB host each\n",
           (unsigned long long)info->memory.first_worker_vram_mb, (unsigned long long)info->memory.second_worker_vram_mb,
           (unsigned long long)info->memory.gpu_worker_host_mb);
    pp_stream *s = greedy_prompt(a, 0, 48);
    result r;
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strcmp(r.text, greedy[0]) == 0, "greedy on a GPU worker equals the reference",
          r.status == PP_STATUS_END ? r.text : r.error);
    pp_pool_get_stats(pool, &st);
    int on_gpu = 0;
    for (size_t i = 0; i < st.n_workers; i++)
        on_gpu += st.workers[i].device >= 0;
    check(st.n_workers >= 1 && on_gpu == (int)st.n_workers, "the workers run on a GPU", NULL);
    int dev = st.n_workers ? st.workers[0].device : 0;
    if (dev < 0)
        dev = 0;
    printf("device %d: %llu MB reserved for %zu worker(s), %llu MB in use (device-wide), limit %llu MB\n", dev,
           (unsigned long long)st.vram_reserved_mb[dev], st.n_workers, (unsigned long long)st.vram_used_mb[dev],
           (unsigned long long)st.vram_limit_mb[dev]);
    check(st.vram_reserved_mb[dev] == info->memory.first_worker_vram_mb +
                                          (st.n_workers == 2 ? info->memory.second_worker_vram_mb : 0),
          "the governor holds the estimate", NULL);
    check(st.vram_used_mb[dev] > 0 && st.vram_used_mb[dev] <= st.vram_reserved_mb[dev],
          "the device's memory in use stays within the reservation", NULL);

    enum { N_THREADS = 8 };
    pthread_t th[N_THREADS];
    load_arg la[N_THREADS];
    int bad = 0;
    for (int i = 0; i < N_THREADS; i++) {
        la[i] = (load_arg){{a, a}, i, 4, 0};
        pthread_create(&th[i], NULL, load_thread, &la[i]);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        bad += la[i].bad;
    }
    printf("gpu load: %d prompts from %d threads, %d wrong\n", N_THREADS * 4, N_THREADS, bad);
    check(bad == 0, "concurrent prompts on GPU workers equal the references", NULL);
    pp_pool_get_stats(pool, &st);
    printf("after the load: %llu MB in use on device %d (reserved %llu MB)\n", (unsigned long long)st.vram_used_mb[dev],
           dev, (unsigned long long)st.vram_reserved_mb[dev]);
    check(st.vram_used_mb[dev] <= st.vram_reserved_mb[dev], "still within the reservation after batched decoding",
          NULL);
    pp_pool_shutdown(pool);

    /* a GPU worker killed mid-stream is replaced on the device and serves again */
    pool = fresh_pool(1 << 20, 0, 6, 0, 0);
    s = greedy_prompt(a, 0, 48);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_WORKER_DIED && strncmp(r.text, greedy[0], r.len) == 0,
          "a killed GPU worker's stream ends with WORKER_DIED after a correct prefix", r.error);
    pp_pool_get_stats(pool, &st);
    size_t n_workers = st.n_workers;
    check(wait_workers(pool, "gpu/nano", n_workers), "the dead GPU worker is replaced", NULL);
    s = greedy_prompt(a, 1, 32);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strncmp(r.text, greedy[1], r.len) == 0 && r.len > 0,
          "the replacement serves", r.error);
    pp_pool_shutdown(pool);
    pool = pp_text_to_text_pool();
    check(pp_pool_total_memory_mb(pool) == 0, "a fresh pool holds nothing", NULL);
    pp_pool_shutdown(pool);
    printf(failures ? "gpu pool: %d failure(s)\n" : "gpu pool: ok\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    bool gpu = argc > 1 && strcmp(argv[1], "--gpu") == 0;
    if (argc < 2 + gpu) {
        fprintf(stderr, "usage: test_pool [--gpu] MODELS_DIR\n");
        return 2;
    }
    char nano[4096];
    snprintf(nano, sizeof nano, "%s/qwen3_coder_nano", argv[1 + gpu]);
    pp_set_log_callback(on_log, NULL);
    setenv("PARAPHYM_IDLE_TIMEOUT_S", "3600", 1);
    if (gpu)
        return test_gpu(nano);
    setenv("PARAPHYM_WORKER_BACKEND", "gpu", 1); /* not a choice: no pool, a message naming it */
    check(pp_text_to_text_pool() == NULL && strstr(pp_last_error(), "PARAPHYM_WORKER_BACKEND"),
          "a bad PARAPHYM_WORKER_BACKEND is refused", pp_last_error());
    setenv("PARAPHYM_WORKER_BACKEND", "cpu", 1); /* the scenarios below count host RAM */

    /* unknown key: NOT_FOUND with a message */
    pp_model *m = NULL;
    check(pp_registry_get("nobody/nothing", &m) == PP_STATUS_NOT_FOUND && !m && strlen(pp_last_error()) > 0,
          "unknown key is NOT_FOUND", pp_last_error());

    /* two models (two keys on the same checkpoint), plenty of memory: 2 workers each */
    set_host_mb(1 << 20);
    pp_model *a = NULL, *b = NULL;
    check(pp_registry_register("test/nano-a", nano, &a) == PP_STATUS_OK, "register a", pp_last_error());
    check(pp_registry_register("test/nano-b", nano, &b) == PP_STATUS_OK, "register b", pp_last_error());
    check(pp_registry_register("test/nano-a", "/elsewhere", &m) == PP_STATUS_INVALID_ARG, "key taken", NULL);
    if (!a || !b)
        return 1;
    const pp_model_info *info = pp_model_info_get(a);
    check(info->memory.first_worker_host_mb > info->memory.second_worker_host_mb &&
              info->memory.weights_mb > 0 && info->n_params == 7053440,
          "estimate: the second worker excludes the weights; parameters counted", NULL);
    pp_pool *pool = pp_text_to_text_pool();
    check(pool && !pp_pool_has_workers(pool, "test/nano-a"), "no workers before the first prompt", NULL);
    pp_stream *s = greedy_prompt(a, 0, 48);
    result r;
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && r.n_final == 1 && r.finish == PP_FINISH_LENGTH &&
              strcmp(r.text, greedy[0]) == 0,
          "greedy through the pool equals the reference", r.text);
    check(pp_pool_worker_count(pool, "test/nano-a") == 2 && log_spawned == 2, "cold start spawned 2 workers", NULL);

    /* load: 16 threads x 13 prompts over both models; every stream one final chunk, right text */
    enum { N_THREADS = 16 };
    pthread_t th[N_THREADS];
    load_arg la[N_THREADS];
    const char *per = getenv("PP_TEST_POOL_PER_THREAD");
    int per_thread = per && atoi(per) > 0 ? atoi(per) : 13;
    for (int i = 0; i < N_THREADS; i++) {
        la[i] = (load_arg){{a, b}, i, per_thread, 0};
        pthread_create(&th[i], NULL, load_thread, &la[i]);
    }
    int bad = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        bad += la[i].bad;
    }
    printf("load: %d prompts from %d threads, %d wrong\n", N_THREADS * per_thread, N_THREADS, bad);
    check(bad == 0, "every concurrent prompt (16 threads) equals the single-threaded greedy result", NULL);
    pp_pool_stats st;
    pp_pool_get_stats(pool, &st);
    int served_workers = 0;
    for (size_t i = 0; i < st.n_workers; i++) {
        served_workers += st.workers[i].served > 0;
        printf("  %s worker %d served %zu, largest decode step %zu requests\n", st.workers[i].registry_key,
               st.workers[i].worker, st.workers[i].served, st.workers[i].max_batch);
    }
    check(st.n_workers == 4 && served_workers == 4, "both workers of both models served requests", NULL);

    /* bad parameters arrive on the stream */
    pp_prompt p = {"hello", NULL, 0};
    pp_completion_params cp;
    pp_completion_params_default(&cp);
    cp.temperature = NAN;
    s = pp_model_prompt(a, &p, &cp);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_INVALID_ARG && strstr(r.error, "temperature"), "NaN temperature on the stream", r.error);

    /* chat messages */
    pp_message msgs[2] = {{"system", "Be brief."}, {"user", "Write a sort."}};
    pp_prompt chat = {NULL, msgs, 2};
    pp_completion_params_default(&cp);
    cp.max_tokens = 8;
    s = pp_model_prompt(a, &chat, &cp);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && r.n_final == 1, "chat prompt", r.error);

    /* cancel mid-stream: ends promptly with CANCELLED */
    cp.max_tokens = 3000;
    s = pp_model_prompt(a, &p, &cp);
    pp_chunk ch;
    pp_status first = pp_stream_next(s, &ch, 30000);
    pp_stream_cancel(s);
    drain(s, &r);
    pp_stream_free(s);
    check(first == PP_STATUS_OK && r.status == PP_STATUS_CANCELLED, "cancelled stream", r.error);

    /* shutdown during generation: the stream ends with an error, memory returns to zero */
    s = pp_model_prompt(b, &p, &cp);
    pp_stream_next(s, &ch, 30000);
    pp_pool_shutdown(pool);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_CANCELLED, "shutdown ends running streams", r.error);
    pool = pp_text_to_text_pool();
    check(pp_pool_total_memory_mb(pool) == 0 && !pp_pool_has_workers(pool, "test/nano-a"), "fresh pool after shutdown",
          NULL);
    pp_pool_shutdown(pool);

    /* exactly one worker fits: limit = first worker's cost (80% of total) */
    uint64_t w1 = info->memory.first_worker_host_mb, w2 = info->memory.second_worker_host_mb;
    uint64_t total = (w1 * 5 + 3) / 4; /* floor(0.8 * total) >= w1 ... */
    check(total * 4 / 5 < w1 + w2, "... and < w1 + w2 (test precondition)", NULL);
    set_host_mb(total);
    pool = pp_text_to_text_pool();
    s = greedy_prompt(a, 1, 4);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && pp_pool_worker_count(pool, "test/nano-a") == 1, "one worker when only one fits",
          r.error);
    /* the other model does not fit any more: MemoryExhausted names it */
    s = greedy_prompt(b, 1, 4);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_MEMORY_EXHAUSTED && strstr(r.error, "test/nano-b"), "memory exhausted", r.error);
    pp_pool_shutdown(pool);

    /* a checkpoint without tokenizer files: the estimate works, the spawn fails */
    char tmp[] = "/tmp/pp_pool_XXXXXX", path[8192], src[8192];
    check(mkdtemp(tmp) != NULL, "mkdtemp", NULL);
    const char *files[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp, files[i]);
        snprintf(src, sizeof src, "%s/%s", nano, files[i]);
        if (symlink(src, path) != 0)
            check(0, "symlink", path);
    }
    set_host_mb(1 << 20);
    pool = pp_text_to_text_pool();
    check(pp_registry_register("test/no-tokenizer", tmp, &m) == PP_STATUS_OK, "register", pp_last_error());
    s = pp_model_prompt(m, &p, NULL);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_SPAWN_FAILED && strstr(r.error, "tokenizer"), "spawn failed", r.error);
    check(pp_pool_total_memory_mb(pool) == 0, "a failed spawn returns its memory", NULL);
    pp_pool_shutdown(pool);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp, files[i]);
        unlink(path);
    }
    rmdir(tmp);

    /* per-model context: a smaller context shrinks the estimate and bounds the prompt */
    uint64_t before = pp_model_info_get(b)->memory.first_worker_host_mb;
    check(pp_model_set_context(b, 16, 4) == PP_STATUS_OK && pp_model_info_get(b)->context_tokens == 16 &&
              pp_model_info_get(b)->memory.first_worker_host_mb < before,
          "pp_model_set_context recomputes the estimate", pp_last_error());
    check(pp_model_set_context(b, 1, 4) == PP_STATUS_INVALID_ARG, "context 1 rejected", NULL);
    pool = pp_text_to_text_pool();
    s = greedy_prompt(b, 0, 48); /* 8 prompt tokens + 48 > 16: stops at the context */
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && r.finish == PP_FINISH_LENGTH && strncmp(r.text, greedy[0], r.len) == 0,
          "generation stops at the model's context, prefilled in steps of 4", r.error);
    s = greedy_prompt(b, 1, 4); /* freed while it may still be running */
    pp_prompt longp = {"a b c d e f g h i j k l m n o p q r s t u v w x y z", NULL, 0};
    pp_stream_free(s);
    s = pp_model_prompt(b, &longp, NULL);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_INVALID_ARG && strstr(r.error, "context"), "a prompt longer than the context", r.error);
    pp_pool_shutdown(pool);

    /* idle eviction: a short idle timeout returns the workers' memory */
    setenv("PARAPHYM_IDLE_TIMEOUT_S", "0.5", 1);
    pool = pp_text_to_text_pool();
    s = greedy_prompt(a, 0, 4);
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && pp_pool_has_workers(pool, "test/nano-a"), "prompt before eviction", r.error);
    /* the slot leaves READY before its threads are joined and its memory returned: wait for both */
    for (int i = 0; i < 100 && (pp_pool_has_workers(pool, "test/nano-a") || pp_pool_total_memory_mb(pool) != 0); i++)
        usleep(100 * 1000);
    check(!pp_pool_has_workers(pool, "test/nano-a") && pp_pool_total_memory_mb(pool) == 0,
          "idle workers evicted within 10 s and their memory released", NULL);
    s = greedy_prompt(a, 0, 48); /* and the model cold-starts again */
    drain(s, &r);
    pp_stream_free(s);
    check(r.status == PP_STATUS_END && strcmp(r.text, greedy[0]) == 0, "cold start after eviction", r.error);
    pp_pool_shutdown(pool);

    test_faults(a, info);

    printf("pool: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
