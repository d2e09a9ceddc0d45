// moe.cu: mixture-of-experts routing (kern_moe_route) and the routed experts as one grouped
// operation over the device-side routing (kern_moe_experts), f32.
//
// Routing: one warp-sized block per token; every top-k round picks exactly the element
// cpu_moe_route's topk_desc picks (ties to the lower index, strictly greater wins).
// Experts: moe_sort counting-sorts the (token, slot) pairs by expert on the device (no host
// round trip), moe_grouped<true> computes h = silu(gate_e x) * up_e x for every pair and
// moe_grouped<false> y = down_e h, one warp per weight row reading each dequantized row once
// for up to GR_PAIRS pairs routed to that expert, then moe_combine sums each token's products
// in slot order. In the bf16 mode (tc_gate_up) prefill-sized batches compute h on tensor cores
// instead (moe_gate_up_tc, matmul_tc.cuh: 64 pairs of one expert x 64 rows of gate and up per
// CTA, x rounded to bf16, which it already is there; exact products, f32 sums). Invariant: h and y are indexed by pair id p = t * n_expert_used + i, so no
// result depends on the order inside an expert's bucket; weights are dequantized exactly.
// With act_quant_group (W8A8, the bf16 mode over FP8 experts) kern_quant_act_fp8 quantizes x
// into the workspace (xq) before moe_grouped<true>, and h in place before moe_grouped<false>,
// row by row as the CPU does: xq is the CPU's bit for bit; h differs from the CPU's by
// summation order, so where that order moves an element across an e4m3 rounding boundary its
// quantized value is one e4m3 step away (host emulation: one output row in 64 tokens x 8
// experts at 4.5e-4 relative L2, the rest within 3.3e-7).
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "dequant.cuh"
#include "kernels.h"
#include "matmul_tc.cuh"
#include "reduce.cuh"

#define ROUTE_MAX_EXPERT 1024
#define ROUTE_MAX_GROUP 64
#define ROUTE_MAX_USED 32

#define EXPERTS_MAX 4096 // moe_sort keeps two ints per expert in shared memory
#define SORT_THREADS 512
#define GR_WARPS 8 // moe_grouped: weight rows per CTA, one per warp
#define GR_PAIRS 8 // pairs sharing each dequantized weight element
#define COMBINE_THREADS 256

// ---- routing ----------------------------------------------------------------------------------

// State of one topk_desc round over the untaken elements seen so far: the best under the total
// order pick_better, and the lowest untaken index (topk_desc keeps that element when it is NaN,
// as nothing compares greater than NaN). Merging two states is associative and commutative, so
// any reduction tree gives the sequential answer.
typedef struct pick_state {
    float v;   // value of the best candidate
    int i;     // its index, -1 when none
    int first; // lowest untaken index seen, INT32_MAX when none
} pick_state;

// True when (va, ia) ranks before (vb, ib): a candidate beats none, non-NaN beats NaN, then the
// larger value, then the lower index (equal values: topk_desc only replaces on strictly greater).
static inline __host__ __device__ bool pick_better(float va, int ia, float vb, int ib)
{
    if (ia < 0)
        return false;
    if (ib < 0)
        return true;
    bool na = va != va, nb = vb != vb;
    if (na != nb)
        return nb;
    if (!na && va != vb)
        return va > vb;
    return ia < ib;
}

static inline __host__ __device__ pick_state pick_none(void)
{
    pick_state s = {0.0f, -1, INT32_MAX};
    return s;
}

static inline __host__ __device__ void pick_add(pick_state *s, float v, int i)
{
    if (pick_better(v, i, s->v, s->i)) {
        s->v = v;
        s->i = i;
    }
    if (i < s->first)
        s->first = i;
}

static inline __host__ __device__ void pick_merge(pick_state *s, pick_state o)
{
    if (pick_better(o.v, o.i, s->v, s->i)) {
        s->v = o.v;
        s->i = o.i;
    }
    if (o.first < s->first)
        s->first = o.first;
}

// The index topk_desc picks from the merged state of all untaken elements of v, -1 when none:
// a NaN first element stays best (nothing is > NaN); otherwise NaNs never win and the largest
// value with the lowest index does.
static inline __host__ __device__ int pick_result(pick_state s, const float *v)
{
    if (s.first == INT32_MAX)
        return -1;
    float f = v[s.first];
    return f != f ? s.first : s.i;
}

