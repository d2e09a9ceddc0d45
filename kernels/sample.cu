// sample.cu: the greedy pick (kern_argmax) and the sampling candidates (kern_topk) on the
// device, so that decoding downloads one int32, or k (value, id) pairs, per sequence instead of
// a row of n_vocab logits.
//
// argmax's invariant: the result is engine/sampler.c's eng_argmax scan bit for bit (best = 0; for i >= 1:
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
#include "workspace.h"

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

// ---- sampling candidates (kern_topk) ------------------------------------------------------------
//
// Invariant: the output is engine/sampler.c's eng_topk bit for bit. Every column gets the 64-bit
// key eng_topk orders by (topk_key below, sampler.c's topk_key to the bit); the keys of a row
// are all different, so "the k largest keys, largest first" is one answer whatever order the
// threads count, gather and sort in. Keys are integers, so nothing depends on float compares.

// Threads per CTA; the bitonic sort of KERN_TOPK_MAX keys gives each thread one pair a step.
#define TOPK_THREADS 512
#define TOPK_RADIX 256 // 8-bit digits: eight passes at most over 64-bit keys
// Fewest columns in one CTA's range when a row is split: with at least 8k of them, the merge
// reads at most 1/8 as many keys as the row has columns; 4096 keeps a range's fixed cost
// (the passes' barriers, the sort) small beside its reads.
#define TOPK_MIN_RANGE 4096
#define TOPK_RANGE_PER_K 8

static_assert(KERN_TOPK_MAX == 1024, "workspace.h's kern_topk_workspace_max counts 1024 keys a range");

typedef unsigned long long topk_key_t;

// The candidate order's key of column c holding v (kernels.h, sampler.c).
static __device__ __forceinline__ topk_key_t topk_key(float v, int c)
{
    unsigned u = __float_as_uint(v), mag = u & 0x7fffffffu, hi;
    if (mag > 0x7f800000u)
        hi = c == 0 ? 0xff800000u : 0u;
    else if (mag == 0)
        hi = 0x80000000u;
    else
        hi = (u & 0x80000000u) ? ~u : u | 0x80000000u;
    return (topk_key_t)hi << 32 | (unsigned)~(unsigned)c;
}

static __device__ __forceinline__ int topk_col(topk_key_t key) { return (int)~(unsigned)key; }

// Items of a selection: columns c0 .. of one row (their keys made from the logits), or keys a
// first pass left in the workspace.
struct topk_cols {
    const float *xr; // the row
    int64_t c0;
    __device__ topk_key_t key(int64_t i) const
    {
        int64_t c = c0 + i;
        return topk_key(__ldg(xr + c), (int)c);
    }
};

struct topk_keys {
    const topk_key_t *keys;
    __device__ topk_key_t key(int64_t i) const { return __ldg(keys + i); }
};

struct topk_smem {
    topk_key_t buf[KERN_TOPK_MAX]; // the selected keys, then sorted
    int hist[TOPK_RADIX];
    int n_sel;                     // keys gathered so far
    int digit, above;              // a pass's digit, and the keys above it
};

