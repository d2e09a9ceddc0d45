/* governor.c: the pool's memory governor. One mutex guards the totals, limits and reservations of
 * host RAM and of every device; a cold start decides and reserves under that one lock, so two
 * models starting at once can never both take the last memory (reservation, not check-then-act).
 *
 * Invariant: for host RAM and every device, reserved <= limit = floor(0.8 * total) whenever the
 * lock is free; a reservation is taken whole or not at all; a release never underflows (a
 * release of more than is reserved is a caller bug: it is clamped to zero and counted).
 */
#include "governor.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#ifdef PP_HAVE_CUDA
#include "kernels.h"
#endif

struct pool_governor {
    pthread_mutex_t mu;
    uint64_t host_total_mb;
    uint64_t host_limit_mb;
    uint64_t host_reserved_mb; /* guarded by mu */
    int n_devices;
    uint64_t vram_total_mb[POOL_MAX_DEVICES];
    uint64_t vram_limit_mb[POOL_MAX_DEVICES];
    uint64_t vram_reserved_mb[POOL_MAX_DEVICES]; /* guarded by mu */
    uint64_t n_over_release; /* releases of more than was reserved (caller bugs), guarded by mu */
};

/* floor(0.8 * total) exactly, without the overflow total * 4 would risk near UINT64_MAX:
 * total = 5q + r gives 0.8 * total = 4q + 0.8r, and floor(0.8r) = 4r / 5 for r < 5. */
static uint64_t limit_of(uint64_t total)
{
    return total / 5 * 4 + total % 5 * 4 / 5;
}

/* a + b, saturating at UINT64_MAX (a saturated need never fits any limit). */
static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Whether `need` more fits on top of `reserved` under `limit` (reserved <= limit holds). */
static bool fits(uint64_t reserved, uint64_t need, uint64_t limit)
{
    return need <= limit && reserved <= limit - need;
}

static uint64_t free_of(uint64_t reserved, uint64_t limit)
{
    return reserved < limit ? limit - reserved : 0;
}

static unsigned long long ull(uint64_t v)
{
    return (unsigned long long)v;
}

pp_status pool_governor_create(uint64_t host_total_mb, const uint64_t *vram_total_mb, int n_devices,
                               pool_governor **out)
{
    if (!out)
        return PP_STATUS_INVALID_ARG;
    *out = NULL;
    if (host_total_mb == 0 || n_devices < 0 || n_devices > POOL_MAX_DEVICES ||
        (n_devices > 0 && !vram_total_mb))
        return PP_STATUS_INVALID_ARG;
    for (int d = 0; d < n_devices; d++)
        if (vram_total_mb[d] == 0)
            return PP_STATUS_INVALID_ARG;

    pool_governor *g = calloc(1, sizeof *g);
    if (!g)
        return PP_STATUS_OUT_OF_MEMORY;
    if (pthread_mutex_init(&g->mu, NULL) != 0) {
        free(g);
        return PP_STATUS_OUT_OF_MEMORY;
    }
    g->host_total_mb = host_total_mb;
    g->host_limit_mb = limit_of(host_total_mb);
    g->n_devices = n_devices;
    for (int d = 0; d < n_devices; d++) {
        g->vram_total_mb[d] = vram_total_mb[d];
        g->vram_limit_mb[d] = limit_of(vram_total_mb[d]);
    }
    *out = g;
    return PP_STATUS_OK;
}

/* Reads the environment variable `name` as a positive decimal count of MB. Returns 0 when it is
 * unset (*found = false), 0 with *found = true and *value set when it is well formed, and -1 with
 * a message when it is set but is not a positive integer ("", "12x", "-5", " 7", "0", overflow). */
static int env_mb(const char *name, bool *found, uint64_t *value, char *msg, size_t msg_len)
{
    const char *s = getenv(name);
    *found = false;
    if (!s)
        return 0;
    bool digits = s[0] != '\0';
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            digits = false;
    unsigned long long v = 0;
    if (digits) {
        errno = 0;
        v = strtoull(s, NULL, 10);
        if (errno == ERANGE)
            digits = false;
    }
    if (!digits || v == 0) {
        eng_msgf(msg, msg_len, "%s=\"%s\" is not a positive whole number of MB", name, s);
        return -1;
    }
    *found = true;
    *value = (uint64_t)v;
    return 0;
}