// One topk_desc round by a whole warp over v[0 .. n) skipping taken[e] != 0; every lane
// returns the same index.
static __device__ int warp_pick(const float *v, const unsigned char *taken, int n)
{
    const int lane = threadIdx.x % 32;
    pick_state s = pick_none();
    for (int e = lane; e < n; e += 32)
        if (!taken[e])
            pick_add(&s, v[e], e);
    for (int o = 16; o > 0; o >>= 1) {
        pick_state b;
        b.v = __shfl_xor_sync(0xffffffffu, s.v, o);
        b.i = __shfl_xor_sync(0xffffffffu, s.i, o);
        b.first = __shfl_xor_sync(0xffffffffu, s.first, o);
        pick_merge(&s, b);
    }
    return pick_result(s, v);
}

static __device__ double warp_sum_f64(double x)
{
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

typedef struct route_params {
    kern_router kind;
    int n_expert, n_used, n_group, topk_group;
    bool norm_topk_prob;
    float routed_scaling_factor;
    const void *bias; // [n_expert] bias_dtype, NULL for none
    kern_dtype bias_dtype;
    const float *logits; // [n_tokens][n_expert]
    int32_t *idx;        // [n_tokens][n_used]
    float *weight;       // [n_tokens][n_used]
} route_params;

// Grid n_tokens, block 32 (one warp per token): the steps of cpu_moe_route, each element owned
// by lane e % 32, top-k rounds by warp_pick, the weights by lane 0 in slot order.
static __global__ void __launch_bounds__(32) moe_route(route_params p)
{
    __shared__ float prob[ROUTE_MAX_EXPERT];   // softmax or sigmoid probabilities
    __shared__ float choice[ROUTE_MAX_EXPERT]; // sigmoid: prob + bias, dropped groups -inf
    __shared__ unsigned char taken[ROUTE_MAX_EXPERT];
    __shared__ float gscore[ROUTE_MAX_GROUP];
    __shared__ unsigned char gtaken[ROUTE_MAX_GROUP];
    __shared__ int32_t sel[ROUTE_MAX_USED];
    const int lane = threadIdx.x, E = p.n_expert, K = p.n_used;
    const int64_t t = blockIdx.x;
    const float *lg = p.logits + t * E;

    for (int e = lane; e < E; e += 32)
        taken[e] = 0;
    const float *cand = prob; // what the final top-k ranks
    if (p.kind == KERN_ROUTER_SOFTMAX) {
        float mx = -INFINITY;
        for (int e = lane; e < E; e += 32)
            mx = fmaxf(mx, lg[e]); // NaN never raises the max, as softmax_inplace
        mx = warp_max(mx);
        double sum = 0.0;
        for (int e = lane; e < E; e += 32) {
            float x = expf(lg[e] - mx);
            prob[e] = x;
            sum += x;
        }
        const float inv = (float)(1.0 / warp_sum_f64(sum));
        for (int e = lane; e < E; e += 32)
            prob[e] *= inv;
        __syncwarp();
    } else {
        for (int e = lane; e < E; e += 32) {
            float pr = 1.0f / (1.0f + expf(-lg[e]));
            prob[e] = pr;
            choice[e] = pr + (p.bias ? dq_load(p.bias, p.bias_dtype, e) : 0.0f);
        }
        __syncwarp();
        if (p.n_group > 1) {
            const int per = E / p.n_group; // experts past n_group * per belong to no group
            for (int g = 0; g < p.n_group; g++) {
                const float *cg = choice + g * per;
                unsigned char *tg = taken + g * per;
                int i0 = warp_pick(cg, tg, per);
                if (lane == 0)
                    tg[i0] = 1;
                __syncwarp();
                int i1 = warp_pick(cg, tg, per);
                __syncwarp(); // every lane has read tg before it is cleared
                if (lane == 0) {
                    tg[i0] = 0;
                    gscore[g] = cg[i0] + cg[i1];
                }
            }
            for (int g = lane; g < p.n_group; g += 32)
                gtaken[g] = 0;
            __syncwarp();
            for (int i = 0; i < p.topk_group; i++) {
                int g = warp_pick(gscore, gtaken, p.n_group);
                if (g < 0)
                    break; // topk_group > n_group: every group is kept
                if (lane == 0)
                    gtaken[g] = 1;
                __syncwarp();
            }
            for (int e = lane; e < p.n_group * per; e += 32)
                if (!gtaken[e / per])
                    choice[e] = -INFINITY;
            __syncwarp();
        }
        cand = choice;
    }

    for (int i = 0; i < K; i++) {
        int e = warp_pick(cand, taken, E);
        if (lane == 0) {
            taken[e] = 1;
            sel[i] = e;
        }
        __syncwarp();
    }

    if (lane == 0) {
        int32_t *idx = p.idx + t * K;
        float *w = p.weight + t * K;
        double sum = 0.0;
        for (int i = 0; i < K; i++)
            sum += prob[sel[i]];
        for (int i = 0; i < K; i++) {
            float wi = prob[sel[i]];
            if (p.kind == KERN_ROUTER_SOFTMAX) {
                if (p.norm_topk_prob)
                    wi = (float)(wi / sum);
            } else {
                if (p.norm_topk_prob)
                    wi = (float)(wi / (sum + 1e-20));
                wi *= p.routed_scaling_factor;
            }
            idx[i] = sel[i];
            w[i] = wi;
        }
    }
}

extern "C" int kern_moe_route(const kern_route_args *args, kern_stream stream)
{
    const kern_route_args *a = args;
    if (!a || a->n_tokens < 0 || a->n_expert < 1 || a->n_expert > ROUTE_MAX_EXPERT ||
        a->n_expert_used < 1 || a->n_expert_used > ROUTE_MAX_USED ||
        a->n_expert_used > a->n_expert ||
        (a->kind != KERN_ROUTER_SOFTMAX && a->kind != KERN_ROUTER_SIGMOID))
        return (int)cudaErrorInvalidValue;
    // sigmoid groups: each needs two members for its top-2 score
    if (a->kind == KERN_ROUTER_SIGMOID && a->n_group > 1 &&
        (a->n_group > ROUTE_MAX_GROUP || a->n_expert / a->n_group < 2))
        return (int)cudaErrorInvalidValue;
    if (a->kind == KERN_ROUTER_SIGMOID && a->bias &&
        (!a->bias->data || !dq_dtype_valid(a->bias->dtype) || a->bias->n < a->n_expert))
        return (int)cudaErrorInvalidValue;
    if (a->n_tokens == 0)
        return 0;
    if (!a->logits || !a->idx || !a->weight)
        return (int)cudaErrorInvalidValue;
    route_params p;
    p.kind = a->kind;
    p.n_expert = a->n_expert;
    p.n_used = a->n_expert_used;
    p.n_group = a->n_group;
    p.topk_group = a->topk_group;
    p.norm_topk_prob = a->norm_topk_prob;
    p.routed_scaling_factor = a->routed_scaling_factor;
    p.bias = a->kind == KERN_ROUTER_SIGMOID && a->bias ? a->bias->data : NULL;
    p.bias_dtype = a->bias ? a->bias->dtype : KERN_DT_F32;
    p.logits = a->logits;
    p.idx = a->idx;
    p.weight = a->weight;
    moe_route<<<(unsigned)a->n_tokens, 32, 0, (cudaStream_t)stream>>>(p);
    return (int)cudaGetLastError();
}

// ---- experts ----------------------------------------------------------------------------------

typedef struct moe_params {
    int n_tokens, d_model, d_ff, n_expert, n_used;
    const float *x;          // [n_tokens][d_model]
    const kern_weight *gate; // device [n_expert], each [d_ff][d_model]
    const kern_weight *up;   // device [n_expert], each [d_ff][d_model]
    const kern_weight *down; // device [n_expert], each [d_model][d_ff]
    const int32_t *idx;      // [n_tokens][n_used]
    const float *weight;     // [n_tokens][n_used]
    float *out;              // [n_tokens][d_model]
    bool x_vec;              // x 16-byte aligned and d_model % 8 == 0 (x: the caller's, or xq)
    bool h_vec;              // h 16-byte aligned and d_ff % 8 == 0
    bool h_round;            // h rounded to the nearest bf16 (h_bf16)
    // workspace
    float *h;      // [n_pairs][d_ff] silu(gate x) * up x per pair
    float *y;      // [n_pairs][d_model] down h per pair
    int *offset;   // [n_expert + 1] first position in order of each expert's pairs
    int *active;   // [n_expert] experts with pairs, ascending; n_active of them valid
    int *n_active; // [1]
    int *order;    // [n_pairs] pair ids sorted by expert
} moe_params;

// Grid 1, block SORT_THREADS, dynamic smem 2 * n_expert ints: counting sort of the pairs by
// expert. Pairs with an expert outside [0, n_expert) are left out (moe_combine gives their
// token NaN). Order inside a bucket follows the atomics and does not matter (see the header).
static __global__ void __launch_bounds__(SORT_THREADS) moe_sort(moe_params p)
{
    extern __shared__ int sh[];
    int *cnt = sh;              // [n_expert] pairs per expert
    int *cur = sh + p.n_expert; // [n_expert] scatter cursor
    __shared__ int2 wtot[SORT_THREADS / 32];
    const int E = p.n_expert, n_pairs = p.n_tokens * p.n_used;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    for (int e = tid; e < E; e += SORT_THREADS)
        cnt[e] = 0;
    __syncthreads();
    for (int q = tid; q < n_pairs; q += SORT_THREADS) {
        int e = p.idx[q];
        if (e >= 0 && e < E)
            atomicAdd(&cnt[e], 1);
    }
    __syncthreads();

    // Exclusive scan of (pairs, has pairs) over experts; thread tid owns experts [e0, e1).
    const int per = (E + SORT_THREADS - 1) / SORT_THREADS;
    const int e0 = min(tid * per, E), e1 = min(e0 + per, E);
    int2 own = make_int2(0, 0);
    for (int e = e0; e < e1; e++) {
        own.x += cnt[e];
        own.y += cnt[e] > 0;
    }
    int2 inc = own; // inclusive scan inside the warp
    for (int o = 1; o < 32; o <<= 1) {
        int x = __shfl_up_sync(0xffffffffu, inc.x, o), y = __shfl_up_sync(0xffffffffu, inc.y, o);
        if (lane >= o) {
            inc.x += x;
            inc.y += y;
        }
    }
    if (lane == 31)
        wtot[warp] = inc;
    __syncthreads();
    if (warp == 0) { // inclusive scan of the warp totals
        int2 v = lane < SORT_THREADS / 32 ? wtot[lane] : make_int2(0, 0);
        for (int o = 1; o < 32; o <<= 1) {
            int x = __shfl_up_sync(0xffffffffu, v.x, o), y = __shfl_up_sync(0xffffffffu, v.y, o);
            if (lane >= o) {
                v.x += x;
                v.y += y;
            }
        }
        if (lane < SORT_THREADS / 32)
            wtot[lane] = v;
    }
    __syncthreads();
    int2 base = warp > 0 ? wtot[warp - 1] : make_int2(0, 0);
    base.x += inc.x - own.x;
    base.y += inc.y - own.y;
    for (int e = e0; e < e1; e++) {
        p.offset[e] = base.x;
        cur[e] = base.x;
        if (cnt[e] > 0)
            p.active[base.y++] = e;
        base.x += cnt[e];
    }
    if (tid == SORT_THREADS - 1) { // its inclusive sums are the totals
        int2 tot = wtot[SORT_THREADS / 32 - 1];
        p.offset[E] = tot.x;
        *p.n_active = tot.y;
    }
    __syncthreads();
    for (int q = tid; q < n_pairs; q += SORT_THREADS) {
        int e = p.idx[q];
        if (e >= 0 && e < E)
            p.order[atomicAdd(&cur[e], 1)] = q;
    }
}

// Whether whole 8-column granules of w can be read with one aligned vector load: rows a
// multiple of 8 wide, data 16-byte aligned, and one scale per granule (INT8: always, one per
// row).
static __device__ bool granule8_ok(const kern_weight &w)
{
    if (w.n_in % 8 != 0 || (uintptr_t)w.data % 16 != 0)
        return false;
    if (w.fmt == KERN_W_FP8_BLOCK)
        return w.block_in % 8 == 0;
    if (w.fmt == KERN_W_INT4_GROUP)
        return w.group % 8 == 0;
    return true;
}

// Dequantizes W(n, k .. k + 8) of a weight that passes granule8_ok (k % 8 == 0, k < n_in).
template <int FMT>
static __device__ __forceinline__ void granule8(const kern_weight &w, int64_t n, int64_t k,
                                                float (&o)[8])
{
    if constexpr (FMT == KERN_W_F32) {
        const float4 *s = (const float4 *)((const float *)w.data + n * w.n_in + k);
        float4 a = __ldg(s), b = __ldg(s + 1);
        o[0] = a.x, o[1] = a.y, o[2] = a.z, o[3] = a.w;
        o[4] = b.x, o[5] = b.y, o[6] = b.z, o[7] = b.w;
    } else if constexpr (FMT == KERN_W_BF16 || FMT == KERN_W_F16) {
        uint4 u = __ldg((const uint4 *)((const unsigned short *)w.data + n * w.n_in + k));
        const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) { // low half = lower column
            uint16_t lo = (uint16_t)(v[j] & 0xffffu), hi = (uint16_t)(v[j] >> 16);
            o[2 * j] = FMT == KERN_W_BF16 ? dq_bf16(lo) : dq_f16(lo);
            o[2 * j + 1] = FMT == KERN_W_BF16 ? dq_bf16(hi) : dq_f16(hi);
        }
    } else if constexpr (FMT == KERN_W_FP8_BLOCK) {
        uint2 u = __ldg((const uint2 *)((const unsigned char *)w.data + n * w.n_in + k));
        float lo[4], hi[4];
        dq_e4m3x4(u.x, lo);
        dq_e4m3x4(u.y, hi);
        float s = dq_load(w.scale, w.scale_dtype, (n / w.block_out) * w.scale_cols + k / w.block_in);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            o[j] = lo[j] * s;
            o[4 + j] = hi[j] * s;
        }
    } else if constexpr (FMT == KERN_W_INT8_CHANNEL) {
        uint2 u = __ldg((const uint2 *)((const unsigned char *)w.data + n * w.n_in + k));
        float lo[4], hi[4];
        dq_int8x4(u.x, lo);
        dq_int8x4(u.y, hi);
        float s = dq_load(w.scale, w.scale_dtype, n);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            o[j] = lo[j] * s;
            o[4 + j] = hi[j] * s;
        }
    } else { // KERN_W_INT4_GROUP
        uint32_t word = __ldg((const unsigned int *)w.data + n * w.packed_cols + k / 8);
        float s = dq_load(w.scale, w.scale_dtype, n * w.scale_cols + k / w.group);
#pragma unroll
        for (int j = 0; j < 8; j++)
            o[j] = dq_int4(word, j) * s;
    }
}

