/* model.h: loading a checkpoint directory and running it: the engine's entry points.
 *
 * An eng_model holds the config, the memory-mapped weights and the backend; it is read-only
 * after load and may be shared by sessions on one thread at a time (the backend's scratch is not
 * shared-safe); eng_model_fork gives another thread its own backend over the same weights.
 * An eng_session is one sequence: its position and the blocks of a paged KV cache
 * (eng_kv_cache) that hold its keys and values. Sessions that share a cache can run in one
 * batched forward pass (eng_forward_batch).
 */
#ifndef ENG_MODEL_H
#define ENG_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "quantize.h"

typedef struct eng_model eng_model;
typedef struct eng_session eng_session;
typedef struct eng_kv_cache eng_kv_cache;

/* Positions per KV-cache block unless the caller picks another size. */
#define ENG_KV_BLOCK_SIZE 16

typedef enum eng_mla_mode {
    ENG_MLA_NAIVE = 0, /* HF's form: per-head K (d_nope + d_rope) and V (d_v) cached */
    ENG_MLA_ABSORBED,  /* latent cache: c_kv (kv_lora_rank) + k_pe (d_rope) per token */
} eng_mla_mode;

/* What the forward pass computes in (the stored weights are not changed by either). */
typedef enum eng_dtype_mode {
    ENG_DTYPE_MODE_F32 = 0, /* f32 activations, the reference (engine/backend.h) */
    ENG_DTYPE_MODE_BF16,    /* HF's bf16 path emulated: every op's output rounded to bf16
                               (engine/backend_bf16.c); accumulation stays f32 */
    ENG_DTYPE_MODE_AUTO,    /* bf16 on the cuda backend (the production path), f32 on cpu (the
                               reference); eng_model_load resolves it (the CLI's default) */
} eng_dtype_mode;

/* The KV cache's element type (engine/backend.h's eng_kv_dtype). */
typedef enum eng_kv_mode {
    ENG_KV_MODE_AUTO = 0, /* bf16 in the bf16 compute mode, where it is lossless (K and V are
                             bf16 values already), save DeepSeek-V3 with fp8_act_quant (its latent
                             cache holds the quantized c_kv, not bf16 values); f32 in the f32 mode */
    ENG_KV_MODE_F32,
    ENG_KV_MODE_BF16,     /* also in the f32 mode, where it rounds K and V to bf16 (then no
                             longer the exact reference) */
} eng_kv_mode;

/* "f32", "bf16" or "auto" -> *out; INVALID_ARG with a message naming the choices otherwise. */
pp_status eng_kv_mode_parse(const char *name, eng_kv_mode *out, eng_err *err);

/* "f32", "bf16" or "auto" -> *out; INVALID_ARG with a message naming the choices otherwise. */
pp_status eng_dtype_mode_parse(const char *name, eng_dtype_mode *out, eng_err *err);
/* "f32", "bf16" or "auto" ("?" for a value outside the enum). */
const char *eng_dtype_mode_name(eng_dtype_mode mode);

typedef struct eng_model_opts {
    const char *backend; /* "cpu" (default), "cuda" (UNSUPPORTED in a build without CUDA or
                            when there is no device) or "auto" (cuda when a device is present,
                            else cpu); eng_model_backend_name says which one runs */
    int device;          /* the CUDA device of "cuda" and "auto" (default 0; INVALID_ARG when
                            there is no such device); eng_model_device says which one runs */
    int n_threads;       /* CPU threads; <= 0: one per core */
    eng_mla_mode mla;    /* DeepSeek-V3 attention form; default ENG_MLA_ABSORBED */
    eng_load_quant quant; /* on-load quantization of the decoder layers' F32/BF16/F16 linear
                             weights (not the embedding, lm_head, norms or MoE routers); default
                             ENG_LOADQ_NONE. Stored-quantized weights stay as they are. */
    eng_dtype_mode dtype; /* compute mode; default ENG_DTYPE_MODE_F32. BF16 wraps the backend
                             (and every fork's) in eng_backend_bf16_wrap */
    eng_kv_mode kv;       /* the KV cache's element type; default ENG_KV_MODE_AUTO */
    bool fp8_act_quant;   /* bf16 mode only (INVALID_ARG otherwise; with AUTO, on the cpu
                             backend): FP8_BLOCK weights quantize
                             their input activations per 128 columns (W8A8, HF's FP8Linear);
                             default false */
} eng_model_opts;

