// attention.cu: causal GQA attention in f32 over a paged KV cache for a batch of sequences
// (kern_attention): a flash-attention kernel over (sequence x query-row tile, KV head, key
// split) and, when the keys are split, a combine kernel. The cache holds f32 or bf16 elements
// (kv_dtype): the flash kernel is instantiated for both and widens bf16 to the f32 it stands
// for where the K/V tiles are staged in shared memory, so the math is the f32 path's.
//
// Invariants: one CTA serves ATTN_ROWS query rows of one sequence and one KV head, a row being a
// (token, head of the GQA group) pair ordered token-major within the sequence, so every K/V tile
// read from memory serves all heads of the group. Keys stream through shared memory ATTN_KEYS at
// a time with an online softmax (running max m, running sum l, accumulator rescaled by
// exp(m_old - m_new)); scores are (q . k) * scale as in cpu_attention and all math is f32.
// Token i of sequence s sees keys 0 .. seq_pos0[s] + i; key position j lives in cache row
// block_table[s][j / block_size] * block_size + j % block_size, looked up once per key per
// tile. The launch plan (row tiles, n_split, chunk) depends only on the host fields of the
// batch; a CTA whose row tile lies past its sequence's tokens owns no rows and exits at once.
// Without splits a CTA writes acc / l; with splits every CTA that owns rows writes their
// unnormalised (acc, m, l) for its key range, empty ranges included (0, -inf, 0: a sequence
// shorter than max_ctx), so attention_combine merges n_split partials of every batch row.
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>

#include "dequant.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"
#include "workspace.h"

#define ATTN_WARPS 4
#define ATTN_THREADS (ATTN_WARPS * 32)
#define ATTN_ROWS_PER_WARP 4
#define ATTN_ROWS (ATTN_WARPS * ATTN_ROWS_PER_WARP) // query rows per CTA
static_assert(ATTN_ROWS == KERN_ATTN_ROWS, "workspace.h's bound assumes these rows per CTA");
#define ATTN_KEYS 32                                // keys per tile: one per lane
#define ATTN_MAX_D 256

// Split heuristic: aim for 4 CTAs on each of the 132 SMs of an H100/H200
// (shared/docs/PERFORMANCE.md; the number is workspace.h's, which bounds the split workspace
// by it); a split keeps at least 256 keys (8 tiles) so its fixed cost (query tile load, partial
// write, combine read) stays small beside its key reads.
#define ATTN_TARGET_CTAS KERN_ATTN_TARGET_CTAS
#define ATTN_MIN_SPLIT_KEYS 256
#define ATTN_MAX_SPLIT 128

#define COMBINE_WARPS 4

// CUDA's limit on gridDim.x (y and z are 65535: n_head_kv is checked against it, n_split is at
// most ATTN_MAX_SPLIT).
#define ATTN_MAX_GRID_X INT_MAX

typedef struct attn_plan {
    int group;       // query heads per KV head
    int n_row_tiles; // per sequence: ceil(max_seq_tokens * group / ATTN_ROWS)
    int n_split;     // key splits (1: no workspace, no combine)
    int chunk;       // keys per split, a multiple of ATTN_KEYS
} attn_plan;

typedef struct attn_params {
    int n_tokens, n_head, group, d_qk, d_v;
    int n_row_tiles; // per sequence; blockIdx.x = sequence * n_row_tiles + tile
    int block_size, max_blocks;
    const int32_t *seq_start;   // [n_seq + 1] batch rows of each sequence
    const int32_t *seq_pos0;    // [n_seq] position of each sequence's first token
    const int32_t *block_table; // [n_seq][max_blocks] KV block ids
    float scale;
    const float *q; // [n_tokens][n_head][d_qk], rows q_stride apart
    int64_t q_stride;
    const void *k; // cache rows [..][n_head_kv][d_qk] f32 or bf16, k_stride elements apart
    int64_t k_stride;
    const void *v; // cache rows [..][n_head_kv][d_v] of the same dtype, v_stride apart
    int64_t v_stride;
    float *out; // [n_tokens][n_head][d_v], rows out_stride apart
    int64_t out_stride;
    int chunk;
    float2 *part_ml; // split partials [n_split][n_tokens * n_head] (m, l), NULL without splits
    float *part;     // split partials [n_split][n_tokens * n_head][d_v] unnormalised acc
} attn_params;