// An h element as stored: rounded to the nearest bf16 (ties to even) when round (h_bf16).
static __device__ __forceinline__ float moe_h(float h, bool round)
{
    return round ? __bfloat162float(__float2bfloat16_rn(h)) : h;
}

// One warp, weight row n of expert e (w0 = gate or down, w1 = up when GATED), for the pairs
// at positions [beg, end) of order, GR_PAIRS at a time. FMT < 0: any format, one column per
// lane per step (dq_weight_at); else the 8-column granules of FMT (granule8_ok holds for w0,
// w1 and the input rows are 16-byte aligned). Lane 0 writes h[pair][n] = silu(g) * u, as
// cpu_swiglu, or y[pair][n].
template <bool GATED, int FMT>
static __device__ void grouped_row(const moe_params &p, const kern_weight &w0,
                                   const kern_weight &w1, int n, int beg, int end)
{
    const int lane = threadIdx.x % 32;
    const int n_in = GATED ? p.d_model : p.d_ff;
    for (int base = beg; base < end; base += GR_PAIRS) {
        const int np = min(GR_PAIRS, end - base);
        int pid[GR_PAIRS];
        const float *in[GR_PAIRS]; // input row of each pair: x[t] or h[pair]
#pragma unroll
        for (int j = 0; j < GR_PAIRS; j++) {
            pid[j] = p.order[base + (j < np ? j : 0)];
            in[j] = GATED ? p.x + (int64_t)(pid[j] / p.n_used) * p.d_model
                          : p.h + (int64_t)pid[j] * p.d_ff;
        }
        float a0[GR_PAIRS], a1[GR_PAIRS];
#pragma unroll
        for (int j = 0; j < GR_PAIRS; j++)
            a0[j] = a1[j] = 0.0f;
        if constexpr (FMT < 0) {
            for (int k = lane; k < n_in; k += 32) {
                float wa = dq_weight_at(w0, n, k), wb = GATED ? dq_weight_at(w1, n, k) : 0.0f;
#pragma unroll
                for (int j = 0; j < GR_PAIRS; j++) {
                    if (j < np) {
                        float xv = __ldg(in[j] + k);
                        a0[j] = fmaf(wa, xv, a0[j]);
                        if (GATED)
                            a1[j] = fmaf(wb, xv, a1[j]);
                    }
                }
            }
        } else {
#pragma unroll 2
            for (int k = 8 * lane; k < n_in; k += 256) {
                float wa[8], wb[8];
                granule8<FMT>(w0, n, k, wa);
                if (GATED)
                    granule8<FMT>(w1, n, k, wb);
#pragma unroll
                for (int j = 0; j < GR_PAIRS; j++) {
                    if (j < np) {
                        float4 xa = __ldg((const float4 *)(in[j] + k));
                        float4 xb = __ldg((const float4 *)(in[j] + k) + 1);
                        const float xv[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
                        for (int c = 0; c < 8; c++) {
                            a0[j] = fmaf(wa[c], xv[c], a0[j]);
                            if (GATED)
                                a1[j] = fmaf(wb[c], xv[c], a1[j]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < GR_PAIRS; j++) {
            if (j < np) {
                float g = warp_sum(a0[j]);
                if (GATED) {
                    float u = warp_sum(a1[j]);
                    if (lane == 0)
                        p.h[(int64_t)pid[j] * p.d_ff + n] = moe_h(g / (1.0f + expf(-g)) * u, p.h_round);
                } else if (lane == 0) {
                    p.y[(int64_t)pid[j] * p.d_model + n] = g;
                }
            }
        }
    }
}

// Grid (ceil(n_out / GR_WARPS), min(n_expert, n_pairs)), block GR_WARPS warps. CTA (x, a)
// serves active expert a (none when a >= n_active) and weight rows x * GR_WARPS + warp:
// GATED: gate/up rows over x into h (n_out = d_ff); else down rows over h into y
// (n_out = d_model). A descriptor whose shape does not match gives NaN rows.
// No __launch_bounds__: with .maxntid 256 and six vector formats, ptxas (CUDA 13.0) schedules
// moe_grouped<false> towards 128 registers and spills 28 (sm_90a) / 48 (sm_80) bytes; without
// it both instantiations settle at 112-125 registers, spill-free and still two CTAs per SM.
template <bool GATED>
static __global__ void moe_grouped(moe_params p)
{
    if ((int)blockIdx.y >= *p.n_active)
        return;
    const int e = p.active[blockIdx.y];
    const int n_out = GATED ? p.d_ff : p.d_model, n_in = GATED ? p.d_model : p.d_ff;
    const int n = blockIdx.x * GR_WARPS + threadIdx.x / 32;
    if (n >= n_out)
        return;
    const int beg = p.offset[e], end = p.offset[e + 1];
    const kern_weight w0 = GATED ? p.gate[e] : p.down[e];
    const kern_weight w1 = GATED ? p.up[e] : w0;
    if (w0.n_in != n_in || w0.n_out != n_out || w1.n_in != n_in || w1.n_out != n_out) {
        for (int q = beg + threadIdx.x % 32; q < end; q += 32) {
            if (GATED)
                p.h[(int64_t)p.order[q] * p.d_ff + n] = NAN;
            else
                p.y[(int64_t)p.order[q] * p.d_model + n] = NAN;
        }
        return;
    }
    const bool vec = (GATED ? p.x_vec : p.h_vec) && w0.fmt == w1.fmt && granule8_ok(w0) &&
                     granule8_ok(w1);
    switch (vec ? (int)w0.fmt : -1) {
    case KERN_W_F32: grouped_row<GATED, KERN_W_F32>(p, w0, w1, n, beg, end); break;
    case KERN_W_BF16: grouped_row<GATED, KERN_W_BF16>(p, w0, w1, n, beg, end); break;
    case KERN_W_F16: grouped_row<GATED, KERN_W_F16>(p, w0, w1, n, beg, end); break;
    case KERN_W_FP8_BLOCK: grouped_row<GATED, KERN_W_FP8_BLOCK>(p, w0, w1, n, beg, end); break;
    case KERN_W_INT4_GROUP: grouped_row<GATED, KERN_W_INT4_GROUP>(p, w0, w1, n, beg, end); break;
    case KERN_W_INT8_CHANNEL: grouped_row<GATED, KERN_W_INT8_CHANNEL>(p, w0, w1, n, beg, end); break;
    default: grouped_row<GATED, -1>(p, w0, w1, n, beg, end); break;
    }
}

// Grid (n_tokens, ceil(d_model / COMBINE_THREADS)), block COMBINE_THREADS, one thread per
// output element: out[t][d] = sum_i weight[t][i] * y[t * n_used + i][d], i ascending.
static __global__ void __launch_bounds__(COMBINE_THREADS) moe_combine(moe_params p)
{
    const int64_t t = blockIdx.x;
    const int d = blockIdx.y * COMBINE_THREADS + threadIdx.x;
    if (d >= p.d_model)
        return;
    float acc = 0.0f;
    for (int i = 0; i < p.n_used; i++) {
        int64_t q = t * p.n_used + i;
        int e = p.idx[q];
        float y = e >= 0 && e < p.n_expert ? p.y[q * p.d_model + d] : NAN;
        acc += p.weight[q] * y;
    }
    p.out[t * p.d_model + d] = acc;
}

static size_t align16(size_t n) { return (n + 15) & ~(size_t)15; }

static bool moe_tc_fmt_ok(kern_wfmt f)
{
    return f == KERN_W_BF16 || f == KERN_W_FP8_BLOCK || f == KERN_W_INT8_CHANNEL || f == KERN_W_INT4_GROUP;
}

static bool moe_args_ok(const kern_moe_args *a)
{
    if (!a || a->n_tokens < 0 || a->d_model < 1 || a->d_ff_expert < 1 || a->n_expert < 1 ||
        a->n_expert > EXPERTS_MAX || a->n_expert_used < 1 || a->n_expert_used > a->n_expert ||
        (int64_t)a->n_tokens * a->n_expert_used > INT32_MAX)
        return false;
    if (a->act_quant_group < 0)
        return false;
    if ((a->tc_gate_up && (a->act_quant_group != 0 || !moe_tc_fmt_ok(a->tc_fmt))) ||
        (a->tc_down && (a->act_quant_group != 0 || !a->h_bf16 || !moe_tc_fmt_ok(a->tc_down_fmt))))
        return false;
    return a->n_tokens == 0 || (a->x && a->gate && a->up && a->down && a->idx && a->weight &&
                                a->out);
}

// Workspace layout (each part 16-byte aligned): h [n_pairs][d_ff] f32, y [n_pairs][d_model]
// f32, offset [n_expert + 1], active [n_expert], n_active [1], order [n_pairs] int, and with
// act_quant_group xq [n_tokens][d_model] f32 (x quantized; 0 bytes without).
typedef struct moe_layout {
    size_t h, y, offset, active, n_active, order, xq, bytes; // byte offsets, total
} moe_layout;

static moe_layout moe_layout_make(const kern_moe_args *a)
{
    size_t n_pairs = (size_t)a->n_tokens * (size_t)a->n_expert_used;
    moe_layout l;
    l.h = 0;
    l.y = l.h + align16(n_pairs * (size_t)a->d_ff_expert * sizeof(float));
    l.offset = l.y + align16(n_pairs * (size_t)a->d_model * sizeof(float));
    l.active = l.offset + align16(((size_t)a->n_expert + 1) * sizeof(int));
    l.n_active = l.active + align16((size_t)a->n_expert * sizeof(int));
    l.order = l.n_active + align16(sizeof(int));
    l.xq = l.order + align16(n_pairs * sizeof(int));
    l.bytes = l.xq + (a->act_quant_group > 0
                          ? align16((size_t)a->n_tokens * (size_t)a->d_model * sizeof(float))
                          : 0);
    return l;
}

extern "C" size_t kern_moe_workspace_bytes(const kern_moe_args *args)
{
    if (!moe_args_ok(args) || args->n_tokens == 0)
        return 0;
    return moe_layout_make(args).bytes;
}

// The experts' products on tensor cores (matmul_tc.cuh's tc_kernel): MODE TC_GATED computes
// h = silu(gate x) * up x (rounded to bf16 with h_bf16) for every pair, TC_DOWN y = down h. Grid
// (64-row (GATED) or 128-row (DOWN) tiles of the output, expert slots, 64-pair tiles of the
// largest possible bucket, which holds at most n_tokens pairs as a token picks an expert once);
// CTAs past the device's n_active or past their expert's pairs return at once. VEC: every
// weight row starts 16-byte aligned (n_in % 8 == 0; the backend uploads each expert tensor to
// its own allocation).
template <int FMT, int MODE>
static cudaError_t moe_tc_fmt(const kern_moe_args *a, const moe_params &mp, unsigned slots, cudaStream_t st)
{
    constexpr bool GATED = MODE == TC_GATED;
    tc_params p = {};
    p.x = GATED ? mp.x : mp.h;
    p.x_vec = GATED ? mp.x_vec : mp.h_vec;
    p.n_used = mp.n_used;
    p.gate = mp.gate;
    p.up = mp.up;
    p.down = mp.down;
    p.order = mp.order;
    p.offset = mp.offset;
    p.active = mp.active;
    p.n_active = mp.n_active;
    p.out = GATED ? mp.h : mp.y;
    p.h_round = mp.h_round;
    const int n_out = GATED ? a->d_ff_expert : a->d_model, n_in = GATED ? a->d_model : a->d_ff_expert;
    const int rows = GATED ? TC_BN / 2 : TC_BN;
    dim3 grid((unsigned)((n_out + rows - 1) / rows), slots, (unsigned)((a->n_tokens + TC_BM - 1) / TC_BM));
    if (FMT != KERN_W_INT4_GROUP && n_in % 8 == 0)
        tc_kernel<FMT, true, MODE><<<grid, TC_THREADS, 0, st>>>(p);
    else
        tc_kernel<FMT, false, MODE><<<grid, TC_THREADS, 0, st>>>(p);
    return cudaGetLastError();
}

template <int MODE>
static cudaError_t moe_tc(const kern_moe_args *a, kern_wfmt fmt, const moe_params &p, unsigned slots,
                          cudaStream_t st)
{
    if ((a->n_tokens + TC_BM - 1) / TC_BM > 65535)
        return cudaErrorInvalidValue;
    switch (fmt) {
    case KERN_W_BF16: return moe_tc_fmt<KERN_W_BF16, MODE>(a, p, slots, st);
    case KERN_W_FP8_BLOCK: return moe_tc_fmt<KERN_W_FP8_BLOCK, MODE>(a, p, slots, st);
    case KERN_W_INT8_CHANNEL: return moe_tc_fmt<KERN_W_INT8_CHANNEL, MODE>(a, p, slots, st);
    default: return moe_tc_fmt<KERN_W_INT4_GROUP, MODE>(a, p, slots, st);
    }
}

// Launches moe_sort, moe_grouped<true> (or moe_gate_up_tc: tc_gate_up from
// KERN_MOE_TC_MIN_TOKENS tokens on an sm_80+ device), moe_grouped<false> and moe_combine on
// `stream` (with act_quant_group, kern_quant_act_fp8 of x into xq before moe_grouped<true> and
// of h in place before moe_grouped<false>: h rows of pairs whose expert id is invalid hold whatever the
// workspace held, are quantized all the same, and are never read); the grids are sized for
// the worst case (every pair on its own expert) and CTAs past the device's n_active return at
// once.
extern "C" int kern_moe_experts(const kern_moe_args *args, void *workspace, kern_stream stream)
{
    if (!moe_args_ok(args))
        return (int)cudaErrorInvalidValue;
    if (args->n_tokens == 0)
        return 0;
    if (!workspace)
        return (int)cudaErrorInvalidValue;
    const kern_moe_args *a = args;
    cudaStream_t st = (cudaStream_t)stream;
    moe_layout l = moe_layout_make(a);
    char *ws = (char *)workspace;
    moe_params p;
    p.n_tokens = a->n_tokens;
    p.d_model = a->d_model;
    p.d_ff = a->d_ff_expert;
    p.n_expert = a->n_expert;
    p.n_used = a->n_expert_used;
    p.x = a->x;
    if (a->act_quant_group > 0) {
        float *xq = (float *)(ws + l.xq);
        int qe = kern_quant_act_fp8(a->x, a->d_model, xq, a->d_model, a->n_tokens, a->d_model,
                                    a->act_quant_group, stream);
        if (qe != 0)
            return qe;
        p.x = xq;
    }
    p.gate = a->gate;
    p.up = a->up;
    p.down = a->down;
    p.idx = a->idx;
    p.weight = a->weight;
    p.out = a->out;
    p.h = (float *)(ws + l.h);
    p.y = (float *)(ws + l.y);
    p.offset = (int *)(ws + l.offset);
    p.active = (int *)(ws + l.active);
    p.n_active = (int *)(ws + l.n_active);
    p.order = (int *)(ws + l.order);
    p.x_vec = (uintptr_t)p.x % 16 == 0 && a->d_model % 8 == 0;
    p.h_round = a->h_bf16;
    p.h_vec = (uintptr_t)p.h % 16 == 0 && a->d_ff_expert % 8 == 0;

    cudaError_t e;
    moe_sort<<<1, SORT_THREADS, 2 * (size_t)a->n_expert * sizeof(int), st>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess)
        return (int)e;
    const int n_pairs = a->n_tokens * a->n_expert_used;
    const unsigned slots = (unsigned)(a->n_expert < n_pairs ? a->n_expert : n_pairs);
    bool tc = false;
    if ((a->tc_gate_up || a->tc_down) && a->n_tokens >= KERN_MOE_TC_MIN_TOKENS &&
        (e = tc_device_ok(&tc)) != cudaSuccess)
        return (int)e;
    if (tc && a->tc_gate_up) {
        if ((e = moe_tc<TC_GATED>(a, a->tc_fmt, p, slots, st)) != cudaSuccess)
            return (int)e;
    } else {
        dim3 gu((unsigned)((a->d_ff_expert + GR_WARPS - 1) / GR_WARPS), slots);
        moe_grouped<true><<<gu, GR_WARPS * 32, 0, st>>>(p);
        if ((e = cudaGetLastError()) != cudaSuccess)
            return (int)e;
    }
    if (a->act_quant_group > 0) {
        int qe = kern_quant_act_fp8(p.h, a->d_ff_expert, p.h, a->d_ff_expert, n_pairs,
                                    a->d_ff_expert, a->act_quant_group, stream);
        if (qe != 0)
            return qe;
    }
    if (tc && a->tc_down) {
        if ((e = moe_tc<TC_DOWN>(a, a->tc_down_fmt, p, slots, st)) != cudaSuccess)
            return (int)e;
    } else {
        dim3 dn((unsigned)((a->d_model + GR_WARPS - 1) / GR_WARPS), slots);
        moe_grouped<false><<<dn, GR_WARPS * 32, 0, st>>>(p);
        if ((e = cudaGetLastError()) != cudaSuccess)
            return (int)e;
    }
    dim3 cg((unsigned)a->n_tokens,
            (unsigned)((a->d_model + COMBINE_THREADS - 1) / COMBINE_THREADS));
    moe_combine<<<cg, COMBINE_THREADS, 0, st>>>(p);
    return (int)cudaGetLastError();
}