void eng_model_opts_default(eng_model_opts *opts);

/* Loads DIR (config.json + safetensors). Returns PP_STATUS_OK and *out, or an error with
 * *out = NULL and a message in err: NOT_FOUND (no config.json, missing tensor or shard),
 * BAD_FORMAT, UNSUPPORTED (also: backend "cuda" without CUDA or a device), INVALID_ARG (bad
 * option, unknown backend name or dtype mode), OUT_OF_MEMORY, DEVICE. With the cuda backend,
 * weights are uploaded to the device on first use, not at load. */
pp_status eng_model_load(const char *dir, const eng_model_opts *opts, eng_model **out, eng_err *err);
void eng_model_free(eng_model *model); /* NULL-safe; sessions and forks must be freed first */

/* A second runtime over the same weights: the fork borrows src's mapped tensors and bound layers
 * (no copy) and owns a backend of its own (n_threads CPU threads; for a cuda model, a cuda
 * backend with its own stream that shares src's device weight cache; in src's dtype mode), so
 * src and the fork can run on two threads at once. src must outlive the fork. */
pp_status eng_model_fork(const eng_model *src, int n_threads, eng_model **out, eng_err *err);

const eng_config *eng_model_config(const eng_model *model);
/* Weights quantized at load (opts.quant): how many tensors, and the bytes they now occupy. */
void eng_model_quant_stats(const eng_model *model, size_t *n_tensors, size_t *bytes);
/* "cpu" or "cuda": the backend that runs the ops (under the bf16 decorator in bf16 mode). */
const char *eng_model_backend_name(const eng_model *model);
/* The CUDA device the model runs on; -1 for the cpu backend. */
int eng_model_device(const eng_model *model);
/* The KV cache's element type: "f32" or "bf16". */
const char *eng_model_kv_name(const eng_model *model);
/* The compute mode: "f32" or "bf16" (eng_dtype_mode_name of opts.dtype). */
const char *eng_model_dtype_name(const eng_model *model);
/* Decode steps the model's backend ran as one CUDA graph, and recordings that fell back to
 * running op by op (eng_backend_cuda_graph_counts); 0 and 0 on the CPU. */
void eng_model_graph_counts(const eng_model *model, size_t *launched, size_t *fallbacks);
/* Bytes of weights as stored (what the model maps). */
size_t eng_model_weight_bytes(const eng_model *model);

/* Memory a session of this config needs on the CPU backend (f32): its KV cache for n_ctx
 * positions (whole blocks of ENG_KV_BLOCK_SIZE), and the scratch of one forward of n_batch
 * tokens with every row's logits (the largest scratch eng_session_forward allocates for that
 * many tokens). No model needs to be loaded; INVALID_ARG for non-positive sizes. */
pp_status eng_session_bytes(const eng_config *c, eng_mla_mode mla, int n_ctx, int n_batch,
                            uint64_t *kv_bytes, uint64_t *scratch_bytes);

/* A KV cache of n_blocks blocks of block_size positions (<= 0: ENG_KV_BLOCK_SIZE) for sessions
 * of model; memory for all of it is allocated now, in the model's backend. The cache, and the
 * sessions in it, are used by one thread at a time. OUT_OF_MEMORY when it does not fit,
 * INVALID_ARG for n_blocks < 1. */
