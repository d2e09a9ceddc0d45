/* governor.h: the pool's memory governor. It counts what the pool has reserved against 80% of
 * host RAM and 80% of each GPU's VRAM, and decides a model's cold start: two workers, one, or
 * none (MemoryExhausted), reserving atomically so concurrent cold starts never overshoot.
 *
 * Invariant: for host RAM and every device, reserved <= limit = floor(0.8 * total) at all times;
 * a reservation is either taken whole or not at all. All functions are thread-safe.
 * MB means MiB (2^20 bytes) throughout.
 */
#ifndef POOL_GOVERNOR_H
#define POOL_GOVERNOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "paraphym.h"

#define POOL_MAX_DEVICES 16

/* What one worker costs. vram_mb is 0 for a CPU worker. */
typedef struct pool_cost {
    uint64_t host_mb;
    uint64_t vram_mb;
} pool_cost;

/* A granted cold start: n_workers (1 or 2) on `device` (-1: CPU workers, host RAM only) holding
 * `host_mb` / `vram_mb` in total. Give it back with pool_governor_release. */
typedef struct pool_grant {
    int n_workers;
    int device;
    uint64_t host_mb;
    uint64_t vram_mb;
} pool_grant;

typedef struct pool_governor_stats {
    uint64_t host_total_mb, host_limit_mb, host_reserved_mb;
    int n_devices;
    uint64_t vram_total_mb[POOL_MAX_DEVICES];
    uint64_t vram_limit_mb[POOL_MAX_DEVICES];
    uint64_t vram_reserved_mb[POOL_MAX_DEVICES];
} pool_governor_stats;

typedef struct pool_governor pool_governor;

/* Totals are injected (tests) or read from the system by pool_governor_create_system.
 * n_devices == 0: no GPU, workers are CPU workers and only host RAM is counted. */
pp_status pool_governor_create(uint64_t host_total_mb, const uint64_t *vram_total_mb, int n_devices,
                               pool_governor **out);

/* Host RAM from the OS (sysconf physical pages), VRAM per device from CUDA when built with it;
 * PARAPHYM_HOST_MEM_MB and PARAPHYM_VRAM_MB (applied to each detected GPU; no effect without
 * one) override them, and PARAPHYM_WORKER_BACKEND=cpu counts no device (the pool's workers are
 * then CPU workers on a GPU machine too; "auto", the default, counts them). A malformed value is
 * INVALID_ARG with a message in msg. */
pp_status pool_governor_create_system(pool_governor **out, char *msg, size_t msg_len);

void pool_governor_free(pool_governor *g); /* NULL-safe */

/* The seed's cold-start rule, for both memories: with C the reserved total and L the limit,
 * grant 2 workers if C + first + second <= L for host RAM and for the chosen device's VRAM, else
 * 1 if C + first <= L, else PP_STATUS_MEMORY_EXHAUSTED with a message naming `model`, the MB
 * needed and the MB available (host and VRAM). `second` is the second worker's cost, which
 * excludes the weights the two workers share. With GPUs, the device with the most free VRAM
 * that fits is chosen. On success the grant is reserved. */
pp_status pool_governor_cold_start(pool_governor *g, const char *model, const pool_cost *first,
                                   const pool_cost *second, pool_grant *out, char *msg,
                                   size_t msg_len);

/* Reserves exactly one worker of cost `cost` (replacing a dead worker); MEMORY_EXHAUSTED when
 * it does not fit. device as in pool_grant (-1 for host only). */
pp_status pool_governor_reserve(pool_governor *g, int device, const pool_cost *cost, char *msg,
                                size_t msg_len);

/* Returns memory: host_mb of host RAM and vram_mb on device (ignored when device < 0). */
void pool_governor_release(pool_governor *g, int device, uint64_t host_mb, uint64_t vram_mb);

void pool_governor_get_stats(pool_governor *g, pool_governor_stats *out);

#endif /* POOL_GOVERNOR_H */
