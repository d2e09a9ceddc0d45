/* backend_cuda.c: the CUDA backend: eng_backend_ops over the launchers of kernels/kernels.h.
 *
 * Invariants:
 *   - Every op is queued on the backend's own non-blocking stream and returns without waiting,
 *     except download, upload (the caller may reuse its host buffer at once) and the first use
 *     of a weight; so ops issued in order on one backend see each other's results.
 *   - Weights stay where the model bound them (host memory, the safetensors mapping) and are
 *     made resident on first use through a weight cache: host pointer -> device copy. The cache
 *     is shared (refcounted, one mutex) by a backend and the backends created with share_with,
 *     so a model's fork never uploads a tensor twice; an entry is published only after its
 *     upload has completed, so another backend's stream may use it at once.
 *   - Every CUDA call and every launcher's return is checked. A failure returns PP_STATUS_DEVICE
 *     (OUT_OF_MEMORY for an allocation) and keeps a message for last_error; a sticky error (an
 *     illegal address, a launch failure: the CUDA context is lost) marks the backend dead, and
 *     from then on every op returns PP_STATUS_DEVICE without touching the device.
 *   - matmul_bf16 (the bf16 mode's products) runs on tensor cores at prefill sizes: BF16
 *     weights through cuBLAS (one handle per backend, made on first use, bound to the backend's
 *     stream with a workspace the backend allocated, so cuBLAS allocates nothing while a product
 *     runs; a cuBLAS failure is recorded as a CUDA one, its status name in last_error), FP8 /
 *     INT8 / INT4 weights through kern_matmul_tc.
 *   - record_begin / record_end (backend.h) capture the ops between them on the stream
 *     (cudaStreamBeginCapture, thread-local mode, so other threads' workers are not restricted)
 *     into a CUDA graph and launch it whole. The executable graphs are kept (GRAPH_SLOTS, keyed
 *     by node count) and updated in place with the next capture's parameters
 *     (cudaGraphExecUpdate: pointers, grid sizes and scalars may change, the topology may not;
 *     when it changed, the graph is instantiated anew). While capturing, nothing that cannot be
 *     captured runs: an allocation, a weight's first upload, a wait or a host copy makes the op
 *     return PP_STATUS_UNSUPPORTED instead (record_blocks), a non-sticky CUDA or cuBLAS failure
 *     does the same, and record_end then launches nothing so the caller reissues the ops one by
 *     one. Buffers freed while capturing (cuda_free) are freed at record_end.
 * A backend is used by one thread at a time; backends sharing a cache may run on two threads.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "backend.h"
#include "kernels.h"
#include "sampler.h"

/* Device allocations are rounded up to this many bytes (and the tail of an uploaded tensor is
 * zeroed), so a kernel's vector load of the last elements of an odd-sized tensor stays inside
 * the allocation; cudaMalloc aligns to 256 bytes as well. */
#define ALLOC_ROUND 256

/* Device copies of RoPE frequency tables a backend keeps (one per model and rope in practice). */
#define ROPE_SLOTS 4

/* matmul_bf16 takes the tensor cores (cuBLAS, kern_matmul_tc) from this many tokens on. Below
 * it kern_matmul runs its GEMV (n_tokens <= 16, kernels/matmul.cu), which reads the weight once
 * at memory speed: a product of 16 rows or fewer is bound by those reads whatever multiplies, so
 * tensor cores gain nothing there and the conversion of x would be pure cost. From 17 tokens
 * kern_matmul switches to its SIMT tiled GEMM (f32 FMA, 64 x 64 tiles, a small fraction of the
 * bf16 tensor-core rate), which a tensor-core GEMM beats while still bound by the same weight
 * reads. Set from the kernels' dispatch, not measured yet (bench_kernels' matmul_bf16_op and
 * matmul_tc_prefill rows do at 512 and 2048 tokens). */
#define BF16_GEMM_MIN_TOKENS 17

/* Columns of matmul_bf16's bf16 copy of x are padded to a multiple of 8 (16 bytes): cuBLAS's
 * tensor-core kernels run best with every leading dimension and pointer 16-byte aligned (cuBLAS
 * guide, "Tensor Core Usage"; others still run, on slower kernels). */
#define BF16_LD_ALIGN 8

/* cuBLAS workspace per backend, as the cuBLAS guide recommends for cublasSetWorkspace: 32 MiB on
 * Hopper (compute capability 9.x) and later, 4 MiB before. */
#define BLAS_WS_HOPPER ((size_t)32 << 20)
#define BLAS_WS_OTHER ((size_t)4 << 20)

/* Executable decode-step graphs a backend keeps, keyed by their node count (a decode step's
 * count depends on the batch's composition, e.g. how many runs of sampling settings it has, so a
 * pool worker meets a few); the least recently used is replaced. */
#define GRAPH_SLOTS 4

/* Recordings in a row that fell back for a failure (capture, instantiation or launch; not a
 * first use's upload or allocation) after which a backend stops recording. */
#define GRAPH_MAX_FAILURES 3

/* Buffers cuda_free may be handed while recording (freed at record_end); one recording frees at
 * most one (the bf16 decorator growing its activation buffer: the allocation after the free
 * breaks the recording, and every op after it returns at once). */
#define DEFERRED_FREES 8

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* ---- the shared weight cache ----------------------------------------------------------------- */

/* What the experts op needs to know of an expert array besides its device descriptors, worked
 * out once when the array is first resolved: whether kern_matmul_tc takes every expert (one
 * format it supports, one shape). */
typedef struct experts_tc_verdict {
    bool ok;
    kern_wfmt fmt;
    int64_t n_out, n_in;
} experts_tc_verdict;

typedef struct cache_slot {
    const void *host; /* key: host address of the tensor (or expert array); NULL: empty slot */
    void *dev;        /* device copy */
    size_t bytes;     /* bytes uploaded (the allocation is rounded up to ALLOC_ROUND) */
    experts_tc_verdict tc; /* expert arrays only */
} cache_slot;

/* Open addressing with linear probing; cap is a power of two and at most half the slots are
 * used. Entries are never removed before the whole cache is freed. */
typedef struct cache_map {
    cache_slot *slots;
    size_t cap, n;
} cache_map;

typedef struct weight_cache {
    pthread_mutex_t mu; /* guards everything below */
    int refs;           /* backends using the cache */
    int device;
    cache_map tensors;  /* eng_weight data / scale, eng_vec data -> device bytes */
    cache_map experts;  /* host eng_weight[n_expert] arrays -> device kern_weight[n_expert] */
    size_t device_bytes;
} weight_cache;

static size_t map_hash(const void *key, size_t mask)
{
    uint64_t h = (uint64_t)(uintptr_t)key * 0x9e3779b97f4a7c15ull;
    return (size_t)(h ^ (h >> 29)) & mask;
}

static cache_slot *map_find(const cache_map *m, const void *key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = map_hash(key, m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].host == key)
            return &m->slots[i];
        if (!m->slots[i].host)
            return NULL;
    }
}

/* Adds key (not present); false when out of host memory (nothing changes then). */
static bool map_insert(cache_map *m, const void *key, void *dev, size_t bytes, experts_tc_verdict tc)
{
    if (2 * (m->n + 1) > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        cache_slot *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return false;
        for (size_t j = 0; j < m->cap; j++) {
            if (!m->slots[j].host)
                continue;
            size_t i = map_hash(m->slots[j].host, cap - 1);
            while (slots[i].host)
                i = (i + 1) & (cap - 1);
            slots[i] = m->slots[j];
        }
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    size_t i = map_hash(key, m->cap - 1);
    while (m->slots[i].host)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = (cache_slot){key, dev, bytes, tc};
    m->n++;
    return true;
}

/* Frees every device copy (errors ignored: the context may be gone) and the table. */
static void map_clear(cache_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].host)
            cudaFree(m->slots[i].dev);
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static void cache_release(weight_cache *wc)
{
    if (!wc)
        return;
    pthread_mutex_lock(&wc->mu);
    bool last = --wc->refs == 0;
    pthread_mutex_unlock(&wc->mu);
    if (!last)
        return;
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != wc->device)
        cudaSetDevice(wc->device);
    map_clear(&wc->tensors);
    map_clear(&wc->experts);
    cudaGetLastError(); /* errors of a lost context are not this call's to report */
    pthread_mutex_destroy(&wc->mu);
    free(wc);
}

