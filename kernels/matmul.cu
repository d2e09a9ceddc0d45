// matmul.cu: y = x W^T for every kern_weight format, two variants picked by kern_matmul:
//   gemv_warp_per_row  n_tokens <= 16 (decode): streams W once, each warp owning R rows, the x
//                      rows staged in shared memory, one f32 accumulator per (row, token);
//   gemm_tiled         n_tokens > 16 (prefill): 64 x 64 output tiles, W dequantized into
//                      shared memory 16 columns at a time, 4 x 4 outputs per thread.
//
// Invariant: every weight element is dequantized exactly as engine/weights.c does it (value *
// scale as one f32 product), products and sums are f32, and every edge (n_out, n_in, n_tokens
// not multiples of any tile, unaligned bases and strides) is bounds-checked: columns past n_in
// enter the dot products as 0 * 0.
#include <cuda_runtime.h>
#include <stdint.h>

#include "dequant.cuh"
#include "kernels.h"
#include "launch.cuh"

// ---- weight granules ----------------------------------------------------------------------------
//
// A granule is the run of columns one thread loads and dequantizes at a time: one uint32 word
// (8 nibbles) for INT4_GROUP, 4 columns otherwise. Granules start at multiples of their width,
// so none crosses a GEMV slab or a GEMM k-tile (both multiples of 8 columns).

template <int FMT> struct granule {
    static constexpr int cols = FMT == KERN_W_INT4_GROUP ? 8 : 4;
};

// A granule's bits as loaded: F32 4 words; BF16/F16 2 words (low half = lower column); FP8 and
// INT8 1 word (byte e = column e); INT4 1 word.
struct granule_raw {
    uint32_t v[4];
};

// Loads the granule of row n starting at column k (k < n_in, k a multiple of the width). VEC:
// one aligned vector load (the launcher checked n_in % 4 == 0 and the base's alignment);
// otherwise one load per column, columns >= n_in read as 0. INT4 always loads its whole word
// (the nibbles past n_in are padding, zeroed by granule_dequant).
template <int FMT, bool VEC>
static __device__ __forceinline__ granule_raw granule_load(const kern_weight &w, int64_t n, int k)
{
    granule_raw r = {{0u, 0u, 0u, 0u}};
    const int n_in = (int)w.n_in;
    if constexpr (FMT == KERN_W_INT4_GROUP) {
        r.v[0] = __ldg((const unsigned int *)w.data + n * w.packed_cols + k / 8);
    } else if constexpr (FMT == KERN_W_F32) {
        const float *p = (const float *)w.data + n * w.n_in + k;
        if constexpr (VEC) {
            uint4 q = __ldg((const uint4 *)p);
            r.v[0] = q.x, r.v[1] = q.y, r.v[2] = q.z, r.v[3] = q.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k + e < n_in)
                    r.v[e] = __float_as_uint(__ldg(p + e));
        }
    } else if constexpr (FMT == KERN_W_BF16 || FMT == KERN_W_F16) {
        const unsigned short *p = (const unsigned short *)w.data + n * w.n_in + k;
        if constexpr (VEC) {
            uint2 q = __ldg((const uint2 *)p);
            r.v[0] = q.x, r.v[1] = q.y;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k + e < n_in)
                    r.v[e / 2] |= (uint32_t)__ldg(p + e) << (16 * (e % 2));
        }
    } else { // KERN_W_FP8_BLOCK, KERN_W_INT8_CHANNEL: one byte per column
        const unsigned char *p = (const unsigned char *)w.data + n * w.n_in + k;
        if constexpr (VEC) {
            r.v[0] = __ldg((const unsigned int *)p);
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k + e < n_in)
                    r.v[0] |= (uint32_t)__ldg(p + e) << (8 * e);
        }
    }
    return r;
}

