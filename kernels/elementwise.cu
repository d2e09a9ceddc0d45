// elementwise.cu: embedding lookup, RMSNorm, residual add, RoPE, the KV-cache write and SwiGLU,
// the memory-bound ops of a transformer layer, and the bf16 compute mode's three kernels: the
// bf16 rounding, its packing into bf16 storage for the tensor-core matmul (matmul_bf16), and the
// W8A8 activation quantization in front of FP8 weights.
//
// Invariant: every kernel computes engine/backend_cpu.c's formula in the same f32 operation
// order (RMSNorm's sum of squares in double, RoPE's cos/sin in double rounded to f32, as the
// CPU); results differ from it only by RMSNorm's summation order and by CUDA's expf / double
// sincos being within 2 ulp rather than glibc's. The KV-cache write is bit-exact: a copy into an
// f32 cache, eng_round_bf16's high half into a bf16 one. Ops documented as in place (rmsnorm,
// add, swiglu, rope) read each element before any thread writes it. The activation quantization
// is bit-exact with the CPU (a max, one IEEE division, the e4m3 rounding, one product).
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>

#include "dequant.cuh"
#include "kernels.h"
#include "reduce.cuh"

// Threads per block of every kernel here (8 warps).
#define EW_THREADS 256
// Largest gridDim.y; the row (token) loops stride by gridDim.y beyond it.
#define EW_MAX_GRID_Y 65535
// RoPE keeps a slice in registers: at most EW_ROPE_PAIRS_PER_LANE pairs per lane of a warp,
// so d_rope <= 2 * 32 * 16 = 1024, the CPU reference's limit (checked at model load).
#define EW_ROPE_PAIRS_PER_LANE 16
#define EW_ROPE_MAX (2 * 32 * EW_ROPE_PAIRS_PER_LANE)

static unsigned grid_y(int64_t rows)
{
    return (unsigned)(rows < EW_MAX_GRID_Y ? rows : EW_MAX_GRID_Y);
}

// ---- embedding --------------------------------------------------------------------------------

// Grid (ceil(n_in / 256), min(n_tokens, 65535)): one thread per output element, token rows
// strided by gridDim.y.
static __global__ void embedding_kernel(kern_weight table, const int32_t *__restrict__ ids,
                                        int n_tokens, float *__restrict__ out)
{
    int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= table.n_in)
        return;
    for (int t = blockIdx.y; t < n_tokens; t += gridDim.y) {
        int32_t id = __ldg(ids + t);
        out[(int64_t)t * table.n_in + k] =
            id >= 0 && id < table.n_out ? dq_weight_at(table, id, k) : __int_as_float(0x7fc00000);
    }
}

extern "C" int kern_embedding(const kern_weight *table, const int32_t *ids, int n_tokens,
                              float *out, kern_stream stream)
{
    if (!dq_weight_valid(table) || !ids || !out || n_tokens < 0)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || table->n_in == 0)
        return 0;
    dim3 grid((unsigned)((table->n_in + EW_THREADS - 1) / EW_THREADS), grid_y(n_tokens));
    embedding_kernel<<<grid, EW_THREADS, 0, stream>>>(*table, ids, n_tokens, out);
    return (int)cudaGetLastError();
}

// ---- rmsnorm ----------------------------------------------------------------------------------

// Sum of v over the block, the result in every thread; red holds one slot per warp.
static __device__ double block_sum(double v, double *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = v;
    __syncthreads();
    v = 0.0;
    for (int i = 0; i < EW_THREADS / 32; i++)
        v += red[i];
    return v;
}

// One block per row; each thread strides over the row's columns twice (sum of squares, then
// the scaled store), reading x[i] before writing out[i] so x and out may alias.
static __global__ void __launch_bounds__(EW_THREADS)
rmsnorm_kernel(const float *x, int64_t x_stride, kern_vec w, float eps, float *out,
               int64_t out_stride)
{
    __shared__ double red[EW_THREADS / 32];
    const float *xr = x + (int64_t)blockIdx.x * x_stride;
    float *o = out + (int64_t)blockIdx.x * out_stride;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < w.n; i += EW_THREADS)
        ss += (double)xr[i] * (double)xr[i];
    ss = block_sum(ss, red);
    float inv = (float)(1.0 / sqrt(ss / (double)w.n + (double)eps));
    for (int64_t i = threadIdx.x; i < w.n; i += EW_THREADS)
        o[i] = xr[i] * inv * dq_load(w.data, w.dtype, i);
}