// Width of a query or key row in shared memory: d_qk rounded up to a float4, zero padded.
static __host__ __device__ int attn_qk_cols(int d_qk) { return (d_qk + 3) & ~3; }

// Key tile row stride: an odd number of float4s, so the 8 lanes of a 128-bit load phase read
// 8 distinct 16-byte bank groups.
static __host__ __device__ int attn_k_stride(int d_qk)
{
    int c = attn_qk_cols(d_qk);
    return (c / 4) % 2 ? c : c + 4;
}

static size_t attn_smem_bytes(int d_qk, int d_v)
{
    return sizeof(float) * ((size_t)ATTN_ROWS * attn_qk_cols(d_qk) +
                            (size_t)ATTN_KEYS * attn_k_stride(d_qk) + (size_t)ATTN_KEYS * d_v);
}

// The checks of kern_attention that need no plan. With n_tokens > 0 the host fields must also
// be consistent: 1 <= max_seq_tokens <= n_tokens and max_ctx >= max_seq_tokens (the longest
// sequence sees at least its own tokens).
static bool attn_args_ok(const kern_attn_args *a)
{
    if (!a || (a->kv_dtype != KERN_DT_F32 && a->kv_dtype != KERN_DT_BF16))
        return false;
    if (a->n_head < 1 || a->n_head_kv < 1 || a->n_head_kv > 65535 ||
        a->n_head % a->n_head_kv != 0 || a->d_qk < 1 || a->d_qk > ATTN_MAX_D || a->d_v < 1 ||
        a->d_v > ATTN_MAX_D || !kern_kv_batch_ok(&a->batch))
        return false;
    return a->batch.n_tokens == 0 || (a->q && a->k && a->v && a->out);
}

// Plans the launch of args that pass attn_args_ok with n_tokens > 0; false when the grid
// (or the int row arithmetic of the kernels) would exceed its limits. Splits the keys when the
// row tiles alone give too few CTAs (decode, short prefills at long context). The tiles that
// own rows number at most n_seq * n_row_tiles and at most ceil(n_tokens * group / ATTN_ROWS) +
// n_seq - 1 (each sequence wastes less than one tile); the smaller bound counts the CTAs, so a
// batch mixing one long prompt with short sequences still splits. The chunk is rounded to
// whole tiles, so a tile never straddles two splits.
static bool attn_plan_make(const kern_attn_args *a, attn_plan *p)
{
    const kern_kv_batch *b = &a->batch;
    p->group = a->n_head / a->n_head_kv;
    const int64_t seq_rows = (int64_t)b->max_seq_tokens * p->group;
    if (seq_rows > INT_MAX - ATTN_ROWS)
        return false;
    p->n_row_tiles = (int)((seq_rows + ATTN_ROWS - 1) / ATTN_ROWS);
    const int64_t grid_x = (int64_t)b->n_seq * p->n_row_tiles;
    if (grid_x > ATTN_MAX_GRID_X)
        return false;
    const int64_t batch_rows = (int64_t)b->n_tokens * p->group;
    int64_t tiles = (batch_rows + ATTN_ROWS - 1) / ATTN_ROWS + b->n_seq - 1;
    if (tiles > grid_x)
        tiles = grid_x;
    const int64_t ctas = tiles * a->n_head_kv;
    const int n_keys = b->max_ctx; // keys the longest row sees
    int n_split = 1;
    if (ctas < ATTN_TARGET_CTAS) {
        n_split = (int)((ATTN_TARGET_CTAS + ctas - 1) / ctas);
        n_split = imin(n_split, ceil_div(n_keys, ATTN_MIN_SPLIT_KEYS));
        n_split = imin(n_split, ATTN_MAX_SPLIT);
    }
    p->chunk = ceil_div(ceil_div(n_keys, n_split), ATTN_KEYS) * ATTN_KEYS;
    p->n_split = ceil_div(n_keys, p->chunk);
    if (p->n_split > 1 &&
        ((int64_t)b->n_tokens * a->n_head + COMBINE_WARPS - 1) / COMBINE_WARPS > ATTN_MAX_GRID_X)
        return false;
    return true;
}