// Dequantizes a granule loaded at column k into out. srow: the row's first scale index
// ((n / block_out) * scale_cols for FP8, n * scale_cols for INT4); scol: the scale column of
// column k, used when `uniform` (block_in or group a multiple of the width, so the granule has
// one scale); otherwise each column finds its scale by division. rscale: the row's scale for
// INT8 (row_scale, loaded once per row by the caller). Columns >= n_in come out 0.
template <int FMT>
static __device__ __forceinline__ void granule_dequant(const kern_weight &w, const granule_raw &r,
                                                       int k, int64_t srow, int scol, bool uniform,
                                                       float rscale,
                                                       float (&out)[granule<FMT>::cols])
{
    const int n_in = (int)w.n_in;
    if constexpr (FMT == KERN_W_F32) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            out[e] = __uint_as_float(r.v[e]);
    } else if constexpr (FMT == KERN_W_BF16) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            out[e] = dq_bf16((uint16_t)(r.v[e / 2] >> (16 * (e % 2))));
    } else if constexpr (FMT == KERN_W_F16) {
#pragma unroll
        for (int e = 0; e < 4; e++)
            out[e] = dq_f16((uint16_t)(r.v[e / 2] >> (16 * (e % 2))));
    } else if constexpr (FMT == KERN_W_FP8_BLOCK) {
        dq_e4m3x4(r.v[0], out);
        if (uniform) {
            float s = dq_load(w.scale, w.scale_dtype, srow + scol);
#pragma unroll
            for (int e = 0; e < 4; e++)
                out[e] = k + e < n_in ? out[e] * s : 0.0f;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                out[e] = k + e < n_in
                             ? out[e] * dq_load(w.scale, w.scale_dtype, srow + (k + e) / w.block_in)
                             : 0.0f;
        }
    } else if constexpr (FMT == KERN_W_INT8_CHANNEL) {
        dq_int8x4(r.v[0], out);
#pragma unroll
        for (int e = 0; e < 4; e++)
            out[e] = k + e < n_in ? out[e] * rscale : 0.0f;
    } else { // KERN_W_INT4_GROUP
        if (uniform) {
            float s = dq_load(w.scale, w.scale_dtype, srow + scol);
#pragma unroll
            for (int e = 0; e < 8; e++)
                out[e] = k + e < n_in ? dq_int4(r.v[0], e) * s : 0.0f;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                out[e] = k + e < n_in
                             ? dq_int4(r.v[0], e) *
                                   dq_load(w.scale, w.scale_dtype, srow + (k + e) / w.group)
                             : 0.0f;
        }
    }
}

// Columns that share one scale: block_in (FP8), group (INT4); 1 for the unscaled formats and
// INT8 (its scale is the row's, row_scale, so no scale column is tracked).
template <int FMT> static __device__ __forceinline__ int scale_span(const kern_weight &w)
{
    return FMT == KERN_W_FP8_BLOCK ? w.block_in : FMT == KERN_W_INT4_GROUP ? w.group : 1;
}

// First scale index of row n (see granule_dequant).
template <int FMT>
static __device__ __forceinline__ int64_t scale_row(const kern_weight &w, int64_t n)
{
    return FMT == KERN_W_FP8_BLOCK ? (int64_t)((int)n / w.block_out) * w.scale_cols
                                   : FMT == KERN_W_INT4_GROUP ? n * w.scale_cols : 0;
}

// The scale of row n for INT8 (every column of the row shares it); 1 for the other formats,
// whose scales granule_dequant finds from srow and scol.
template <int FMT>
static __device__ __forceinline__ float row_scale(const kern_weight &w, int64_t n)
{
    if constexpr (FMT == KERN_W_INT8_CHANNEL)
        return dq_load(w.scale, w.scale_dtype, n);
    else
        return 1.0f;
}

// ---- gemv_warp_per_row (n_tokens <= 16) ---------------------------------------------------------

#define GEMV_MAX_TOKENS 16
#define GEMV_WARPS 8 // block = 256 threads
// Staged x per block: the default dynamic shared-memory limit (no opt-in), which leaves room
// for 4 blocks (32 warps) per SM on sm_80/sm_90.
#define GEMV_SMEM_BYTES (48 * 1024)

// Copies x[t][k0 .. k0 + slab) for t < n_tokens into xs[t][0 .. slab), 0 past n_in, then
// synchronises the block.
static __device__ void gemv_stage_x(float *xs, const float *__restrict__ x, int64_t x_stride,
                                    int n_tokens, int n_in, int k0, int slab)
{
    const int width = n_in - k0 < slab ? n_in - k0 : slab;
    for (int i = threadIdx.x; i < n_tokens * slab; i += blockDim.x) {
        int t = i / slab, kk = i - t * slab;
        xs[i] = kk < width ? x[t * x_stride + k0 + kk] : 0.0f;
    }
    __syncthreads();
}