// The k largest keys of items 0 .. n-1 of src, largest first, in s.buf[0 .. m), m = min(k, n)
// (returned to every thread). All TOPK_THREADS threads call it; it ends with a barrier.
// Radix select, most significant digit first: prefix / mask hold the digits fixed so far. With
// G = keys whose masked bits are above prefix and E = keys equal to it, each pass keeps
// G < k <= G + E: it counts the digits of the E keys, takes the digit d where the count from the
// top reaches need = k - G, moves the keys above d into G and narrows E to digit d. It stops
// when G + E == k (after the last digit at the latest: keys differ, so E is 1 then); the k keys
// are those whose masked bits are >= prefix.
template <class Src>
static __device__ int topk_block(const Src &src, int64_t n, int k, topk_smem &s)
{
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    topk_key_t prefix = 0, mask = 0;
    if (n > k) {
        int need = k;
        for (int shift = 56; shift >= 0; shift -= 8) {
            for (int b = tid; b < TOPK_RADIX; b += TOPK_THREADS)
                s.hist[b] = 0;
            __syncthreads();
            // whole warps step together (match_any needs all lanes): one item per thread a step
            for (int64_t base = 0; base < n; base += TOPK_THREADS) {
                int64_t i = base + tid;
                int d = TOPK_RADIX; // no digit: past the end or outside the prefix
                if (i < n) {
                    topk_key_t key = src.key(i);
                    if ((key & mask) == prefix)
                        d = (int)(key >> shift) & (TOPK_RADIX - 1);
                }
                unsigned peers = __match_any_sync(0xffffffffu, d);
                if (d < TOPK_RADIX && lane == __ffs(peers) - 1)
                    atomicAdd(&s.hist[d], __popc(peers)); // one add per digit per warp
            }
            __syncthreads();
            if (warp == 0) {
                // lane l sums bins 255 - 8l down to 248 - 8l; a scan over lanes counts from the top
                int cnt[8], sum = 0;
                for (int j = 0; j < 8; j++) {
                    cnt[j] = s.hist[TOPK_RADIX - 1 - 8 * lane - j];
                    sum += cnt[j];
                }
                int incl = sum;
                for (int o = 1; o < 32; o <<= 1) {
                    int v = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o)
                        incl += v;
                }
                // some lane's count reaches need: the E keys counted are at least need
                int first = __ffs(__ballot_sync(0xffffffffu, incl >= need)) - 1;
                if (lane == first) {
                    int cum = incl - sum;
                    for (int j = 0; j < 8; j++) {
                        if (cum + cnt[j] >= need) {
                            s.digit = TOPK_RADIX - 1 - 8 * lane - j;
                            s.above = cum;
                            break;
                        }
                        cum += cnt[j];
                    }
                }
            }
            __syncthreads();
            const int d = s.digit;
            need -= s.above;
            prefix |= (topk_key_t)d << shift;
            mask |= (topk_key_t)(TOPK_RADIX - 1) << shift;
            const bool done = s.hist[d] == need;
            __syncthreads(); // all have read hist, digit and above before the next pass clears them
            if (done)
                break;
        }
    }
    if (tid == 0)
        s.n_sel = 0;
    __syncthreads();
    for (int64_t i = tid; i < n; i += TOPK_THREADS) {
        topk_key_t key = src.key(i);
        if ((key & mask) >= prefix)
            s.buf[atomicAdd(&s.n_sel, 1)] = key;
    }
    // the sort's width: a power of two >= m, padded with key 0 (below every real key); the
    // gather fills exactly buf[0 .. m), so the padding needs no barrier before it
    const int m = n < k ? (int)n : k;
    int p2 = 1;
    while (p2 < m)
        p2 <<= 1;
    for (int i = m + tid; i < p2; i += TOPK_THREADS)
        s.buf[i] = 0;
    __syncthreads();
    // bitonic sort, largest first: blocks of `size` alternate descending / ascending until the
    // last merge, where every pair sorts descending
    for (int size = 2; size <= p2; size <<= 1)
        for (int half = size / 2; half > 0; half /= 2) {
            for (int t = tid; t < p2 / 2; t += TOPK_THREADS) {
                int i = 2 * t - (t & (half - 1)), j = i + half;
                bool desc = (i & size) == 0;
                topk_key_t a = s.buf[i], b = s.buf[j];
                if (desc ? a < b : a > b) {
                    s.buf[i] = b;
                    s.buf[j] = a;
                }
            }
            __syncthreads();
        }
    return m;
}

// Row r's output from its m selected keys in s.buf: k pairs, (-inf, -1) past m.
static __device__ void topk_write(const topk_smem &s, int m, int k, const float *xr, float *vals, int32_t *ids)
{
    for (int j = threadIdx.x; j < k; j += TOPK_THREADS) {
        int c = j < m ? topk_col(s.buf[j]) : -1;
        vals[j] = j < m ? __ldg(xr + c) : -INFINITY;
        ids[j] = c;
    }
}

// Grid (n_range, min(n_rows, 65535)), rows strided by gridDim.y; TOPK_THREADS threads. CTA
// (g, r) selects from columns g * range .. of row r. One range (FINAL): writes the row's output.
// Else: leaves its best min(k, range) keys, largest first and padded with key 0 when the range
// has fewer columns, at part[(r * n_range + g) * min(k, range) ..].
template <bool FINAL>
static __global__ void __launch_bounds__(TOPK_THREADS)
topk_range_kernel(const float *__restrict__ x, int64_t stride, int n_rows, int64_t n_cols, int k, int64_t range,
                  float *__restrict__ vals, int32_t *__restrict__ ids, topk_key_t *__restrict__ part)
{
    __shared__ topk_smem s;
    const int64_t c0 = (int64_t)blockIdx.x * range;
    const int64_t len = n_cols - c0 < range ? n_cols - c0 : range;
    const int kk = range < k ? (int)range : k;
    for (int64_t r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const float *xr = x + r * stride;
        int m = topk_block(topk_cols{xr, c0}, len, k, s);
        if (FINAL) {
            topk_write(s, m, k, xr, vals + r * k, ids + r * k);
        } else {
            topk_key_t *o = part + (r * gridDim.x + blockIdx.x) * kk;
            for (int j = threadIdx.x; j < kk; j += TOPK_THREADS)
                o[j] = j < m ? s.buf[j] : 0;
        }
        __syncthreads(); // s.buf is read before the next row's selection writes it
    }
}

