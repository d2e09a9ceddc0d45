// attention_tc.cu: the bf16 compute mode's prefill attention on tensor cores
// (kern_attention_tc): causal GQA attention over a paged bf16 KV cache, flash-attention style,
// with both products on mma.sync.m16n8k16 (bf16 inputs, f32 accumulation).
//
// Numerics. q (rounded to the nearest bf16: exact for the bf16 mode's q, which RoPE's rounded
// output is) and the cached k / v are bf16 values, so every q.k and p.v product is exact in f32
// and the scores are the f32 path's up to summation order. The probabilities p = exp(s - m)
// (f32, m the running row maximum) are rounded to bf16 before they multiply V, as
// FlashAttention-2 and Hugging Face's SDPA bf16 path do; the row sum l adds those rounded values,
// so the output sum_j p_j v_j / sum_j p_j stays a convex combination of the value rows. The
// result therefore differs from kern_attention's by the bf16 rounding of p (relative error up
// to 2^-8 per probability, about 1.6e-3 rms), which test_ops bounds (BOUND_ATTN_BF16); the bf16
// mode's end-to-end checks cover the rest.
//
// Structure. A CTA serves 64 query rows of one sequence and one KV head (a row being a (token,
// head of the GQA group) pair ordered token-major, as in attention.cu, so every K/V tile serves
// all heads of the group); 4 warps own 16 rows each. Keys stream through shared memory 64 at a
// time: K as [key][d_qk], V transposed as [d_v][key], so both MMAs read their B fragments as
// 32-bit words; rows are padded by 8 bf16 so the fragment loads of a warp hit 32 distinct banks.
// Per tile a warp computes S = Q K^T (16 x 64, f32 in registers), masks (causal, sequence end)
// and scales it, updates the online softmax (running max m and sum l per row, the accumulator
// rescaled by exp(m_old - m_new)), and adds P V with P taken straight from the S registers (the
// m16n8 accumulator layout of two adjacent key tiles is the m16k16 A layout). A warp whose rows
// all end before a tile skips its MMAs (the causal upper triangle). No key splits: the launcher
// serves prefill-sized batches; decode steps stay on kern_attention's split kernel.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "mma.cuh"

#define TA_WARPS 4
#define TA_THREADS (TA_WARPS * 32)
#define TA_ROWS (TA_WARPS * 16) // query rows per CTA
#define TA_KEYS 64              // keys per tile
#define TA_PAD 8                // bf16 elements of padding per shared-memory row
#define TA_MAX_GRID_X INT_MAX

typedef struct ta_params {
    int group, n_row_tiles;
    int block_size, max_blocks;
    const int32_t *seq_start, *seq_pos0, *block_table;
    float scale;
    const float *q;
    int64_t q_stride;
    const uint16_t *k; // bf16 cache rows, k_stride elements apart
    int64_t k_stride;
    const uint16_t *v;
    int64_t v_stride;
    float *out;
    int64_t out_stride;
} ta_params;

static __device__ __forceinline__ uint16_t ta_bf16(float f)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

static __device__ __forceinline__ float ta_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

static __device__ __forceinline__ uint32_t ta_pack(uint16_t lo, uint16_t hi)
{
    return (uint32_t)lo | (uint32_t)hi << 16;
}

static __host__ __device__ size_t ta_smem_bytes(int d_qk, int d_v)
{
    return sizeof(uint16_t) * (2 * (size_t)TA_ROWS * (d_qk + TA_PAD) + (size_t)d_v * (TA_KEYS + TA_PAD));
}

