// sample.cu: the greedy pick on the device (kern_argmax), so that greedy decoding downloads one
// int32 per sequence instead of a row of n_vocab logits.
//
// Invariant: the result is engine/sampler.c's eng_argmax scan bit for bit (best = 0; for i >= 1:
// if x[i] > x[best] best = i), computed as a parallel reduction. Each column competes with a key:
// its value, except that a NaN at column 0 is +inf (the scan's best never leaves a NaN x[0], and
// +inf at the lowest index beats every other column) and a NaN elsewhere is -inf (never greater
// than the best; when the row's largest value is -inf, x[0] is -inf too and column 0 wins the
// tie). Keys are then never NaN, so "larger key, or equal key and lower column" is a total order
// and any reduction order gives the scan's answer. Comparisons are IEEE (-0 == +0) and, as nvcc
// builds without flush-to-zero here, exact on subnormals.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"

// Most threads per block (one block per row): a row of 150k-164k logits (Qwen3, DeepSeek-V3's
// n_vocab) then gives each thread ~37-40 float4 loads, issued four at a time.
#define ARGMAX_MAX_THREADS 1024
// Fewest columns per thread for shorter rows: one unrolled step of four float4 loads.
#define ARGMAX_COLS_PER_THREAD 16
// A thread's starting (key, column): loses to every real column (its column is past any).
#define ARGMAX_NO_COL INT32_MAX

// The key column c competes with (see the file's invariant).
static __device__ __forceinline__ float argmax_key(float v, int64_t c)
{
    return isnan(v) ? (c == 0 ? INFINITY : -INFINITY) : v;
}

// (*bk, *bc) = the better of itself and (k, c): the larger key, or the lower column on equal keys.
static __device__ __forceinline__ void argmax_take(float *bk, int *bc, float k, int c)
{
    if (k > *bk || (k == *bk && c < *bc)) {
        *bk = k;
        *bc = c;
    }
}

static __device__ __forceinline__ void argmax_take4(float *bk, int *bc, float4 v, int64_t c)
{
    argmax_take(bk, bc, argmax_key(v.x, c), (int)c);
    argmax_take(bk, bc, argmax_key(v.y, c + 1), (int)c + 1);
    argmax_take(bk, bc, argmax_key(v.z, c + 2), (int)c + 2);
    argmax_take(bk, bc, argmax_key(v.w, c + 3), (int)c + 3);
}

// Grid min(n_rows, 2^20) blocks, rows strided by gridDim.x; block a multiple of 32 threads, at
// most ARGMAX_MAX_THREADS. Per row: the first `head` (0..3) columns, up to the row's first
// 16-byte boundary, go to threads 0..head-1; the body is read as float4 (block-strided, four
// loads in flight per thread); the last n_cols - head mod 4 columns go scalar. Each thread keeps
// its best (key, column); the warp reduces by __shfl_down_sync, lane 0 of each warp leaves its
// best in shared memory, and warp 0 reduces those; thread 0 writes out[r]. Any row base works
// (x only needs float alignment), so odd strides are vectorised too.
static __global__ void __launch_bounds__(ARGMAX_MAX_THREADS)
argmax_kernel(const float *__restrict__ x, int64_t stride, int n_rows, int64_t n_cols,
              int32_t *__restrict__ out)
{
    __shared__ float warp_key[ARGMAX_MAX_THREADS / 32];
    __shared__ int warp_col[ARGMAX_MAX_THREADS / 32];
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid % 32, warp = tid / 32;
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const float *xr = x + r * stride;
        int64_t head = (int64_t)((16 - ((uintptr_t)xr & 15)) & 15) / 4;
        if (head > n_cols)
            head = n_cols;
        const float4 *body = (const float4 *)(xr + head);
        const int64_t n4 = (n_cols - head) / 4;
        float bk = -INFINITY;
        int bc = ARGMAX_NO_COL;
        if (tid < head)
            argmax_take(&bk, &bc, argmax_key(__ldg(xr + tid), tid), tid);
        int64_t j = tid;
        for (; j + 3 * nt < n4; j += 4 * (int64_t)nt) {
            float4 a = __ldg(body + j), b = __ldg(body + j + nt), c = __ldg(body + j + 2 * nt),
                   d = __ldg(body + j + 3 * nt);
            argmax_take4(&bk, &bc, a, head + 4 * j);
            argmax_take4(&bk, &bc, b, head + 4 * (j + nt));
            argmax_take4(&bk, &bc, c, head + 4 * (j + 2 * nt));
            argmax_take4(&bk, &bc, d, head + 4 * (j + 3 * nt));
        }
        for (; j < n4; j += nt)
            argmax_take4(&bk, &bc, __ldg(body + j), head + 4 * j);
        for (int64_t c = head + 4 * n4 + tid; c < n_cols; c += nt)
            argmax_take(&bk, &bc, argmax_key(__ldg(xr + c), c), (int)c);

        for (int o = 16; o > 0; o >>= 1) {
            float k = __shfl_down_sync(0xffffffffu, bk, o);
            int c = __shfl_down_sync(0xffffffffu, bc, o);
            argmax_take(&bk, &bc, k, c);
        }
        if (lane == 0) {
            warp_key[warp] = bk;
            warp_col[warp] = bc;
        }
        __syncthreads();
        if (warp == 0) {
            bk = lane < nt / 32 ? warp_key[lane] : -INFINITY;
            bc = lane < nt / 32 ? warp_col[lane] : ARGMAX_NO_COL;
            for (int o = 16; o > 0; o >>= 1) {
                float k = __shfl_down_sync(0xffffffffu, bk, o);
                int c = __shfl_down_sync(0xffffffffu, bc, o);
                argmax_take(&bk, &bc, k, c);
            }
            if (lane == 0)
                out[r] = bc;
        }
        __syncthreads(); // warp 0 has read warp_key / warp_col before the next row writes them
    }
}

// Threads per block for rows of n_cols: ARGMAX_COLS_PER_THREAD columns a thread, in whole warps,
// between one warp and ARGMAX_MAX_THREADS.
static int argmax_threads(int64_t n_cols)
{
    int64_t t = (n_cols + ARGMAX_COLS_PER_THREAD - 1) / ARGMAX_COLS_PER_THREAD;
    t = (t + 31) / 32 * 32;
    return (int)(t < 32 ? 32 : t > ARGMAX_MAX_THREADS ? ARGMAX_MAX_THREADS : t);
}

static int argmax_launch(const float *x, int64_t stride, int n_rows, int64_t n_cols, int32_t *out,
                         int threads, cudaStream_t stream)
{
    // 2^20 blocks cover 2^20 rows per step; more rows loop in the kernel
    unsigned blocks = (unsigned)(n_rows < (1 << 20) ? n_rows : (1 << 20));
    argmax_kernel<<<blocks, threads, 0, stream>>>(x, stride, n_rows, n_cols, out);
    return (int)cudaGetLastError();
}

extern "C" int kern_argmax(const float *x, int64_t stride, int n_rows, int64_t n_cols,
                           int32_t *out, kern_stream stream)
{
    if (!x || !out || n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols ||
        ((uintptr_t)x & 3) != 0)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0)
        return 0;
    return argmax_launch(x, stride, n_rows, n_cols, out, argmax_threads(n_cols), stream);
}