pp_status pool_governor_create_system(pool_governor **out, char *msg, size_t msg_len)
{
    uint64_t host_mb = 0, vram_override_mb = 0;
    bool host_set = false, vram_set = false;
    uint64_t vram_mb[POOL_MAX_DEVICES] = {0};
    int n_devices = 0;

    if (!out) {
        eng_msgf(msg, msg_len, "pool_governor_create_system: out is NULL");
        return PP_STATUS_INVALID_ARG;
    }
    *out = NULL;
    /* Both overrides are validated even without a GPU, so a typo shows on any machine. */
    if (env_mb("PARAPHYM_HOST_MEM_MB", &host_set, &host_mb, msg, msg_len) != 0 ||
        env_mb("PARAPHYM_VRAM_MB", &vram_set, &vram_override_mb, msg, msg_len) != 0)
        return PP_STATUS_INVALID_ARG;

    if (!host_set) {
        long pages = sysconf(_SC_PHYS_PAGES);
        long page_size = sysconf(_SC_PAGESIZE);
        if (pages <= 0 || page_size <= 0) {
            eng_msgf(msg, msg_len, "cannot read the host RAM size from the OS (sysconf); "
                                  "set PARAPHYM_HOST_MEM_MB");
            return PP_STATUS_UNSUPPORTED;
        }
        /* MB = floor(pages * page_size / 2^20), split as pages = a * 2^20 + b so that no
         * product can overflow. */
        host_mb = (uint64_t)pages / (1u << 20) * (uint64_t)page_size +
                  (uint64_t)pages % (1u << 20) * (uint64_t)page_size / (1u << 20);
        if (host_mb == 0) {
            eng_msgf(msg, msg_len,
                    "the OS reports under 1 MB of host RAM; set PARAPHYM_HOST_MEM_MB");
            return PP_STATUS_UNSUPPORTED;
        }
    }

    /* PARAPHYM_WORKER_BACKEND: "cpu" counts no device, so every worker is a CPU worker; "auto"
     * (the default) counts the CUDA devices there are. */
    const char *backend = getenv("PARAPHYM_WORKER_BACKEND");
    bool use_devices = true;
    if (backend && backend[0]) {
        if (strcmp(backend, "cpu") == 0) {
            use_devices = false;
        } else if (strcmp(backend, "auto") != 0) {
            eng_msgf(msg, msg_len, "PARAPHYM_WORKER_BACKEND must be cpu or auto, not '%s'", backend);
            return PP_STATUS_INVALID_ARG;
        }
    }
#ifdef PP_HAVE_CUDA
    if (use_devices) {
        char err[256] = "";
        int n = kern_device_count(err, sizeof err);
        /* More devices than POOL_MAX_DEVICES: the governor manages the first ones only. With
         * PARAPHYM_VRAM_MB set the devices are only counted, not queried. */
        n_devices = n < 0 ? 0 : n > POOL_MAX_DEVICES ? POOL_MAX_DEVICES : n;
        for (int d = 0; d < n_devices && !vram_set; d++) {
            size_t total = 0;
            if (kern_device_total_mem(d, &total, err, sizeof err) != 0) {
                eng_msgf(msg, msg_len, "cannot read the VRAM size of device %d: %s", d, err);
                return PP_STATUS_DEVICE;
            }
            vram_mb[d] = (uint64_t)total >> 20;
            if (vram_mb[d] == 0) {
                eng_msgf(msg, msg_len, "device %d reports under 1 MB of VRAM", d);
                return PP_STATUS_DEVICE;
            }
        }
    }
#else
    (void)use_devices;
#endif
    for (int d = 0; d < n_devices; d++)
        if (vram_set)
            vram_mb[d] = vram_override_mb;

    pp_status st = pool_governor_create(host_mb, vram_mb, n_devices, out);
    if (st != PP_STATUS_OK)
        eng_msgf(msg, msg_len, "cannot create the memory governor (%llu MB host RAM, %d devices)",
                ull(host_mb), n_devices);
    return st;
}

void pool_governor_free(pool_governor *g)
{
    if (!g)
        return;
    pthread_mutex_destroy(&g->mu);
    free(g);
}

/* The MEMORY_EXHAUSTED message for a cold start or replacement that does not fit (under mu).
 * With devices, the VRAM part reports `device` (the one asked for, or the one with the most free
 * VRAM when the governor was choosing). */
static void exhausted_msg(const pool_governor *g, const char *what, const char *model,
                          uint64_t host_need, uint64_t vram_need, int device, bool chosen,
                          char *msg, size_t msg_len)
{
    uint64_t host_free = free_of(g->host_reserved_mb, g->host_limit_mb);
    if (device < 0) {
        eng_msgf(msg, msg_len,
                "%s%s: needs %llu MB of host RAM (%llu MB available of a %llu MB limit)", what,
                model, ull(host_need), ull(host_free), ull(g->host_limit_mb));
        return;
    }
    eng_msgf(msg, msg_len,
            "%s%s: needs %llu MB of host RAM (%llu MB available of a %llu MB limit) and %llu MB "
            "of VRAM (%llu MB available of a %llu MB limit on device %d%s)",
            what, model, ull(host_need), ull(host_free), ull(g->host_limit_mb), ull(vram_need),
            ull(free_of(g->vram_reserved_mb[device], g->vram_limit_mb[device])),
            ull(g->vram_limit_mb[device]), device,
            chosen && g->n_devices > 1 ? ", the most free of all devices" : "");
}

