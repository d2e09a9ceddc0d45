/* test_workspace.c: the bounds of kernels/workspace.h (which the registry's VRAM estimate uses)
 * hold for what the launchers ask for. kern_*_workspace_bytes depend only on host fields, so
 * this runs without a GPU, in every build with CUDA.
 *
 * For random batches (1..96 sequences, decode tokens and prompt chunks up to n_batch tokens,
 * contexts up to 128k) on the three families' head shapes: kern_attention_workspace_bytes <=
 * kern_attention_workspace_max(d_v), kern_mla_workspace_bytes <= kern_mla_workspace_max(n_batch,
 * ...), and kern_moe_workspace_bytes == kern_moe_workspace_max for n_tokens up to n_batch (and
 * grows with n_tokens, so the n_batch value bounds a step); kern_topk_workspace_bytes <=
 * kern_topk_workspace_max() for 1..1200 rows, vocabularies up to 2^20 and every k. Prints the
 * largest ratio seen, so a bound that has grown loose shows.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"
#include "workspace.h"

static int failures;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static int rand_in(int lo, int hi) { return lo + (int)(next_u32() % (uint32_t)(hi - lo + 1)); }

/* A random batch of at most n_batch tokens (the engine's forwards never run more: prefill
 * chunks of up to n_batch tokens, decode steps of up to max(n_batch, the pool's batch)
 * sequences): its host fields (the kernels' workspace functions read nothing else); the device
 * arrays are dummies that are never dereferenced. */
static kern_kv_batch random_batch(int n_batch)
{
    static int32_t dummy[1];
    kern_kv_batch b = {0};
    int want_seq = rand_in(1, 96);
    b.block_size = 16;
    int mode = rand_in(0, 2); /* 0: decode only, 1: one prompt chunk, 2: chunks and decodes */
    for (int s = 0; s < want_seq && b.n_tokens < n_batch; s++) {
        int len = 1;
        if ((mode == 1 && s == 0) || (mode == 2 && rand_in(0, 3) == 0))
            len = rand_in(1, n_batch - b.n_tokens);
        b.n_seq++;
        int ctx = len + rand_in(0, rand_in(0, 1) ? 131072 : 4096);
        b.n_tokens += len;
        if (len > b.max_seq_tokens)
            b.max_seq_tokens = len;
        if (ctx > b.max_ctx)
            b.max_ctx = ctx;
    }
    b.max_blocks = (b.max_ctx + b.block_size - 1) / b.block_size;
    b.seq_start = b.seq_pos0 = b.block_table = dummy;
    return b;
}