// Cache row of key position j of the sequence whose block table row is bt; 0 (nothing read)
// for j >= key1, the CTA's key limit, so the table is never read past the sequence's keys.
static __device__ __forceinline__ int64_t attn_cache_row(const int32_t *__restrict__ bt, int j,
                                                         int key1, int block_size)
{
    if (j >= key1)
        return 0;
    return (int64_t)__ldg(bt + j / block_size) * block_size + j % block_size;
}

// Grid (n_seq * n_row_tiles, n_head_kv, n_split), block ATTN_THREADS. Warp w owns the CTA's rows
// w + ATTN_WARPS * i (i < ATTN_ROWS_PER_WARP); in the score step lane j owns key kb + j, in
// the P.V step lane j owns output columns j + 32 * c (c < NV = ceil(d_v / 32)). KV is the cache
// element type (float or uint16_t bf16), widened by dq_kv as the tiles are staged.
template <int NV, typename KV>
static __global__ void __launch_bounds__(ATTN_THREADS, 4) attention_flash(attn_params p)
{
    extern __shared__ float4 smem4[];
    __shared__ int64_t crow[2][ATTN_KEYS]; // cache rows of the current and the next key tile
    const int qc = attn_qk_cols(p.d_qk), ks = attn_k_stride(p.d_qk);
    float *qs = (float *)smem4;           // [ATTN_ROWS][qc] query rows, zero padded
    float *kt = qs + ATTN_ROWS * qc;      // [ATTN_KEYS][ks] key tile, zero padded
    float *vt = kt + ATTN_KEYS * ks;      // [ATTN_KEYS][d_v] value tile
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kvh = blockIdx.y;
    const int seq = blockIdx.x / p.n_row_tiles;
    const int row0 = (blockIdx.x - seq * p.n_row_tiles) * ATTN_ROWS;
    const int tok0 = __ldg(p.seq_start + seq);
    const int n_rows = (__ldg(p.seq_start + seq + 1) - tok0) * p.group; // of seq and this head
    if (row0 >= n_rows)
        return; // the whole CTA, before any barrier: it owns no rows
    const int pos0 = __ldg(p.seq_pos0 + seq);
    const int32_t *bt = p.block_table + (int64_t)seq * p.max_blocks;

    // Row r of this sequence and KV head is batch token tok0 + r / group, head
    // kvh * group + r % group.
    for (int e = threadIdx.x; e < ATTN_ROWS * qc; e += ATTN_THREADS) {
        int i = e / qc, c = e - i * qc, r = row0 + i;
        float x = 0.0f;
        if (r < n_rows && c < p.d_qk) {
            int t = tok0 + r / p.group, h = kvh * p.group + r % p.group;
            x = p.q[(int64_t)t * p.q_stride + (int64_t)h * p.d_qk + c];
        }
        qs[e] = x;
    }

    int lim[ATTN_ROWS_PER_WARP]; // last key row i sees; -1 for rows past n_rows (all masked)
    float m[ATTN_ROWS_PER_WARP], l[ATTN_ROWS_PER_WARP], acc[ATTN_ROWS_PER_WARP][NV];
#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        int r = row0 + warp + ATTN_WARPS * i;
        lim[i] = r < n_rows ? pos0 + r / p.group : -1;
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < NV; c++)
            acc[i][c] = 0.0f;
    }

    const int t_last = (min(row0 + ATTN_ROWS, n_rows) - 1) / p.group; // within the sequence
    const int key0 = blockIdx.z * p.chunk;
    const int key1 = min(key0 + p.chunk, pos0 + t_last + 1);
    const KV *kh = (const KV *)p.k + (int64_t)kvh * p.d_qk;
    const KV *vh = (const KV *)p.v + (int64_t)kvh * p.d_v;

    if (threadIdx.x < ATTN_KEYS)
        crow[0][threadIdx.x] = attn_cache_row(bt, key0 + threadIdx.x, key1, p.block_size);
    int buf = 0;
    for (int kb = key0; kb < key1; kb += ATTN_KEYS, buf ^= 1) {
        const int nk = min(ATTN_KEYS, key1 - kb);
        // The next tile's rows: the table read is issued before this tile's loads and stored
        // into crow[buf ^ 1] after them (its last readers passed the barrier below).
        int64_t next_row = 0;
        if (threadIdx.x < ATTN_KEYS)
            next_row = attn_cache_row(bt, kb + ATTN_KEYS + threadIdx.x, key1, p.block_size);
        __syncthreads(); // the previous tile is consumed; crow[buf] (first pass: qs) is stored
        for (int e = threadIdx.x; e < ATTN_KEYS * qc; e += ATTN_THREADS) {
            int j = e / qc, c = e - j * qc;
            kt[j * ks + c] =
                (j < nk && c < p.d_qk) ? dq_kv(kh[crow[buf][j] * p.k_stride + c]) : 0.0f;
        }
        // rows past nk are zeroed: their p is 0, and 0 * garbage could be NaN
        for (int e = threadIdx.x; e < ATTN_KEYS * p.d_v; e += ATTN_THREADS) {
            int j = e / p.d_v;
            vt[e] = j < nk ? dq_kv(vh[crow[buf][j] * p.v_stride + (e - j * p.d_v)]) : 0.0f;
        }
        if (threadIdx.x < ATTN_KEYS)
            crow[buf ^ 1][threadIdx.x] = next_row;
        __syncthreads();

        float s[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++)
            s[i] = 0.0f;
        const float4 *kr = (const float4 *)(kt + lane * ks);
#pragma unroll 2
        for (int c4 = 0; c4 < qc / 4; c4++) {
            float4 kv = kr[c4];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
                float4 qv = ((const float4 *)(qs + (warp + ATTN_WARPS * i) * qc))[c4];
                s[i] = fmaf(qv.x, kv.x, s[i]);
                s[i] = fmaf(qv.y, kv.y, s[i]);
                s[i] = fmaf(qv.z, kv.z, s[i]);
                s[i] = fmaf(qv.w, kv.w, s[i]);
            }
        }

        // Online softmax per row across the warp's 32 keys.
        const int key = kb + lane;
        float pr[ATTN_ROWS_PER_WARP];