extern "C" int kern_rmsnorm(const float *x, int64_t x_stride, const kern_vec *w, float eps,
                            float *out, int64_t out_stride, int n_rows, kern_stream stream)
{
    if (!x || !w || !w->data || !dq_dtype_valid(w->dtype) || w->n < 0 || !out || n_rows < 0)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0 || w->n == 0)
        return 0;
    rmsnorm_kernel<<<(unsigned)n_rows, EW_THREADS, 0, stream>>>(x, x_stride, *w, eps, out,
                                                                out_stride);
    return (int)cudaGetLastError();
}

// ---- add --------------------------------------------------------------------------------------

// Grid-stride loop, one element per thread per step (out may alias a or b: same index).
static __global__ void add_kernel(const float *a, const float *b, float *out, size_t n)
{
    size_t step = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        out[i] = a[i] + b[i];
}

extern "C" int kern_add(const float *a, const float *b, float *out, size_t n, kern_stream stream)
{
    if (!a || !b || !out)
        return (int)cudaErrorInvalidValue;
    if (n == 0)
        return 0;
    size_t blocks = (n + EW_THREADS - 1) / EW_THREADS;
    // 2^20 blocks of 256 cover 256M elements per step; larger n loops in the kernel
    if (blocks > ((size_t)1 << 20))
        blocks = (size_t)1 << 20;
    add_kernel<<<(unsigned)blocks, EW_THREADS, 0, stream>>>(a, b, out, n);
    return (int)cudaGetLastError();
}

// ---- rope -------------------------------------------------------------------------------------

// One warp per (token, head) slice, 8 slices per block. Lane l owns pairs j = l + 32 i: it reads
// every pair of the slice into registers, the warp synchronises, then it writes (j, j + half);
// the interleaved layout reads (2j, 2j+1), which other lanes write, hence the two phases.
// Token t sits at position pos_of[t] (kern_rope's pos).
static __global__ void __launch_bounds__(EW_THREADS)
rope_kernel(float *x, int n_tokens, int n_head, int64_t token_stride, int64_t head_stride,
            int rope_offset, const int32_t *__restrict__ pos_of, int d_rope, bool interleaved,
            float cos_sin_scale, const float *__restrict__ inv_freq)
{
    int64_t slice = (int64_t)blockIdx.x * (EW_THREADS / 32) + threadIdx.x / 32;
    if (slice >= (int64_t)n_tokens * n_head)
        return; // the whole warp leaves together
    int t = (int)(slice / n_head), h = (int)(slice % n_head);
    int lane = threadIdx.x % 32, half = d_rope / 2;
    float *v = x + (int64_t)t * token_stride + (int64_t)h * head_stride + rope_offset;
    float pos = (float)__ldg(pos_of + t);
    float lo[EW_ROPE_PAIRS_PER_LANE], hi[EW_ROPE_PAIRS_PER_LANE];
#pragma unroll
    for (int i = 0; i < EW_ROPE_PAIRS_PER_LANE; i++) {
        int j = lane + 32 * i;
        if (j >= half)
            break;
        // as the CPU: f32 angle, cos/sin in double rounded to f32, then the attention factor
        float ang = pos * __ldg(inv_freq + j);
        double sd, cd;
        sincos((double)ang, &sd, &cd);
        float c = (float)cd * cos_sin_scale;
        float s = (float)sd * cos_sin_scale;
        float a = interleaved ? v[2 * j] : v[j];
        float b = interleaved ? v[2 * j + 1] : v[j + half];
        // explicit roundings: the CPU build (no FMA) rounds each product, so no contraction here
        lo[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        hi[i] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < EW_ROPE_PAIRS_PER_LANE; i++) {
        int j = lane + 32 * i;
        if (j >= half)
            break;
        v[j] = lo[i];
        v[j + half] = hi[i];
    }
}

extern "C" int kern_rope(float *x, int n_tokens, int n_head, int64_t token_stride,
                         int64_t head_stride, int rope_offset, const int32_t *pos, int d_rope,
                         bool interleaved, float cos_sin_scale, const float *inv_freq,
                         kern_stream stream)
{
    if (!x || !pos || !inv_freq || n_tokens < 0 || n_head < 0 || rope_offset < 0 || d_rope < 0 ||
        d_rope % 2 != 0 || d_rope > EW_ROPE_MAX)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || n_head == 0 || d_rope == 0)
        return 0;
    int64_t slices = (int64_t)n_tokens * n_head;
    unsigned blocks = (unsigned)((slices + EW_THREADS / 32 - 1) / (EW_THREADS / 32));
    rope_kernel<<<blocks, EW_THREADS, 0, stream>>>(x, n_tokens, n_head, token_stride, head_stride,
                                                   rope_offset, pos, d_rope, interleaved,
                                                   cos_sin_scale, inv_freq);
    return (int)cudaGetLastError();
}

