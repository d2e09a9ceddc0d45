// mma.cuh: the one tensor-core instruction the bf16 mode's kernels use (matmul_tc.cuh,
// attention_tc.cu): mma.sync.aligned.m16n8k16 with bf16 inputs and f32 accumulation, sm_80+,
// and the device check their launchers make before using it.
#ifndef PP_MMA_CUH
#define PP_MMA_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "launch.cuh"

// d += a * b for one m16n8k16 tile: A 16 x 16 row-major, B 16 x 8 column-major (its columns,
// e.g. weight rows or keys, with their 16 k values contiguous), D 16 x 8 f32. Fragments per lane
// (g = lane / 4, q = lane % 4; a register holds two bf16, the lower column in its low half):
// a[0] = A[g][2q..2q+1], a[1] = A[g+8][2q..], a[2] = A[g][2q+8..], a[3] = A[g+8][2q+8..];
// b0 = B[2q..2q+1][g], b1 = B[2q+8..2q+9][g]; d[0..1] = D[g][2q..2q+1], d[2..3] = D[g+8][2q..]
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"). Before sm_80 it
// traps: the launchers refuse such devices first.
static __device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                                      uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

// Whether the current device runs mma.sync on bf16 (sm_80 and later; launch.cuh caches the
// device's compute capability): cudaSuccess and *ok, or the error of the query.
static inline cudaError_t tc_device_ok(bool *ok)
{
    int dev = 0, major = 0;
    cudaError_t e = launch_device(&dev, nullptr, &major);
    if (e != cudaSuccess)
        return e;
    *ok = major >= 8;
    return cudaSuccess;
}

// tc_device_ok for a launcher with no other path: cudaErrorInvalidDevice before sm_80, or the
// error of the query.
static inline cudaError_t tc_device_require(void)
{
    bool ok = false;
    cudaError_t e = tc_device_ok(&ok);
    return e != cudaSuccess ? e : ok ? cudaSuccess : cudaErrorInvalidDevice;
}

#endif // PP_MMA_CUH