pp_status pool_governor_cold_start(pool_governor *g, const char *model, const pool_cost *first,
                                   const pool_cost *second, pool_grant *out, char *msg,
                                   size_t msg_len)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!g || !model || !first || !second || !out) {
        eng_msgf(msg, msg_len, "pool_governor_cold_start: NULL argument");
        return PP_STATUS_INVALID_ARG;
    }
    uint64_t host1 = first->host_mb, host2 = add_sat(first->host_mb, second->host_mb);
    uint64_t vram1 = first->vram_mb, vram2 = add_sat(first->vram_mb, second->vram_mb);

    pthread_mutex_lock(&g->mu);
    bool host_fits1 = fits(g->host_reserved_mb, host1, g->host_limit_mb);
    bool host_fits2 = fits(g->host_reserved_mb, host2, g->host_limit_mb);
    int n_workers = 0, device = -1;

    if (g->n_devices == 0) {
        /* CPU workers: only host RAM is counted, a VRAM cost means nothing here. */
        n_workers = host_fits2 ? 2 : host_fits1 ? 1 : 0;
        vram1 = vram2 = 0;
    } else {
        /* Among devices where one worker fits, prefer two, then the most free VRAM, then the
         * lowest index. `most_free` is the device to name when nothing fits. */
        int most_free = 0;
        for (int d = 0; d < g->n_devices; d++) {
            uint64_t reserved = g->vram_reserved_mb[d], limit = g->vram_limit_mb[d];
            uint64_t free_d = free_of(reserved, limit);
            if (free_d > free_of(g->vram_reserved_mb[most_free], g->vram_limit_mb[most_free]))
                most_free = d;
            if (!host_fits1 || !fits(reserved, vram1, limit))
                continue;
            int n = host_fits2 && fits(reserved, vram2, limit) ? 2 : 1;
            if (device < 0 || n > n_workers ||
                (n == n_workers &&
                 free_d > free_of(g->vram_reserved_mb[device], g->vram_limit_mb[device]))) {
                device = d;
                n_workers = n;
            }
        }
        if (n_workers == 0)
            device = most_free;
    }

    if (n_workers == 0) {
        exhausted_msg(g, "cannot start a worker for ", model, host1, vram1, device, true, msg,
                      msg_len);
        pthread_mutex_unlock(&g->mu);
        return PP_STATUS_MEMORY_EXHAUSTED;
    }
    out->n_workers = n_workers;
    out->device = device;
    out->host_mb = n_workers == 2 ? host2 : host1;
    out->vram_mb = device < 0 ? 0 : n_workers == 2 ? vram2 : vram1;
    g->host_reserved_mb += out->host_mb;
    if (device >= 0)
        g->vram_reserved_mb[device] += out->vram_mb;
    pthread_mutex_unlock(&g->mu);
    return PP_STATUS_OK;
}

pp_status pool_governor_reserve(pool_governor *g, int device, const pool_cost *cost, char *msg,
                                size_t msg_len)
{
    if (!g || !cost) {
        eng_msgf(msg, msg_len, "pool_governor_reserve: NULL argument");
        return PP_STATUS_INVALID_ARG;
    }
    if (device < -1 || device >= g->n_devices) {
        eng_msgf(msg, msg_len, "pool_governor_reserve: device %d is not one of the %d devices",
                device, g->n_devices);
        return PP_STATUS_INVALID_ARG;
    }
    /* device -1 holds host RAM only, as pool_governor_release ignores VRAM for it. */
    uint64_t vram = device < 0 ? 0 : cost->vram_mb;

    pthread_mutex_lock(&g->mu);
    bool ok = fits(g->host_reserved_mb, cost->host_mb, g->host_limit_mb) &&
              (device < 0 || fits(g->vram_reserved_mb[device], vram, g->vram_limit_mb[device]));
    if (!ok) {
        exhausted_msg(g, "cannot reserve a replacement worker", "", cost->host_mb, vram, device,
                      false, msg, msg_len);
        pthread_mutex_unlock(&g->mu);
        return PP_STATUS_MEMORY_EXHAUSTED;
    }
    g->host_reserved_mb += cost->host_mb;
    if (device >= 0)
        g->vram_reserved_mb[device] += vram;
    pthread_mutex_unlock(&g->mu);
    return PP_STATUS_OK;
}

void pool_governor_release(pool_governor *g, int device, uint64_t host_mb, uint64_t vram_mb)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    if (host_mb > g->host_reserved_mb) {
        g->n_over_release++;
        host_mb = g->host_reserved_mb;
    }
    g->host_reserved_mb -= host_mb;
    if (device >= 0 && device < g->n_devices) {
        if (vram_mb > g->vram_reserved_mb[device]) {
            g->n_over_release++;
            vram_mb = g->vram_reserved_mb[device];
        }
        g->vram_reserved_mb[device] -= vram_mb;
    }
    pthread_mutex_unlock(&g->mu);
}

void pool_governor_get_stats(pool_governor *g, pool_governor_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    out->host_total_mb = g->host_total_mb;
    out->host_limit_mb = g->host_limit_mb;
    out->host_reserved_mb = g->host_reserved_mb;
    out->n_devices = g->n_devices;
    for (int d = 0; d < g->n_devices; d++) {
        out->vram_total_mb[d] = g->vram_total_mb[d];
        out->vram_limit_mb[d] = g->vram_limit_mb[d];
        out->vram_reserved_mb[d] = g->vram_reserved_mb[d];
    }
    pthread_mutex_unlock(&g->mu);
}