// Grid min(n_rows, 2^20), rows strided by gridDim.x; TOPK_THREADS threads. Row r's best k of
// the n_part keys its ranges left (n_part >= k real keys among them: the first range has at
// least k columns).
static __global__ void __launch_bounds__(TOPK_THREADS)
topk_merge_kernel(const float *__restrict__ x, int64_t stride, int n_rows, int k, int64_t n_part,
                  const topk_key_t *__restrict__ part, float *__restrict__ vals, int32_t *__restrict__ ids)
{
    __shared__ topk_smem s;
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        int m = topk_block(topk_keys{part + r * n_part}, n_part, k, s);
        topk_write(s, m, k, x + r * stride, vals + r * k, ids + r * k);
        __syncthreads();
    }
}

// How a row is split: into *n_range ranges of *range columns (the last one shorter). Ranges of
// at least max(TOPK_MIN_RANGE, TOPK_RANGE_PER_K * k) columns, and only as many as bring the
// CTAs up to KERN_TOPK_TARGET_CTAS; 1 when the rows alone have that many.
static void topk_plan(int n_rows, int64_t n_cols, int k, int *n_range, int64_t *range)
{
    int64_t min_range = (int64_t)TOPK_RANGE_PER_K * k > TOPK_MIN_RANGE ? (int64_t)TOPK_RANGE_PER_K * k : TOPK_MIN_RANGE;
    int64_t by_cols = n_cols / min_range;
    int64_t by_ctas = n_rows > 0 ? (KERN_TOPK_TARGET_CTAS + n_rows - 1) / n_rows : 1;
    int64_t split = by_cols < by_ctas ? by_cols : by_ctas;
    if (split < 1)
        split = 1;
    *range = (n_cols + split - 1) / split;
    *n_range = (int)((n_cols + *range - 1) / *range);
}

extern "C" size_t kern_topk_workspace_bytes(int n_rows, int64_t n_cols, int k)
{
    if (n_rows <= 0 || n_cols < 1 || k < 1 || k > KERN_TOPK_MAX)
        return 0;
    int n_range;
    int64_t range;
    topk_plan(n_rows, n_cols, k, &n_range, &range);
    if (n_range == 1)
        return 0;
    int64_t kk = range < k ? range : k;
    return (size_t)n_rows * (size_t)n_range * (size_t)kk * sizeof(topk_key_t);
}

extern "C" int kern_topk(const float *x, int64_t stride, int n_rows, int64_t n_cols, int k, float *vals,
                         int32_t *ids, void *workspace, kern_stream stream)
{
    if (!x || !vals || !ids || n_rows < 0 || n_cols < 1 || n_cols > INT32_MAX || stride < n_cols || k < 1 ||
        k > KERN_TOPK_MAX || ((uintptr_t)x & 3) != 0)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0)
        return 0;
    int n_range;
    int64_t range;
    topk_plan(n_rows, n_cols, k, &n_range, &range);
    dim3 grid((unsigned)n_range, (unsigned)(n_rows < 65535 ? n_rows : 65535));
    if (n_range == 1) {
        topk_range_kernel<true><<<grid, TOPK_THREADS, 0, stream>>>(x, stride, n_rows, n_cols, k, range, vals, ids,
                                                                   NULL);
        return (int)cudaGetLastError();
    }
    if (!workspace || ((uintptr_t)workspace & 7) != 0)
        return (int)cudaErrorInvalidValue;
    topk_key_t *part = (topk_key_t *)workspace;
    topk_range_kernel<false><<<grid, TOPK_THREADS, 0, stream>>>(x, stride, n_rows, n_cols, k, range, vals, ids,
                                                                part);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return (int)e;
    int64_t kk = range < k ? range : k;
    unsigned blocks = (unsigned)(n_rows < (1 << 20) ? n_rows : (1 << 20));
    topk_merge_kernel<<<blocks, TOPK_THREADS, 0, stream>>>(x, stride, n_rows, k, (int64_t)n_range * kk, part, vals,
                                                           ids);
    return (int)cudaGetLastError();
}