// Grid (n_seq * n_row_tiles, n_head_kv), block TA_THREADS, dynamic shared memory
// ta_smem_bytes(DQK, DV). Warp w owns the CTA's rows 16 w .. 16 w + 15; lane (g, q) holds rows
// 16 w + g and 16 w + g + 8 of every accumulator (S columns and O columns 8 j + 2 q, + 1).
template <int DQK, int DV>
static __global__ void __launch_bounds__(TA_THREADS) attention_tc_kernel(ta_params p)
{
    static_assert(DQK % 16 == 0 && DV % 16 == 0, "head dims are whole k16 steps");
    constexpr int QS = DQK + TA_PAD, VS = TA_KEYS + TA_PAD;
    extern __shared__ uint4 ta_smem[];
    uint16_t *qs = (uint16_t *)ta_smem;   // [TA_ROWS][QS]
    uint16_t *ks = qs + TA_ROWS * QS;     // [TA_KEYS][QS]
    uint16_t *vt = ks + TA_KEYS * QS;     // [DV][VS]
    __shared__ int64_t crow[TA_KEYS];     // cache row of each key of the tile, -1 past the end

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
    const int kvh = blockIdx.y;
    // row tiles run in reverse within a sequence: the last tiles see the most keys, so the
    // longest CTAs start first and the short ones fill in behind them
    const int seq = blockIdx.x / p.n_row_tiles;
    const int row0 = (p.n_row_tiles - 1 - (int)(blockIdx.x - seq * p.n_row_tiles)) * TA_ROWS;
    const int tok0 = __ldg(p.seq_start + seq);
    const int n_rows = (__ldg(p.seq_start + seq + 1) - tok0) * p.group;
    if (row0 >= n_rows)
        return; // the whole CTA, before any barrier: it owns no rows
    const int pos0 = __ldg(p.seq_pos0 + seq);
    const int32_t *bt = p.block_table + (int64_t)seq * p.max_blocks;

    // Q tile, rounded to bf16; rows past n_rows are 0 (and fully masked below)
    for (int e = tid; e < TA_ROWS * DQK; e += TA_THREADS) {
        const int i = e / DQK, c = e - i * DQK, r = row0 + i;
        float x = 0.0f;
        if (r < n_rows) {
            const int t = tok0 + r / p.group, h = kvh * p.group + r % p.group;
            x = __ldg(p.q + (int64_t)t * p.q_stride + (int64_t)h * DQK + c);
        }
        qs[i * QS + c] = ta_bf16(x);
    }

    const int rA = row0 + warp * 16 + g, rB = rA + 8;
    const int limA = rA < n_rows ? pos0 + rA / p.group : -1; // last key the row sees
    const int limB = rB < n_rows ? pos0 + rB / p.group : -1;
    int warp_lim = max(limA, limB);
#pragma unroll
    for (int sh = 16; sh > 0; sh >>= 1)
        warp_lim = max(warp_lim, __shfl_xor_sync(0xffffffffu, warp_lim, sh));
    const int t_last = (min(row0 + TA_ROWS, n_rows) - 1) / p.group;
    const int key1 = pos0 + t_last + 1; // keys the CTA's last row sees

    float o[DV / 8][4];
#pragma unroll
    for (int n = 0; n < DV / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[n][e] = 0.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;

    const uint16_t *kh = p.k + (int64_t)kvh * DQK;
    const uint16_t *vh = p.v + (int64_t)kvh * DV;
    // One barrier before and one after a tile's loads: crow is only read by the loads, which end
    // at the second barrier, and a thread reaches the next tile's first barrier only after its
    // MMAs over this tile, so no thread overwrites ks / vt while another still reads them.
    for (int kb = 0; kb < key1; kb += TA_KEYS) {
        if (tid < TA_KEYS) {
            const int j = kb + tid;
            crow[tid] = j < key1 ? (int64_t)__ldg(bt + j / p.block_size) * p.block_size + j % p.block_size
                                 : (int64_t)-1;
        }
        __syncthreads(); // crow is stored (and, first pass, the Q tile)
        // K: thread e takes key e / (DQK / 8), 8 columns; V: key e % 64, 8 columns, transposed
        for (int e = tid; e < TA_KEYS * (DQK / 8); e += TA_THREADS) {
            const int j = e / (DQK / 8), c = (e - j * (DQK / 8)) * 8;
            uint4 val = make_uint4(0u, 0u, 0u, 0u);
            if (crow[j] >= 0)
                val = __ldg((const uint4 *)(kh + crow[j] * p.k_stride + c));
            *(uint4 *)(ks + j * QS + c) = val;
        }
        for (int e = tid; e < TA_KEYS * (DV / 8); e += TA_THREADS) {
            const int j = e % TA_KEYS, c = e / TA_KEYS * 8;
            uint4 val = make_uint4(0u, 0u, 0u, 0u); // keys past the end: 0, as 0 * NaN is NaN
            if (crow[j] >= 0)
                val = __ldg((const uint4 *)(vh + crow[j] * p.v_stride + c));
            const uint32_t w[4] = {val.x, val.y, val.z, val.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                vt[(c + 2 * i) * VS + j] = (uint16_t)(w[i] & 0xffffu);
                vt[(c + 2 * i + 1) * VS + j] = (uint16_t)(w[i] >> 16);
            }
        }
        __syncthreads(); // the tile is staged
        if (kb > warp_lim)
            continue; // every row of this warp ends before the tile

        // S = Q K^T over the warp's 16 rows and the tile's 64 keys
        float s[TA_KEYS / 8][4];
#pragma unroll
        for (int j = 0; j < TA_KEYS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[j][e] = 0.0f;
#pragma unroll
        for (int k0 = 0; k0 < DQK; k0 += 16) {
            const uint16_t *qa = qs + (warp * 16 + g) * QS + k0 + 2 * q;
            const uint32_t a[4] = {*(const uint32_t *)qa, *(const uint32_t *)(qa + 8 * QS),
                                   *(const uint32_t *)(qa + 8), *(const uint32_t *)(qa + 8 * QS + 8)};
#pragma unroll
            for (int j = 0; j < TA_KEYS / 8; j++) {
                const uint16_t *kbp = ks + (j * 8 + g) * QS + k0 + 2 * q;
                mma_bf16_16816(s[j], a, *(const uint32_t *)kbp, *(const uint32_t *)(kbp + 8));
            }
        }

        // mask and scale; running max per row (the 4 lanes of a quad hold one row's 64 keys)
        float mxA = -INFINITY, mxB = -INFINITY;
#pragma unroll
        for (int j = 0; j < TA_KEYS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = kb + j * 8 + 2 * q + (e & 1);
                const bool vis = key <= (e < 2 ? limA : limB);
                s[j][e] = vis ? s[j][e] * p.scale : -INFINITY;
                if (e < 2)
                    mxA = fmaxf(mxA, s[j][e]);
                else
                    mxB = fmaxf(mxB, s[j][e]);
            }
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, o2));
            mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, o2));
        }
        const float nA = fmaxf(mA, mxA), nB = fmaxf(mB, mxB);
        const float uA = nA == -INFINITY ? 0.0f : nA, uB = nB == -INFINITY ? 0.0f : nB;
        const float alA = expf(mA - uA), alB = expf(mB - uB);
        mA = nA;
        mB = nB;

        // P in bf16 (the A operand of P V) and its row sums
        uint16_t pb[TA_KEYS / 8][4];
        float sumA = 0.0f, sumB = 0.0f;
