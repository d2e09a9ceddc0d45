// matmul_tc.cuh: the tensor-core product kernel shared by matmul_tc.cu (kern_matmul_tc, the
// bf16 mode's dense prefill products) and moe.cu (the gate/up half of the routed experts in the
// bf16 mode), and its helpers. matmul_tc.cu's header describes the numerics and the tiling.
#ifndef PP_MATMUL_TC_CUH
#define PP_MATMUL_TC_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "dequant.cuh"
#include "kernels.h"
#include "mma.cuh"

#define TC_BM 64      // tokens per CTA tile
#define TC_BN 128     // weight rows per CTA tile
#define TC_BK 32      // columns per stage
#define TC_WARPS_M 2  // warps along tokens
#define TC_WARPS_N 4  // warps along rows
#define TC_THREADS (TC_WARPS_M * TC_WARPS_N * 32)
#define TC_LDS 40     // shared-memory row stride, bf16 elements
#define TC_MAX_GRID_Y 65535
// Columns per scale block must be whole k16 steps, so one MMA never mixes two scales.
#define TC_SCALE_STEP 16

static_assert(TC_BM == TC_WARPS_M * 32 && TC_BN == TC_WARPS_N * 32, "a warp tile is 32 x 32");
static_assert(TC_BM * TC_BK / 8 == TC_THREADS, "one x chunk per thread per stage");
static_assert(TC_BN * TC_BK / 8 == 2 * TC_THREADS, "two weight chunks per thread per stage");

// The bf16 bits of an f32 that is a bf16 value (the widened e4m3 / int8 / int4 values).
static __device__ __forceinline__ uint32_t tc_bf16_bits(float f) { return __float_as_uint(f) >> 16; }

// Packs columns 2i, 2i + 1 of out (low half = lower column), zeroing columns >= valid.
static __device__ __forceinline__ uint32_t tc_pack(const float (&v)[8], int i, int valid)
{
    uint32_t lo = 2 * i < valid ? tc_bf16_bits(v[2 * i]) : 0u;
    uint32_t hi = 2 * i + 1 < valid ? tc_bf16_bits(v[2 * i + 1]) : 0u;
    return lo | hi << 16;
}

// Zeroes bf16 columns >= valid of an 8-column chunk (valid in 0 .. 8).
static __device__ __forceinline__ uint4 tc_mask(uint4 c, int valid)
{
    uint32_t v[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (2 * i >= valid)
            v[i] = 0u;
        else if (2 * i + 1 >= valid)
            v[i] &= 0xffffu;
    }
    return make_uint4(v[0], v[1], v[2], v[3]);
}

// One weight chunk's stored bits: 8 columns of one row, as loaded (BF16 4 words, FP8/INT8 2
// words with byte e = column e, INT4 1 word with nibble e = column e). Bits of columns >= n_in
// are whatever was loaded (or 0); tc_widen masks them.
struct tc_raw {
    uint32_t v[4];
};

// Loads the chunk of row n at column k (k a multiple of 8, k < n_in; n < n_out). VEC: one
// aligned vector load (n_in % 8 == 0 and the base aligned, checked by the launcher); otherwise
// one load per column inside n_in. INT4 loads its packed word (chunks are word-aligned).
template <int FMT, bool VEC>
static __device__ __forceinline__ tc_raw tc_load_w(const kern_weight &w, int64_t n, int k)
{
    tc_raw r = {{0u, 0u, 0u, 0u}};
    const int n_in = (int)w.n_in;
    if constexpr (FMT == KERN_W_INT4_GROUP) {
        r.v[0] = __ldg((const unsigned int *)w.data + n * w.packed_cols + k / 8);
    } else if constexpr (FMT == KERN_W_BF16) {
        const unsigned short *p = (const unsigned short *)w.data + n * w.n_in + k;
        if constexpr (VEC) {
            uint4 q = __ldg((const uint4 *)p);
            r.v[0] = q.x, r.v[1] = q.y, r.v[2] = q.z, r.v[3] = q.w;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (k + e < n_in)
                    r.v[e / 2] |= (uint32_t)__ldg(p + e) << (16 * (e % 2));
        }
    } else { // FP8_BLOCK, INT8_CHANNEL: one byte per column
        const unsigned char *p = (const unsigned char *)w.data + n * w.n_in + k;
        if constexpr (VEC) {
            uint2 q = __ldg((const uint2 *)p);
            r.v[0] = q.x, r.v[1] = q.y;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                if (k + e < n_in)
                    r.v[e / 4] |= (uint32_t)__ldg(p + e) << (8 * (e % 4));
        }
    }
    return r;
}