/* ---- the backend ----------------------------------------------------------------------------- */

typedef struct rope_slot {
    const float *host; /* key: eng_rope.inv_freq (host, the model's) */
    int d_rope;
    float *values;     /* [d_rope / 2] host: what was uploaded (compared on every lookup) */
    float *dev;        /* [d_rope / 2] device */
} rope_slot;

typedef struct graph_slot {
    cudaGraphExec_t exec; /* NULL: empty */
    size_t n_nodes;       /* of the graph exec was made or last updated from */
    uint64_t last_use;
} graph_slot;

typedef struct cuda_backend {
    eng_backend base;
    int device;
    int cc_major;   /* the device's compute capability major (kern_matmul_tc needs >= 8) */
    cudaStream_t stream;
    weight_cache *wc;
    bool dead;      /* a sticky CUDA error was seen: the context is unusable */
    char msg[512];  /* the last failure, "" after a successful op */
    void *work;     /* kernel workspace (attention, MLA, MoE, topk; matmul_bf16's bf16 copy of x),
                       work_bytes, device; nothing in it outlives an op */
    size_t work_bytes;
    cublasHandle_t blas; /* matmul_bf16's cuBLAS handle on stream, NULL until first used */
    void *blas_ws;       /* [blas_ws_bytes] device: blas's workspace */
    size_t blas_ws_bytes;
    int32_t *ids;   /* [ids_cap] device: embedding ids */
    size_t ids_cap;
    rope_slot rope[ROPE_SLOTS];
    int rope_next;  /* slot replaced next when none matches */
    /* recording (record_begin / record_end) */
    bool graphs_on;     /* PARAPHYM_CUDA_GRAPHS was not "0" at creation, and fewer than
                           GRAPH_MAX_FAILURES failed recordings in a row since */
    bool recording;     /* the stream is capturing */
    bool record_broken; /* an op of this recording was not recorded */
    bool record_failed; /* ... because a CUDA / cuBLAS call failed (not a first use) */
    int graph_failures; /* failed recordings in a row */
    graph_slot graphs[GRAPH_SLOTS];
    uint64_t graph_clock;
    size_t graphs_launched, graph_fallbacks;
    void *deferred[DEFERRED_FREES]; /* cuda_free'd while recording */
    int n_deferred;
} cuda_backend;

static const eng_backend_ops cuda_ops;

static cuda_backend *as_cuda(eng_backend *be) { return (cuda_backend *)be; }

/* Errors after which the CUDA context is unusable (every later call fails the same way). */
static bool error_is_sticky(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorContextIsDestroyed:
    case cudaErrorDevicesUnavailable:
    case cudaErrorCudartUnloading:
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorUnknown: return true;
    default: return false;
    }
}

/* Records a failed CUDA call or launcher (what: its text) and returns the status the op gives:
 * OUT_OF_MEMORY for an allocation failure, DEVICE otherwise. A sticky error marks the backend
 * dead; any other is cleared from the runtime's last-error slot so that it is not reported
 * again by the next launcher. */
static pp_status cuda_fail(cuda_backend *cb, cudaError_t e, const char *what, int line)
{
    bool sticky = error_is_sticky(e);
    snprintf(cb->msg, sizeof cb->msg, "cuda backend (device %d): %.160s failed: %s (%s) at backend_cuda.c:%d%s",
             cb->device, what, cudaGetErrorName(e), cudaGetErrorString(e), line,
             sticky ? "; the CUDA context is lost, the backend is dead" : "");
    if (cb->recording && !sticky) { /* (e.g. a call capture does not allow): the op runs again,
                                       unrecorded, where a real failure shows */
        cudaGetLastError();
        cb->record_broken = cb->record_failed = true;
        return PP_STATUS_UNSUPPORTED;
    }
    if (sticky)
        cb->dead = true;
    else
        cudaGetLastError();
    return e == cudaErrorMemoryAllocation ? PP_STATUS_OUT_OF_MEMORY : PP_STATUS_DEVICE;
}

/* Runs a CUDA runtime call or a kern_* launcher (both return 0 / a cudaError_t); on failure
 * records it and returns the failure's status from the enclosing function. */