// ---- kv write ---------------------------------------------------------------------------------

// f32 bits rounded to the nearest bf16, ties to even, kept as f32 bits (low half zero); every
// NaN becomes 0x7fc00000. engine/common.h's eng_round_bf16, formula for formula: integer
// arithmetic on the bit pattern, so subnormals are rounded (never flushed) and the result does
// not depend on how cvt.rn.bf16.f32 encodes a NaN. The one rounding of the KV-cache write, the
// bf16 rounding and the bf16 packing below.
static __host__ __device__ __forceinline__ uint32_t round_bf16_bits(uint32_t u)
{
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc00000u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}

// One cache element from one source element: an F32 cache copies (float, or float4 when
// vectorised); a BF16 cache stores the high half of round_bf16_bits (uint16_t, or uint2 holding
// four, the lowest column in the low half of .x: bf16 storage is little-endian).
static __device__ __forceinline__ uint32_t kv_bf16_half(float x)
{
    return round_bf16_bits(__float_as_uint(x)) >> 16;
}

static __device__ __forceinline__ void kv_put(float *d, float x) { *d = x; }
static __device__ __forceinline__ void kv_put(float4 *d, float4 x) { *d = x; }
static __device__ __forceinline__ void kv_put(uint16_t *d, float x)
{
    *d = (uint16_t)kv_bf16_half(x);
}
static __device__ __forceinline__ void kv_put(uint2 *d, float4 x)
{
    *d = make_uint2(kv_bf16_half(x.x) | kv_bf16_half(x.y) << 16,
                    kv_bf16_half(x.z) | kv_bf16_half(x.w) << 16);
}

// Grid-stride over the n_tokens * n_head * width source elements of type S (float, or float4
// when kern_kv_write found every address and stride aligned for it; strides and width are then
// in units of 4 columns) stored as cache elements of type D (kv_put), one element per thread per
// step; element e is (token, head, column) with the column fastest. Tokens whose slot is
// negative are skipped.
template <typename S, typename D>
static __global__ void __launch_bounds__(EW_THREADS)
kv_write_kernel(D *cache, int64_t cache_row_stride, int64_t cache_head_stride,
                const S *src, int64_t src_row_stride, int64_t src_head_stride,
                int n_head, int64_t width, const int32_t *__restrict__ slot, int64_t n)
{
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += step) {
        int64_t r = e / width, i = e - r * width;
        int t = (int)(r / n_head), h = (int)(r - (int64_t)t * n_head);
        int32_t row = __ldg(slot + t);
        if (row < 0)
            continue;
        kv_put(&cache[(int64_t)row * cache_row_stride + h * cache_head_stride + i],
               src[(int64_t)t * src_row_stride + h * src_head_stride + i]);
    }
}