// The chunk's stored values as 8 bf16 (unscaled), columns >= valid zeroed.
template <int FMT> static __device__ __forceinline__ uint4 tc_widen(const tc_raw &r, int valid)
{
    if constexpr (FMT == KERN_W_BF16) {
        return tc_mask(make_uint4(r.v[0], r.v[1], r.v[2], r.v[3]), valid);
    } else {
        float v[8];
        if constexpr (FMT == KERN_W_FP8_BLOCK) {
            float a[4], b[4];
            dq_e4m3x4(r.v[0], a);
            dq_e4m3x4(r.v[1], b);
#pragma unroll
            for (int e = 0; e < 4; e++)
                v[e] = a[e], v[e + 4] = b[e];
        } else if constexpr (FMT == KERN_W_INT8_CHANNEL) {
            float a[4], b[4];
            dq_int8x4(r.v[0], a);
            dq_int8x4(r.v[1], b);
#pragma unroll
            for (int e = 0; e < 4; e++)
                v[e] = a[e], v[e + 4] = b[e];
        } else { // INT4_GROUP: nibble u as the float 2^23 + u, minus 2^23 + 8, is u - 8 exactly
#pragma unroll
            for (int e = 0; e < 8; e++)
                v[e] = __uint_as_float(0x4b000000u | ((r.v[0] >> (4 * e)) & 0xfu)) - 8388616.0f;
        }
        return make_uint4(tc_pack(v, 0, valid), tc_pack(v, 1, valid), tc_pack(v, 2, valid),
                          tc_pack(v, 3, valid));
    }
}

// The fields of a weight its scales are found by (a warp keeps only these of the weight it
// multiplies: the GATED mode's warps pick gate's or up's per warp, in registers).
struct tc_scales {
    const void *scale;
    kern_dtype dtype;
    int block_out;
    int64_t cols, n_out;
};

static __device__ __forceinline__ tc_scales tc_scales_of(const kern_weight &w)
{
    return tc_scales{w.scale, w.scale_dtype, w.block_out, w.scale_cols, w.n_out};
}

// The scale of weight row n in scale block blk (FP8_BLOCK: block (n / block_out, blk); INT4:
// group blk of row n); 0 for rows past n_out (their sums are 0 and never stored).
template <int FMT>
static __device__ __forceinline__ float tc_block_scale(const tc_scales &w, int64_t n, int blk)
{
    if (n >= w.n_out)
        return 0.0f;
    const int64_t i = FMT == KERN_W_FP8_BLOCK ? (int64_t)((int)n / w.block_out) * w.cols + blk
                                              : n * w.cols + blk;
    return dq_load(w.scale, w.dtype, i);
}

// What one launch of tc_kernel computes (MODE):
//   TC_DENSE  y[t][n] (rows y_stride apart) for t < n_tokens, n < w0.n_out, over xb (bf16 rows
//             xb_stride apart);
//   TC_GATED  (moe.cu's experts, gate/up) for the pairs routed to expert active[blockIdx.y]
//             (positions offset[e] .. offset[e + 1] of order, 64 per blockIdx.z),
//             h[pair][n] = silu(gate_e x) * up_e x for n < d_ff, x the f32 row of the pair's
//             token (pair / n_used), rounded to bf16 when h_round;
//   TC_DOWN   (moe.cu's experts, down) for the same pairs, y[pair][n] = down_e h[pair] for
//             n < d_model.
// The grouped modes read f32 input rows and round them to the nearest bf16 as they stage them
// (exact for the bf16 mode's x and, with h_round, its h: the only inputs they are used for).
enum { TC_DENSE, TC_GATED, TC_DOWN };

struct tc_params {
    kern_weight w0, w1;
    int n_tokens; // DENSE: rows of xb and y
    const uint16_t *xb;
    int64_t xb_stride;
    float *y;
    int64_t y_stride;
    // TC_GATED, TC_DOWN
    const float *x; // GATED: [n_tokens][n_in] f32 token rows; DOWN: [n_pairs][n_in] h rows
    bool x_vec;     // x 16-byte aligned and n_in % 8 == 0: 2 float4 loads per chunk
    int n_used;
    const kern_weight *gate, *up, *down; // device [n_expert]
    const int *order, *offset, *active, *n_active;
    float *out;   // GATED: h [n_pairs][n_out]; DOWN: y [n_pairs][n_out]
    bool h_round; // GATED: round h to the nearest bf16
};

