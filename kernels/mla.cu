// mla.cu: DeepSeek-V3 multi-head latent attention in the absorbed form (kern_mla_absorbed), f32.
//
// Three steps, each one launch over all heads (plus a combine when the keys are split):
//   mla_q_absorb  q_lat[t][h] = W_UK_h^T q_nope[t][h]          (kv_b rows dequantized in place)
//   mla_attn      o_lat[t][h] = softmax_j(scale * (q_lat . ckv[j] + q_pe . kpe[j])) . ckv
//                 flash style: (token, head) rows share every latent tile read (all heads read
//                 the same cache row), online softmax, keys split across CTAs for decode
//   mla_out       out[t][h] = W_UV_h o_lat[t][h]
// Invariants: the batch (kern_kv_batch) is its sequences' tokens concatenated, T = batch.n_tokens
// tokens in all; q_lat and o_lat live in the caller's workspace as [T][n_head][rank] f32, a row is
// R = t * n_head + h. Token t = seq_start[s] + i of sequence s sits at position seq_pos0[s] + i and
// sees keys 0 .. seq_pos0[s] + i of its own sequence, read through the block table, as
// cpu_mla_absorbed. The rows of one sequence are contiguous (seq_start[s] * n_head onwards), so
// mla_attn tiles each sequence's rows on its own: grid (row tile, split, sequence), the row tiles
// sized for the longest sequence (max_seq_tokens); tiles past a shorter sequence's rows exit.
// Every row is written by exactly one CTA per split (an empty key range writes m = -inf, l = 0,
// acc = 0), so the combine never reads an unwritten partial.
// Weights are dequantized exactly (dequant.cuh) and everything is accumulated in f32. The latent
// cache holds f32 or bf16 elements (kv_dtype): mla_attn is instantiated for both and widens bf16
// to the f32 it stands for where a tile is staged in shared memory, so the math is the f32 path's.
#include <cuda_runtime.h>
#include <math.h>

#include "dequant.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "reduce.cuh"
#include "workspace.h"

#define MLA_MAX_RANK 1024
#define MLA_MAX_ROPE 256
#define MLA_MAX_NOPE 1024

#define QA_THREADS 128 // mla_q_absorb: one thread per latent column
#define QA_TOKENS 8    // tokens sharing each dequantized W_UK element

#define MLA_WARPS 8
#define MLA_THREADS (MLA_WARPS * 32)
#define MLA_ROWS KERN_MLA_ROWS // (token, head) rows per CTA: two per warp in the score step
#define MLA_KEYS 16 // keys per tile: one per lane of a half warp
#define MLA_LOAD_COLS (MLA_THREADS / MLA_KEYS) // tile load: threads per key row

#define MLA_MAX_GRID_YZ 65535 // CUDA's limit on gridDim.y and gridDim.z

// Split heuristic: two 8-warp CTAs on each of the 132 SMs of an H100/H200
// (shared/docs/PERFORMANCE.md; workspace.h's number, which bounds the split workspace); a split keeps at least 256 keys so its fixed cost (query tile
// load, partial write, combine read of rank floats per row) stays small beside its key reads.
#define MLA_TARGET_CTAS KERN_MLA_TARGET_CTAS
#define MLA_MIN_SPLIT_KEYS 256
#define MLA_MAX_SPLIT 128

#define OUT_WARPS 8  // mla_out: one warp per output column
#define OUT_TOKENS 8 // tokens sharing each dequantized W_UV element

#define COMBINE_WARPS 4

typedef struct mla_plan {
    int n_row_tiles; // ceil(max_seq_tokens * n_head / MLA_ROWS): row tiles of the longest sequence
    int n_split;     // key splits (1: mla_attn writes o_lat itself)
    int chunk;       // keys per split, a multiple of MLA_KEYS; n_split * chunk >= max_ctx
} mla_plan;