// One launch of kv_write_kernel<S, D> over columns grouped w at a time (strides and width
// divisible by w); at most 2^20 blocks, larger writes loop in the kernel.
template <typename S, typename D>
static void kv_write_launch(void *cache, int64_t cache_row_stride, int64_t cache_head_stride,
                            const float *src, int64_t src_row_stride, int64_t src_head_stride,
                            int n_head, int64_t width, const int32_t *slot, int n_tokens, int w,
                            cudaStream_t stream)
{
    const int64_t n = (int64_t)n_tokens * n_head * (width / w);
    int64_t blocks = (n + EW_THREADS - 1) / EW_THREADS;
    if (blocks > ((int64_t)1 << 20))
        blocks = (int64_t)1 << 20;
    kv_write_kernel<S, D><<<(unsigned)blocks, EW_THREADS, 0, stream>>>(
        (D *)cache, cache_row_stride / w, cache_head_stride / w, (const S *)src,
        src_row_stride / w, src_head_stride / w, n_head, width / w, slot, n);
}

// Four columns per thread when the four strides and width are multiples of 4 and the addresses
// are aligned for the 4-column access (src 16 bytes; the cache 16 bytes for F32, 8 for BF16),
// else one.
extern "C" int kern_kv_write(void *cache, kern_dtype dtype, int64_t cache_row_stride,
                             int64_t cache_head_stride, const float *src, int64_t src_row_stride,
                             int64_t src_head_stride, int n_head, int64_t width,
                             const int32_t *slot, int n_tokens, kern_stream stream)
{
    if ((dtype != KERN_DT_F32 && dtype != KERN_DT_BF16) || n_tokens < 0 || n_head < 0 ||
        width < 0)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || n_head == 0 || width == 0)
        return 0;
    if (!cache || !src || !slot)
        return (int)cudaErrorInvalidValue;
    const uintptr_t cache_align = dtype == KERN_DT_F32 ? 16 : 8;
    const bool vec = (uintptr_t)src % 16 == 0 && (uintptr_t)cache % cache_align == 0 &&
                     (cache_row_stride | cache_head_stride | src_row_stride | src_head_stride |
                      width) % 4 == 0;
    if (dtype == KERN_DT_F32 && vec)
        kv_write_launch<float4, float4>(cache, cache_row_stride, cache_head_stride, src,
                                        src_row_stride, src_head_stride, n_head, width, slot,
                                        n_tokens, 4, stream);
    else if (dtype == KERN_DT_F32)
        kv_write_launch<float, float>(cache, cache_row_stride, cache_head_stride, src,
                                      src_row_stride, src_head_stride, n_head, width, slot,
                                      n_tokens, 1, stream);
    else if (vec)
        kv_write_launch<float4, uint2>(cache, cache_row_stride, cache_head_stride, src,
                                       src_row_stride, src_head_stride, n_head, width, slot,
                                       n_tokens, 4, stream);
    else
        kv_write_launch<float, uint16_t>(cache, cache_row_stride, cache_head_stride, src,
                                         src_row_stride, src_head_stride, n_head, width, slot,
                                         n_tokens, 1, stream);
    return (int)cudaGetLastError();
}

// ---- swiglu -----------------------------------------------------------------------------------

// Grid (ceil(d_ff / 256), min(n_tokens, 65535)): one thread per element, token rows strided by
// gridDim.y; out may alias gate or up (same element).
static __global__ void swiglu_kernel(const float *gate, int64_t gate_stride, const float *up,
                                     int64_t up_stride, float *out, int64_t out_stride,
                                     int n_tokens, int d_ff)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= d_ff)
        return;
    for (int t = blockIdx.y; t < n_tokens; t += gridDim.y) {
        float g = gate[(int64_t)t * gate_stride + i];
        float u = up[(int64_t)t * up_stride + i];
        out[(int64_t)t * out_stride + i] = g / (1.0f + expf(-g)) * u;
    }
}