#define CUDA_TRY(cb, call)                                                                         \
    do {                                                                                           \
        cudaError_t try_e_ = (cudaError_t)(call);                                                  \
        if (try_e_ != cudaSuccess)                                                                 \
            return cuda_fail((cb), try_e_, #call, __LINE__);                                       \
    } while (0)

/* Records a failed cuBLAS call (what: its text) as cuda_fail does a CUDA one: the status's name
 * and text, and the CUDA error a failed launch inside cuBLAS left, if any (a sticky one marks
 * the backend dead; any other is cleared). OUT_OF_MEMORY for CUBLAS_STATUS_ALLOC_FAILED, DEVICE
 * otherwise. */
static pp_status cublas_fail(cuda_backend *cb, cublasStatus_t s, const char *what, int line)
{
    cudaError_t e = cudaGetLastError();
    bool sticky = error_is_sticky(e);
    snprintf(cb->msg, sizeof cb->msg, "cuda backend (device %d): %.160s failed: %s (%s)%s%s at backend_cuda.c:%d%s",
             cb->device, what, cublasGetStatusName(s), cublasGetStatusString(s),
             e != cudaSuccess ? "; CUDA error " : "", e != cudaSuccess ? cudaGetErrorName(e) : "", line,
             sticky ? "; the CUDA context is lost, the backend is dead" : "");
    if (cb->recording && !sticky) { /* as cuda_fail */
        cb->record_broken = cb->record_failed = true;
        return PP_STATUS_UNSUPPORTED;
    }
    if (sticky)
        cb->dead = true;
    return s == CUBLAS_STATUS_ALLOC_FAILED ? PP_STATUS_OUT_OF_MEMORY : PP_STATUS_DEVICE;
}

/* Runs a cuBLAS call; on failure records it and returns its status from the enclosing function. */
#define CUBLAS_TRY(cb, call)                                                                       \
    do {                                                                                           \
        cublasStatus_t try_s_ = (call);                                                            \
        if (try_s_ != CUBLAS_STATUS_SUCCESS)                                                       \
            return cublas_fail((cb), try_s_, #call, __LINE__);                                     \
    } while (0)

/* Records a failure that is not a CUDA error (a bad argument, host memory) and returns st. */
static pp_status set_fail(cuda_backend *cb, pp_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static pp_status set_fail(cuda_backend *cb, pp_status st, const char *fmt, ...)
{
    int n = snprintf(cb->msg, sizeof cb->msg, "cuda backend: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cb->msg + n, sizeof cb->msg - (size_t)n, fmt, ap);
    va_end(ap);
    return st;
}

/* While recording: marks the recording broken and returns true, for a step that capture cannot
 * take (an allocation, an upload, a wait); the caller then returns PP_STATUS_UNSUPPORTED having
 * done nothing. False when not recording. */
static bool record_blocks(cuda_backend *cb)
{
    if (!cb->recording)
        return false;
    cb->record_broken = true;
    return true;
}

/* Every op starts here: a dead backend fails at once, an op after a broken recording's first
 * unrecordable op returns PP_STATUS_UNSUPPORTED; otherwise the message is cleared and the
 * calling thread is put on the backend's device. */
static pp_status op_begin(cuda_backend *cb)
{
    if (cb->dead)
        return PP_STATUS_DEVICE;
    if (cb->recording && cb->record_broken)
        return PP_STATUS_UNSUPPORTED;
    cb->msg[0] = '\0';
    int cur = -1;
    CUDA_TRY(cb, cudaGetDevice(&cur));
    if (cur != cb->device)
        CUDA_TRY(cb, cudaSetDevice(cb->device));
    return PP_STATUS_OK;
}

/* cudaMalloc of bytes rounded up to ALLOC_ROUND (at least one unit). */
static pp_status dev_alloc(cuda_backend *cb, size_t bytes, void **out)
{
    *out = NULL;
    if (record_blocks(cb))
        return PP_STATUS_UNSUPPORTED;
    CUDA_TRY(cb, cudaMalloc(out, round_up(bytes ? bytes : 1, ALLOC_ROUND)));
    return PP_STATUS_OK;
}

/* Frees a buffer the stream may still be using: waits for the stream first. */
static void dev_free_after_stream(cuda_backend *cb, void *p)
{
    if (!p)
        return;
    cudaStreamSynchronize(cb->stream);
    cudaFree(p);
    if (!cb->dead)
        cudaGetLastError();
}

/* Grows a device scratch buffer (*buf of *cap bytes) to at least bytes; the old contents are
 * not kept. */
static pp_status scratch_reserve(cuda_backend *cb, void **buf, size_t *cap, size_t bytes)
{
    if (bytes <= *cap && *buf)
        return PP_STATUS_OK;
    if (record_blocks(cb))
        return PP_STATUS_UNSUPPORTED;
    dev_free_after_stream(cb, *buf);
    *buf = NULL;
    *cap = 0;
    size_t want = round_up(bytes + bytes / 2, ALLOC_ROUND);
    pp_status st = dev_alloc(cb, want, buf);
    if (st == PP_STATUS_OK)
        *cap = want;
    return st;
}

/* ---- weights: eng_weight -> kern_weight with device data ------------------------------------- */

static bool kern_dtype_of(eng_dtype d, kern_dtype *out)
{
    switch (d) {
    case ENG_DTYPE_F32: *out = KERN_DT_F32; return true;
    case ENG_DTYPE_BF16: *out = KERN_DT_BF16; return true;
    case ENG_DTYPE_F16: *out = KERN_DT_F16; return true;
    default: return false;
    }
}

/* Bytes of a weight's data as stored (eng_weight_bytes without the scales). */
static size_t weight_data_bytes(const eng_weight *w)
{
    switch (w->fmt) {
    case ENG_WFMT_F32: return (size_t)(w->n_out * w->n_in) * 4;
    case ENG_WFMT_BF16:
    case ENG_WFMT_F16: return (size_t)(w->n_out * w->n_in) * 2;
    case ENG_WFMT_FP8_BLOCK:
    case ENG_WFMT_INT8_CHANNEL: return (size_t)(w->n_out * w->n_in);
    case ENG_WFMT_INT4_GROUP: return (size_t)(w->n_out * w->packed_cols) * 4;
    }
    return 0;
}

/* Bytes of a weight's scale grid (0 for unquantized formats): INT8's is [n_out], one column
 * whatever scale_cols says, as eng_weight_bytes counts it. */
static size_t weight_scale_bytes(const eng_weight *w)
{
    size_t size = eng_dtype_size(w->scale_dtype);
    switch (w->fmt) {
    case ENG_WFMT_FP8_BLOCK: return (size_t)(eng_ceil_div(w->n_out, w->block_out) * w->scale_cols) * size;
    case ENG_WFMT_INT4_GROUP: return (size_t)(w->n_out * w->scale_cols) * size;
    case ENG_WFMT_INT8_CHANNEL: return (size_t)w->n_out * size;
    default: return 0;
    }
}

/* Uploads bytes of host memory into a new device buffer (tail zeroed) and waits for the copy,
 * so that the buffer may be published to other streams. */
static pp_status upload_new(cuda_backend *cb, const void *host, size_t bytes, void **out)
{
    void *d = NULL;
    pp_status st = dev_alloc(cb, bytes, &d);
    if (st != PP_STATUS_OK)
        return st;
    size_t padded = round_up(bytes ? bytes : 1, ALLOC_ROUND);
    cudaError_t e = cudaMemcpyAsync(d, host, bytes, cudaMemcpyHostToDevice, cb->stream);
    if (e == cudaSuccess && padded > bytes)
        e = cudaMemsetAsync((char *)d + bytes, 0, padded - bytes, cb->stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(cb->stream);
    if (e != cudaSuccess) {
        cudaFree(d);
        return cuda_fail(cb, e, "uploading a weight (cudaMemcpyAsync + cudaStreamSynchronize)", __LINE__);
    }
    *out = d;
    return PP_STATUS_OK;
}

/* The device copy of `bytes` bytes of host tensor data at host, uploaded on first use. */
static pp_status cache_tensor(cuda_backend *cb, const void *host, size_t bytes, const void **dev)
{
    weight_cache *wc = cb->wc;
    pp_status st = PP_STATUS_OK;
    pthread_mutex_lock(&wc->mu);
    cache_slot *s = map_find(&wc->tensors, host);
    if (s && s->bytes >= bytes) {
        *dev = s->dev;
    } else if (s) {
        /* the same host address with a larger extent: the host tensor was freed and its memory
         * reused while the cache lives, which the engine never does */
        st = set_fail(cb, PP_STATUS_INTERNAL, "weight cache: host tensor %p was cached with %zu bytes, "
                      "now used with %zu (was it freed while the backend lives?)", host, s->bytes, bytes);
    } else {
        void *d = NULL;
        st = upload_new(cb, host, bytes, &d);
        if (st == PP_STATUS_OK && !map_insert(&wc->tensors, host, d, bytes, (experts_tc_verdict){0})) {
            cudaFree(d);
            st = set_fail(cb, PP_STATUS_OUT_OF_MEMORY, "weight cache: out of host memory");
        }
        if (st == PP_STATUS_OK) {
            wc->device_bytes += round_up(bytes ? bytes : 1, ALLOC_ROUND);
            *dev = d;
        }
    }
    pthread_mutex_unlock(&wc->mu);
    return st;
}

/* kw = w's descriptor with w's host pointers (false for an unknown format or scale dtype, or a
 * quantized weight without scales): what kern_*_supported checks look at before any upload. */
static bool weight_desc(const eng_weight *w, kern_weight *kw)
{
    memset(kw, 0, sizeof *kw);
    switch (w->fmt) {
    case ENG_WFMT_F32: kw->fmt = KERN_W_F32; break;
    case ENG_WFMT_BF16: kw->fmt = KERN_W_BF16; break;
    case ENG_WFMT_F16: kw->fmt = KERN_W_F16; break;
    case ENG_WFMT_FP8_BLOCK: kw->fmt = KERN_W_FP8_BLOCK; break;
    case ENG_WFMT_INT4_GROUP: kw->fmt = KERN_W_INT4_GROUP; break;
    case ENG_WFMT_INT8_CHANNEL: kw->fmt = KERN_W_INT8_CHANNEL; break;
    default: return false;
    }
    bool quantized = w->fmt == ENG_WFMT_FP8_BLOCK || w->fmt == ENG_WFMT_INT4_GROUP ||
                     w->fmt == ENG_WFMT_INT8_CHANNEL;
    if (!w->data || (quantized && (!w->scale || !kern_dtype_of(w->scale_dtype, &kw->scale_dtype))))
        return false;
    kw->n_out = w->n_out;
    kw->n_in = w->n_in;
    kw->block_out = w->block_out;
    kw->block_in = w->block_in;
    kw->group = w->group;
    kw->packed_cols = w->packed_cols;
    /* INT8's scale is [n_out] (scale_cols 1 by definition; the CPU reference never reads it) */
    kw->scale_cols = w->fmt == ENG_WFMT_INT8_CHANNEL ? 1 : w->scale_cols;
    kw->data = w->data;
    kw->scale = quantized ? w->scale : NULL;
    return true;
}

/* Describes w for the kernels, its data and scales made resident. */
static pp_status weight_resolve(cuda_backend *cb, const eng_weight *w, kern_weight *kw)
{
    if (!weight_desc(w, kw)) {
        if ((unsigned)w->fmt > ENG_WFMT_INT8_CHANNEL)
            return set_fail(cb, PP_STATUS_INVALID_ARG, "unknown weight format %d", (int)w->fmt);
        return set_fail(cb, PP_STATUS_INVALID_ARG,
                        "[%lld][%lld] weight without data, or without a F32/BF16/F16 scale grid",
                        (long long)w->n_out, (long long)w->n_in);
    }
    bool quantized = kw->scale != NULL;
    pp_status st = cache_tensor(cb, w->data, weight_data_bytes(w), &kw->data);
    if (st == PP_STATUS_OK && quantized)
        st = cache_tensor(cb, w->scale, weight_scale_bytes(w), &kw->scale);
    return st;
}

static pp_status vec_resolve(cuda_backend *cb, const eng_vec *v, kern_vec *kv)
{
    memset(kv, 0, sizeof *kv);
    if (!v->data || !kern_dtype_of(v->dtype, &kv->dtype))
        return set_fail(cb, PP_STATUS_INVALID_ARG, "vector of %lld elements without data or not F32/BF16/F16",
                        (long long)v->n);
    kv->n = v->n;
    return cache_tensor(cb, v->data, (size_t)v->n * eng_dtype_size(v->dtype), &kv->data);
}

/* Whether kern_matmul_tc takes every expert of ws[0 .. n): one format it supports, one shape. */
static experts_tc_verdict experts_tc_of(const eng_weight *ws, int n)
{
    experts_tc_verdict v = {.ok = n > 0};
    for (int e = 0; e < n && v.ok; e++) {
        kern_weight kw;
        v.ok = weight_desc(&ws[e], &kw) && ws[e].fmt == ws[0].fmt && ws[e].n_out == ws[0].n_out &&
               ws[e].n_in == ws[0].n_in && kern_matmul_tc_supported(&kw);
        v.fmt = kw.fmt;
    }
    v.n_out = n > 0 ? ws[0].n_out : 0;
    v.n_in = n > 0 ? ws[0].n_in : 0;
    return v;
}

/* The device array of kern_weight describing experts host[0 .. n), built and uploaded on first
 * use (every expert's tensors made resident) and cached under the host array's address, with
 * its experts_tc_of verdict (*tc). */
static pp_status experts_resolve(cuda_backend *cb, const eng_weight *host, int n, const kern_weight **dev,
                                 experts_tc_verdict *tc)
{
    weight_cache *wc = cb->wc;
    size_t bytes = (size_t)n * sizeof(kern_weight);
    pthread_mutex_lock(&wc->mu);
    cache_slot *s = map_find(&wc->experts, host);
    const kern_weight *found = s ? s->dev : NULL;
    size_t found_bytes = s ? s->bytes : 0;
    if (s)
        *tc = s->tc;
    pthread_mutex_unlock(&wc->mu);
    if (found && found_bytes == bytes) {
        *dev = found;
        return PP_STATUS_OK;
    }
    if (found)
        return set_fail(cb, PP_STATUS_INTERNAL, "weight cache: expert array %p was cached with %zu "
                        "experts, now used with %d", (const void *)host, found_bytes / sizeof(kern_weight), n);

    /* resolve outside the lock (cache_tensor takes it), then publish unless another backend did */
    kern_weight *kw = malloc(bytes);
    if (!kw)
        return set_fail(cb, PP_STATUS_OUT_OF_MEMORY, "out of host memory for %d expert descriptors", n);
    pp_status st = PP_STATUS_OK;
    for (int e = 0; e < n && st == PP_STATUS_OK; e++)
        st = weight_resolve(cb, &host[e], &kw[e]);
    experts_tc_verdict verdict = experts_tc_of(host, n);
    if (st == PP_STATUS_OK) {
        pthread_mutex_lock(&wc->mu);
        s = map_find(&wc->experts, host);
        if (s && s->bytes == bytes) {
            *dev = s->dev;
            *tc = s->tc;
        } else if (s) {
            st = set_fail(cb, PP_STATUS_INTERNAL, "weight cache: expert array %p cached twice with "
                          "different sizes", (const void *)host);
        } else {
            void *d = NULL;
            st = upload_new(cb, kw, bytes, &d);
            if (st == PP_STATUS_OK && !map_insert(&wc->experts, host, d, bytes, verdict)) {
                cudaFree(d);
                st = set_fail(cb, PP_STATUS_OUT_OF_MEMORY, "weight cache: out of host memory");
            }
            if (st == PP_STATUS_OK) {
                wc->device_bytes += round_up(bytes, ALLOC_ROUND);
                *dev = d;
                *tc = verdict;
            }
        }
        pthread_mutex_unlock(&wc->mu);
    }
    free(kw);
    return st;
}

/* The device copy of rope->inv_freq ([d_rope / 2] f32). Keyed by the host pointer and d_rope,
 * and checked against the values uploaded, so a table rewritten in place is uploaded again. */
static pp_status rope_resolve(cuda_backend *cb, const eng_rope *rope, const float **dev)
{
    int half = rope->d_rope / 2;
    size_t bytes = (size_t)half * sizeof(float);
    if (!rope->inv_freq)
        return set_fail(cb, PP_STATUS_INVALID_ARG, "rope without an inv_freq table");
    rope_slot *slot = NULL;
    for (int i = 0; i < ROPE_SLOTS; i++) {
        rope_slot *r = &cb->rope[i];
        if (r->host == rope->inv_freq && r->d_rope == rope->d_rope) {
            if (memcmp(r->values, rope->inv_freq, bytes) == 0) {
                *dev = r->dev;
                return PP_STATUS_OK;
            }
            slot = r;
        }
    }
    if (record_blocks(cb)) /* (before the choice below moves rope_next) */
        return PP_STATUS_UNSUPPORTED;
    if (!slot) {
        for (int i = 0; i < ROPE_SLOTS && !slot; i++)
            if (!cb->rope[i].host)
                slot = &cb->rope[i];
        if (!slot)
            slot = &cb->rope[cb->rope_next++ % ROPE_SLOTS];
    }
    /* replace the slot: kernels queued earlier may still read its device copy */
    dev_free_after_stream(cb, slot->dev);
    free(slot->values);
    *slot = (rope_slot){0};
    float *values = malloc(bytes ? bytes : 1);
    if (!values)
        return set_fail(cb, PP_STATUS_OUT_OF_MEMORY, "out of host memory for a RoPE table of %d", half);
    memcpy(values, rope->inv_freq, bytes);
    void *d = NULL;
    pp_status st = upload_new(cb, values, bytes, &d);
    if (st != PP_STATUS_OK) {
        free(values);
        return st;
    }
    *slot = (rope_slot){rope->inv_freq, rope->d_rope, values, d};
    *dev = d;
    return PP_STATUS_OK;
}

/* ---- memory ---------------------------------------------------------------------------------- */

/* Zeroed, as the CPU backend's calloc. */
static pp_status cuda_alloc(eng_backend *be, size_t bytes, void **out)
{
    cuda_backend *cb = as_cuda(be);
    *out = NULL;
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    void *p = NULL;
    if ((st = dev_alloc(cb, bytes, &p)) != PP_STATUS_OK)
        return st;
    cudaError_t e = cudaMemsetAsync(p, 0, round_up(bytes ? bytes : 1, ALLOC_ROUND), cb->stream);
    if (e != cudaSuccess) {
        cudaFree(p);
        return cuda_fail(cb, e, "cudaMemsetAsync", __LINE__);
    }
    *out = p;
    return PP_STATUS_OK;
}

static void cuda_free(eng_backend *be, void *ptr)
{
    cuda_backend *cb = as_cuda(be);
    if (!ptr)
        return;
    if (cb->recording) { /* freed at record_end, after the stream's earlier work */
        record_blocks(cb);
        if (cb->n_deferred < DEFERRED_FREES) {
            cb->deferred[cb->n_deferred++] = ptr;
            return;
        }
        /* never so many (DEFERRED_FREES says why); end the capture rather than leak */
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(cb->stream, &g);
        if (g)
            cudaGraphDestroy(g);
        cudaGetLastError();
        cb->record_failed = true;
    }
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != cb->device)
        cudaSetDevice(cb->device);
    dev_free_after_stream(cb, ptr);
}

static pp_status cuda_upload(eng_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || bytes == 0)
        return st;
    if (record_blocks(cb))
        return PP_STATUS_UNSUPPORTED;
    CUDA_TRY(cb, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream));
    CUDA_TRY(cb, cudaStreamSynchronize(cb->stream)); /* src may be reused on return */
    return PP_STATUS_OK;
}

static pp_status cuda_download(eng_backend *be, void *dst, const void *src, size_t bytes)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || bytes == 0)
        return st;
    if (record_blocks(cb))
        return PP_STATUS_UNSUPPORTED;
    CUDA_TRY(cb, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream));
    CUDA_TRY(cb, cudaStreamSynchronize(cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_copy(eng_backend *be, float *dst, const float *src, size_t n)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n == 0)
        return st;
    CUDA_TRY(cb, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, cb->stream));
    return PP_STATUS_OK;
}