int main(void)
{
    static float dummy_f[1];
    double worst_attn = 0, worst_mla = 0;
    /* {n_head, n_head_kv, d_qk, d_v}: Phi-4, Qwen3-Coder-30B, Qwen3-Coder-480B, the fixtures' odd */
    const int attn_shapes[][4] = {{40, 10, 128, 128}, {32, 4, 128, 128}, {96, 8, 128, 128}, {6, 2, 40, 24}, {1, 1, 256, 256}};
    const int n_batches[] = {1, 16, 64, 256, 512, 2048};
    for (int it = 0; it < 20000; it++) {
        const int *sh = attn_shapes[it % 5];
        int n_batch = n_batches[rand_in(0, 5)];
        kern_attn_args a = {0};
        a.batch = random_batch(n_batch);
        a.n_head = sh[0];
        a.n_head_kv = sh[1];
        a.d_qk = sh[2];
        a.d_v = sh[3];
        a.q = a.k = a.v = dummy_f;
        a.out = dummy_f;
        size_t got = kern_attention_workspace_bytes(&a), max = kern_attention_workspace_max(a.d_v);
        if (got > max && failures++ < 10)
            fprintf(stderr, "FAIL attention: %zu > bound %zu (n_seq %d, n_tokens %d, max_seq %d, ctx %d, heads %d/%d)\n",
                    got, max, a.batch.n_seq, a.batch.n_tokens, a.batch.max_seq_tokens, a.batch.max_ctx, a.n_head,
                    a.n_head_kv);
        if ((double)got / (double)max > worst_attn)
            worst_attn = (double)got / (double)max;

        /* MLA: Kimi K2 (64 heads, rank 512), DeepSeek-V3 (128 heads), the tiny fixtures' */
        const int mla_shapes[][5] = {{64, 128, 64, 128, 512}, {128, 128, 64, 128, 512}, {4, 16, 8, 16, 32}};
        const int *ms = mla_shapes[it % 3];
        kern_weight w = {0};
        w.fmt = KERN_W_F32;
        w.n_out = (int64_t)ms[0] * (ms[1] + ms[3]);
        w.n_in = ms[4];
        w.data = dummy_f;
        kern_mla_args m = {0};
        m.batch = random_batch(n_batch);
        m.n_head = ms[0];
        m.d_nope = ms[1];
        m.d_rope = ms[2];
        m.d_v = ms[3];
        m.kv_lora_rank = ms[4];
        m.q = m.ckv = m.kpe = dummy_f;
        m.out = dummy_f;
        m.kv_b = &w;
        got = kern_mla_workspace_bytes(&m);
        max = kern_mla_workspace_max(n_batch, m.n_head, m.kv_lora_rank);
        if ((got > max || got == 0) && failures++ < 10)
            fprintf(stderr, "FAIL mla: %zu bytes, bound %zu (n_seq %d, n_tokens %d, ctx %d)\n", got, max,
                    m.batch.n_seq, m.batch.n_tokens, m.batch.max_ctx);
        if ((double)got / (double)max > worst_mla)
            worst_mla = (double)got / (double)max;
    }

    /* MoE: equal for every n_tokens, nondecreasing in it */
    const int moe_shapes[][4] = {{2048, 768, 128, 8}, {7168, 2048, 384, 8}, {6144, 2560, 160, 8}, {64, 32, 8, 2}};
    for (int s = 0; s < 4; s++)
        for (int q = 0; q < 2; q++) {
            size_t prev = 0;
            for (int n = 1; n <= 600; n += 1 + n / 8) {
                const int *sh = moe_shapes[s];
                kern_moe_args e = {0};
                e.n_tokens = n;
                e.d_model = sh[0];
                e.d_ff_expert = sh[1];
                e.n_expert = sh[2];
                e.n_expert_used = sh[3];
                e.act_quant_group = q ? 128 : 0;
                e.x = e.weight = dummy_f;
                e.out = dummy_f;
                e.gate = e.up = e.down = (const kern_weight *)dummy_f;
                e.idx = (const int32_t *)dummy_f;
                size_t got = kern_moe_workspace_bytes(&e);
                size_t max = kern_moe_workspace_max(n, sh[0], sh[1], sh[2], sh[3], q);
                if ((got != max || got < prev) && failures++ < 10)
                    fprintf(stderr, "FAIL moe: %zu bytes, workspace.h says %zu (n_tokens %d, shape %d)\n", got, max,
                            n, s);
                prev = got;
            }
        }
    /* top-k: every row count, vocabularies from 1 to past DeepSeek-V3's and Qwen3's, every k */
    double worst_topk = 0;
    int n_topk = 0;
    const int64_t topk_cols[] = {1, 1000, 4096, 8192, 32000, 129280, 151936, 163840, 1 << 20};
    for (int rows = 1; rows <= 1200; rows += 1 + rows / 16)
        for (size_t ci = 0; ci < sizeof topk_cols / sizeof topk_cols[0]; ci++)
            for (int k = 1; k <= KERN_TOPK_MAX; k += 1 + k / 3) {
                size_t got = kern_topk_workspace_bytes(rows, topk_cols[ci], k), max = kern_topk_workspace_max();
                n_topk++;
                if (got > max && failures++ < 10)
                    fprintf(stderr, "FAIL topk: %zu bytes > bound %zu (rows %d, cols %lld, k %d)\n", got, max, rows,
                            (long long)topk_cols[ci], k);
                if ((double)got / (double)max > worst_topk)
                    worst_topk = (double)got / (double)max;
            }
    printf("workspace bounds: attention at most %.1f%% of its bound, MLA at most %.1f%% (20000 random batches); "
           "MoE equal for 4 shapes x 2 modes; top-k at most %.1f%% (%d shapes)\n",
           100 * worst_attn, 100 * worst_mla, 100 * worst_topk, n_topk);
    if (failures)
        fprintf(stderr, "%d failures\n", failures);
    return failures ? 1 : 0;
}