#pragma unroll
        for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
            float si = (lane < nk && key <= lim[i]) ? s[i] * p.scale : -INFINITY;
            float mn = fmaxf(m[i], warp_max(si));
            float mu = mn == -INFINITY ? 0.0f : mn; // nothing visible yet: keep exp() off NaN
            pr[i] = expf(si - mu);
            float alpha = expf(m[i] - mu);
            l[i] = l[i] * alpha + warp_sum(pr[i]);
            m[i] = mn;
#pragma unroll
            for (int c = 0; c < NV; c++)
                acc[i][c] *= alpha;
        }

        for (int j = 0; j < nk; j++) {
            float pj[ATTN_ROWS_PER_WARP];
#pragma unroll
            for (int i = 0; i < ATTN_ROWS_PER_WARP; i++)
                pj[i] = __shfl_sync(0xffffffffu, pr[i], j);
#pragma unroll
            for (int c = 0; c < NV; c++) {
                int d = lane + 32 * c;
                if (d < p.d_v) {
                    float vv = vt[j * p.d_v + d];
#pragma unroll
                    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++)
                        acc[i][c] = fmaf(pj[i], vv, acc[i][c]);
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < ATTN_ROWS_PER_WARP; i++) {
        int r = row0 + warp + ATTN_WARPS * i;
        if (r >= n_rows)
            continue;
        int t = tok0 + r / p.group, h = kvh * p.group + r % p.group;
        if (!p.part) {
            float inv = 1.0f / l[i];
            float *o = p.out + (int64_t)t * p.out_stride + (int64_t)h * p.d_v;
#pragma unroll
            for (int c = 0; c < NV; c++)
                if (lane + 32 * c < p.d_v)
                    o[lane + 32 * c] = acc[i][c] * inv;
        } else {
            int64_t prow = ((int64_t)blockIdx.z * p.n_tokens + t) * p.n_head + h;
            float *o = p.part + prow * p.d_v;
#pragma unroll
            for (int c = 0; c < NV; c++)
                if (lane + 32 * c < p.d_v)
                    o[lane + 32 * c] = acc[i][c];
            if (lane == 0)
                p.part_ml[prow] = make_float2(m[i], l[i]);
        }
    }
}