/* ---- ops --------------------------------------------------------------------------------------- */

static pp_status cuda_embedding(eng_backend *be, const eng_weight *table, const int32_t *ids,
                                int n_tokens, float *out)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_tokens <= 0)
        return st;
    if (record_blocks(cb)) /* the ids are the caller's host memory */
        return PP_STATUS_UNSUPPORTED;
    for (int t = 0; t < n_tokens; t++)
        if (ids[t] < 0 || ids[t] >= table->n_out)
            return set_fail(cb, PP_STATUS_INVALID_ARG, "embedding: token id %d at index %d is outside [0, %lld)",
                            (int)ids[t], t, (long long)table->n_out);
    kern_weight kt;
    if ((st = weight_resolve(cb, table, &kt)) != PP_STATUS_OK)
        return st;
    size_t bytes = (size_t)n_tokens * sizeof(int32_t);
    void *buf = cb->ids;
    if ((st = scratch_reserve(cb, &buf, &cb->ids_cap, bytes)) != PP_STATUS_OK)
        return st;
    cb->ids = buf;
    CUDA_TRY(cb, cudaMemcpyAsync(cb->ids, ids, bytes, cudaMemcpyHostToDevice, cb->stream));
    CUDA_TRY(cb, cudaStreamSynchronize(cb->stream)); /* ids (the caller's) may change on return */
    CUDA_TRY(cb, kern_embedding(&kt, cb->ids, n_tokens, out, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_matmul(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w,
                             float *y, int64_t y_stride, int n_tokens)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_tokens <= 0)
        return st;
    kern_weight kw;
    if ((st = weight_resolve(cb, w, &kw)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_matmul(x, x_stride, &kw, y, y_stride, n_tokens, cb->stream));
    return PP_STATUS_OK;
}

/* Makes cb->blas on first use: a cuBLAS handle on cb's stream, with a workspace from cb's own
 * device memory (so cuBLAS never allocates while a product runs) and split-K reductions kept in
 * the f32 compute type. Backends that never run a bf16 prefill product never load cuBLAS. On
 * failure cb->blas stays NULL (the next call tries again); a workspace already made is kept. */
static pp_status blas_ready(cuda_backend *cb)
{
    if (cb->blas)
        return PP_STATUS_OK;
    if (record_blocks(cb))
        return PP_STATUS_UNSUPPORTED;
    if (!cb->blas_ws) {
        size_t bytes = cb->cc_major >= 9 ? BLAS_WS_HOPPER : BLAS_WS_OTHER;
        pp_status st = dev_alloc(cb, bytes, &cb->blas_ws);
        if (st != PP_STATUS_OK)
            return st;
        cb->blas_ws_bytes = bytes;
    }
    cublasHandle_t h = NULL;
    CUBLAS_TRY(cb, cublasCreate(&h));
    cublasStatus_t s = cublasSetStream(h, cb->stream);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetWorkspace(h, cb->blas_ws, cb->blas_ws_bytes);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    if (s != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        return cublas_fail(cb, s, "cublasSetStream + cublasSetWorkspace + cublasSetMathMode", __LINE__);
    }
    cb->blas = h;
    return PP_STATUS_OK;
}

/* Which product matmul_bf16 runs: cuBLAS for a BF16 weight, kern_matmul_tc (our tensor-core
 * kernel) for the quantized formats it takes on an sm_80+ device, both from BF16_GEMM_MIN_TOKENS
 * tokens on and with every dimension cuBLAS takes as an int within range (ldc = y_stride >=
 * n_out, as cuBLAS requires; the same bounds serve kern_matmul_tc); kern_matmul otherwise. */
typedef enum bf16_path { BF16_PATH_NONE, BF16_PATH_CUBLAS, BF16_PATH_TC } bf16_path;

static bf16_path bf16_path_of(const cuda_backend *cb, const eng_weight *w, const kern_weight *kw, int64_t y_stride,
                              int n_tokens)
{
    int64_t ld = (w->n_in + BF16_LD_ALIGN - 1) / BF16_LD_ALIGN * BF16_LD_ALIGN;
    if (n_tokens < BF16_GEMM_MIN_TOKENS || w->n_out < 1 || w->n_in < 1 || ld > INT_MAX || w->n_out > INT_MAX ||
        y_stride < w->n_out || y_stride > INT_MAX)
        return BF16_PATH_NONE;
    if (w->fmt == ENG_WFMT_BF16)
        return BF16_PATH_CUBLAS;
    bool quantized = w->fmt == ENG_WFMT_FP8_BLOCK || w->fmt == ENG_WFMT_INT8_CHANNEL || w->fmt == ENG_WFMT_INT4_GROUP;
    return quantized && cb->cc_major >= 8 && kern_matmul_tc_supported(kw) ? BF16_PATH_TC : BF16_PATH_NONE;
}

/* y [n_tokens][n_out] (rows y_stride apart, f32) = x W^T with x bf16-representable (backend.h).
 * x [n_tokens][n_in] (rows x_stride apart, f32) is packed by kern_f32_to_bf16 into work as
 * xb [n_tokens][ld] bf16 (ld = n_in rounded up to BF16_LD_ALIGN; exact for bf16 values), then
 * either kern_matmul_tc (FP8 / INT8 / INT4 weights, kernels/matmul_tc.cu: the stored values
 * widened to bf16 on tensor cores, scales applied to per-block sums) or one cublasGemmEx, bf16 x
 * bf16 on tensor cores, f32 accumulation and output. cuBLAS is column-major: a row-major [R][C]
 * matrix with row stride s is a column-major C x R matrix with leading dimension s, so W
 * (row-major [n_out][n_in]) is the n_in x n_out matrix W^T (lda n_in), xb is the n_in x n_tokens
 * matrix x^T (ldb ld) and y is the n_out x n_tokens matrix y^T (ldc y_stride).
 * y^T = W x^T = op_T(W^T) * op_N(x^T): transa T, transb N, m = n_out, n = n_tokens, k = n_in.
 * beta = 0, so y is never read (the NaN guard bands of test_ops stay out of the sum). Other
 * weights and small n_tokens run cuda_matmul. */
static pp_status cuda_matmul_bf16(eng_backend *be, const float *x, int64_t x_stride, const eng_weight *w,
                                  float *y, int64_t y_stride, int n_tokens)
{
    if (n_tokens < BF16_GEMM_MIN_TOKENS || w->fmt == ENG_WFMT_F32 || w->fmt == ENG_WFMT_F16)
        return cuda_matmul(be, x, x_stride, w, y, y_stride, n_tokens);
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    kern_weight kw;
    if ((st = weight_resolve(cb, w, &kw)) != PP_STATUS_OK)
        return st;
    bf16_path path = bf16_path_of(cb, w, &kw, y_stride, n_tokens);
    if (path == BF16_PATH_NONE) { /* cuda_matmul's launch, w resolved already */
        CUDA_TRY(cb, kern_matmul(x, x_stride, &kw, y, y_stride, n_tokens, cb->stream));
        return PP_STATUS_OK;
    }
    if (path == BF16_PATH_CUBLAS && (st = blas_ready(cb)) != PP_STATUS_OK)
        return st;
    int64_t ld = (w->n_in + BF16_LD_ALIGN - 1) / BF16_LD_ALIGN * BF16_LD_ALIGN;
    if ((st = scratch_reserve(cb, &cb->work, &cb->work_bytes, (size_t)n_tokens * (size_t)ld * 2)) != PP_STATUS_OK)
        return st;
    uint16_t *xb = cb->work; /* [n_tokens][ld] bf16, device */
    CUDA_TRY(cb, kern_f32_to_bf16(x, x_stride, xb, ld, n_tokens, w->n_in, cb->stream));
    if (path == BF16_PATH_TC) {
        CUDA_TRY(cb, kern_matmul_tc(xb, ld, &kw, y, y_stride, n_tokens, cb->stream));
        return PP_STATUS_OK;
    }
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cb, cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)w->n_out, n_tokens, (int)w->n_in, &one,
                                kw.data, CUDA_R_16BF, (int)w->n_in, xb, CUDA_R_16BF, (int)ld, &zero, y, CUDA_R_32F,
                                (int)y_stride, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return PP_STATUS_OK;
}