// Block = 8 warps; warp `warp` of row group rg owns rows (rg * 8 + warp) * R + r, r < R (rows
// past n_out are clamped to the last row for loading and never stored); blocks stride over the
// row groups. x is staged in slabs of `slab` columns ([n_tokens][slab] f32, a multiple of 8):
// when one slab holds all of x it is staged once per block, otherwise every row group restages
// each slab. Lane l handles granules l, l + 32, ... of a slab, U = 4 / R of them per step (so
// 4 weight loads in flight per lane), with a register accumulator per (row, token) reduced by
// warp shuffles at the end. For FP8/INT4 the scale column of the lane's granule is tracked
// incrementally (q, rem) = divmod(k, span) instead of dividing per granule (INT8 has one scale
// per row and tracks nothing). Launch bounds cap the registers at 128 so two blocks fit per SM
// (every instantiation compiles spill-free).
template <int FMT, bool VEC, int NT, int R>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, 2)
gemv_warp_per_row_kernel(const float *__restrict__ x, int64_t x_stride, kern_weight w,
                         float *__restrict__ y, int64_t y_stride, int n_tokens, int slab)
{
    constexpr int G = granule<FMT>::cols;
    constexpr int U = 4 / R;
    constexpr bool SCALED = FMT == KERN_W_FP8_BLOCK || FMT == KERN_W_INT4_GROUP;
    extern __shared__ float4 gemv_smem[];
    float *xs = (float *)gemv_smem; // [n_tokens][slab] f32, the x columns [k0, k0 + slab)
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int n_in = (int)w.n_in;
    const int64_t n_groups = (w.n_out + GEMV_WARPS * R - 1) / (GEMV_WARPS * R);
    const bool one_slab = slab >= n_in;
    const int span = scale_span<FMT>(w);
    const bool uniform = span % G == 0;
    const int step_q = 32 * G / span, step_r = 32 * G % span; // divmod of a lane's stride

    if (one_slab)
        gemv_stage_x(xs, x, x_stride, n_tokens, n_in, 0, slab);
    for (int64_t rg = blockIdx.x; rg < n_groups; rg += gridDim.x) {
        int64_t rows[R], srow[R];
        float rscale[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            int64_t n = (rg * GEMV_WARPS + warp) * R + r;
            rows[r] = n < w.n_out ? n : w.n_out - 1;
            srow[r] = scale_row<FMT>(w, rows[r]);
            rscale[r] = row_scale<FMT>(w, rows[r]);
        }
        float acc[R][NT];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int t = 0; t < NT; t++)
                acc[r][t] = 0.0f;

        for (int k0 = 0; k0 < n_in; k0 += slab) {
            if (!one_slab) {
                __syncthreads(); // every warp is done with the previous slab
                gemv_stage_x(xs, x, x_stride, n_tokens, n_in, k0, slab);
            }
            const int gend = ((n_in - k0 < slab ? n_in : k0 + slab) + G - 1) / G;
            int g = k0 / G + lane;
            int q = 0, rem = 0;
            if (SCALED && uniform) {
                q = g * G / span;
                rem = g * G % span;
            }
            for (; g < gend; g += 32 * U) {
                granule_raw raw[U][R];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    // a granule past the slab reloads the last one; its result is never used
                    int gu = g + 32 * u < gend ? g + 32 * u : gend - 1;
#pragma unroll
                    for (int r = 0; r < R; r++)
                        raw[u][r] = granule_load<FMT, VEC>(w, rows[r], gu * G);
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int gu = g + 32 * u;
                    if (gu >= gend)
                        break;
                    const int k = gu * G;
                    float wv[R][G];
#pragma unroll
                    for (int r = 0; r < R; r++)
                        granule_dequant<FMT>(w, raw[u][r], k, srow[r], q, uniform, rscale[r],
                                             wv[r]);
                    if (SCALED && uniform) {
                        q += step_q;
                        rem += step_r;
                        if (rem >= span) {
                            rem -= span;
                            q++;
                        }
                    }
                    // 16-byte aligned: slab and k - k0 are multiples of 4
                    const float *xk = xs + (k - k0);
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (t >= n_tokens)
                            break;
#pragma unroll
                        for (int c = 0; c < G; c += 4) {
                            float4 xv = *(const float4 *)(xk + t * slab + c);
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                acc[r][t] = fmaf(wv[r][c + 0], xv.x, acc[r][t]);
                                acc[r][t] = fmaf(wv[r][c + 1], xv.y, acc[r][t]);
                                acc[r][t] = fmaf(wv[r][c + 2], xv.z, acc[r][t]);
                                acc[r][t] = fmaf(wv[r][c + 3], xv.w, acc[r][t]);
                            }
                        }
                    }
                }
            }
        }