extern "C" int kern_swiglu(const float *gate, int64_t gate_stride, const float *up,
                           int64_t up_stride, float *out, int64_t out_stride, int n_tokens,
                           int d_ff, kern_stream stream)
{
    if (!gate || !up || !out || n_tokens < 0 || d_ff < 0)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || d_ff == 0)
        return 0;
    dim3 grid((unsigned)((d_ff + EW_THREADS - 1) / EW_THREADS), grid_y(n_tokens));
    swiglu_kernel<<<grid, EW_THREADS, 0, stream>>>(gate, gate_stride, up, up_stride, out,
                                                   out_stride, n_tokens, d_ff);
    return (int)cudaGetLastError();
}

// ---- bf16 rounding ----------------------------------------------------------------------------

// Grid (min(ceil(n_cols / 256), 2^20), min(n_rows, 65535)): one thread per element, columns
// strided by gridDim.x * 256 and rows by gridDim.y; in place (each element read, then written,
// by one thread).
static __global__ void round_bf16_kernel(float *x, int64_t stride, int n_rows, int64_t n_cols)
{
    int64_t step = (int64_t)gridDim.x * blockDim.x;
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        float *row = x + (int64_t)r * stride;
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_cols; i += step)
            row[i] = __uint_as_float(round_bf16_bits(__float_as_uint(row[i])));
    }
}

extern "C" int kern_round_bf16(float *x, int64_t stride, int n_rows, int64_t n_cols,
                               kern_stream stream)
{
    if (!x || stride < 0 || n_rows < 0 || n_cols < 0)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0 || n_cols == 0)
        return 0;
    int64_t blocks = (n_cols + EW_THREADS - 1) / EW_THREADS;
    // 2^20 blocks of 256 cover 256M elements of a row per step; longer rows loop in the kernel
    if (blocks > ((int64_t)1 << 20))
        blocks = (int64_t)1 << 20;
    dim3 grid((unsigned)blocks, grid_y(n_rows));
    round_bf16_kernel<<<grid, EW_THREADS, 0, stream>>>(x, stride, n_rows, n_cols);
    return (int)cudaGetLastError();
}

// Grid (min(ceil(pairs / 256), 2^20), min(n_rows, 65535)): one thread per pair of columns
// (2p, 2p + 1), pairs strided by gridDim.x * 256 and rows by gridDim.y; two f32 loads (x rows
// may have any stride, so no vector load) and one 32-bit store of the two bf16 halves (low half
// = the lower column, as bf16 storage is little-endian). round_bf16_bits keeps this bit-exact
// with kern_round_bf16 for any input, and a plain copy of the high half for bf16 values.
static __global__ void f32_to_bf16_kernel(const float *__restrict__ x, int64_t x_stride,
                                          uint32_t *__restrict__ out, int64_t out_stride,
                                          int n_rows, int64_t n_cols)
{
    const int64_t n_pairs = (n_cols + 1) / 2, step = (int64_t)gridDim.x * blockDim.x;
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const float *xr = x + (int64_t)r * x_stride;
        uint32_t *o = out + (int64_t)r * (out_stride / 2);
        for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < n_pairs; p += step) {
            uint32_t lo = round_bf16_bits(__float_as_uint(xr[2 * p])) >> 16;
            uint32_t hi = 2 * p + 1 < n_cols ? round_bf16_bits(__float_as_uint(xr[2 * p + 1])) : 0u;
            o[p] = (hi & 0xffff0000u) | lo;
        }
    }
}

extern "C" int kern_f32_to_bf16(const float *x, int64_t x_stride, uint16_t *out,
                                int64_t out_stride, int n_rows, int64_t n_cols, kern_stream stream)
{
    if (!x || !out || x_stride < 0 || n_rows < 0 || n_cols < 0 || out_stride % 2 != 0 ||
        out_stride < n_cols || (uintptr_t)out % 4 != 0)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0 || n_cols == 0)
        return 0;
    int64_t blocks = ((n_cols + 1) / 2 + EW_THREADS - 1) / EW_THREADS;
    if (blocks > ((int64_t)1 << 20))
        blocks = (int64_t)1 << 20;
    dim3 grid((unsigned)blocks, grid_y(n_rows));
    f32_to_bf16_kernel<<<grid, EW_THREADS, 0, stream>>>(x, x_stride, (uint32_t *)out, out_stride,
                                                        n_rows, n_cols);
    return (int)cudaGetLastError();
}