static pp_status cuda_rmsnorm(eng_backend *be, const float *x, int64_t x_stride, const eng_vec *w,
                              float eps, float *out, int64_t out_stride, int n_rows)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_rows <= 0)
        return st;
    kern_vec kv;
    if ((st = vec_resolve(cb, w, &kv)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_rmsnorm(x, x_stride, &kv, eps, out, out_stride, n_rows, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_add(eng_backend *be, const float *a, const float *b, float *out, size_t n)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n == 0)
        return st;
    CUDA_TRY(cb, kern_add(a, b, out, n, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_rope(eng_backend *be, float *x, int n_tokens, int n_head, int64_t token_stride,
                           int64_t head_stride, int rope_offset, const int32_t *pos, const eng_rope *rope)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_tokens <= 0 || n_head <= 0 || rope->d_rope <= 0)
        return st;
    const float *inv_freq = NULL;
    if ((st = rope_resolve(cb, rope, &inv_freq)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_rope(x, n_tokens, n_head, token_stride, head_stride, rope_offset, pos,
                           rope->d_rope, rope->interleaved, rope->cos_sin_scale, inv_freq, cb->stream));
    return PP_STATUS_OK;
}

/* The kernels' name for a KV cache's element type; false for a value outside eng_kv_dtype. */
static bool kv_dtype_of(eng_kv_dtype dt, kern_dtype *out)
{
    switch (dt) {
    case ENG_KV_F32: *out = KERN_DT_F32; return true;
    case ENG_KV_BF16: *out = KERN_DT_BF16; return true;
    }
    return false;
}

static pp_status cuda_kv_write(eng_backend *be, void *cache, eng_kv_dtype dtype, int64_t cache_row_stride,
                               int64_t cache_head_stride, const float *src, int64_t src_row_stride,
                               int64_t src_head_stride, int n_head, int64_t width, const int32_t *slot,
                               int n_tokens)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    kern_dtype kdt;
    if (!kv_dtype_of(dtype, &kdt))
        return set_fail(cb, PP_STATUS_INVALID_ARG, "kv_write: unknown KV cache dtype %d", (int)dtype);
    if (n_tokens <= 0 || n_head <= 0 || width <= 0)
        return PP_STATUS_OK;
    CUDA_TRY(cb, kern_kv_write(cache, kdt, cache_row_stride, cache_head_stride, src, src_row_stride,
                               src_head_stride, n_head, width, slot, n_tokens, cb->stream));
    return PP_STATUS_OK;
}

/* The kernels' twin of a batch descriptor (same fields, arrays already in device memory). */
static kern_kv_batch kv_batch_of(const eng_kv_batch *b)
{
    kern_kv_batch k = {
        .n_seq = b->n_seq, .n_tokens = b->n_tokens, .max_seq_tokens = b->max_seq_tokens,
        .max_ctx = b->max_ctx, .block_size = b->block_size, .max_blocks = b->max_blocks,
        .seq_start = b->seq_start, .seq_pos0 = b->seq_pos0, .block_table = b->block_table,
    };
    return k;
}

static pp_status cuda_swiglu(eng_backend *be, const float *gate, int64_t gate_stride, const float *up,
                             int64_t up_stride, float *out, int64_t out_stride, int n_tokens, int d_ff)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_tokens <= 0 || d_ff <= 0)
        return st;
    CUDA_TRY(cb, kern_swiglu(gate, gate_stride, up, up_stride, out, out_stride, n_tokens, d_ff, cb->stream));
    return PP_STATUS_OK;
}