typedef struct mla_params {
    int n_rows; // T * n_head, T = batch.n_tokens
    int n_head, d_nope, d_rope, rank;
    float scale;
    const int32_t *seq_start;   // [n_seq + 1] first batch token of each sequence
    const int32_t *seq_pos0;    // [n_seq] position of each sequence's first token
    const int32_t *block_table; // [n_seq][max_blocks] cache block ids
    int block_size, max_blocks;
    const float *q; // [T][n_head][d_nope + d_rope], rows q_stride apart
    int64_t q_stride;
    const float *q_lat; // [T][n_head][rank]
    const void *ckv;    // cache rows [..][rank] f32 or bf16 (paged)
    const void *kpe;    // cache rows [..][d_rope] of the same dtype (paged, same rows as ckv)
    float *o_lat;       // [T][n_head][rank]
    int chunk;
    float2 *part_ml; // split partials [n_split][T * n_head] (m, l), NULL without splits
    float *part;     // split partials [n_split][T * n_head][rank] unnormalised acc
} mla_params;


// Width of a (q_lat | q_pe) or (ckv | kpe) row in shared memory, rounded up to a float4.
static __host__ __device__ int mla_qk_cols(int rank, int d_rope) { return (rank + d_rope + 3) & ~3; }

// Latent tile row stride: an odd number of float4s, so the 8 lanes of a 128-bit load phase
// read 8 distinct 16-byte bank groups.
static __host__ __device__ int mla_k_stride(int rank, int d_rope)
{
    int c = mla_qk_cols(rank, d_rope);
    return (c / 4) % 2 ? c : c + 4;
}

static size_t mla_attn_smem_bytes(int rank, int d_rope)
{
    return sizeof(float) * ((size_t)MLA_ROWS * mla_qk_cols(rank, d_rope) +
                            (size_t)MLA_KEYS * mla_k_stride(rank, d_rope) +
                            (size_t)MLA_KEYS * MLA_ROWS + MLA_ROWS);
}

// Host-side checks, including the grid limits: mla_attn's z (n_seq) and the token dimension z of
// mla_q_absorb and mla_out. Row indices (t * n_head + h) are int, so T * n_head must fit.
static bool mla_args_ok(const kern_mla_args *a)
{
    if (!a || (a->kv_dtype != KERN_DT_F32 && a->kv_dtype != KERN_DT_BF16) || a->n_head < 1 ||
        a->n_head > MLA_MAX_GRID_YZ || a->d_nope < 0 || a->d_nope > MLA_MAX_NOPE ||
        a->d_rope < 0 || a->d_rope > MLA_MAX_ROPE || a->d_v < 1 || a->kv_lora_rank < 1 ||
        a->kv_lora_rank > MLA_MAX_RANK)
        return false;
    const kern_kv_batch *b = &a->batch;
    if (!kern_kv_batch_ok(b))
        return false;
    if (b->n_tokens == 0)
        return true;
    if (b->n_seq > MLA_MAX_GRID_YZ || (int64_t)b->n_tokens * a->n_head > INT32_MAX ||
        ceil_div(b->n_tokens, QA_TOKENS) > MLA_MAX_GRID_YZ ||
        ceil_div(b->n_tokens, OUT_TOKENS) > MLA_MAX_GRID_YZ)
        return false;
    const kern_weight *w = a->kv_b;
    return a->q && a->ckv &&
           (a->kpe || a->d_rope == 0) && a->out && dq_weight_valid(w) &&
           w->n_in == a->kv_lora_rank &&
           w->n_out >= (int64_t)a->n_head * (a->d_nope + a->d_v);
}

// For valid args with T > 0. The CTA count is bounded by n_row_tiles * n_seq (tiles of short
// sequences exit at once, so splits are planned for that bound); keys are split by max_ctx, the
// context of the longest row: a split past a shorter row's context is empty for it.
static mla_plan mla_plan_make(const kern_mla_args *a)
{
    const kern_kv_batch *b = &a->batch;
    mla_plan p;
    p.n_row_tiles = ceil_div(b->max_seq_tokens * a->n_head, MLA_ROWS);
    const int64_t n_ctas = (int64_t)p.n_row_tiles * b->n_seq;
    const int n_keys = b->max_ctx;
    int n_split = 1;
    if (n_ctas < MLA_TARGET_CTAS) {
        n_split = ceil_div(MLA_TARGET_CTAS, (int)n_ctas);
        n_split = imin(n_split, ceil_div(n_keys, MLA_MIN_SPLIT_KEYS));
        n_split = imin(n_split, MLA_MAX_SPLIT);
    }
    p.chunk = ceil_div(ceil_div(n_keys, n_split), MLA_KEYS) * MLA_KEYS;
    p.n_split = ceil_div(n_keys, p.chunk);
    return p;
}

