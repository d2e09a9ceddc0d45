/* registry.h: the model registry's internals: built-in keys -> Hugging Face repositories and
 * families, where a key's weights are found on disk, and what a model costs in parameters and
 * memory. The public pp_registry_* / pp_model_info wrappers in the library are built on these.
 *
 * Invariant: every number here is derived from a checkpoint's config.json and the dtypes and byte
 * sizes its safetensors headers declare (plus the documented backend constants below); nothing
 * reads a model's weight data and nothing is cached, so every call sees the disk as it is now.
 * MB means MiB (2^20 bytes) throughout.
 *
 * Thread safety: every function is reentrant. The resolution functions read the environment
 * (getenv); do not call setenv/unsetenv concurrently with them.
 */
#ifndef REG_REGISTRY_H
#define REG_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "paraphym.h"
#include "pool.h"

/* ---- built-in keys --------------------------------------------------------------------------- */

typedef struct reg_entry {
    const char *key;         /* "qwen/qwen3-coder": lowercase org/name, the registry key */
    const char *hf_repo;     /* "Qwen/Qwen3-Coder-480B-A35B-Instruct"; NULL for the nano models,
                                which have no Hugging Face repository */
    eng_arch arch;           /* the family the checkpoint's config.json must name */
    const char *description; /* one line for listings */
    bool embedded;           /* true for the model shipped with paraphym (paraphym/qwen3-coder-nano),
                                which reg_resolve_dir also finds at the caller's embedded_dir */
} reg_entry;

/* The built-in table, in a fixed order. Static storage; never NULL for i < reg_count(). */
size_t reg_count(void);
const reg_entry *reg_at(size_t i); /* NULL when i >= reg_count() */

/* The entry whose key equals `key` exactly (keys are case-sensitive, lowercase); NULL when the key
 * is not built in or key is NULL. */
const reg_entry *reg_find(const char *key);

/* ---- where weights are found ----------------------------------------------------------------- */

/* The folder name a key has under a PARAPHYM_MODEL_PATH directory: every '/' replaced by "--"
 * ("qwen/qwen3-coder" -> "qwen--qwen3-coder"). INVALID_ARG when it does not fit in out_len. */
pp_status reg_key_folder(const char *key, char *out, size_t out_len);

/* The Hugging Face hub cache directory, as huggingface_hub computes it: $HF_HUB_CACHE, else
 * $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else $HOME/.cache/huggingface/hub (empty
 * variables count as unset). INVALID_ARG when it does not fit; NOT_FOUND when none of the four
 * variables is set. */
pp_status reg_hub_cache_dir(char *out, size_t out_len);

/* A repository's folder in the hub cache: <hub>/models--ORG--NAME ("Qwen/Qwen3-Coder-30B-A3B-
 * Instruct" -> <hub>/models--Qwen--Qwen3-Coder-30B-A3B-Instruct). Statuses as reg_hub_cache_dir;
 * INVALID_ARG also for a repo id that is not "ORG/NAME". Nothing is checked on disk. */
pp_status reg_repo_cache_dir(const char *hf_repo, char *out, size_t out_len);

/* Finds the checkpoint directory of a built-in key. Places, in order; the first that holds a
 * regular file config.json wins:
 *   1. each directory D of PARAPHYM_MODEL_PATH (colon-separated, empty entries skipped):
 *      D/<reg_key_folder(key)>
 *   2. when the key has a Hugging Face repository: <reg_repo_cache_dir(repo)>/snapshots/<R>/,
 *      R being the content of <reg_repo_cache_dir(repo)>/refs/main (surrounding whitespace
 *      stripped; a missing, empty or slash-bearing refs/main skips this place)
 *   3. for the embedded key only (entry->embedded) and when embedded_dir is not NULL:
 *      embedded_dir (the compiled-in directory the caller passes; ignored for other keys).
 * Returns OK with the directory (no trailing slash added) in dir. NOT_FOUND when the key is not
 * built in (msg lists the known keys) or when no place holds it (msg names the key and lists every
 * place searched, in order, with the reason each was passed over). INVALID_ARG for NULL key or
 * dir, or when the found path does not fit in dir_len. On failure dir is "" (when dir_len > 0).
 * msg (may be NULL / msg_len 0) is set on failure only; it is truncated to msg_len. */
pp_status reg_resolve_dir(const char *key, const char *embedded_dir, char *dir, size_t dir_len,
                          char *msg, size_t msg_len);

/* ---- parameter counts ------------------------------------------------------------------------ */