/* The kernels' twin of the attention arguments, with the cache's element type as kdt. */
static kern_attn_args attn_args_of(const eng_attn_args *a, kern_dtype kdt)
{
    kern_attn_args ka = {
        .batch = kv_batch_of(&a->batch), .n_head = a->n_head, .n_head_kv = a->n_head_kv,
        .d_qk = a->d_qk, .d_v = a->d_v, .scale = a->scale,
        .q = a->q, .q_stride = a->q_stride,
        .kv_dtype = kdt,
        .k = a->k, .k_stride = a->k_stride,
        .v = a->v, .v_stride = a->v_stride,
        .out = a->out, .out_stride = a->out_stride,
    };
    return ka;
}

static pp_status cuda_attention(eng_backend *be, const eng_attn_args *a)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    kern_dtype kdt;
    if (!kv_dtype_of(a->kv_dtype, &kdt))
        return set_fail(cb, PP_STATUS_INVALID_ARG, "attention: unknown KV cache dtype %d", (int)a->kv_dtype);
    if (a->batch.n_tokens <= 0)
        return PP_STATUS_OK;
    kern_attn_args ka = attn_args_of(a, kdt);
    size_t ws = kern_attention_workspace_bytes(&ka);
    if (ws && (st = scratch_reserve(cb, &cb->work, &cb->work_bytes, ws)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_attention(&ka, ws ? cb->work : NULL, cb->stream));
    return PP_STATUS_OK;
}

/* attention_bf16 takes kern_attention_tc when the longest sequence of the batch has at least
 * this many tokens (a prefill chunk: its 64-row tiles fill up and every key tile serves many
 * rows); decode steps and short chunks run kern_attention, whose key splits keep the GPU busy
 * when there are few rows. Not measured yet (bench_kernels' attn_tc_prefill_qwen3_coder rows). */
#define ATTN_TC_MIN_SEQ_TOKENS 16

/* The bf16 mode's attention (backend.h): kern_attention_tc for prefill-sized batches over a
 * BF16 cache with head dims it has, cuda_attention otherwise. */
