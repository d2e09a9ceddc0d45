/* test_governor.c: the pool's memory governor with injected host and VRAM totals, so every
 * branch of the cold-start rule (2 workers, 1, MemoryExhausted, the 80% edge, host-bound,
 * VRAM-bound, device choice) is covered without a GPU; 8 threads race for the last memory; the
 * environment overrides are read by pool_governor_create_system. Exits 0 when all checks pass. */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "governor.h"

static int failures;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FAIL: %s\n", what);
        failures++;
    }
}

static void check_u64(uint64_t got, uint64_t want, const char *what)
{
    if (got != want) {
        fprintf(stderr, "FAIL: %s: got %" PRIu64 ", want %" PRIu64 "\n", what, got, want);
        failures++;
    }
}

static void check_has(const char *msg, const char *part, const char *what)
{
    if (!strstr(msg, part)) {
        fprintf(stderr, "FAIL: %s: message \"%s\" lacks \"%s\"\n", what, msg, part);
        failures++;
    }
}

static pool_governor *make(uint64_t host, const uint64_t *vram, int n_devices)
{
    pool_governor *g = NULL;
    if (pool_governor_create(host, vram, n_devices, &g) != PP_STATUS_OK || !g) {
        fprintf(stderr, "FAIL: pool_governor_create(%" PRIu64 ", %d devices)\n", host, n_devices);
        failures++;
        exit(1);
    }
    return g;
}

static pool_cost cost(uint64_t host_mb, uint64_t vram_mb)
{
    pool_cost c = {host_mb, vram_mb};
    return c;
}

/* Cold start of `model` with the given costs; returns the status and fills *gr and msg. */
static pp_status start(pool_governor *g, const char *model, pool_cost first, pool_cost second,
                       pool_grant *gr, char *msg, size_t msg_len)
{
    return pool_governor_cold_start(g, model, &first, &second, gr, msg, msg_len);
}

static void test_create(void)
{
    pool_governor *g = (pool_governor *)&g; /* must be reset to NULL on failure */
    uint64_t v[POOL_MAX_DEVICES + 1] = {1000, 0};
    check(pool_governor_create(0, NULL, 0, &g) == PP_STATUS_INVALID_ARG && !g,
          "create with 0 MB of host RAM is INVALID_ARG and sets out to NULL");
    check(pool_governor_create(1000, NULL, 1, &g) == PP_STATUS_INVALID_ARG && !g,
          "create with devices but no VRAM totals is INVALID_ARG");
    check(pool_governor_create(1000, v, -1, &g) == PP_STATUS_INVALID_ARG && !g,
          "create with a negative device count is INVALID_ARG");
    check(pool_governor_create(1000, v, POOL_MAX_DEVICES + 1, &g) == PP_STATUS_INVALID_ARG && !g,
          "create with more than POOL_MAX_DEVICES devices is INVALID_ARG");
    check(pool_governor_create(1000, v, 2, &g) == PP_STATUS_INVALID_ARG && !g,
          "create with a device of 0 MB of VRAM is INVALID_ARG");
    check(pool_governor_create(1000, NULL, 0, NULL) == PP_STATUS_INVALID_ARG,
          "create with out NULL is INVALID_ARG");

    /* Limits are floor(0.8 * total), exactly, up to the largest total. */
    const uint64_t totals[] = {1, 2, 4, 5, 7, 4999, 5000, 5001, 80 * 1024, UINT64_MAX};
    const uint64_t limits[] = {0, 1, 3, 4, 5, 3999, 4000, 4000, 64 * 1024, 14757395258967641292u};
    for (size_t i = 0; i < sizeof totals / sizeof totals[0]; i++) {
        uint64_t vt[2] = {totals[i], 5000};
        g = make(totals[i], vt, 2);
        pool_governor_stats s;
        pool_governor_get_stats(g, &s);
        check_u64(s.host_total_mb, totals[i], "host total");
        check_u64(s.host_limit_mb, limits[i], "host limit = floor(0.8 * total)");
        check_u64(s.vram_limit_mb[0], limits[i], "VRAM limit = floor(0.8 * total)");
        check_u64(s.vram_limit_mb[1], 4000, "second device's limit");
        check(s.n_devices == 2, "stats count the devices");
        check_u64(s.host_reserved_mb + s.vram_reserved_mb[0], 0, "a new governor reserves nothing");
        pool_governor_free(g);
    }

    pool_governor_free(NULL);
    pool_governor_release(NULL, 0, 1, 1);
    pool_governor_stats s;
    memset(&s, 0xff, sizeof s);
    pool_governor_get_stats(NULL, &s);
    check(s.host_total_mb == 0 && s.n_devices == 0, "stats of NULL are zero");
    pool_governor_get_stats(NULL, NULL);
}