// Reductions over the 16 lanes of a half warp (xor offsets below 16 stay inside the half).
static __device__ float half_max(float x)
{
    for (int o = 8; o > 0; o >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

static __device__ float half_sum(float x)
{
    for (int o = 8; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Grid (ceil(rank / QA_THREADS), n_head, ceil(n_tokens / QA_TOKENS)), block QA_THREADS, dynamic
// smem QA_TOKENS * d_nope floats. Thread = latent column k of head h for QA_TOKENS tokens:
// q_lat[t][h][k] = sum_i q[t][h][i] * W(h * (d_nope + d_v) + i, k), i ascending as the CPU.
static __global__ void __launch_bounds__(QA_THREADS, 8)
    mla_q_absorb(const float *q, int64_t q_stride, kern_weight w, int n_tokens, int n_head,
                 int d_nope, int d_rope, int d_v, int rank, float *q_lat)
{
    extern __shared__ float qn[]; // [QA_TOKENS][d_nope] q_nope of head h, zero past n_tokens
    const int h = blockIdx.y, t0 = blockIdx.z * QA_TOKENS;
    const int nt = min(QA_TOKENS, n_tokens - t0);
    for (int e = threadIdx.x; e < QA_TOKENS * d_nope; e += QA_THREADS) {
        int tt = e / d_nope, i = e - tt * d_nope;
        qn[e] = tt < nt ? q[(int64_t)(t0 + tt) * q_stride + (int64_t)h * (d_nope + d_rope) + i]
                        : 0.0f;
    }
    __syncthreads();
    const int k = blockIdx.x * QA_THREADS + threadIdx.x;
    if (k >= rank)
        return;
    float acc[QA_TOKENS];
#pragma unroll
    for (int tt = 0; tt < QA_TOKENS; tt++)
        acc[tt] = 0.0f;
    const int64_t row0 = (int64_t)h * (d_nope + d_v);
#pragma unroll 4
    for (int i = 0; i < d_nope; i++) {
        float wv = dq_weight_at(w, row0 + i, k);
#pragma unroll
        for (int tt = 0; tt < QA_TOKENS; tt++)
            acc[tt] = fmaf(qn[tt * d_nope + i], wv, acc[tt]);
    }
#pragma unroll
    for (int tt = 0; tt < QA_TOKENS; tt++)
        if (tt < nt)
            q_lat[((int64_t)(t0 + tt) * n_head + h) * rank + k] = acc[tt];
}

// Grid (n_row_tiles, n_split, n_seq), block MLA_THREADS, dynamic smem mla_attn_smem_bytes. CTA
// (x, y, s) owns rows x * MLA_ROWS .. + MLA_ROWS - 1 of sequence s (row i * n_head + h for its
// token i, batch row seq_start[s] * n_head + that) and keys y * chunk .. + chunk - 1 of s; it
// exits when s has no such rows. Tile load: thread x reads key x / MLA_LOAD_COLS of the tile,
// columns x % MLA_LOAD_COLS + MLA_LOAD_COLS * c. Score step: warp w, lane j owns row
// 2w + j / 16 of the tile and key kb + j % 16 (the row's softmax state is replicated over its
// half warp). P.V step: thread x owns latent columns x + MLA_THREADS * c
// (c < NC = ceil(rank / MLA_THREADS)) of all MLA_ROWS rows. KV is the cache element type (float
// or uint16_t bf16), widened by dq_kv as the tile is staged.
template <int NC, typename KV>
static __global__ void __launch_bounds__(MLA_THREADS, 1) mla_attn(mla_params p)
{
    extern __shared__ float4 smem4[];
    const int r = p.rank;
    const int qc = mla_qk_cols(r, p.d_rope), ks = mla_k_stride(r, p.d_rope);
    float *qs = (float *)smem4;            // [MLA_ROWS][qc]: q_lat | q_pe | 0
    float *kv = qs + MLA_ROWS * qc;        // [MLA_KEYS][ks]: ckv | kpe | 0
    float *ps = kv + MLA_KEYS * ks;        // [MLA_KEYS][MLA_ROWS] probabilities, key-major
    float *rs = ps + MLA_KEYS * MLA_ROWS;  // [MLA_ROWS] per-tile rescale, at the end 1 / l
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int seq = blockIdx.z;
    const int tok0 = p.seq_start[seq];                           // the sequence's first token
    const int n_rows = (p.seq_start[seq + 1] - tok0) * p.n_head; // rows of the sequence
    const int row0 = blockIdx.x * MLA_ROWS; // the tile's first row, counted in the sequence
    if (row0 >= n_rows)
        return; // uniform over the CTA, before any barrier
    const int grow0 = tok0 * p.n_head + row0; // the same row in the batch
    const int pos0 = p.seq_pos0[seq];
    const int32_t *bt = p.block_table + (int64_t)seq * p.max_blocks;

    for (int e = threadIdx.x; e < MLA_ROWS * qc; e += MLA_THREADS) {
        int i = e / qc, c = e - i * qc, row = grow0 + i;
        float x = 0.0f;
        if (row0 + i < n_rows && c < r + p.d_rope) {
            int t = row / p.n_head, h = row % p.n_head;
            x = c < r ? p.q_lat[(int64_t)row * r + c]
                      : p.q[(int64_t)t * p.q_stride + (int64_t)h * (p.d_nope + p.d_rope) +
                            p.d_nope + (c - r)];
        }
        qs[e] = x;
    }

    const int si = warp * 2 + lane / 16; // score step: row in the tile
    const int sj = lane % 16;            // score step: key in the tile
    const int lim = row0 + si < n_rows ? pos0 + (row0 + si) / p.n_head : -1; // -1: all masked
    const int lj = threadIdx.x / MLA_LOAD_COLS; // tile load: key in the tile
    const int lc = threadIdx.x % MLA_LOAD_COLS; // tile load: first column
    float m = -INFINITY, l = 0.0f;
    float acc[MLA_ROWS][NC];
#pragma unroll
    for (int i = 0; i < MLA_ROWS; i++)
#pragma unroll
        for (int c = 0; c < NC; c++)
            acc[i][c] = 0.0f;

    const int i_last = (min(row0 + MLA_ROWS, n_rows) - 1) / p.n_head; // last token of the tile
    const int key0 = blockIdx.y * p.chunk;
    const int key1 = min(key0 + p.chunk, pos0 + i_last + 1); // key0 >= key1: empty, still written
    for (int kb = key0; kb < key1; kb += MLA_KEYS) {
        const int nk = min(MLA_KEYS, key1 - kb);
        __syncthreads(); // the previous tile, ps and rs are consumed; first pass: qs is stored
        // key position pos = kb + lj lives in cache row
        // bt[pos / block_size] * block_size + pos % block_size; tile rows past nk are zeroed:
        // their p is 0, and 0 * garbage could be NaN
        int64_t crow = 0;
        if (lj < nk) {
            const int pos = kb + lj;
            crow = (int64_t)bt[pos / p.block_size] * p.block_size + pos % p.block_size;
        }
        for (int c = lc; c < qc; c += MLA_LOAD_COLS) {
            float x = 0.0f;
            if (lj < nk && c < r + p.d_rope)
                x = c < r ? dq_kv(((const KV *)p.ckv)[crow * r + c])
                          : dq_kv(((const KV *)p.kpe)[crow * p.d_rope + (c - r)]);
            kv[lj * ks + c] = x;
        }
        __syncthreads();

        const float4 *q4 = (const float4 *)(qs + si * qc);
        const float4 *k4 = (const float4 *)(kv + sj * ks);
        float s = 0.0f;
#pragma unroll 4
        for (int c4 = 0; c4 < qc / 4; c4++) {
            float4 a = q4[c4], b = k4[c4];
            s = fmaf(a.x, b.x, s);
            s = fmaf(a.y, b.y, s);
            s = fmaf(a.z, b.z, s);
            s = fmaf(a.w, b.w, s);
        }
        s = (sj < nk && kb + sj <= lim) ? s * p.scale : -INFINITY;
        float mn = fmaxf(m, half_max(s));
        float mu = mn == -INFINITY ? 0.0f : mn; // nothing visible yet: keep exp() off NaN
        float pr = expf(s - mu);
        float alpha = expf(m - mu);
        l = l * alpha + half_sum(pr);
        m = mn;
        ps[sj * MLA_ROWS + si] = pr;
        if (sj == 0)
            rs[si] = alpha;
        __syncthreads();

#pragma unroll
        for (int i = 0; i < MLA_ROWS; i++) {
            float a = rs[i];
#pragma unroll
            for (int c = 0; c < NC; c++)
                acc[i][c] *= a;
        }
        for (int j = 0; j < nk; j++) {
            const float4 *p4 = (const float4 *)(ps + j * MLA_ROWS);
            float pj[MLA_ROWS];
#pragma unroll
            for (int i4 = 0; i4 < MLA_ROWS / 4; i4++) {
                float4 x = p4[i4];
                pj[4 * i4] = x.x;
                pj[4 * i4 + 1] = x.y;
                pj[4 * i4 + 2] = x.z;
                pj[4 * i4 + 3] = x.w;
            }
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = threadIdx.x + MLA_THREADS * c;
                if (d < r) {
                    float v = kv[j * ks + d];
#pragma unroll
                    for (int i = 0; i < MLA_ROWS; i++)
                        acc[i][c] = fmaf(pj[i], v, acc[i][c]);
                }
            }
        }
    }

    __syncthreads(); // every P.V step has read rs
    if (sj == 0) {
        rs[si] = p.part ? 1.0f : 1.0f / l;
        if (p.part && row0 + si < n_rows)
            p.part_ml[(int64_t)blockIdx.y * p.n_rows + grow0 + si] = make_float2(m, l);
    }
    __syncthreads();
    float *dst = p.part ? p.part + (int64_t)blockIdx.y * p.n_rows * r : p.o_lat;
#pragma unroll
    for (int i = 0; i < MLA_ROWS; i++) {
        if (row0 + i >= n_rows)
            break;
        float a = rs[i];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = threadIdx.x + MLA_THREADS * c;
            if (d < r)
                dst[(int64_t)(grow0 + i) * r + d] = acc[i][c] * a;
        }
    }
}

// Grid ceil(n_rows / COMBINE_WARPS), block COMBINE_WARPS warps, one warp per batch row:
// o_lat = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s, M = max_s m_s. mla_attn wrote all
// n_split partials of every row (splits past the row's context as m = -inf, l = 0, acc = 0).
// Every row sees key 0, which split 0 holds, so M is finite for finite scores.
static __global__ void __launch_bounds__(COMBINE_WARPS * 32)
    mla_combine(const float2 *part_ml, const float *part, int n_split, int n_rows, int rank,
                float *o_lat)
{
    __shared__ float wsh[COMBINE_WARPS][MLA_MAX_SPLIT]; // exp(m_s - M) per split
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blockIdx.x * COMBINE_WARPS + warp;
    if (row >= n_rows)
        return;
    float mx = -INFINITY;
    for (int s = lane; s < n_split; s += 32)
        mx = fmaxf(mx, part_ml[(int64_t)s * n_rows + row].x);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int s = lane; s < n_split; s += 32) {
        float2 ml = part_ml[(int64_t)s * n_rows + row];
        float w = ml.x == -INFINITY ? 0.0f : expf(ml.x - mx); // an empty split adds nothing
        wsh[warp][s] = w;
        sum += ml.y * w;
    }
    sum = warp_sum(sum);
    __syncwarp();
    const float inv = 1.0f / sum;
    for (int d = lane; d < rank; d += 32) {
        float a = 0.0f;
        for (int s = 0; s < n_split; s++)
            a = fmaf(wsh[warp][s], part[((int64_t)s * n_rows + row) * rank + d], a);
        o_lat[(int64_t)row * rank + d] = a * inv;
    }
}

// Grid (ceil(d_v / OUT_WARPS), n_head, ceil(n_tokens / OUT_TOKENS)), block OUT_WARPS warps,
// dynamic smem OUT_TOKENS * rank floats. Warp = output column dv of head h for OUT_TOKENS
// tokens, lanes striding the latent: out[t][h][dv] = W(h * (d_nope + d_v) + d_nope + dv, :) .
// o_lat[t][h].
static __global__ void __launch_bounds__(OUT_WARPS * 32)
    mla_out(const float *o_lat, kern_weight w, int n_tokens, int n_head, int d_nope, int d_v,
            int rank, float *out)
{
    extern __shared__ float ol[]; // [OUT_TOKENS][rank] o_lat of head h, zero past n_tokens
    const int h = blockIdx.y, t0 = blockIdx.z * OUT_TOKENS;
    const int nt = min(OUT_TOKENS, n_tokens - t0);
    for (int e = threadIdx.x; e < OUT_TOKENS * rank; e += OUT_WARPS * 32) {
        int tt = e / rank, k = e - tt * rank;
        ol[e] = tt < nt ? o_lat[((int64_t)(t0 + tt) * n_head + h) * rank + k] : 0.0f;
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int dv = blockIdx.x * OUT_WARPS + warp;
    if (dv >= d_v)
        return;
    const int64_t row = (int64_t)h * (d_nope + d_v) + d_nope + dv;
    float acc[OUT_TOKENS];
#pragma unroll
    for (int tt = 0; tt < OUT_TOKENS; tt++)
        acc[tt] = 0.0f;
#pragma unroll 4
    for (int k = lane; k < rank; k += 32) {
        float wv = dq_weight_at(w, row, k);
#pragma unroll
        for (int tt = 0; tt < OUT_TOKENS; tt++)
            acc[tt] = fmaf(ol[tt * rank + k], wv, acc[tt]);
    }
#pragma unroll
    for (int tt = 0; tt < OUT_TOKENS; tt++) {
        float v = warp_sum(acc[tt]);
        if (lane == tt && tt < nt)
            out[((int64_t)(t0 + tt) * n_head + h) * d_v + dv] = v;
    }
}

typedef void (*mla_attn_fn)(mla_params);

// [kv_dtype == KERN_DT_BF16][ceil(rank / MLA_THREADS) - 1]
static const mla_attn_fn mla_attn_kernels[2][MLA_MAX_RANK / MLA_THREADS] = {
    {mla_attn<1, float>, mla_attn<2, float>, mla_attn<3, float>, mla_attn<4, float>},
    {mla_attn<1, uint16_t>, mla_attn<2, uint16_t>, mla_attn<3, uint16_t>, mla_attn<4, uint16_t>},
};

// Workspace layout: q_lat, o_lat ([T][n_head][rank] f32 each, T = batch.n_tokens), then with key
// splits part_ml ([n_split][rows] float2) and part ([n_split][rows][rank] f32). Depends only on
// host fields of the args.
extern "C" size_t kern_mla_workspace_bytes(const kern_mla_args *args)
{
    if (!mla_args_ok(args) || args->batch.n_tokens == 0)
        return 0;
    size_t rows = (size_t)args->batch.n_tokens * (size_t)args->n_head;
    size_t rank = (size_t)args->kv_lora_rank;
    size_t bytes = 2 * rows * rank * sizeof(float);
    mla_plan pl = mla_plan_make(args);
    if (pl.n_split > 1)
        bytes += (size_t)pl.n_split * rows * (sizeof(float2) + rank * sizeof(float));
    return bytes;
}

// Validates (cudaErrorInvalidValue for bad args, a grid past its limits or a missing workspace),
// then launches mla_q_absorb, mla_attn<ceil(rank / MLA_THREADS), KV>, mla_combine (only with key
// splits) and mla_out on `stream`. The device batch arrays must agree with the host fields
// (seq_start[n_seq] = n_tokens, lengths <= max_seq_tokens, contexts <= max_ctx), as kernels.h says.
extern "C" int kern_mla_absorbed(const kern_mla_args *args, void *workspace, kern_stream stream)
{
    if (!mla_args_ok(args))
        return (int)cudaErrorInvalidValue;
    if (args->batch.n_tokens == 0)
        return 0;
    if (!workspace)
        return (int)cudaErrorInvalidValue;
    const kern_mla_args *a = args;
    const kern_kv_batch *b = &a->batch;
    cudaStream_t st = (cudaStream_t)stream;
    const int r = a->kv_lora_rank, T = b->n_tokens, H = a->n_head;
    const size_t rows = (size_t)T * (size_t)H;
    mla_plan pl = mla_plan_make(a);

    mla_params p;
    p.n_rows = T * H;
    p.n_head = H;
    p.d_nope = a->d_nope;
    p.d_rope = a->d_rope;
    p.rank = r;
    p.scale = a->scale;
    p.seq_start = b->seq_start;
    p.seq_pos0 = b->seq_pos0;
    p.block_table = b->block_table;
    p.block_size = b->block_size;
    p.max_blocks = b->max_blocks;
    p.q = a->q;
    p.q_stride = a->q_stride;
    p.ckv = a->ckv;
    p.kpe = a->kpe;
    float *q_lat = (float *)workspace;
    p.q_lat = q_lat;
    p.o_lat = q_lat + rows * r;
    p.chunk = pl.chunk;
    p.part_ml = NULL;
    p.part = NULL;
    if (pl.n_split > 1) {
        p.part_ml = (float2 *)(p.o_lat + rows * r);
        p.part = (float *)(p.part_ml + (size_t)pl.n_split * rows);
    }

    cudaError_t e;
    dim3 qa_grid((unsigned)ceil_div(r, QA_THREADS), (unsigned)H,
                 (unsigned)ceil_div(T, QA_TOKENS));
    mla_q_absorb<<<qa_grid, QA_THREADS, QA_TOKENS * a->d_nope * sizeof(float), st>>>(
        a->q, a->q_stride, *a->kv_b, T, H, a->d_nope, a->d_rope, a->d_v, r, q_lat);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return (int)e;

    mla_attn_fn fn =
        mla_attn_kernels[a->kv_dtype == KERN_DT_BF16][(r + MLA_THREADS - 1) / MLA_THREADS - 1];
    size_t smem = mla_attn_smem_bytes(r, a->d_rope);
    int dev = 0;
    if (smem > LAUNCH_SMEM_DEFAULT &&
        ((e = cudaGetDevice(&dev)) != cudaSuccess || (e = launch_smem_limit((const void *)fn, smem, dev)) != cudaSuccess))
        return (int)e;
    fn<<<dim3((unsigned)pl.n_row_tiles, (unsigned)pl.n_split, (unsigned)b->n_seq), MLA_THREADS,
         smem, st>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return (int)e;

    if (pl.n_split > 1) {
        mla_combine<<<(unsigned)((rows + COMBINE_WARPS - 1) / COMBINE_WARPS), COMBINE_WARPS * 32,
                      0, st>>>(p.part_ml, p.part, pl.n_split, (int)rows, r, p.o_lat);
        if ((e = cudaGetLastError()) != cudaSuccess)
            return (int)e;
    }

    size_t out_smem = OUT_TOKENS * (size_t)r * sizeof(float);
    dim3 out_grid((unsigned)ceil_div(a->d_v, OUT_WARPS), (unsigned)H,
                  (unsigned)ceil_div(T, OUT_TOKENS));
    mla_out<<<out_grid, OUT_WARPS * 32, out_smem, st>>>(p.o_lat, *a->kv_b, T, H, a->d_nope,
                                                         a->d_v, r, a->out);
    return (int)cudaGetLastError();
}