// Grid ceil(n_tokens * n_head / COMBINE_WARPS), block COMBINE_WARPS warps, one warp per
// (batch token, head) row: out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s,
// M = max_s m_s. Every row sees its sequence's key 0, which split 0 holds, so M is finite for
// finite scores.
static __global__ void __launch_bounds__(COMBINE_WARPS * 32)
    attention_combine(const float2 *part_ml, const float *part, int n_split, int n_tokens,
                      int n_head, int d_v, float *out, int64_t out_stride)
{
    __shared__ float wsh[COMBINE_WARPS][ATTN_MAX_SPLIT]; // exp(m_s - M) per split
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t n_rows = (int64_t)n_tokens * n_head;
    const int64_t row = (int64_t)blockIdx.x * COMBINE_WARPS + warp;
    if (row >= n_rows)
        return;
    float mx = -INFINITY;
    for (int s = lane; s < n_split; s += 32)
        mx = fmaxf(mx, part_ml[s * n_rows + row].x);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int s = lane; s < n_split; s += 32) {
        float2 ml = part_ml[s * n_rows + row];
        float w = ml.x == -INFINITY ? 0.0f : expf(ml.x - mx); // an empty split adds nothing
        wsh[warp][s] = w;
        sum += ml.y * w;
    }
    sum = warp_sum(sum);
    __syncwarp();
    const float inv = 1.0f / sum;
    float *o = out + (row / n_head) * out_stride + (row % n_head) * d_v;
    for (int d = lane; d < d_v; d += 32) {
        float a = 0.0f;
        for (int s = 0; s < n_split; s++)
            a = fmaf(wsh[warp][s], part[(s * n_rows + row) * d_v + d], a);
        o[d] = a * inv;
    }
}

typedef void (*attention_flash_fn)(attn_params);

// [kv_dtype == KERN_DT_BF16][ceil(d_v / 32) - 1]
static const attention_flash_fn attention_flash_kernels[2][ATTN_MAX_D / 32] = {
    {attention_flash<1, float>, attention_flash<2, float>, attention_flash<3, float>,
     attention_flash<4, float>, attention_flash<5, float>, attention_flash<6, float>,
     attention_flash<7, float>, attention_flash<8, float>},
    {attention_flash<1, uint16_t>, attention_flash<2, uint16_t>, attention_flash<3, uint16_t>,
     attention_flash<4, uint16_t>, attention_flash<5, uint16_t>, attention_flash<6, uint16_t>,
     attention_flash<7, uint16_t>, attention_flash<8, uint16_t>},
};