#pragma unroll
        for (int j = 0; j < TA_KEYS / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                pb[j][e] = ta_bf16(expf(s[j][e] - (e < 2 ? uA : uB)));
                if (e < 2)
                    sumA += ta_f32(pb[j][e]);
                else
                    sumB += ta_f32(pb[j][e]);
            }
#pragma unroll
        for (int o2 = 1; o2 < 4; o2 <<= 1) {
            sumA += __shfl_xor_sync(0xffffffffu, sumA, o2);
            sumB += __shfl_xor_sync(0xffffffffu, sumB, o2);
        }
        lA = lA * alA + sumA;
        lB = lB * alB + sumB;
#pragma unroll
        for (int n = 0; n < DV / 8; n++) {
            o[n][0] *= alA;
            o[n][1] *= alA;
            o[n][2] *= alB;
            o[n][3] *= alB;
        }

        // O += P V: keys 16 kk .. + 16 are S tiles 2 kk and 2 kk + 1
#pragma unroll
        for (int kk = 0; kk < TA_KEYS / 16; kk++) {
            const uint32_t a[4] = {ta_pack(pb[2 * kk][0], pb[2 * kk][1]),
                                   ta_pack(pb[2 * kk][2], pb[2 * kk][3]),
                                   ta_pack(pb[2 * kk + 1][0], pb[2 * kk + 1][1]),
                                   ta_pack(pb[2 * kk + 1][2], pb[2 * kk + 1][3])};
#pragma unroll
            for (int n = 0; n < DV / 8; n++) {
                const uint16_t *vb = vt + (n * 8 + g) * VS + kk * 16 + 2 * q;
                mma_bf16_16816(o[n], a, *(const uint32_t *)vb, *(const uint32_t *)(vb + 8));
            }
        }
    }

    // every row sees key 0 of its sequence, so l >= 1 (its largest p is exp(0) = 1)
#pragma unroll
    for (int h2 = 0; h2 < 2; h2++) {
        const int r = h2 ? rB : rA;
        if (r >= n_rows)
            continue;
        const float inv = 1.0f / (h2 ? lB : lA);
        const int t = tok0 + r / p.group, h = kvh * p.group + r % p.group;
        float *out = p.out + (int64_t)t * p.out_stride + (int64_t)h * DV + 2 * q;
#pragma unroll
        for (int n = 0; n < DV / 8; n++) {
            out[n * 8] = o[n][2 * h2] * inv;
            out[n * 8 + 1] = o[n][2 * h2 + 1] * inv;
        }
    }
}