typedef struct reg_params {
    /* Learnable parameters, counted from the config as the Hugging Face modules define them
     * (logical elements, whatever the stored dtype; a quantized checkpoint has the count of its
     * bf16 original): embed_tokens + lm_head (unless tied) + final norm + per layer the attention
     * projections and norms (Qwen3 q_norm/k_norm, DeepSeek q_a/kv_a layernorms), the two layer
     * norms, and the FFN: a dense SwiGLU MLP (3 d_model d_ff) or a router (n_expert d_model) +
     * n_expert routed experts (3 d_model d_ff_expert each) + shared experts (3 d_model
     * d_ff_expert n_shared_experts). */
    uint64_t total;
    /* Parameters one token's forward reads: total minus the routed experts it skips, i.e. with
     * n_expert_used instead of n_expert routed experts per MoE layer. Includes the embedding and
     * lm_head, as MODELS.md's "active per token" figures do (subtract `embedding` to exclude). */
    uint64_t active;
    /* embed_tokens + lm_head (lm_head counted once more only when untied). */
    uint64_t embedding;
    /* Non-learnable tensors the checkpoint also stores (PyTorch buffers): DeepSeek's
     * e_score_correction_bias, n_expert per MoE layer. total + buffers = the element count of an
     * unquantized checkpoint's tensors. */
    uint64_t buffers;
} reg_params;

/* Fills out from a parsed config (no I/O). */
void reg_count_params(const eng_config *cfg, reg_params *out);

/* ---- memory estimate ------------------------------------------------------------------------- */

/* How the context is configured: the caller chooses n_ctx (positions of KV cache each worker
 * allocates, fixed for the worker's life) and n_batch (the most tokens one forward runs: a prompt
 * longer than n_batch must be prefilled in chunks of at most n_batch, or the session's scratch
 * outgrows the estimate). They are the only inputs besides the checkpoint; nothing is clamped to
 * max_position_embeddings. The registry's per-model defaults: */
#define REG_DEFAULT_N_CTX 4096
#define REG_DEFAULT_N_BATCH 256

/* Host memory a CPU worker takes besides weights, KV cache and activations: the model and
 * backend structures, the safetensors headers and tensor tables, and the code and library pages
 * the first load in a process brings in. Measured with tests/test_registry.c (glibc, x86-64, one
 * thread): the peak RSS growth of a first worker in a fresh process minus weights, KV cache and
 * the scratch it writes was 0.40-0.82 MiB over the three nano models; a second worker of the
 * same model adds ~0 beyond its KV cache and scratch (so its estimate is slightly high). */
#define REG_WORKER_OVERHEAD_BYTES (768u << 10)
/* The same per CPU backend thread: the stack pages a pool thread touches (~13 KiB measured per
 * extra thread, 1 -> 64 threads); its dequantization scratch is counted in act_bytes. */
#define REG_THREAD_OVERHEAD_BYTES (16u << 10)
/* Requests a pool worker generates together by default (PARAPHYM_MAX_BATCH): the worker keeps
 * host logits and sampling candidates (ENG_TOPK_MAX logits and ids) for that many rows, counted
 * in overhead_bytes (a larger PARAPHYM_MAX_BATCH takes n_vocab * 4 + ENG_TOPK_MAX * 8 bytes more
 * per extra request than the estimate says). */
#define REG_MAX_BATCH POOL_MAX_BATCH_DEFAULT
/* backend_cpu.c's MATMUL_ROWS: rows of a weight each thread dequantizes to f32 at once. */
#define REG_CPU_MATMUL_ROWS 16

/* GPU workers. backend_cuda.c rounds every device allocation up to this many bytes. */
#define REG_CUDA_ALLOC_ROUND 256
/* backend_cuda.c's cuBLAS workspace (BLAS_WS_HOPPER, the larger of its two sizes), which each
 * GPU worker's backend allocates for the bf16 mode's products. */
#define REG_CUDA_BLAS_WORKSPACE_BYTES (32ull << 20)
/* VRAM the first GPU worker of a model reserves beyond its tensors, cache and scratch: the CUDA
 * context (a few hundred MiB on a Hopper card), the rope and expert descriptor tables. An
 * allowance, not yet measured: tests/test_pool.c --gpu prints the device's measured use beside
 * the estimate. */
#define REG_CUDA_DEVICE_RESERVE_BYTES (1024ull << 20)
/* Host memory a GPU worker takes besides REG_WORKER_OVERHEAD_BYTES and its logits: the CUDA
 * runtime's own host allocations and library pages (an allowance, not yet measured). */
#define REG_CUDA_HOST_RESERVE_BYTES (512ull << 20)

/* One worker's reservation, in the units the pool's governor counts (MiB, rounded up). */
typedef struct reg_cost {
    uint64_t host_mb;
    uint64_t vram_mb;
} reg_cost;

