/* workspace.h: how the split-key attention kernels plan their grids, and the most device
 * workspace kern_attention, kern_mla_absorbed, kern_moe_experts and kern_topk can ask for. Plain
 * C with no CUDA types: the kernels take their planning constants from here, and the registry's
 * VRAM estimate (registry/registry.c) takes the bounds, so the two cannot drift apart; CPU-only
 * builds include it too. tests/test_workspace.c checks the bounds against the launchers'
 * *_workspace_bytes over many batches.
 */
#ifndef PP_KERNELS_WORKSPACE_H
#define PP_KERNELS_WORKSPACE_H

#include <stddef.h>
#include <stdint.h>

/* Attention (kernels/attention.cu): a CTA owns KERN_ATTN_ROWS query rows (token x head of one
 * KV head's group). When a batch has fewer than KERN_ATTN_TARGET_CTAS CTAs (4 on each of the
 * 132 SMs of an H100/H200) the keys are split, at most ceil(target / CTAs) ways. */
#define KERN_ATTN_ROWS 16
#define KERN_ATTN_TARGET_CTAS (4 * 132)
/* MLA (kernels/mla.cu): KERN_MLA_ROWS (token, head) rows per CTA, two 8-warp CTAs per SM. */
#define KERN_MLA_ROWS 16
#define KERN_MLA_TARGET_CTAS (2 * 132)

/* The most kern_attention_workspace_bytes returns for any batch with n_head query heads and
 * value width d_v. The split partials hold n_split * n_tokens * n_head rows of (m, l) plus d_v
 * floats. A split happens only with CTAs < target, every CTA covers at most KERN_ATTN_ROWS of
 * the n_tokens * n_head rows, and n_split <= ceil(target / CTAs), so
 *   n_split * n_tokens * n_head <= (target + CTAs - 1) * rows_per_cta < 2 * target * rows_per_cta
 * whatever the batch: a bound that does not grow with the batch or the context. */
static inline size_t kern_attention_workspace_max(int d_v)
{
    return (size_t)2 * KERN_ATTN_TARGET_CTAS * KERN_ATTN_ROWS * (2 * sizeof(float) + (size_t)d_v * sizeof(float));
}

/* The most kern_mla_workspace_bytes returns for batches of up to n_tokens tokens: the absorbed
 * queries and latent outputs (2 * n_tokens * n_head * rank floats) plus the split partials,
 * bounded as attention's are. */
static inline size_t kern_mla_workspace_max(int n_tokens, int n_head, int kv_lora_rank)
{
    size_t rank = (size_t)kv_lora_rank;
    return 2 * (size_t)n_tokens * (size_t)n_head * rank * sizeof(float) +
           (size_t)2 * KERN_MLA_TARGET_CTAS * KERN_MLA_ROWS * (2 * sizeof(float) + rank * sizeof(float));
}

/* kern_moe_experts' workspace for n_tokens tokens (what kern_moe_workspace_bytes returns; it
 * grows with n_tokens): h [pairs][d_ff_expert] and y [pairs][d_model] f32, offset
 * [n_expert + 1], active [n_expert], n_active, order [pairs] int32, and with activation
 * quantization xq [n_tokens][d_model] f32, each part rounded up to 16 bytes. */
static inline size_t kern_moe_workspace_max(int n_tokens, int d_model, int d_ff_expert, int n_expert,
                                            int n_expert_used, int act_quant)
{
#define KERN_ALIGN16(n) (((size_t)(n) + 15) & ~(size_t)15)
    size_t pairs = (size_t)n_tokens * (size_t)n_expert_used;
    size_t bytes = KERN_ALIGN16(pairs * (size_t)d_ff_expert * sizeof(float)) +
                   KERN_ALIGN16(pairs * (size_t)d_model * sizeof(float)) +
                   KERN_ALIGN16(((size_t)n_expert + 1) * sizeof(int32_t)) +
                   KERN_ALIGN16((size_t)n_expert * sizeof(int32_t)) + KERN_ALIGN16(sizeof(int32_t)) +
                   KERN_ALIGN16(pairs * sizeof(int32_t));
    if (act_quant)
        bytes += KERN_ALIGN16((size_t)n_tokens * (size_t)d_model * sizeof(float));
    return bytes;
#undef KERN_ALIGN16
}

/* Sampling candidates (kernels/sample.cu): rows are split over several CTAs only while the rows
 * alone give fewer than KERN_TOPK_TARGET_CTAS (4 of 512 threads on each of 132 SMs), into at
 * most ceil(target / n_rows) column ranges, each leaving at most KERN_TOPK_MAX 8-byte keys. */
#define KERN_TOPK_TARGET_CTAS (4 * 132)

/* The most kern_topk_workspace_bytes returns, whatever the rows: a split needs n_rows < target,
 * so n_rows * n_split <= n_rows * ceil(target / n_rows) < 2 * target ranges of KERN_TOPK_MAX
 * (kernels.h; 1024) keys. */
static inline size_t kern_topk_workspace_max(void)
{
    return (size_t)2 * KERN_TOPK_TARGET_CTAS * 1024 * sizeof(uint64_t);
}

#endif /* PP_KERNELS_WORKSPACE_H */
