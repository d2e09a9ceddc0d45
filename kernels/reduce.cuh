// reduce.cuh: the small helpers several kernel files share: warp-wide max and sum over all 32
// lanes (every lane gets the result; all lanes must take part), and host-side integer helpers
// for launch planning.
#ifndef PP_REDUCE_CUH
#define PP_REDUCE_CUH

#include <cuda_runtime.h>

static __device__ __forceinline__ float warp_max(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

static __device__ __forceinline__ float warp_sum(float x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

#endif // PP_REDUCE_CUH