typedef struct reg_model_info {
    eng_arch arch;           /* family */
    const char *family;      /* eng_arch_name(arch): "deepseek_v3", "qwen3_moe", "phi3" (static) */
    char model_type[32];     /* config.json's model_type ("kimi_k2", "qwen3_moe", "phi3", ...) */
    reg_params params;
    int n_ctx, n_batch, n_threads; /* the inputs (n_threads after resolving <= 0 to the cores) */

    /* Bytes. Each is one part of a worker's memory: */
    uint64_t weight_bytes;   /* every tensor in the safetensors files, in its stored dtype (FP8
                                scales and INT4 packing included): what a worker maps and, over its
                                life, reads (mapped file pages, resident once read) */
    char weight_dtypes[64];  /* stored dtypes, most bytes first: "BF16", "F8_E4M3+BF16+F32" */
    uint64_t kv_bytes;       /* CPU KV cache for n_ctx positions, f32 (DeepSeek: absorbed MLA
                                latent cache), as eng_session_bytes computes it */
    uint64_t act_bytes;      /* activations of one forward of n_batch tokens with every row's
                                logits: the session scratch (eng_session_bytes) plus the CPU
                                backend's scratch (per thread REG_CPU_MATMUL_ROWS dequantized rows
                                of the widest weight input, or the attention scores of n_ctx keys,
                                or the absorbed-MLA per-head matrices, whichever is largest; and
                                the routed-expert gather buffers of n_batch tokens). It counts
                                what is allocated, so scratch a model never writes (the dense-MLP
                                region the engine reserves for an all-MoE Qwen: 1 MiB for the nano
                                at n_batch 256) makes it an upper bound of what becomes resident */
    uint64_t overhead_bytes; /* REG_WORKER_OVERHEAD_BYTES + n_threads REG_THREAD_OVERHEAD_BYTES
                                + the batch's host rows: REG_MAX_BATCH * (n_vocab floats of
                                logits + ENG_TOPK_MAX candidate logits and ids) */

    /* CPU workers (a build without CUDA, a machine without a GPU, or PARAPHYM_WORKER_BACKEND=cpu):
     * host RAM only, vram_mb 0.
     *   cpu_first.host_mb  = ceil((weights + kv + act + overhead) / MiB)
     *   cpu_second.host_mb = ceil((kv + act + overhead) / MiB): a second worker of the same model
     *                        shares the first one's copy of the weights (the same mapped files) */
    reg_cost cpu_first, cpu_second;

    /* GPU workers (the CUDA backend in the bf16 mode, as the pool runs it): weights uploaded in
     * their stored dtype (each of the n_tensors device copies rounded up to REG_CUDA_ALLOC_ROUND),
     * the bf16 KV cache (gpu_kv_bytes = kv_bytes / 2), the session scratch, the kernels'
     * workspace (gpu_workspace_bytes: 1.5 times the largest of kernels/workspace.h's attention,
     * MLA, MoE and top-k bounds and matmul_bf16's bf16 copy of the widest product input, for
     * forwards of max(n_batch, REG_MAX_BATCH) tokens, as the backend grows its one workspace;
     * plus REG_CUDA_BLAS_WORKSPACE_BYTES) and REG_CUDA_DEVICE_RESERVE_BYTES for the first worker
     * of a model.
     *   gpu_act_bytes      = session scratch + kernel workspace
     *   gpu_first.vram_mb  = ceil((weights + n_tensors * 256 + gpu_kv + gpu_act + device reserve) / MiB)
     *   gpu_second.vram_mb = ceil((gpu_kv + gpu_act) / MiB) (weights and context shared on one device)
     *   host_mb of either  = ceil((overhead + REG_CUDA_HOST_RESERVE_BYTES) / MiB): the weights'
     *                        mapped file pages are read once for the upload and are then page
     *                        cache the kernel may reclaim, so they are not counted */
    uint64_t n_tensors;
    uint64_t gpu_kv_bytes, gpu_act_bytes, gpu_workspace_bytes;
    reg_cost gpu_first, gpu_second;
} reg_model_info;

/* Estimates from a parsed config, the stored weight bytes and the number of tensors (no I/O).
 * weight_dtypes is left empty. INVALID_ARG when n_ctx or n_batch is not positive (out is then
 * zeroed). n_threads <= 0 means one per online core, as the CPU backend does. */
pp_status reg_estimate_config(const eng_config *cfg, uint64_t weight_bytes, uint64_t n_tensors, int n_ctx,
                              int n_batch, int n_threads, reg_model_info *out);

/* Reads model_dir/config.json (and generation_config.json) and the safetensors headers (mapped
 * with eng_st_open_dir, closed before returning; no weight page is read) and fills out as
 * reg_estimate_config does, with weight_bytes and weight_dtypes from the files. Errors: those of
 * eng_config_load / eng_st_open_dir (NOT_FOUND, IO, BAD_FORMAT, UNSUPPORTED) and INVALID_ARG as
 * above, with a message in msg (may be NULL); out is zeroed on failure. */
pp_status reg_estimate(const char *model_dir, int n_ctx, int n_batch, int n_threads,
                       reg_model_info *out, char *msg, size_t msg_len);

#endif /* REG_REGISTRY_H */
