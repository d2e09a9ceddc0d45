// launch.cuh: host-side facts launchers need on every launch, asked of the CUDA runtime once and
// cached: the current device's SM count and compute capability (per device), a kernel's
// occupancy (per kernel instantiation, device and shared-memory size) and a kernel's raised
// dynamic shared-memory limit (per kernel and device). A decode step launches hundreds of
// kernels, and these queries would otherwise be paid on each launch (inside a CUDA graph's
// capture too, which runs the launchers' host code every step). Thread-safe; the caches live
// per translation unit (static), which only means each .cu asks once for itself.
#ifndef PP_LAUNCH_CUH
#define PP_LAUNCH_CUH

#include <atomic>
#include <cuda_runtime.h>
#include <mutex>
#include <stdint.h>

// Devices whose facts are cached (others are asked on every call).
#define LAUNCH_MAX_DEVICES 64
// Kernels whose raised shared-memory limit is cached (others are set on every launch).
#define LAUNCH_SMEM_KERNELS 64
// Dynamic shared memory a kernel may use without raising its limit.
#define LAUNCH_SMEM_DEFAULT (48 * 1024)

struct launch_device_facts {
    std::atomic<int> n_sm{0};     // 0: not asked yet
    std::atomic<int> cc_major{0};
};
static launch_device_facts launch_facts[LAUNCH_MAX_DEVICES];

// The calling thread's device (*dev) and, where not NULL, its SM count and compute capability
// major: cudaSuccess, or the error of a query.
static inline cudaError_t launch_device(int *dev, int *n_sm, int *cc_major)
{
    cudaError_t e = cudaGetDevice(dev);
    if (e != cudaSuccess)
        return e;
    launch_device_facts *f = *dev >= 0 && *dev < LAUNCH_MAX_DEVICES ? &launch_facts[*dev] : nullptr;
    int sm = f ? f->n_sm.load(std::memory_order_relaxed) : 0;
    int cc = f ? f->cc_major.load(std::memory_order_relaxed) : 0;
    if (sm == 0 || cc == 0) {
        if ((e = cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, *dev)) != cudaSuccess ||
            (e = cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, *dev)) != cudaSuccess)
            return e;
        if (f) {
            f->n_sm.store(sm, std::memory_order_relaxed);
            f->cc_major.store(cc, std::memory_order_relaxed);
        }
    }
    if (n_sm)
        *n_sm = sm;
    if (cc_major)
        *cc_major = cc;
    return cudaSuccess;
}

// Entries of a launch_occupancy cache (direct-mapped by shared-memory size: one kernel
// instantiation meets a few sizes in a decode step, one per distinct input width).
#define LAUNCH_OCC_SLOTS 16

// fn's resident blocks per SM (*per_sm) for `threads` threads and `smem` bytes of dynamic shared
// memory on device dev. cache[LAUNCH_OCC_SLOTS] is the caller's, one per kernel instantiation
// launched with one thread count: each entry keeps an answer with its key (device and smem)
// packed into one word, so a reader never pairs an answer with another key.
template <typename F>
static inline cudaError_t launch_occupancy(F fn, int threads, size_t smem, int dev, std::atomic<uint64_t> *cache,
                                           int *per_sm)
{
    bool keyable = dev >= 0 && dev < 0xfffe && smem < (1ull << 32);
    uint64_t key = ((uint64_t)(dev + 1) << 48) | ((uint64_t)smem << 16);
    std::atomic<uint64_t> *slot = &cache[(uint32_t)(((smem >> 2) + (size_t)dev) * 2654435761u) >> 28];
    uint64_t c = slot->load(std::memory_order_relaxed);
    if (keyable && (c & ~0xffffull) == key) {
        *per_sm = (int)(c & 0xffff);
        return cudaSuccess;
    }
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, fn, threads, smem);
    if (e == cudaSuccess && keyable && *per_sm >= 0 && *per_sm < 0x10000)
        slot->store(key | (uint64_t)*per_sm, std::memory_order_relaxed);
    return e;
}

struct launch_smem_entry {
    std::atomic<const void *> fn{nullptr};
    std::atomic<int> limit[LAUNCH_MAX_DEVICES]; // the largest limit set on each device (0: none)
};
static launch_smem_entry launch_smem_table[LAUNCH_SMEM_KERNELS];
static std::mutex launch_smem_mu; // serialises the raises, so a kernel's limit only grows

// Makes kernel fn launchable with smem bytes of dynamic shared memory on device dev: above
// LAUNCH_SMEM_DEFAULT its cudaFuncAttributeMaxDynamicSharedMemorySize is raised, once per kernel,
// device and larger size (to the largest size asked for so far, so a smaller launch on another
// thread never lowers it under a larger one's feet).
static inline cudaError_t launch_smem_limit(const void *fn, size_t smem, int dev)
{
    if (smem <= LAUNCH_SMEM_DEFAULT)
        return cudaSuccess;
    launch_smem_entry *ent = nullptr;
    for (int i = 0; i < LAUNCH_SMEM_KERNELS && !ent; i++) {
        const void *cur = launch_smem_table[i].fn.load(std::memory_order_acquire);
        if (!cur) {
            const void *expected = nullptr;
            if (launch_smem_table[i].fn.compare_exchange_strong(expected, fn) || expected == fn)
                ent = &launch_smem_table[i];
        } else if (cur == fn) {
            ent = &launch_smem_table[i];
        }
    }
    bool cached = ent && dev >= 0 && dev < LAUNCH_MAX_DEVICES;
    if (cached && ent->limit[dev].load(std::memory_order_acquire) >= (int64_t)smem)
        return cudaSuccess;
    std::lock_guard<std::mutex> lock(launch_smem_mu);
    int want = (int)smem;
    if (cached) {
        int have = ent->limit[dev].load(std::memory_order_relaxed);
        if (have >= want)
            return cudaSuccess;
    } else { // no record of what was set: the device's most, which no launch can exceed
        int most = 0;
        if (cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess && most > want)
            want = most;
    }
    cudaError_t e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, want);
    if (e == cudaSuccess && cached)
        ent->limit[dev].store(want, std::memory_order_release);
    return e;
}

#endif // PP_LAUNCH_CUH