static pp_status cuda_attention_bf16(eng_backend *be, const eng_attn_args *a)
{
    cuda_backend *cb = as_cuda(be);
    if (a->kv_dtype != ENG_KV_BF16 || a->batch.max_seq_tokens < ATTN_TC_MIN_SEQ_TOKENS || cb->cc_major < 8)
        return cuda_attention(be, a);
    kern_attn_args ka = attn_args_of(a, KERN_DT_BF16);
    if (!kern_attention_tc_supported(&ka))
        return cuda_attention(be, a);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_attention_tc(&ka, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_mla_absorbed(eng_backend *be, const eng_mla_args *a)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    kern_dtype kdt;
    if (!kv_dtype_of(a->kv_dtype, &kdt))
        return set_fail(cb, PP_STATUS_INVALID_ARG, "mla_absorbed: unknown KV cache dtype %d", (int)a->kv_dtype);
    if (a->batch.n_tokens <= 0)
        return PP_STATUS_OK;
    kern_weight kv_b;
    if ((st = weight_resolve(cb, a->kv_b, &kv_b)) != PP_STATUS_OK)
        return st;
    kern_mla_args ka = {
        .batch = kv_batch_of(&a->batch), .n_head = a->n_head,
        .d_nope = a->d_nope, .d_rope = a->d_rope, .d_v = a->d_v, .kv_lora_rank = a->kv_lora_rank,
        .scale = a->scale,
        .q = a->q, .q_stride = a->q_stride,
        .kv_dtype = kdt,
        .ckv = a->ckv, .kpe = a->kpe,
        .kv_b = &kv_b,
        .out = a->out,
    };
    size_t ws = kern_mla_workspace_bytes(&ka);
    if (ws && (st = scratch_reserve(cb, &cb->work, &cb->work_bytes, ws)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_mla_absorbed(&ka, ws ? cb->work : NULL, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_moe_route(eng_backend *be, const eng_route_args *a)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || a->n_tokens <= 0)
        return st;
    kern_vec bias;
    if (a->bias && (st = vec_resolve(cb, a->bias, &bias)) != PP_STATUS_OK)
        return st;
    kern_route_args ka = {
        .kind = a->kind == ENG_ROUTER_SIGMOID ? KERN_ROUTER_SIGMOID : KERN_ROUTER_SOFTMAX,
        .n_tokens = a->n_tokens, .n_expert = a->n_expert, .n_expert_used = a->n_expert_used,
        .n_group = a->n_group, .topk_group = a->topk_group,
        .norm_topk_prob = a->norm_topk_prob,
        .routed_scaling_factor = a->routed_scaling_factor,
        .bias = a->bias ? &bias : NULL,
        .logits = a->logits,
        .idx = a->idx,
        .weight = a->weight,
    };
    CUDA_TRY(cb, kern_moe_route(&ka, cb->stream));
    return PP_STATUS_OK;
}

/* Sets which expert products may run on tensor cores (kern_moe_args.tc_gate_up / tc_down): an
 * sm_80+ device, no activation quantization, bf16 inputs (x_bf16 for gate/up, h_bf16 for down)
 * and expert arrays kern_matmul_tc takes whole (the verdicts experts_resolve cached), gate and up
 * of one format, each of the op's shapes. */
static void experts_tc(const cuda_backend *cb, const eng_moe_args *a, const experts_tc_verdict *gate,
                       const experts_tc_verdict *up, const experts_tc_verdict *down, kern_moe_args *ka)
{
    if (cb->cc_major < 8 || a->act_quant_group != 0)
        return;
    ka->tc_gate_up = a->x_bf16 && gate->ok && up->ok && gate->fmt == up->fmt && gate->n_out == a->d_ff_expert &&
                     gate->n_in == a->d_model && up->n_out == a->d_ff_expert && up->n_in == a->d_model;
    ka->tc_fmt = gate->fmt;
    ka->tc_down = a->h_bf16 && down->ok && down->n_out == a->d_model && down->n_in == a->d_ff_expert;
    ka->tc_down_fmt = down->fmt;
}

static pp_status cuda_moe_experts(eng_backend *be, const eng_moe_args *a)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || a->n_tokens <= 0)
        return st;
    const kern_weight *gate = NULL, *up = NULL, *down = NULL;
    experts_tc_verdict gate_tc, up_tc, down_tc;
    if ((st = experts_resolve(cb, a->gate, a->n_expert, &gate, &gate_tc)) != PP_STATUS_OK ||
        (st = experts_resolve(cb, a->up, a->n_expert, &up, &up_tc)) != PP_STATUS_OK ||
        (st = experts_resolve(cb, a->down, a->n_expert, &down, &down_tc)) != PP_STATUS_OK)
        return st;
    kern_moe_args ka = {
        .n_tokens = a->n_tokens, .d_model = a->d_model, .d_ff_expert = a->d_ff_expert,
        .n_expert = a->n_expert, .n_expert_used = a->n_expert_used,
        .x = a->x,
        .gate = gate, .up = up, .down = down,
        .idx = a->idx, .weight = a->weight,
        .out = a->out,
        .act_quant_group = a->act_quant_group,
    };
    ka.h_bf16 = a->h_bf16;
    experts_tc(cb, a, &gate_tc, &up_tc, &down_tc, &ka);
    size_t ws = kern_moe_workspace_bytes(&ka);
    if (ws && (st = scratch_reserve(cb, &cb->work, &cb->work_bytes, ws)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_moe_experts(&ka, ws ? cb->work : NULL, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_quant_act_fp8(eng_backend *be, const float *x, int64_t x_stride, float *out,
                                    int64_t out_stride, int n_rows, int64_t n_cols, int group)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    if (group < 1)
        return set_fail(cb, PP_STATUS_INVALID_ARG, "quant_act_fp8: group %d < 1", group);
    if (n_rows <= 0 || n_cols <= 0)
        return PP_STATUS_OK;
    CUDA_TRY(cb, kern_quant_act_fp8(x, x_stride, out, out_stride, n_rows, n_cols, group, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_round_bf16(eng_backend *be, float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK || n_rows <= 0 || n_cols <= 0)
        return st;
    CUDA_TRY(cb, kern_round_bf16(x, stride, n_rows, n_cols, cb->stream));
    return PP_STATUS_OK;
}

static pp_status cuda_argmax(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols,
                             int32_t *out)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    if (n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols)
        return set_fail(cb, PP_STATUS_INVALID_ARG, "argmax: n_rows %d, n_cols %lld, stride %lld (want n_rows >= 0, "
                        "1 <= n_cols <= INT32_MAX, stride >= n_cols)", n_rows, (long long)n_cols, (long long)stride);
    if (n_rows == 0)
        return PP_STATUS_OK;
    CUDA_TRY(cb, kern_argmax(x, stride, n_rows, n_cols, out, cb->stream));
    return PP_STATUS_OK;
}

/* ---- sampling candidates --------------------------------------------------------------------- */

_Static_assert(KERN_TOPK_MAX == ENG_TOPK_MAX, "kern_topk serves every k the topk op accepts");

/* kern_topk over the backend's workspace (the split rows' partial keys; nothing in it outlives
 * the op). */
static pp_status cuda_topk(eng_backend *be, const float *x, int64_t stride, int n_rows, int64_t n_cols, int k,
                           float *vals, int32_t *ids)
{
    cuda_backend *cb = as_cuda(be);
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    if (n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols || k < 1 || k > ENG_TOPK_MAX)
        return set_fail(cb, PP_STATUS_INVALID_ARG, "topk: n_rows %d, n_cols %lld, stride %lld, k %d (want n_rows >= 0, "
                        "1 <= n_cols <= INT32_MAX, stride >= n_cols, 1 <= k <= %d)", n_rows, (long long)n_cols,
                        (long long)stride, k, ENG_TOPK_MAX);
    if (n_rows == 0)
        return PP_STATUS_OK;
    size_t ws = kern_topk_workspace_bytes(n_rows, n_cols, k);
    if (ws && (st = scratch_reserve(cb, &cb->work, &cb->work_bytes, ws)) != PP_STATUS_OK)
        return st;
    CUDA_TRY(cb, kern_topk(x, stride, n_rows, n_cols, k, vals, ids, ws ? cb->work : NULL, cb->stream));
    return PP_STATUS_OK;
}

/* ---- recording: decode steps as CUDA graphs --------------------------------------------------- */

static pp_status cuda_record_begin(eng_backend *be)
{
    cuda_backend *cb = as_cuda(be);
    if (!cb->graphs_on || cb->recording)
        return PP_STATUS_UNSUPPORTED;
    pp_status st = op_begin(cb);
    if (st != PP_STATUS_OK)
        return st;
    cudaError_t e = cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        if (++cb->graph_failures >= GRAPH_MAX_FAILURES)
            cb->graphs_on = false;
        return cuda_fail(cb, e, "cudaStreamBeginCapture", __LINE__);
    }
    cb->recording = true;
    cb->record_broken = cb->record_failed = false;
    cb->n_deferred = 0;
    return PP_STATUS_OK;
}

/* Launches graph g (a complete capture) through the slot keeping an executable graph of g's node
 * count: updated in place from g when it has one (cudaGraphExecUpdate), instantiated from g when
 * it has none or the update is refused (the topology changed). PP_STATUS_UNSUPPORTED when a
 * non-sticky failure left nothing launched (record_failed set). */
static pp_status graph_launch(cuda_backend *cb, cudaGraph_t g)
{
    size_t n_nodes = 0;
    cudaError_t e = cudaGraphGetNodes(g, NULL, &n_nodes);
    if (e != cudaSuccess)
        goto failed;
    graph_slot *slot = NULL;
    for (int i = 0; i < GRAPH_SLOTS && !slot; i++)
        if (cb->graphs[i].exec && cb->graphs[i].n_nodes == n_nodes)
            slot = &cb->graphs[i];
    if (slot) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(slot->exec, g, &info) != cudaSuccess) {
            cudaGetLastError(); /* refused: made anew below */
            cudaGraphExecDestroy(slot->exec);
            slot->exec = NULL;
        }
    } else { /* an empty slot, else the least recently used (destroyed: freed when its launches end) */
        slot = &cb->graphs[0];
        for (int i = 1; i < GRAPH_SLOTS; i++)
            if (!cb->graphs[i].exec || (slot->exec && cb->graphs[i].last_use < slot->last_use))
                slot = &cb->graphs[i];
        if (slot->exec)
            cudaGraphExecDestroy(slot->exec);
        slot->exec = NULL;
    }
    if (!slot->exec) {
        if ((e = cudaGraphInstantiate(&slot->exec, g, 0)) != cudaSuccess) {
            slot->exec = NULL;
            goto failed;
        }
        slot->n_nodes = n_nodes;
    }
    slot->last_use = ++cb->graph_clock;
    if ((e = cudaGraphLaunch(slot->exec, cb->stream)) != cudaSuccess)
        goto failed;
    return PP_STATUS_OK;
failed:
    if (error_is_sticky(e))
        return cuda_fail(cb, e, "launching a decode step's CUDA graph", __LINE__);
    cudaGetLastError();
    cb->record_failed = true;
    return PP_STATUS_UNSUPPORTED;
}

static pp_status cuda_record_end(eng_backend *be, bool run)
{
    cuda_backend *cb = as_cuda(be);
    if (!cb->recording)
        return PP_STATUS_UNSUPPORTED;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(cb->stream, &g);
    cb->recording = false;
    pp_status st = PP_STATUS_UNSUPPORTED;
    if (e != cudaSuccess && error_is_sticky(e)) { /* (an op's fault may have said so already) */
        st = cb->dead ? PP_STATUS_DEVICE : cuda_fail(cb, e, "cudaStreamEndCapture", __LINE__);
    } else if (e != cudaSuccess || !g) {
        cudaGetLastError(); /* the capture was invalidated (by a call it does not allow) */
        cb->record_failed = true;
    } else if (run && !cb->record_broken) {
        st = graph_launch(cb, g);
    }
    if (g)
        cudaGraphDestroy(g);
    for (int i = 0; i < cb->n_deferred; i++)
        dev_free_after_stream(cb, cb->deferred[i]);
    cb->n_deferred = 0;
    if (st == PP_STATUS_OK) {
        cb->graphs_launched++;
        cb->graph_failures = 0;
    } else if (run || cb->record_broken) { /* (not when only the caller's own work failed) */
        cb->graph_fallbacks++;
        if (cb->record_failed && ++cb->graph_failures >= GRAPH_MAX_FAILURES)
            cb->graphs_on = false;
    }
    return st;
}

/* ---- lifetime -------------------------------------------------------------------------------- */

static const char *cuda_last_error(eng_backend *be) { return as_cuda(be)->msg; }

static void cuda_destroy(eng_backend *be)
{
    cuda_backend *cb = as_cuda(be);
    if (!cb)
        return;
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != cb->device)
        cudaSetDevice(cb->device);
    if (cb->recording) { /* destroyed mid-recording (a caller's early return): end the capture */
        cudaGraph_t g = NULL;
        if (cudaStreamEndCapture(cb->stream, &g) == cudaSuccess && g)
            cudaGraphDestroy(g);
        cb->recording = false;
    }
    if (cb->stream)
        cudaStreamSynchronize(cb->stream);
    for (int i = 0; i < cb->n_deferred; i++)
        cudaFree(cb->deferred[i]);
    for (int i = 0; i < GRAPH_SLOTS; i++)
        if (cb->graphs[i].exec)
            cudaGraphExecDestroy(cb->graphs[i].exec);
    if (cb->blas)
        cublasDestroy(cb->blas); /* before its workspace is freed */
    cudaFree(cb->blas_ws);
    cudaFree(cb->work);
    cudaFree(cb->ids);
    for (int i = 0; i < ROPE_SLOTS; i++) {
        cudaFree(cb->rope[i].dev);
        free(cb->rope[i].values);
    }
    if (cb->stream)
        cudaStreamDestroy(cb->stream);
    cudaGetLastError(); /* nothing to report from a destroyer */
    cache_release(cb->wc);
    free(cb);
}

static const eng_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .embedding = cuda_embedding,
    .matmul = cuda_matmul,
    .matmul_bf16 = cuda_matmul_bf16,
    .rmsnorm = cuda_rmsnorm,
    .add = cuda_add,
    .rope = cuda_rope,
    .kv_write = cuda_kv_write,
    .swiglu = cuda_swiglu,
    .attention = cuda_attention,
    .attention_bf16 = cuda_attention_bf16,
    .mla_absorbed = cuda_mla_absorbed,
    .moe_route = cuda_moe_route,
    .moe_experts = cuda_moe_experts,
    .quant_act_fp8 = cuda_quant_act_fp8,
    .round_bf16 = cuda_round_bf16,
    .argmax = cuda_argmax,
    .topk = cuda_topk,
    .record_begin = cuda_record_begin,
    .record_end = cuda_record_end,
    .last_error = cuda_last_error,
};