// Grid DENSE (ceil(n_tokens / 64), ceil(n_out / 128)); GATED (ceil(d_ff / 64), expert slots,
// ceil(n_tokens / 64)); DOWN (ceil(d_model / 128), expert slots, ceil(n_tokens / 64)). Block
// TC_THREADS. Thread tid loads the x chunk of tile row l_row = 8 (tid / 32) + tid % 8 (columns
// l_col = 8 (tid / 8 % 4) ..) and two weight chunks of the same columns: rows l_row and l_row +
// 64 of the tile (GATED: gate row and up row l_row). Warp (wm, wn) = (warp % 2, warp / 2) owns
// tile rows 32 wm .. + 32 and B rows 32 wn .. + 32 (GATED: wn 0-1 the gate rows 0 .. 63, wn 2-3
// the up rows 0 .. 63 of the CTA's 64 output rows).
template <int FMT, bool VEC, int MODE>
static __global__ void __launch_bounds__(TC_THREADS, 2) tc_kernel(tc_params p)
{
    constexpr bool BLOCKED = FMT == KERN_W_FP8_BLOCK || FMT == KERN_W_INT4_GROUP;
    constexpr bool GATED = MODE == TC_GATED, GROUPED = MODE != TC_DENSE;
    constexpr int BN = GATED ? TC_BN / 2 : TC_BN; // output rows per CTA
    constexpr size_t XS_BYTES = 2 * TC_BM * TC_LDS * sizeof(uint16_t);
    constexpr size_t WS_BYTES = 2 * TC_BN * TC_LDS * sizeof(uint16_t);
    // one buffer: the stage tiles, and after the last stage GATED's gate sums
    __shared__ __align__(16) unsigned char smem[XS_BYTES + WS_BYTES];
    uint16_t(*xs)[TC_BM][TC_LDS] = reinterpret_cast<uint16_t(*)[TC_BM][TC_LDS]>(smem);
    uint16_t(*ws)[TC_BN][TC_LDS] = reinterpret_cast<uint16_t(*)[TC_BN][TC_LDS]>(smem + XS_BYTES);

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = lane / 4, q = lane % 4;
    const int wm = warp % TC_WARPS_M, wn = warp / TC_WARPS_M;
    const int64_t n0 = (int64_t)(GROUPED ? blockIdx.x : blockIdx.y) * BN;

    // the tile's rows of x (DENSE: tokens; GROUPED: pairs of one expert)
    int64_t t0 = 0;  // DENSE: first token
    int beg = 0, n_tile = 0; // GROUPED: first position in order, pairs in the tile
    kern_weight w0, w1;
    if constexpr (GROUPED) {
        if ((int)blockIdx.y >= *p.n_active)
            return;
        const int e = p.active[blockIdx.y];
        beg = p.offset[e] + (int)blockIdx.z * TC_BM;
        const int end = p.offset[e + 1];
        if (beg >= end)
            return;
        n_tile = min(end - beg, TC_BM);
        w0 = GATED ? p.gate[e] : p.down[e];
        w1 = GATED ? p.up[e] : w0;
    } else {
        t0 = (int64_t)blockIdx.x * TC_BM;
        w0 = p.w0;
        w1 = p.w0;
    }
    const int n_in = (int)w0.n_in;
    const int64_t n_out = w0.n_out;
    const int span = FMT == KERN_W_FP8_BLOCK ? w0.block_in : FMT == KERN_W_INT4_GROUP ? w0.group : 1;

    // loader coordinates: a warp's 32 lanes take 8 rows x 4 chunks with lanes 0-7 on 8 rows, so
    // the 8 lanes of each 16-byte store phase hit 8 different rows (all 32 banks: 80-byte rows)
    const int l_row = tid / 32 * 8 + tid % 8, l_col = tid / 8 % 4 * 8;
    bool x_ok;
    const uint16_t *xrow = NULL;
    const float *xfrow = NULL;
    if constexpr (GROUPED) {
        x_ok = l_row < n_tile;
        const int pair = x_ok ? p.order[beg + l_row] : 0;
        xfrow = p.x + (int64_t)(GATED ? pair / p.n_used : pair) * n_in;
    } else {
        x_ok = t0 + l_row < p.n_tokens;
        xrow = p.xb + (x_ok ? t0 + l_row : 0) * p.xb_stride;
    }
    const int64_t wr0n = n0 + l_row, wr1n = GATED ? n0 + l_row : n0 + l_row + TC_BM;
    const bool w0_ok = wr0n < n_out, w1_ok = wr1n < n_out;
    const kern_weight &wb1 = GATED ? w1 : w0; // the weight of the second chunk

    uint4 xr;           // DENSE: next stage's x chunk (bf16)
    float xf[8];        // GROUPED: next stage's x chunk (f32)
    tc_raw wr0, wr1;    // next stage's weight chunks (raw)
    auto load_stage = [&](int k0) {
        const int k = k0 + l_col;
        if constexpr (GROUPED) {
#pragma unroll
            for (int e = 0; e < 8; e++)
                xf[e] = 0.0f;
            if (x_ok && k < n_in) {
                if (p.x_vec) {
                    const float4 a = __ldg((const float4 *)(xfrow + k));
                    const float4 b = __ldg((const float4 *)(xfrow + k) + 1);
                    xf[0] = a.x, xf[1] = a.y, xf[2] = a.z, xf[3] = a.w;
                    xf[4] = b.x, xf[5] = b.y, xf[6] = b.z, xf[7] = b.w;
                } else {
#pragma unroll
                    for (int e = 0; e < 8; e++)
                        if (k + e < n_in)
                            xf[e] = __ldg(xfrow + k + e);
                }
            }
        } else {
            xr = make_uint4(0u, 0u, 0u, 0u);
            if (x_ok && k < n_in)
                xr = __ldg((const uint4 *)(xrow + k)); // inside the row: xb_stride >= n_in rounded to 8
        }
        wr0 = wr1 = tc_raw{{0u, 0u, 0u, 0u}};
        if (k < n_in) {
            if (w0_ok)
                wr0 = tc_load_w<FMT, VEC>(w0, wr0n, k);
            if (w1_ok)
                wr1 = tc_load_w<FMT, VEC>(wb1, wr1n, k);
        }
    };
    auto store_stage = [&](int buf, int k0) {
        const int valid = min(max(n_in - (k0 + l_col), 0), 8);
        if constexpr (GROUPED) {
            uint32_t v[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                v[i] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(xf[2 * i])) |
                       (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(xf[2 * i + 1])) << 16;
            *(uint4 *)&xs[buf][l_row][l_col] = make_uint4(v[0], v[1], v[2], v[3]); // 0 past n_in
        } else {
            *(uint4 *)&xs[buf][l_row][l_col] = tc_mask(xr, valid);
        }
        *(uint4 *)&ws[buf][l_row][l_col] = tc_widen<FMT>(wr0, valid);
        *(uint4 *)&ws[buf][l_row + TC_BM][l_col] = tc_widen<FMT>(wr1, valid);
    };

    // this warp's weight and first output row (GATED: warps 0-1 gate, 2-3 up, same rows)
    const tc_scales ww = tc_scales_of(GATED && wn >= 2 ? w1 : w0);
    const int64_t wrow0 = n0 + (GATED ? wn % 2 : wn) * 32;

    float acc[2][4][4], part[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][j][e] = part[i][j][e] = 0.0f;

    // adds part * (scale of each lane column's row in block blk) to acc and clears part
    auto flush = [&](int blk) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t n = wrow0 + j * 8 + 2 * q;
            const float s0 = tc_block_scale<FMT>(ww, n, blk), s1 = tc_block_scale<FMT>(ww, n + 1, blk);
#pragma unroll
            for (int i = 0; i < 2; i++) {
                acc[i][j][0] = fmaf(part[i][j][0], s0, acc[i][j][0]);
                acc[i][j][1] = fmaf(part[i][j][1], s1, acc[i][j][1]);
                acc[i][j][2] = fmaf(part[i][j][2], s0, acc[i][j][2]);
                acc[i][j][3] = fmaf(part[i][j][3], s1, acc[i][j][3]);
#pragma unroll
                for (int e = 0; e < 4; e++)
                    part[i][j][e] = 0.0f;
            }
        }
    };

    const int n_stages = (n_in + TC_BK - 1) / TC_BK;
    int blk = 0; // scale block of the steps summed in part
    load_stage(0);
    for (int s = 0; s < n_stages; s++) {
        const int buf = s & 1, k0 = s * TC_BK;
        store_stage(buf, k0);
        __syncthreads(); // the stage is in shared memory; buf's previous reads ended a stage ago
        if (s + 1 < n_stages)
            load_stage(k0 + TC_BK);
#pragma unroll
        for (int ks = 0; ks < TC_BK; ks += 16) {
            if (k0 + ks >= n_in)
                break; // all columns past n_in: no products, no scale block past the last
            if constexpr (BLOCKED) {
                const int b = (k0 + ks) / span;
                if (b != blk) {
                    flush(blk);
                    blk = b;
                }
            }
            uint32_t a[2][4], bq[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int r = wm * 32 + i * 16 + g;
                a[i][0] = *(const uint32_t *)&xs[buf][r][ks + 2 * q];
                a[i][1] = *(const uint32_t *)&xs[buf][r + 8][ks + 2 * q];
                a[i][2] = *(const uint32_t *)&xs[buf][r][ks + 2 * q + 8];
                a[i][3] = *(const uint32_t *)&xs[buf][r + 8][ks + 2 * q + 8];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int r = wn * 32 + j * 8 + g;
                bq[j][0] = *(const uint32_t *)&ws[buf][r][ks + 2 * q];
                bq[j][1] = *(const uint32_t *)&ws[buf][r][ks + 2 * q + 8];
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma_bf16_16816(BLOCKED ? part[i][j] : acc[i][j], a[i], bq[j][0], bq[j][1]);
        }
    }
    if constexpr (BLOCKED)
        flush(blk);
    if constexpr (FMT == KERN_W_INT8_CHANNEL) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t n = wrow0 + j * 8 + 2 * q;
            const float s0 = n < n_out ? dq_load(ww.scale, ww.dtype, n) : 0.0f;
            const float s1 = n + 1 < n_out ? dq_load(ww.scale, ww.dtype, n + 1) : 0.0f;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                acc[i][j][0] *= s0;
                acc[i][j][1] *= s1;
                acc[i][j][2] *= s0;
                acc[i][j][3] *= s1;
            }
        }
    }

    if constexpr (GATED) {
        // the gate warps hand their sums to the up warps through shared memory (the stage
        // buffers, free after the barrier), which write h = silu(g) * u as cpu_swiglu does
        constexpr int GS = TC_BM + 1;
        static_assert(TC_BM * GS * sizeof(float) <= XS_BYTES + WS_BYTES, "gate tile fits");
        float *gs = (float *)smem; // [64 rows][GS] indexed [row][pair]
        __syncthreads();
        if (wn < 2)
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        gs[(wn * 32 + j * 8 + 2 * q + (e & 1)) * GS + wm * 32 + i * 16 + g + 8 * (e >> 1)] =
                            acc[i][j][e];
        __syncthreads();
        if (wn >= 2)
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int pl = wm * 32 + i * 16 + g + 8 * (e >> 1);
                    if (pl >= n_tile)
                        continue;
                    const int pair = p.order[beg + pl];
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        const int rl = (wn - 2) * 32 + j * 8 + 2 * q + (e & 1);
                        const int64_t n = n0 + rl;
                        if (n < n_out) {
                            const float gv = gs[rl * GS + pl], u = acc[i][j][e];
                            float hv = gv / (1.0f + expf(-gv)) * u;
                            if (p.h_round)
                                hv = __bfloat162float(__float2bfloat16_rn(hv));
                            p.out[(int64_t)pair * n_out + n] = hv;
                        }
                    }
                }
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t n = wrow0 + j * 8 + 2 * q;
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = wm * 32 + i * 16 + g + 8 * h; // tile row
                    float *yr;
                    if constexpr (GROUPED) { // DOWN: y[pair]
                        if (r >= n_tile)
                            continue;
                        yr = p.out + (int64_t)p.order[beg + r] * n_out;
                    } else {
                        if (t0 + r >= p.n_tokens)
                            continue;
                        yr = p.y + (t0 + r) * p.y_stride;
                    }
                    if (n < n_out)
                        yr[n] = acc[i][j][2 * h];
                    if (n + 1 < n_out)
                        yr[n + 1] = acc[i][j][2 * h + 1];
                }
        }
    }
}

// Whether w's format and scale layout fit tc_kernel: BF16, INT8_CHANNEL, and FP8_BLOCK /
// INT4_GROUP whose scale blocks are whole k16 steps.
static inline bool tc_weight_ok(const kern_weight *w)
{
    switch (w->fmt) {
    case KERN_W_BF16:
    case KERN_W_INT8_CHANNEL: return true;
    case KERN_W_FP8_BLOCK: return w->block_in % TC_SCALE_STEP == 0;
    case KERN_W_INT4_GROUP: return w->group % TC_SCALE_STEP == 0;
    default: return false;
    }
}

#endif // PP_MATMUL_TC_CUH