// ---- W8A8 activation quantization ------------------------------------------------------------

// e4m3's largest finite value: the scale is max|x| / 448, as HF's act_quant and the CPU.
#define ACT_E4M3_MAX 448.0f

// The scale of columns [c0, c1) of row xr: max |x| / 448, by one warp (every lane gets it). A
// max is exact in any order and fmaxf skips NaN as the CPU's loop does; the division is IEEE
// (nvcc's default -prec-div=true), so the scale is the CPU's bit for bit.
static __device__ __forceinline__ float act_group_scale(const float *xr, int64_t c0, int64_t c1,
                                                        int lane)
{
    float m = 0.0f;
    for (int64_t c = c0 + lane; c < c1; c += 32)
        m = fmaxf(m, fabsf(xr[c]));
    return warp_max(m) / ACT_E4M3_MAX;
}

// Grid min(n_rows, 2^20), block EW_THREADS (8 warps), rows strided by gridDim.x; warp w owns
// the row's groups w, w + 8, ... Pass 1: does any group have scale 0 (then the whole row is
// +0, HF's nan_to_num; __syncthreads_or gives every thread the answer, and orders pass 1's reads
// of the row before pass 2's writes). Pass 2: each warp recomputes its group's scale (the same
// value) and writes f32(e4m3(x / s)) * s, the e4m3 rounding being cuda_fp8.h's saturating
// round-to-nearest-even conversion (cvt.rn.satfinite.e4m3x2.f32 on sm_89+, the same rounding in
// software before), which equals engine/quantize.c's eng_f32_to_fp8_e4m3 for every non-NaN
// input. In place (out == x) is safe: a warp reads its whole group for the scale (warp_max
// synchronises the warp) before any lane writes into it, and each element is read and then
// written by the same lane.
static __global__ void __launch_bounds__(EW_THREADS)
quant_act_fp8_kernel(const float *x, int64_t x_stride, float *out, int64_t out_stride, int n_rows,
                     int64_t n_cols, int group)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t n_groups = (n_cols + group - 1) / group;
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const float *xr = x + r * x_stride;
        float *o = out + r * out_stride;
        int zero = 0;
        for (int64_t g = warp; g < n_groups; g += EW_THREADS / 32) {
            int64_t c0 = g * group, c1 = c0 + group < n_cols ? c0 + group : n_cols;
            zero |= act_group_scale(xr, c0, c1, lane) == 0.0f;
        }
        const bool zero_row = __syncthreads_or(zero) != 0;
        for (int64_t g = warp; g < n_groups; g += EW_THREADS / 32) {
            int64_t c0 = g * group, c1 = c0 + group < n_cols ? c0 + group : n_cols;
            float s = act_group_scale(xr, c0, c1, lane);
            for (int64_t c = c0 + lane; c < c1; c += 32) {
                uint8_t q = (uint8_t)__nv_cvt_float_to_fp8(xr[c] / s, __NV_SATFINITE, __NV_E4M3);
                o[c] = zero_row ? 0.0f : dq_e4m3(q) * s;
            }
        }
    }
}

extern "C" int kern_quant_act_fp8(const float *x, int64_t x_stride, float *out, int64_t out_stride,
                                  int n_rows, int64_t n_cols, int group, kern_stream stream)
{
    if (!x || !out || n_rows < 0 || n_cols < 0 || group < 1)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0 || n_cols == 0)
        return 0;
    // 2^20 blocks cover 2^20 rows per step; more rows loop in the kernel
    unsigned blocks = (unsigned)(n_rows < (1 << 20) ? n_rows : (1 << 20));
    quant_act_fp8_kernel<<<blocks, EW_THREADS, 0, stream>>>(x, x_stride, out, out_stride, n_rows,
                                                             n_cols, group);
    return (int)cudaGetLastError();
}