static void test_null_args(void)
{
    pool_governor *g = make(1000, NULL, 0);
    pool_cost c = cost(1, 0);
    pool_grant gr;
    char msg[256] = "";
    check(pool_governor_cold_start(NULL, "m", &c, &c, &gr, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "cold start on a NULL governor is INVALID_ARG");
    check(pool_governor_cold_start(g, NULL, &c, &c, &gr, msg, sizeof msg) == PP_STATUS_INVALID_ARG,
          "cold start of a NULL model is INVALID_ARG");
    check(pool_governor_cold_start(g, "m", NULL, &c, &gr, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "cold start with no first cost is INVALID_ARG");
    check(pool_governor_cold_start(g, "m", &c, NULL, &gr, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "cold start with no second cost is INVALID_ARG");
    check(pool_governor_cold_start(g, "m", &c, &c, NULL, msg, sizeof msg) == PP_STATUS_INVALID_ARG,
          "cold start with no grant is INVALID_ARG");
    check(pool_governor_reserve(g, -1, NULL, msg, sizeof msg) == PP_STATUS_INVALID_ARG,
          "reserve with no cost is INVALID_ARG");
    check(pool_governor_reserve(NULL, -1, &c, NULL, 0) == PP_STATUS_INVALID_ARG,
          "reserve on a NULL governor is INVALID_ARG (and a NULL msg is fine)");
    check(pool_governor_cold_start(g, "m", &c, &c, &gr, NULL, 0) == PP_STATUS_OK,
          "a NULL msg with msg_len 0 is fine");
    pool_governor_free(g);
}

static void test_two_one_none(void)
{
    uint64_t v[1] = {10000}; /* limit 8000 */
    pool_governor *g = make(10000, v, 1);
    pool_grant gr;
    char msg[512] = "";
    pool_governor_stats s;

    /* Both fit: 2 workers. */
    check(start(g, "moonshot/kimi-k2", cost(1000, 2000), cost(1000, 2000), &gr, msg, sizeof msg) ==
              PP_STATUS_OK,
          "2 workers: cold start succeeds");
    check(gr.n_workers == 2 && gr.device == 0, "2 workers on device 0 when both fit");
    check_u64(gr.host_mb, 2000, "2-worker grant's host RAM");
    check_u64(gr.vram_mb, 4000, "2-worker grant's VRAM");
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 2000, "2-worker grant reserves its host RAM");
    check_u64(s.vram_reserved_mb[0], 4000, "2-worker grant reserves its VRAM");

    /* C = 4000 of 8000 VRAM: 2 x 3000 does not fit, 1 x 3000 does. */
    check(start(g, "qwen/qwen3-coder", cost(1000, 3000), cost(1000, 3000), &gr, msg, sizeof msg) ==
              PP_STATUS_OK,
          "1 worker: cold start succeeds");
    check(gr.n_workers == 1 && gr.device == 0, "1 worker when only the first fits");
    check_u64(gr.host_mb, 1000, "1-worker grant's host RAM");
    check_u64(gr.vram_mb, 3000, "1-worker grant's VRAM");

    /* C = 7000 VRAM: 1200 does not fit. */
    msg[0] = '\0';
    check(start(g, "microsoft/phi-4-reasoning", cost(500, 1200), cost(500, 1200), &gr, msg,
                sizeof msg) == PP_STATUS_MEMORY_EXHAUSTED,
          "MemoryExhausted when not even one worker fits");
    check(gr.n_workers == 0, "a refused grant is zeroed");
    check_has(msg, "microsoft/phi-4-reasoning", "MemoryExhausted names the model");
    check_has(msg, "needs 500 MB of host RAM", "MemoryExhausted names the host MB needed");
    check_has(msg, "(5000 MB available of a 8000 MB limit)", "... and the host MB available");
    check_has(msg, "1200 MB of VRAM", "MemoryExhausted names the VRAM MB needed");
    check_has(msg, "1000 MB available of a 8000 MB limit on device 0",
              "... and the VRAM MB available");
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 3000, "a refusal reserves nothing (host)");
    check_u64(s.vram_reserved_mb[0], 7000, "a refusal reserves nothing (VRAM)");
    pool_governor_free(g);
}

static void test_edge(void)
{
    pool_grant gr;
    char msg[512];

    /* CPU only, limit exactly 4000: C + 2W == limit gives 2. */
    pool_governor *g = make(5000, NULL, 0);
    check(start(g, "edge", cost(2000, 0), cost(2000, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 2 && gr.device == -1,
          "C + 2W == limit: 2 workers");
    pool_governor_free(g);

    /* Limit 3999 (total 4999): C + 2W == limit + 1 gives 1. */
    g = make(4999, NULL, 0);
    check(start(g, "edge", cost(2000, 0), cost(2000, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 1,
          "C + 2W == limit + 1: 1 worker");
    pool_governor_free(g);

    /* With C > 0: C = 1000, W = 1500, limit 4000: exactly at the edge. */
    g = make(5000, NULL, 0);
    check(pool_governor_reserve(g, -1, &(pool_cost){1000, 0}, msg, sizeof msg) == PP_STATUS_OK,
          "reserve 1000 MB");
    check(start(g, "edge", cost(1500, 0), cost(1500, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 2,
          "C + 2W == limit with C > 0: 2 workers");
    pool_governor_free(g);
    g = make(5000, NULL, 0);
    check(pool_governor_reserve(g, -1, &(pool_cost){1001, 0}, msg, sizeof msg) == PP_STATUS_OK,
          "reserve 1001 MB");
    check(start(g, "edge", cost(1500, 0), cost(1500, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 1,
          "C + 2W == limit + 1 with C > 0: 1 worker");
    /* C = 2501: C + W == limit gives 1, one more MB gives none. */
    check(start(g, "edge2", cost(1499, 0), cost(1499, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 1,
          "C + W == limit: 1 worker");
    check(start(g, "edge3", cost(1, 0), cost(1, 0), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "C == limit: MemoryExhausted for even 1 MB");
    check(start(g, "edge4", cost(0, 0), cost(0, 0), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 2,
          "a free worker fits even at the limit");
    pool_governor_free(g);

    /* The same edge on VRAM (host plentiful). */
    uint64_t v[1] = {5000};
    g = make(1000000, v, 1);
    check(start(g, "vedge", cost(1, 2000), cost(1, 2000), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 2,
          "VRAM: C + 2W == limit: 2 workers");
    pool_governor_free(g);
    v[0] = 4999;
    g = make(1000000, v, 1);
    check(start(g, "vedge", cost(1, 2000), cost(1, 2000), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 1,
          "VRAM: C + 2W == limit + 1: 1 worker");
    pool_governor_free(g);

    /* Costs near UINT64_MAX never wrap around into a fit. */
    g = make(UINT64_MAX, NULL, 0);
    check(start(g, "huge", cost(UINT64_MAX / 2, 0), cost(UINT64_MAX - 10, 0), &gr, msg,
                sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 1,
          "no wrap-around in C + 2W");
    check(start(g, "huge2", cost(UINT64_MAX, 0), cost(UINT64_MAX, 0), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "no wrap-around in C + W");
    pool_governor_free(g);
}

static void test_bound(void)
{
    pool_grant gr;
    char msg[512] = "";

    /* Host-bound: host limit 2000, VRAM plentiful. */
    uint64_t big[1] = {100000};
    pool_governor *g = make(2500, big, 1);
    check(start(g, "host-bound", cost(1500, 100), cost(1500, 100), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 1,
          "host-bound: 1 worker although VRAM holds 2");
    check(start(g, "host-bound2", cost(600, 100), cost(600, 100), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "host-bound: MemoryExhausted although VRAM is plentiful");
    check_has(msg, "needs 600 MB of host RAM (500 MB available of a 2000 MB limit)",
              "host-bound message");
    check_has(msg, "host-bound2", "host-bound message names the model");
    pool_governor_free(g);

    /* VRAM-bound: VRAM limit 2000, host plentiful. */
    uint64_t small[1] = {2500};
    g = make(1000000, small, 1);
    check(start(g, "vram-bound", cost(100, 1500), cost(100, 1500), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 1 && gr.device == 0,
          "VRAM-bound: 1 worker although host RAM holds 2");
    check(start(g, "vram-bound2", cost(100, 600), cost(100, 600), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "VRAM-bound: MemoryExhausted although host RAM is plentiful");
    check_has(msg, "600 MB of VRAM (500 MB available of a 2000 MB limit on device 0)",
              "VRAM-bound message");
    pool_governor_free(g);

    /* No GPU: VRAM costs are not counted, workers are CPU workers. */
    g = make(2500, NULL, 0);
    check(start(g, "cpu", cost(1000, 999999), cost(1000, 999999), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 2 && gr.device == -1 && gr.vram_mb == 0,
          "without devices only host RAM counts");
    check(start(g, "cpu2", cost(1, 0), cost(1, 0), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "without devices: MemoryExhausted on host RAM");
    check_has(msg, "cannot start a worker for cpu2: needs 1 MB of host RAM (0 MB available of a "
                   "2000 MB limit)",
              "CPU-only message");
    check(!strstr(msg, "VRAM"), "CPU-only message does not mention VRAM");
    pool_governor_free(g);
}

static void test_devices(void)
{
    pool_grant gr;
    char msg[512] = "";
    pool_governor_stats s;

    /* The device with the most free VRAM wins. */
    uint64_t v[2] = {4000, 5000}; /* limits 3200, 4000 */
    pool_governor *g = make(1000000, v, 2);
    check(start(g, "a", cost(1, 1000), cost(1, 1000), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.device == 1 && gr.n_workers == 2,
          "the device with the most free VRAM is chosen");
    /* Now free: 3200 on 0, 2000 on 1. */
    check(start(g, "b", cost(1, 1500), cost(1, 1500), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.device == 0 && gr.n_workers == 2,
          "device 0 once it has the most free VRAM");
    /* Now free: 200 on 0, 2000 on 1: 1500 fits once on device 1 only. */
    check(start(g, "c", cost(1, 1500), cost(1, 1500), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.device == 1 && gr.n_workers == 1,
          "the only device where one worker fits");
    /* Now free: 200 on 0, 500 on 1. */
    check(start(g, "d", cost(1, 600), cost(1, 600), &gr, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "MemoryExhausted when no device fits");
    check_has(msg, "500 MB available of a 4000 MB limit on device 1, the most free",
              "the message names the device with the most free VRAM");
    pool_governor_get_stats(g, &s);
    check_u64(s.vram_reserved_mb[0], 3000, "device 0 reserved");
    check_u64(s.vram_reserved_mb[1], 3500, "device 1 reserved");
    pool_governor_free(g);

    /* Ties go to the lowest index; equal devices fill alternately. */
    uint64_t eq[3] = {5000, 5000, 5000};
    g = make(1000000, eq, 3);
    int want[3] = {0, 1, 2};
    for (int i = 0; i < 3; i++) {
        check(start(g, "tie", cost(1, 1000), cost(1, 1000), &gr, msg, sizeof msg) == PP_STATUS_OK &&
                  gr.device == want[i],
              "ties go to the lowest index");
    }
    pool_governor_free(g);

    /* Host RAM shared by all devices: it fits 1 worker anywhere, so the most free VRAM wins. */
    g = make(2500, v, 2); /* host limit 2000 */
    check(start(g, "h", cost(1500, 100), cost(1500, 100), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.device == 1 && gr.n_workers == 1,
          "host-bound with 2 devices: 1 worker on the freest device");
    pool_governor_free(g);
}

static void test_second_excludes_weights(void)
{
    pool_grant gr;
    char msg[512];
    uint64_t v[1] = {1875}; /* limit 1500 */
    pool_governor *g = make(1000000, v, 1);
    /* 2 x 1000 = 2000 > 1500, but 1000 (weights + KV) + 200 (KV + scratch) = 1200 fits. */
    check(start(g, "shared", cost(1000, 1000), cost(200, 200), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 2,
          "the second worker's cost excludes the shared weights");
    check_u64(gr.vram_mb, 1200, "2-worker grant holds first + second VRAM");
    check_u64(gr.host_mb, 1200, "2-worker grant holds first + second host RAM");
    pool_governor_release(g, gr.device, gr.host_mb, gr.vram_mb);
    check(start(g, "unshared", cost(1000, 1000), cost(1000, 1000), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 1,
          "with the weights counted twice only 1 fits");
    pool_governor_free(g);
}

static void test_release(void)
{
    pool_grant gr, gr2;
    char msg[512];
    pool_governor_stats s;
    uint64_t v[2] = {5000, 5000}; /* limits 4000 */
    pool_governor *g = make(5000, v, 2);

    check(start(g, "a", cost(2000, 2000), cost(2000, 2000), &gr, msg, sizeof msg) == PP_STATUS_OK &&
              gr.n_workers == 2,
          "fill the host RAM");
    check(start(g, "b", cost(1, 1), cost(1, 1), &gr2, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "full: MemoryExhausted");
    pool_governor_release(g, gr.device, gr.host_mb, gr.vram_mb);
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 0, "release returns host RAM");
    check_u64(s.vram_reserved_mb[gr.device], 0, "release returns VRAM");
    check(start(g, "b", cost(2000, 2000), cost(2000, 2000), &gr2, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr2.n_workers == 2,
          "re-grant after release");

    /* One worker of a pair dies: release its share, then reserve its replacement. */
    pool_governor_release(g, gr2.device, 2000, 2000);
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 2000, "partial release (host)");
    check_u64(s.vram_reserved_mb[gr2.device], 2000, "partial release (VRAM)");
    check(pool_governor_reserve(g, gr2.device, &(pool_cost){2000, 2000}, msg, sizeof msg) ==
              PP_STATUS_OK,
          "replacement reserve fits");
    check(pool_governor_reserve(g, gr2.device, &(pool_cost){1, 0}, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "replacement reserve refused when host RAM is full");
    check_has(msg, "replacement", "replacement message");
    check_has(msg, "needs 1 MB of host RAM (0 MB available of a 4000 MB limit)",
              "replacement message numbers");
    check(pool_governor_reserve(g, 2, &(pool_cost){0, 0}, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "reserve on a device that does not exist is INVALID_ARG");
    check(pool_governor_reserve(g, -2, &(pool_cost){0, 0}, msg, sizeof msg) ==
              PP_STATUS_INVALID_ARG,
          "reserve on device -2 is INVALID_ARG");
    pool_governor_release(g, gr2.device, 4000, 4000);

    /* VRAM-bound replacement on the other device; device -1 holds host RAM only. */
    check(pool_governor_reserve(g, 1 - gr2.device, &(pool_cost){100, 4000}, msg, sizeof msg) ==
              PP_STATUS_OK,
          "replacement reserve up to the VRAM limit");
    check(pool_governor_reserve(g, 1 - gr2.device, &(pool_cost){100, 1}, msg, sizeof msg) ==
              PP_STATUS_MEMORY_EXHAUSTED,
          "replacement reserve refused when VRAM is full");
    check_has(msg, "1 MB of VRAM (0 MB available of a 4000 MB limit", "VRAM replacement message");
    check(pool_governor_reserve(g, -1, &(pool_cost){100, 99999}, msg, sizeof msg) == PP_STATUS_OK,
          "reserve on device -1 counts host RAM only");
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 200, "reserved host after replacements");
    check_u64(s.vram_reserved_mb[0] + s.vram_reserved_mb[1], 4000, "reserved VRAM");

    /* Releasing more than is reserved is a caller bug the governor survives: clamp to 0. */
    pool_governor_release(g, 1 - gr2.device, 999999, 999999);
    pool_governor_release(g, -1, 1, 999999);   /* device -1: VRAM ignored */
    pool_governor_release(g, 7, 0, 999999);    /* no such device: ignored */
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 0, "over-release clamps host RAM to 0");
    check_u64(s.vram_reserved_mb[0] + s.vram_reserved_mb[1], 0, "over-release clamps VRAM to 0");
    check(start(g, "after", cost(2000, 2000), cost(2000, 2000), &gr, msg, sizeof msg) ==
                  PP_STATUS_OK &&
              gr.n_workers == 2,
          "the governor works after an over-release");
    pool_governor_get_stats(g, &s);
    check_u64(s.host_reserved_mb, 4000, "no phantom memory after an over-release");
    pool_governor_free(g);
}

/* ---- concurrency ------------------------------------------------------------------------- */

#define N_THREADS 8

typedef struct race {
    pool_governor *g;
    pthread_barrier_t barrier;
    pool_cost first, second;
    pool_grant grants[N_THREADS];
    pp_status status[N_THREADS];
    int churn; /* > 0: loop that many cold start + release rounds instead of one cold start */
    int overshoot; /* set by the watcher when stats ever exceed a limit */
    int stop;
    pthread_mutex_t mu; /* guards overshoot and stop */
} race;

typedef struct racer {
    race *r;
    int id;
} racer;

static void *race_main(void *arg)
{
    racer *me = arg;
    race *r = me->r;
    const char *model = me->id % 2 ? "qwen/qwen3-coder" : "moonshot/kimi-k2";
    char msg[256];
    pthread_barrier_wait(&r->barrier);
    if (r->churn == 0) {
        r->status[me->id] =
            pool_governor_cold_start(r->g, model, &r->first, &r->second, &r->grants[me->id], msg,
                                     sizeof msg);
        return NULL;
    }
    for (int i = 0; i < r->churn; i++) {
        pool_grant gr;
        if (pool_governor_cold_start(r->g, model, &r->first, &r->second, &gr, msg, sizeof msg) ==
            PP_STATUS_OK)
            pool_governor_release(r->g, gr.device, gr.host_mb, gr.vram_mb);
    }
    return NULL;
}

static void *watch_main(void *arg)
{
    race *r = arg;
    for (;;) {
        pool_governor_stats s;
        pool_governor_get_stats(r->g, &s);
        int over = s.host_reserved_mb > s.host_limit_mb;
        for (int d = 0; d < s.n_devices; d++)
            over |= s.vram_reserved_mb[d] > s.vram_limit_mb[d];
        pthread_mutex_lock(&r->mu);
        r->overshoot |= over;
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            return NULL;
    }
}

/* Runs N_THREADS racers (and a watcher) on r->g; returns 0 when all threads ran. */
static int race_run(race *r)
{
    pthread_t th[N_THREADS], watcher;
    racer who[N_THREADS];
    int started = 0, ok = 1;
    pthread_mutex_init(&r->mu, NULL);
    r->overshoot = 0;
    r->stop = 0;
    pthread_barrier_init(&r->barrier, NULL, N_THREADS);
    if (pthread_create(&watcher, NULL, watch_main, r) != 0)
        return -1;
    for (; started < N_THREADS; started++) {
        who[started].r = r;
        who[started].id = started;
        if (pthread_create(&th[started], NULL, race_main, &who[started]) != 0) {
            ok = 0;
            break;
        }
    }
    if (!ok) {
        fprintf(stderr, "FAIL: pthread_create\n");
        exit(1); /* the started racers wait on the barrier forever */
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    pthread_join(watcher, NULL);
    pthread_barrier_destroy(&r->barrier);
    pthread_mutex_destroy(&r->mu);
    return 0;
}

static void test_race(void)
{
    /* Host limit 8000 with 6200 reserved by running models (1800 left) and device limits 8000
     * with 6500 reserved (1500 left on each). Two models, 8 racers, each needing 600 + 600 MB:
     * the first racer to the lock gets 2 workers (1200 MB), the second 1 (the last 600 MB of
     * host RAM), the other six MemoryExhausted: exactly 2 grants and 3 workers in any order. */
    for (int round = 0; round < 200; round++) {
        race r;
        memset(&r, 0, sizeof r);
        uint64_t v[2] = {10000, 10000};
        r.g = make(10000, v, 2);
        char msg[256];
        check(pool_governor_reserve(r.g, 0, &(pool_cost){3100, 6500}, msg, sizeof msg) ==
                      PP_STATUS_OK &&
                  pool_governor_reserve(r.g, 1, &(pool_cost){3100, 6500}, msg, sizeof msg) ==
                      PP_STATUS_OK,
              "race: pre-reserve");
        r.first = cost(600, 600);
        r.second = cost(600, 600);
        if (race_run(&r) != 0) {
            check(0, "race: pthread_create");
            pool_governor_free(r.g);
            return;
        }
        int n_grants = 0, n_workers = 0, n_exhausted = 0;
        uint64_t host = 0;
        for (int i = 0; i < N_THREADS; i++) {
            if (r.status[i] == PP_STATUS_OK) {
                n_grants++;
                n_workers += r.grants[i].n_workers;
                host += r.grants[i].host_mb;
            } else if (r.status[i] == PP_STATUS_MEMORY_EXHAUSTED) {
                n_exhausted++;
            }
        }
        pool_governor_stats s;
        pool_governor_get_stats(r.g, &s);
        int bad = n_grants != 2 || n_workers != 3 || n_exhausted != N_THREADS - 2 ||
                  s.host_reserved_mb != 6200 + host || s.host_reserved_mb > s.host_limit_mb ||
                  s.vram_reserved_mb[0] > s.vram_limit_mb[0] ||
                  s.vram_reserved_mb[1] > s.vram_limit_mb[1] || r.overshoot;
        if (bad) {
            fprintf(stderr,
                    "FAIL: race round %d: %d grants, %d workers, %d exhausted, host reserved "
                    "%" PRIu64 " of %" PRIu64 ", VRAM %" PRIu64 "/%" PRIu64 ", overshoot %d\n",
                    round, n_grants, n_workers, n_exhausted, s.host_reserved_mb, s.host_limit_mb,
                    s.vram_reserved_mb[0], s.vram_reserved_mb[1], r.overshoot);
            failures++;
            pool_governor_free(r.g);
            return;
        }
        pool_governor_free(r.g);
    }

    /* Churn: 8 threads cold start and release 2000 times each while a watcher checks the
     * limits; every grant is given back, so nothing stays reserved. */
    race r;
    memset(&r, 0, sizeof r);
    uint64_t v[2] = {3000, 2000}; /* limits 2400, 1600 */
    r.g = make(4000, v, 2);       /* limit 3200 */
    r.first = cost(700, 700);
    r.second = cost(300, 300);
    r.churn = 2000;
    if (race_run(&r) != 0) {
        check(0, "churn: pthread_create");
    } else {
        pool_governor_stats s;
        pool_governor_get_stats(r.g, &s);
        check(!r.overshoot, "churn: reservations never exceed a limit");
        check_u64(s.host_reserved_mb + s.vram_reserved_mb[0] + s.vram_reserved_mb[1], 0,
                  "churn: everything released");
    }
    pool_governor_free(r.g);
}

/* ---- environment ------------------------------------------------------------------------- */

static void test_env(void)
{
    pool_governor *g = NULL;
    pool_governor_stats s;
    char msg[256];

    unsetenv("PARAPHYM_HOST_MEM_MB");
    unsetenv("PARAPHYM_VRAM_MB");
    msg[0] = '\0';
    pp_status st = pool_governor_create_system(&g, msg, sizeof msg);
    check(st == PP_STATUS_OK && g, "create_system without overrides");
    if (st != PP_STATUS_OK)
        fprintf(stderr, "  (status %d: %s)\n", (int)st, msg);
    pool_governor_get_stats(g, &s);
    int n_devices = s.n_devices;
    uint64_t host_os = s.host_total_mb;
    check(host_os > 0, "host RAM from the OS");
    check_u64(s.host_limit_mb, host_os / 5 * 4 + host_os % 5 * 4 / 5, "host limit from the OS");
    printf("create_system: host %" PRIu64 " MB, %d devices\n", host_os, n_devices);
    for (int d = 0; d < n_devices; d++)
        printf("  device %d: %" PRIu64 " MB\n", d, s.vram_total_mb[d]);
    pool_governor_free(g);

    setenv("PARAPHYM_HOST_MEM_MB", "4096", 1);
    setenv("PARAPHYM_VRAM_MB", "8000", 1);
    g = NULL;
    check(pool_governor_create_system(&g, msg, sizeof msg) == PP_STATUS_OK && g,
          "create_system with overrides");
    pool_governor_get_stats(g, &s);
    check_u64(s.host_total_mb, 4096, "PARAPHYM_HOST_MEM_MB overrides host RAM");
    check_u64(s.host_limit_mb, 3276, "host limit from the override");
    check(s.n_devices == n_devices, "PARAPHYM_VRAM_MB neither adds nor removes devices");
    for (int d = 0; d < s.n_devices; d++)
        check_u64(s.vram_total_mb[d], 8000, "PARAPHYM_VRAM_MB applies to each device");
    if (n_devices == 0) {
        /* No GPU: PARAPHYM_VRAM_MB has no effect; workers are CPU workers. */
        pool_grant gr;
        check(start(g, "cpu", cost(1000, 5000), cost(1000, 5000), &gr, msg, sizeof msg) ==
                      PP_STATUS_OK &&
                  gr.device == -1 && gr.n_workers == 2 && gr.vram_mb == 0,
              "without a GPU PARAPHYM_VRAM_MB has no effect");
    }
    pool_governor_free(g);

    static const char *const bad[] = {"", "12x", "-5", "0", " 7", "7 ", "+7", "0x10", "1e3",
                                      "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (int which = 0; which < 2; which++) {
            const char *name = which ? "PARAPHYM_VRAM_MB" : "PARAPHYM_HOST_MEM_MB";
            setenv("PARAPHYM_HOST_MEM_MB", "4096", 1);
            setenv("PARAPHYM_VRAM_MB", "8000", 1);
            setenv(name, bad[i], 1);
            g = (pool_governor *)&g;
            msg[0] = '\0';
            st = pool_governor_create_system(&g, msg, sizeof msg);
            if (st != PP_STATUS_INVALID_ARG || g) {
                fprintf(stderr, "FAIL: %s=\"%s\": status %d, out %s\n", name, bad[i], (int)st,
                        g ? "set" : "NULL");
                failures++;
                if (st == PP_STATUS_OK)
                    pool_governor_free(g);
            }
            check_has(msg, name, "a malformed override's message names the variable");
        }
    }
    unsetenv("PARAPHYM_HOST_MEM_MB");
    unsetenv("PARAPHYM_VRAM_MB");
    check(pool_governor_create_system(NULL, msg, sizeof msg) == PP_STATUS_INVALID_ARG,
          "create_system with out NULL is INVALID_ARG");
}

int main(void)
{
    test_create();
    test_null_args();
    test_two_one_none();
    test_edge();
    test_bound();
    test_devices();
    test_second_excludes_weights();
    test_release();
    test_race();
    test_env();
    if (failures) {
        fprintf(stderr, "test_governor: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_governor: all passed\n");
    return 0;
}