#pragma unroll
        for (int r = 0; r < R; r++) {
            const int64_t n = (rg * GEMV_WARPS + warp) * R + r;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= n_tokens)
                    break;
                float v = acc[r][t];
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    v += __shfl_xor_sync(0xffffffffu, v, o);
                if (lane == t && n < w.n_out) // spread the R * n_tokens stores over the lanes
                    y[t * y_stride + n] = v;
            }
        }
    }
}

// Slab width (columns of x staged at once): all of n_in rounded up to 8 when n_tokens rows of
// it fit GEMV_SMEM_BYTES, else the largest multiple of 256 (32 lanes x 8) that fits (>= 768
// for n_tokens <= 16).
static int gemv_slab(int n_in, int n_tokens)
{
    int fit = GEMV_SMEM_BYTES / (int)sizeof(float) / n_tokens;
    int whole = (n_in + 7) / 8 * 8;
    return whole <= fit ? whole : fit / 256 * 256;
}

template <int FMT, bool VEC, int NT, int R>
static cudaError_t gemv_launch(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                               int64_t y_stride, int n_tokens, cudaStream_t stream)
{
    const int slab = gemv_slab((int)w->n_in, n_tokens);
    const size_t smem = (size_t)n_tokens * (size_t)slab * sizeof(float);
    const int64_t n_groups = (w->n_out + GEMV_WARPS * R - 1) / (GEMV_WARPS * R);
    int dev = 0, n_sm = 0, per_sm = 0;
    static std::atomic<uint64_t> occupancy[LAUNCH_OCC_SLOTS]; // this instantiation's, launch.cuh
    cudaError_t e;
    if ((e = launch_device(&dev, &n_sm, nullptr)) != cudaSuccess ||
        (e = launch_occupancy(gemv_warp_per_row_kernel<FMT, VEC, NT, R>, GEMV_WARPS * 32, smem, dev,
                              occupancy, &per_sm)) != cudaSuccess)
        return e;
    // one wave of resident blocks; each strides over the row groups (x staged once per block)
    int64_t blocks = (int64_t)n_sm * (per_sm > 0 ? per_sm : 1);
    if (blocks > n_groups)
        blocks = n_groups;
    gemv_warp_per_row_kernel<FMT, VEC, NT, R><<<(unsigned)blocks, GEMV_WARPS * 32, smem, stream>>>(
        x, x_stride, *w, y, y_stride, n_tokens, slab);
    return cudaGetLastError();
}

// Token-count buckets: NT accumulators per row, R rows per warp. More rows per warp for more
// tokens, so each x value read from shared memory feeds R rows (shared-memory traffic per
// weight byte stays flat) while the accumulators stay <= 64 registers.
template <int FMT, bool VEC>
static cudaError_t gemv_dispatch(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                                 int64_t y_stride, int n_tokens, cudaStream_t stream)
{
    if (n_tokens <= 1)
        return gemv_launch<FMT, VEC, 1, 1>(x, x_stride, w, y, y_stride, n_tokens, stream);
    if (n_tokens <= 2)
        return gemv_launch<FMT, VEC, 2, 2>(x, x_stride, w, y, y_stride, n_tokens, stream);
    if (n_tokens <= 4)
        return gemv_launch<FMT, VEC, 4, 2>(x, x_stride, w, y, y_stride, n_tokens, stream);
    if (n_tokens <= 8)
        return gemv_launch<FMT, VEC, 8, 4>(x, x_stride, w, y, y_stride, n_tokens, stream);
    return gemv_launch<FMT, VEC, 16, 4>(x, x_stride, w, y, y_stride, n_tokens, stream);
}