pp_status eng_kv_cache_create(eng_model *model, int n_blocks, int block_size, eng_kv_cache **out,
                              eng_err *err);
/* NULL-safe. Every session in the cache must be freed first (the call does nothing, and says so
 * on stderr, otherwise). */
void eng_kv_cache_free(eng_kv_cache *kv);
int eng_kv_cache_free_blocks(const eng_kv_cache *kv);
int eng_kv_cache_n_blocks(const eng_kv_cache *kv);
int eng_kv_cache_block_size(const eng_kv_cache *kv);

/* A sequence with room for n_ctx positions in a private KV cache of its own (ceil(n_ctx /
 * ENG_KV_BLOCK_SIZE) blocks, allocated now). */
pp_status eng_session_create(eng_model *model, int n_ctx, eng_session **out, eng_err *err);
/* A sequence of at most n_ctx positions in the shared cache kv: it takes blocks as it grows
 * (a forward that needs more blocks than are free fails with OUT_OF_MEMORY and changes
 * nothing) and gives them back on reset and free. */
pp_status eng_session_create_in(eng_kv_cache *kv, int n_ctx, eng_session **out, eng_err *err);
void eng_session_free(eng_session *session); /* NULL-safe; returns its blocks */
void eng_session_reset(eng_session *session);  /* back to position 0, blocks returned */
int eng_session_pos(const eng_session *session);
int eng_session_n_ctx(const eng_session *session);

/* Runs ids[0 .. n_tokens) at positions pos .. pos + n_tokens - 1, appending to the KV cache.
 * logits (host, may be NULL): [n_tokens][n_vocab] when all_logits, else [n_vocab] for the last
 * token. INVALID_ARG (and nothing changes) when an id is outside [0, n_vocab) or the context
 * would overflow n_ctx; OUT_OF_MEMORY (nothing changes) when a shared cache has too few free
 * blocks. A backend failure returns its status (DEVICE for a CUDA error, with the backend's own
 * message appended to err) and leaves the position unchanged. */
pp_status eng_session_forward(eng_session *session, const int32_t *ids, int n_tokens, float *logits,
                              bool all_logits, eng_err *err);

/* One sequence's part of a batched forward. */
typedef struct eng_batch_seq {
    eng_session *session;
    const int32_t *ids;  /* [n_tokens], n_tokens >= 1 */
    int n_tokens;
    float *logits;       /* host [n_vocab]: the last token's logits, or NULL */
    int32_t *token;      /* host, or NULL: the greedy pick from the last token's logits,
                            engine/sampler.h's eng_argmax over their first token_vocab entries,
                            made by the backend's argmax op where the logits are (on CUDA only
                            this int32 crosses to the host) */
    int token_vocab;     /* the columns token and the candidates come from: 1 .. n_vocab; <= 0:
                            n_vocab */
    int cand_k;          /* 0: none; 1 .. ENG_TOPK_MAX (engine/sampler.h): the sampling
                            candidates of the last token's logits, engine/sampler.h's
                            eng_topk(their first token_vocab entries, cand_k) into cand_logits /
                            cand_ids, made by the backend's topk op where the logits are (on
                            CUDA only these pairs cross to the host) */
    float *cand_logits;  /* host [cand_k] when cand_k > 0: the candidates' logits, bit for bit */
    int32_t *cand_ids;   /* host [cand_k] when cand_k > 0: their ids (-1 past token_vocab) */
} eng_batch_seq;

/* One forward pass over several sequences at once (continuous batching): every sequence's
 * tokens go through each matmul together, attention reads each sequence's own keys. The
 * sessions must be distinct and share one KV cache (so one model); a session with a private
 * cache can only run alone. Each sequence's result is the one eng_session_forward gives it.
 * Errors as eng_session_forward; on any error no session's position changes. */
pp_status eng_forward_batch(const eng_batch_seq *seqs, int n_seq, eng_err *err);

#endif /* ENG_MODEL_H */