int eng_backend_cuda_device_count(char *why, size_t why_len)
{
    if (why && why_len)
        why[0] = '\0';
    return kern_device_count(why, why_len);
}

pp_status eng_backend_cuda_create(int device, eng_backend *share_with, eng_backend **out, eng_err *err)
{
    *out = NULL;
    cuda_backend *share = NULL;
    if (share_with) {
        if (share_with->ops != &cuda_ops)
            return eng_fail(err, PP_STATUS_INVALID_ARG, "cuda backend: share_with is a %s backend, not a cuda one",
                            share_with->ops->name);
        share = as_cuda(share_with);
        if (device < 0)
            device = share->device;
        if (device != share->device)
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "cuda backend: cannot share the weight cache of device %d on device %d",
                            share->device, device);
    }
    if (device < 0)
        device = 0;
    char why[256] = "";
    int n = eng_backend_cuda_device_count(why, sizeof why);
    if (device >= n)
        return eng_fail(err, n > 0 ? PP_STATUS_INVALID_ARG : PP_STATUS_UNSUPPORTED,
                        "cuda backend: no CUDA device %d (%d found%s%s)", device, n, why[0] ? ": " : "", why);
    cuda_backend *cb = calloc(1, sizeof *cb);
    if (!cb)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "cuda backend: out of memory");
    cb->base.ops = &cuda_ops;
    cb->device = device;
    const char *graphs = getenv("PARAPHYM_CUDA_GRAPHS"); /* "0", "off", "false" or "no": off */
    cb->graphs_on = !(graphs && (strcmp(graphs, "0") == 0 || strcasecmp(graphs, "off") == 0 ||
                                 strcasecmp(graphs, "false") == 0 || strcasecmp(graphs, "no") == 0));
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&cb->cc_major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        cb->stream = NULL;
        pp_status st = cuda_fail(cb, e, "cudaSetDevice + cudaDeviceGetAttribute + cudaStreamCreateWithFlags", __LINE__);
        eng_fail(err, st, "%s", cb->msg);
        cuda_destroy(&cb->base);
        return st;
    }
    if (share) {
        cb->wc = share->wc;
        pthread_mutex_lock(&cb->wc->mu);
        cb->wc->refs++;
        pthread_mutex_unlock(&cb->wc->mu);
    } else {
        weight_cache *wc = calloc(1, sizeof *wc);
        if (!wc || pthread_mutex_init(&wc->mu, NULL) != 0) {
            free(wc);
            cuda_destroy(&cb->base);
            return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "cuda backend: cannot create the weight cache");
        }
        wc->refs = 1;
        wc->device = device;
        cb->wc = wc;
    }
    *out = &cb->base;
    return PP_STATUS_OK;
}

size_t eng_backend_cuda_weight_bytes(const eng_backend *be)
{
    if (!be || be->ops != &cuda_ops)
        return 0;
    weight_cache *wc = ((const cuda_backend *)be)->wc;
    pthread_mutex_lock(&wc->mu);
    size_t bytes = wc->device_bytes;
    pthread_mutex_unlock(&wc->mu);
    return bytes;
}

void eng_backend_cuda_graph_counts(const eng_backend *be, size_t *launched, size_t *fallbacks)
{
    bool cuda = be && be->ops == &cuda_ops;
    *launched = cuda ? ((const cuda_backend *)be)->graphs_launched : 0;
    *fallbacks = cuda ? ((const cuda_backend *)be)->graph_fallbacks : 0;
}