// ---- gemm_tiled (n_tokens > 16) -----------------------------------------------------------------

#define GEMM_BM 64 // tokens per block tile
#define GEMM_BN 64 // output rows per block tile
#define GEMM_BK 16 // columns per shared-memory stage
#define GEMM_THREADS 256 // 16 x 16 threads, 4 x 4 outputs each
#define GEMM_MAX_GRID_Y 65535

// Block (blockIdx.x, blockIdx.y) computes tokens [64 bx, +64) x rows [64 by, +64): thread (tx,
// ty) = (tid % 16, tid / 16) owns tokens 64 bx + 4 ty + i and rows 64 by + 4 tx + j, i, j < 4.
// Per 16-column stage, thread tid loads x[64 bx + tid / 4][4 (tid % 4) .. +4) and one weight
// granule (row tid / (16 / G), columns G (tid % (16 / G)) .. +G), dequantized, into the
// transposed tiles; the next stage's loads are issued before the current stage's FMAs. Token
// tiles run along x so the blocks sharing a weight tile are scheduled together.
template <int FMT>
static __global__ void __launch_bounds__(GEMM_THREADS)
gemm_tiled_kernel(const float *__restrict__ x, int64_t x_stride, kern_weight w,
                  float *__restrict__ y, int64_t y_stride, int n_tokens, bool x_vec, bool w_vec)
{
    constexpr int G = granule<FMT>::cols;
    // transposed tiles, [k][token] and [k][row]; the +4 keeps float4 rows aligned and halves the
    // bank conflicts of the transposing stores
    __shared__ __align__(16) float xs[GEMM_BK][GEMM_BM + 4];
    __shared__ __align__(16) float ws[GEMM_BK][GEMM_BN + 4];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t t0 = (int64_t)blockIdx.x * GEMM_BM, n0 = (int64_t)blockIdx.y * GEMM_BN;
    const int n_in = (int)w.n_in;

    const int xl_t = tid / 4, xl_k = tid % 4 * 4;
    const int64_t xt = t0 + xl_t;
    const bool x_row_ok = xt < n_tokens;
    const float *xrow = x + (x_row_ok ? xt : 0) * x_stride;

    const int wl_n = tid / (GEMM_BK / G), wl_k = tid % (GEMM_BK / G) * G;
    const bool w_loader = tid < GEMM_BN * GEMM_BK / G; // INT4: 128 loaders of 8 columns
    const int64_t wn = n0 + wl_n;
    const bool w_row_ok = w_loader && wn < w.n_out;
    const int64_t srow = scale_row<FMT>(w, w_row_ok ? wn : 0);
    const float rscale = row_scale<FMT>(w, w_row_ok ? wn : 0);
    const int span = scale_span<FMT>(w);
    const bool uniform = span % G == 0;

    float xr[4], wr[G]; // the next stage's x and weight values
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;

    auto load_stage = [&](int kt0) {
        int k = kt0 + xl_k;
        if (x_row_ok && k < n_in && x_vec) {
            float4 v = __ldg((const float4 *)(xrow + k));
            xr[0] = v.x, xr[1] = v.y, xr[2] = v.z, xr[3] = v.w;
        } else {
#pragma unroll
            for (int e = 0; e < 4; e++)
                xr[e] = x_row_ok && k + e < n_in ? __ldg(xrow + k + e) : 0.0f;
        }
        k = kt0 + wl_k;
        if (w_row_ok && k < n_in) {
            granule_raw raw = w_vec ? granule_load<FMT, true>(w, wn, k)
                                    : granule_load<FMT, false>(w, wn, k);
            granule_dequant<FMT>(w, raw, k, srow, uniform ? k / span : 0, uniform, rscale, wr);
        } else {
#pragma unroll
            for (int e = 0; e < G; e++)
                wr[e] = 0.0f;
        }
    };

    const int n_stages = (n_in + GEMM_BK - 1) / GEMM_BK;
    if (n_stages > 0)
        load_stage(0);
    for (int s = 0; s < n_stages; s++) {
        __syncthreads(); // the previous stage's FMAs are done with the tiles
#pragma unroll
        for (int e = 0; e < 4; e++)
            xs[xl_k + e][xl_t] = xr[e];
        if (w_loader)
#pragma unroll
            for (int e = 0; e < G; e++)
                ws[wl_k + e][wl_n] = wr[e];
        __syncthreads();
        if (s + 1 < n_stages)
            load_stage((s + 1) * GEMM_BK);
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk++) {
            float4 a = *(const float4 *)&xs[kk][ty * 4];
            float4 b = *(const float4 *)&ws[kk][tx * 4];
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t t = t0 + ty * 4 + i;
        if (t >= n_tokens)
            break;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t n = n0 + tx * 4 + j;
            if (n < w.n_out)
                y[t * y_stride + n] = acc[i][j];
        }
    }
}

