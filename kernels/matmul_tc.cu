// matmul_tc.cu: the bf16 compute mode's prefill products on tensor cores for the weight formats
// cuBLAS has no kernel for (kern_matmul_tc): FP8_BLOCK, INT8_CHANNEL and INT4_GROUP, and BF16 so
// the same kernel can be measured beside cuBLAS on the same weights.
//
// y[t][n] = sum_k x[t][k] * W[n][k], x given as bf16 (kern_f32_to_bf16's packing of the bf16
// mode's activations, exact for them), W's stored values widened to bf16 in shared memory and
// multiplied on mma.sync.m16n8k16 (bf16 x bf16, f32 accumulation). The stored values of every
// supported format are bf16 values: e4m3 (4 significant bits, exponents 2^-9 .. 2^8), int8
// (-128 .. 127) and int4 (-8 .. 7) all are, so every product x * q is exact in f32 and only the
// summation order differs from the f32 path. The scales are applied the way DeepGEMM applies
// FP8 block scales: the products of one scale block (block_in columns for FP8_BLOCK, group for
// INT4_GROUP) are summed into a partial accumulator, which is then added to the total times that
// block's scale:  y = sum_b s_b * (sum_{k in b} x_k q_k)  (INT8: y = s_row * sum_k x_k q_k).
// That is the f32 path's sum_k x_k * (q_k * s_b) up to the f32 roundings, which is the
// contract test_ops checks (NMSE against the CPU reference).
//
// Tiles: a CTA computes 64 tokens x 128 weight rows, 8 warps as 2 (tokens) x 4 (rows), a warp
// 32 x 32 as 2 x 4 m16n8 tiles. Columns stream through shared memory 32 at a time, double
// buffered: each thread loads its next stage's x chunk (8 bf16) and two weight chunks (8
// columns of a row each, raw bits) into registers before the current stage's MMAs, and widens
// and stores them after, so the global loads overlap the tensor-core work with one barrier per
// stage. Rows of both tiles are 40 bf16 (80 bytes) apart: the 32-bit fragment loads of a warp
// (8 rows x 4 column pairs) then fall in 32 distinct banks, and 16-byte stores stay aligned and,
// with 8 rows per store phase, free of conflicts too.
//
// Edges: tokens past n_tokens and rows past n_out are never stored (they load as 0 bits, which
// INT4 widens to -8s under a scale read as 0, so their sums are 0 anyway); columns past
// n_in are 0 on both sides (the x copy's padding columns may hold anything, NaN included, so
// they are masked, not trusted); k16 steps at or past n_in are skipped, so the last scale block
// applied is the last one with a real column.
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"
#include "matmul_tc.cuh"

extern "C" bool kern_matmul_tc_supported(const kern_weight *w)
{
    return dq_weight_valid(w) && tc_weight_ok(w) && (w->n_out + TC_BN - 1) / TC_BN <= TC_MAX_GRID_Y;
}

template <int FMT>
static cudaError_t tc_launch(const uint16_t *xb, int64_t xb_stride, const kern_weight *w, float *y,
                             int64_t y_stride, int n_tokens, cudaStream_t stream)
{
    const size_t elem = FMT == KERN_W_BF16 ? 2 : 1;
    const bool vec = FMT != KERN_W_INT4_GROUP && w->n_in % 8 == 0 &&
                     (uintptr_t)w->data % (8 * elem) == 0;
    tc_params p = {};
    p.w0 = *w;
    p.n_tokens = n_tokens;
    p.xb = xb;
    p.xb_stride = xb_stride;
    p.y = y;
    p.y_stride = y_stride;
    dim3 grid((unsigned)((n_tokens + TC_BM - 1) / TC_BM), (unsigned)((w->n_out + TC_BN - 1) / TC_BN));
    if (vec)
        tc_kernel<FMT, true, TC_DENSE><<<grid, TC_THREADS, 0, stream>>>(p);
    else
        tc_kernel<FMT, false, TC_DENSE><<<grid, TC_THREADS, 0, stream>>>(p);
    return cudaGetLastError();
}

extern "C" int kern_matmul_tc(const uint16_t *xb, int64_t xb_stride, const kern_weight *w,
                              float *y, int64_t y_stride, int n_tokens, kern_stream stream)
{
    if (!xb || !y || n_tokens < 0 || !kern_matmul_tc_supported(w) || xb_stride % 8 != 0 ||
        xb_stride < (w->n_in + 7) / 8 * 8 || (uintptr_t)xb % 16 != 0 || y_stride < w->n_out)
        return (int)cudaErrorInvalidValue;
    if (n_tokens == 0 || w->n_out == 0 || w->n_in == 0) {
        if (n_tokens > 0 && w->n_out > 0) // an empty sum: y = 0
            return (int)cudaMemset2DAsync(y, (size_t)y_stride * sizeof(float), 0,
                                          (size_t)w->n_out * sizeof(float), (size_t)n_tokens, stream);
        return 0;
    }
    cudaError_t e = tc_device_require();
    if (e != cudaSuccess)
        return (int)e;
    switch (w->fmt) {
    case KERN_W_BF16: return (int)tc_launch<KERN_W_BF16>(xb, xb_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_FP8_BLOCK:
        return (int)tc_launch<KERN_W_FP8_BLOCK>(xb, xb_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_INT8_CHANNEL:
        return (int)tc_launch<KERN_W_INT8_CHANNEL>(xb, xb_stride, w, y, y_stride, n_tokens, stream);
    case KERN_W_INT4_GROUP:
        return (int)tc_launch<KERN_W_INT4_GROUP>(xb, xb_stride, w, y, y_stride, n_tokens, stream);
    default: return (int)cudaErrorInvalidValue;
    }
}