extern "C" size_t kern_attention_workspace_bytes(const kern_attn_args *args)
{
    attn_plan pl;
    if (!attn_args_ok(args) || args->batch.n_tokens == 0 || !attn_plan_make(args, &pl) ||
        pl.n_split == 1)
        return 0;
    size_t rows = (size_t)pl.n_split * (size_t)args->batch.n_tokens * (size_t)args->n_head;
    return rows * (sizeof(float2) + (size_t)args->d_v * sizeof(float));
}

// Validates, plans the split and launches attention_flash<ceil(d_v / 32), KV> (plus
// attention_combine when the keys are split). The workspace holds part_ml then part. Besides
// the header's cases, returns cudaErrorInvalidValue for inconsistent host fields of the batch
// (max_seq_tokens outside 1..n_tokens, max_ctx < max_seq_tokens) and for a grid past CUDA's
// limits (n_seq * row tiles > 2^31 - 1).
extern "C" int kern_attention(const kern_attn_args *args, void *workspace, kern_stream stream)
{
    if (!attn_args_ok(args))
        return (int)cudaErrorInvalidValue;
    if (args->batch.n_tokens == 0)
        return 0;
    const kern_attn_args *a = args;
    const kern_kv_batch *b = &a->batch;
    attn_plan pl;
    if (!attn_plan_make(a, &pl) || (pl.n_split > 1 && !workspace))
        return (int)cudaErrorInvalidValue;

    attn_params p;
    p.n_tokens = b->n_tokens;
    p.n_head = a->n_head;
    p.group = pl.group;
    p.d_qk = a->d_qk;
    p.d_v = a->d_v;
    p.n_row_tiles = pl.n_row_tiles;
    p.block_size = b->block_size;
    p.max_blocks = b->max_blocks;
    p.seq_start = b->seq_start;
    p.seq_pos0 = b->seq_pos0;
    p.block_table = b->block_table;
    p.scale = a->scale;
    p.q = a->q;
    p.q_stride = a->q_stride;
    p.k = a->k;
    p.k_stride = a->k_stride;
    p.v = a->v;
    p.v_stride = a->v_stride;
    p.out = a->out;
    p.out_stride = a->out_stride;
    p.chunk = pl.chunk;
    p.part_ml = NULL;
    p.part = NULL;
    if (pl.n_split > 1) {
        size_t rows = (size_t)pl.n_split * (size_t)b->n_tokens * (size_t)a->n_head;
        p.part_ml = (float2 *)workspace;
        p.part = (float *)(p.part_ml + rows);
    }

    attention_flash_fn fn =
        attention_flash_kernels[a->kv_dtype == KERN_DT_BF16][(a->d_v + 31) / 32 - 1];
    size_t smem = attn_smem_bytes(a->d_qk, a->d_v);
    int dev = 0;
    cudaError_t e = cudaSuccess;
    if (smem > LAUNCH_SMEM_DEFAULT &&
        ((e = cudaGetDevice(&dev)) != cudaSuccess || (e = launch_smem_limit((const void *)fn, smem, dev)) != cudaSuccess))
        return (int)e;
    dim3 grid((unsigned)(b->n_seq * pl.n_row_tiles), (unsigned)a->n_head_kv,
              (unsigned)pl.n_split);
    fn<<<grid, ATTN_THREADS, smem, (cudaStream_t)stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess || pl.n_split == 1)
        return (int)e;

    int64_t n_rows = (int64_t)b->n_tokens * a->n_head;
    attention_combine<<<(unsigned)((n_rows + COMBINE_WARPS - 1) / COMBINE_WARPS),
                        COMBINE_WARPS * 32, 0, (cudaStream_t)stream>>>(
        p.part_ml, p.part, pl.n_split, b->n_tokens, a->n_head, a->d_v, a->out, a->out_stride);
    return (int)cudaGetLastError();
}