template <int FMT>
static cudaError_t gemm_launch(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                               int64_t y_stride, int n_tokens, bool w_vec, cudaStream_t stream)
{
    const int64_t row_tiles = (w->n_out + GEMM_BN - 1) / GEMM_BN;
    if (row_tiles > GEMM_MAX_GRID_Y)
        return cudaErrorInvalidValue; // n_out > 4194240
    const bool x_vec = w->n_in % 4 == 0 && x_stride % 4 == 0 && (uintptr_t)x % 16 == 0;
    dim3 grid((unsigned)((n_tokens + GEMM_BM - 1) / GEMM_BM), (unsigned)row_tiles);
    gemm_tiled_kernel<FMT><<<grid, GEMM_THREADS, 0, stream>>>(x, x_stride, *w, y, y_stride,
                                                              n_tokens, x_vec, w_vec);
    return cudaGetLastError();
}

// ---- dispatch -----------------------------------------------------------------------------------

// Whether a 4-column granule of every row is one aligned vector load: rows start at multiples
// of 4 columns and the base is aligned to the granule's bytes (FP8 and INT8: 4 values in one
// 32-bit word). (INT4 loads whole words anyway.)
static bool weight_vec_ok(const kern_weight *w)
{
    size_t elem = w->fmt == KERN_W_F32 ? 4
                  : w->fmt == KERN_W_FP8_BLOCK || w->fmt == KERN_W_INT8_CHANNEL ? 1 : 2;
    return w->fmt != KERN_W_INT4_GROUP && w->n_in % 4 == 0 && (uintptr_t)w->data % (4 * elem) == 0;
}

template <int FMT>
static cudaError_t matmul_fmt(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                              int64_t y_stride, int n_tokens, cudaStream_t stream)
{
    const bool w_vec = weight_vec_ok(w);
    if (n_tokens > GEMV_MAX_TOKENS)
        return gemm_launch<FMT>(x, x_stride, w, y, y_stride, n_tokens, w_vec, stream);
    if constexpr (FMT != KERN_W_INT4_GROUP)
        if (w_vec)
            return gemv_dispatch<FMT, true>(x, x_stride, w, y, y_stride, n_tokens, stream);
    return gemv_dispatch<FMT, false>(x, x_stride, w, y, y_stride, n_tokens, stream);
}

extern "C" int kern_matmul(const float *x, int64_t x_stride, const kern_weight *w, float *y,
                           int64_t y_stride, int n_tokens, kern_stream stream)
{
    if (!x || !y || !dq_weight_valid(w) || n_tokens < 0)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || w->n_out == 0)
        return 0;
    switch (w->fmt) {
    case KERN_W_F32:
        return (int)matmul_fmt<KERN_W_F32>(x, x_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_BF16:
        return (int)matmul_fmt<KERN_W_BF16>(x, x_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_F16:
        return (int)matmul_fmt<KERN_W_F16>(x, x_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_FP8_BLOCK:
        return (int)matmul_fmt<KERN_W_FP8_BLOCK>(x, x_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_INT4_GROUP:
        return (int)matmul_fmt<KERN_W_INT4_GROUP>(x, x_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_INT8_CHANNEL:
        return (int)matmul_fmt<KERN_W_INT8_CHANNEL>(x, x_stride, w, y, y_stride, n_tokens, stream);
    }
    return (int)cudaErrorInvalidValue;
}