typedef void (*ta_fn)(ta_params);

// The head dimensions with an instantiation: Phi-4 and Qwen3 (128), the nano models (64), the
// fixtures (32, 48), DeepSeek-V3's naive MLA (192 / 128) and the fixtures' (96 / 64, 48 / 32).
static const struct {
    int d_qk, d_v;
    ta_fn fn;
} TA_KERNELS[] = {
    {32, 32, attention_tc_kernel<32, 32>},    {48, 48, attention_tc_kernel<48, 48>},
    {64, 64, attention_tc_kernel<64, 64>},    {128, 128, attention_tc_kernel<128, 128>},
    {48, 32, attention_tc_kernel<48, 32>},    {96, 64, attention_tc_kernel<96, 64>},
    {192, 128, attention_tc_kernel<192, 128>},
};

static ta_fn ta_kernel_for(int d_qk, int d_v)
{
    for (size_t i = 0; i < sizeof TA_KERNELS / sizeof TA_KERNELS[0]; i++)
        if (TA_KERNELS[i].d_qk == d_qk && TA_KERNELS[i].d_v == d_v)
            return TA_KERNELS[i].fn;
    return NULL;
}

extern "C" bool kern_attention_tc_supported(const kern_attn_args *a)
{
    if (!a || a->kv_dtype != KERN_DT_BF16 || a->n_head < 1 || a->n_head_kv < 1 ||
        a->n_head_kv > 65535 || a->n_head % a->n_head_kv != 0 || !ta_kernel_for(a->d_qk, a->d_v))
        return false;
    // 16-byte loads of the cache rows: strides and bases in whole 8-element (16-byte) units
    return a->k_stride % 8 == 0 && a->v_stride % 8 == 0 && (uintptr_t)a->k % 16 == 0 &&
           (uintptr_t)a->v % 16 == 0;
}

extern "C" int kern_attention_tc(const kern_attn_args *a, kern_stream stream)
{
    if (!kern_attention_tc_supported(a))
        return (int)cudaErrorInvalidValue;
    const kern_kv_batch *b = &a->batch;
    if (!kern_kv_batch_ok(b))
        return (int)cudaErrorInvalidValue;
    if (b->n_tokens == 0)
        return 0;
    if (!a->q || !a->out)
        return (int)cudaErrorInvalidValue;
    cudaError_t e = tc_device_require();
    if (e != cudaSuccess)
        return (int)e;
    const int group = a->n_head / a->n_head_kv;
    const int64_t seq_rows = (int64_t)b->max_seq_tokens * group;
    if (seq_rows > INT_MAX - TA_ROWS)
        return (int)cudaErrorInvalidValue;
    const int n_row_tiles = (int)((seq_rows + TA_ROWS - 1) / TA_ROWS);
    if ((int64_t)b->n_seq * n_row_tiles > TA_MAX_GRID_X)
        return (int)cudaErrorInvalidValue;

    ta_params p;
    p.group = group;
    p.n_row_tiles = n_row_tiles;
    p.block_size = b->block_size;
    p.max_blocks = b->max_blocks;
    p.seq_start = b->seq_start;
    p.seq_pos0 = b->seq_pos0;
    p.block_table = b->block_table;
    p.scale = a->scale;
    p.q = a->q;
    p.q_stride = a->q_stride;
    p.k = (const uint16_t *)a->k;
    p.k_stride = a->k_stride;
    p.v = (const uint16_t *)a->v;
    p.v_stride = a->v_stride;
    p.out = a->out;
    p.out_stride = a->out_stride;

    ta_fn fn = ta_kernel_for(a->d_qk, a->d_v);
    const size_t smem = ta_smem_bytes(a->d_qk, a->d_v);
    int dev = 0;
    if (smem > LAUNCH_SMEM_DEFAULT &&
        ((e = cudaGetDevice(&dev)) != cudaSuccess || (e = launch_smem_limit((const void *)fn, smem, dev)) != cudaSuccess))
        return (int)e;
    dim3 grid((unsigned)(b->n_seq * n_row_tiles), (unsigned)a->n_head_kv);
    fn<<<grid, TA_THREADS, smem, (cudaStream_t)stream>>>(p);
    return (int)cudaGetLastError();
}
