/* paraphym.h: the public C API of paraphym, a CUDA-accelerated LLM inference engine.
 *
 * A server looks a model up in the registry (pp_registry_get), then calls pp_model_prompt: the
 * process-wide text-to-text pool cold-starts one or two workers for that model if it has none
 * (deciding by what fits in 80% of host RAM and of GPU VRAM), routes the prompt to the least
 * loaded worker and returns a stream of chunks. Every result and every error arrives on the
 * stream.
 *
 * Conventions: every fallible call returns pp_status; outputs go through out-parameters that are
 * set to NULL on failure; destroy functions accept NULL. Nothing here aborts or exits. MB means
 * MiB (2^20 bytes) throughout.
 */
#ifndef PARAPHYM_H
#define PARAPHYM_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PP_API __declspec(dllexport)
#elif defined(__GNUC__)
#define PP_API __attribute__((visibility("default")))
#else
#define PP_API
#endif

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PP_VERSION_MAJOR 0
#define PP_VERSION_MINOR 1
#define PP_VERSION_PATCH 0
#define PP_VERSION_STRING "0.1.0"

typedef enum pp_status {
    PP_STATUS_OK = 0,
    PP_STATUS_END,               /* a stream has no further chunks */
    PP_STATUS_TIMEOUT,           /* nothing arrived within the wait */
    PP_STATUS_INVALID_ARG,       /* bad input from the caller: bad id, bad option, NULL */
    PP_STATUS_NOT_FOUND,         /* a file, tensor or registry key does not exist */
    PP_STATUS_IO,                /* reading a file failed */
    PP_STATUS_BAD_FORMAT,        /* a file exists but is malformed (config, safetensors) */
    PP_STATUS_UNSUPPORTED,       /* well formed, but a feature this build does not implement */
    PP_STATUS_OUT_OF_MEMORY,     /* an allocation failed */
    PP_STATUS_MEMORY_EXHAUSTED,  /* the pool's memory governor refused a worker */
    PP_STATUS_SPAWN_FAILED,      /* a worker failed to load its model */
    PP_STATUS_CANCELLED,         /* the caller cancelled the stream */
    PP_STATUS_DEVICE,            /* a CUDA / cuBLAS / driver error */
    PP_STATUS_INTERNAL,          /* a bug: an invariant did not hold */
    PP_STATUS_QUEUE_FULL,        /* every worker of the model has PARAPHYM_MAX_QUEUE requests
                                    waiting; nothing was queued, retry later */
    PP_STATUS_WORKER_DIED,       /* the worker running the stream died (device fault, injected
                                    fault); the pool replaces the worker */
} pp_status;

/* Static name of a status ("PP_STATUS_OK", ...); never NULL, "PP_STATUS_UNKNOWN" for values
 * outside the enum. Thread-safe. */
PP_API const char *pp_status_str(pp_status status);

/* Version of the library this program is linked against, e.g. "0.1.0". Thread-safe. */
PP_API const char *pp_version(void);


/* ---- registry ------------------------------------------------------------------------------ */

/* A registered model: its key, its checkpoint directory and what it costs to run. Models are
 * owned by the registry and live until the process ends (or pp_registry_clear); callers never
 * free them. Thread-safe. */
typedef struct pp_model pp_model;

typedef struct pp_memory_estimate {
    uint64_t weights_mb;            /* weights as stored (one copy per model, shared by workers) */
    uint64_t kv_cache_mb;           /* one worker's KV cache for context_tokens positions */
    uint64_t activations_mb;        /* one worker's scratch for a prefill of batch_tokens */
    /* CPU workers (no GPU, or PARAPHYM_WORKER_BACKEND=cpu): host RAM only */
    uint64_t first_worker_host_mb;  /* host RAM the first worker adds: everything */
    uint64_t second_worker_host_mb; /* the second worker: everything but the shared weights */
    /* GPU workers (the pool's choice when the build has CUDA and a device is present): VRAM of
     * the first worker on a device (weights, KV cache, scratch, kernel workspace, the CUDA
     * context), of the second (no weights, no context), and the host RAM either takes */
    uint64_t first_worker_vram_mb;
    uint64_t second_worker_vram_mb;
    uint64_t gpu_worker_host_mb;
} pp_memory_estimate;

typedef struct pp_model_info {
    const char *registry_key;   /* "qwen/qwen3-coder" */
    const char *hf_repo;        /* "Qwen/Qwen3-Coder-480B-A35B-Instruct", "" for local models */
    const char *model_dir;      /* resolved checkpoint directory */
    const char *family;         /* "deepseek_v3", "qwen3_moe", "phi3" */
    const char *model_type;     /* config.json's model_type */
    uint64_t n_params;          /* all parameters */
    uint64_t n_params_active;   /* parameters used per token (MoE: top-k experts) */
    int context_tokens;         /* positions each worker's KV cache holds */
    int batch_tokens;           /* tokens per prefill step the activations are sized for */
    pp_memory_estimate memory;
} pp_model_info;

/* Looks a built-in key up ("moonshot/kimi-k2", "qwen/qwen3-coder", "microsoft/phi-4-reasoning",
 * their variants and the "paraphym/..." nano models; see the README for the list) and finds its weights in
 * each directory of PARAPHYM_MODEL_PATH (colon-separated) as a folder named after the key with
 * '/' replaced by '--', then in the Hugging Face cache. Returns PP_STATUS_OK and *out, or
 * PP_STATUS_NOT_FOUND (unknown key, or no weights: the message from pp_last_error lists the
 * places searched), PP_STATUS_BAD_FORMAT / PP_STATUS_UNSUPPORTED (the checkpoint's config).
 * Thread-safe; the same key always yields the same pp_model. */
PP_API pp_status pp_registry_get(const char *registry_key, pp_model **out);

/* Registers any checkpoint directory under a new key. PP_STATUS_INVALID_ARG when the key is
 * taken by another directory, otherwise as pp_registry_get. Thread-safe. */
PP_API pp_status pp_registry_register(const char *registry_key, const char *model_dir,
                                      pp_model **out);

/* The model's information; valid as long as the model. Never NULL for a valid model. */
PP_API const pp_model_info *pp_model_info_get(const pp_model *model);

/* Sets the positions each of the model's workers holds in its KV cache (context_tokens, default
 * 4096) and the most prompt tokens one prefill step runs (batch_tokens, default 256; longer
 * prompts are prefilled in steps), and recomputes the memory estimate. Takes effect at the
 * model's next cold start; running workers keep their settings until evicted. INVALID_ARG for
 * context_tokens < 2 or batch_tokens < 1. Thread-safe. */
PP_API pp_status pp_model_set_context(pp_model *model, int context_tokens, int batch_tokens);

/* Message of the last failed call on this thread ("" when none). Valid until the next call on
 * this thread. */
PP_API const char *pp_last_error(void);

/* ---- prompts and streams ------------------------------------------------------------------- */

typedef struct pp_message {
    const char *role;    /* "system", "user", "assistant" or "tool" */
    const char *content; /* UTF-8 */
} pp_message;

/* What to complete: raw text (no template), or a conversation rendered with the model's chat
 * format (used when messages is non-NULL). Copied by pp_model_prompt; the caller keeps
 * ownership. */
typedef struct pp_prompt {
    const char *text;
    const pp_message *messages;
    size_t n_messages;
} pp_prompt;

typedef struct pp_completion_params {
    int max_tokens;           /* > 0; default 256 */
    float temperature;        /* 0 = greedy (the default) */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    uint64_t seed;            /* the same seed gives the same output */
    const char *const *stop;  /* stop strings (copied), n_stop of them */
    size_t n_stop;
} pp_completion_params;

/* Fills the defaults above. */
PP_API void pp_completion_params_default(pp_completion_params *params);

typedef enum pp_finish_reason {
    PP_FINISH_NONE = 0, /* more chunks follow */
    PP_FINISH_STOP,     /* end-of-sequence token or stop string */
    PP_FINISH_LENGTH,   /* max_tokens or the context limit */
    PP_FINISH_CANCELLED,
} pp_finish_reason;

typedef struct pp_chunk {
    const char *text;          /* new text, NUL-terminated UTF-8 (whole characters) */
    size_t text_len;
    const int32_t *token_ids;  /* the token ids this chunk adds */
    size_t n_token_ids;
    pp_finish_reason finish_reason; /* set on the final chunk only */
    size_t prompt_tokens;      /* usage so far; final on the final chunk */
    size_t completion_tokens;
} pp_chunk;

/* A stream of chunks for one prompt. Owned by the caller, who frees it with pp_stream_free. One
 * thread at a time may call pp_stream_next; pp_stream_cancel may be called from any thread. */
typedef struct pp_stream pp_stream;

/* Sends a prompt to the model through the text-to-text pool: if the model has no workers the
 * pool cold-starts one or two (see the README's "Pool" section); the request goes to the least
 * loaded worker. Never returns NULL (except when even the stream cannot be allocated): every
 * error arrives on the stream as its last item: PP_STATUS_MEMORY_EXHAUSTED, PP_STATUS_SPAWN_FAILED,
 * PP_STATUS_INVALID_ARG (bad parameters, a prompt that does not fit the context),
 * PP_STATUS_QUEUE_FULL (every worker has PARAPHYM_MAX_QUEUE requests waiting),
 * PP_STATUS_WORKER_DIED (the worker died mid-stream; it is replaced), ...
 * Thread-safe. */
PP_API pp_stream *pp_model_prompt(pp_model *model, const pp_prompt *prompt,
                                  const pp_completion_params *params);

/* Waits up to timeout_ms (< 0: without limit, 0: poll) for the next chunk. Returns PP_STATUS_OK
 * with *out filled (its pointers valid until the next call on this stream), PP_STATUS_TIMEOUT,
 * PP_STATUS_END after the final chunk, or the error the stream failed with (then
 * pp_stream_error gives the message). After PP_STATUS_END or an error, further calls return that
 * same status. A cancelled stream returns PP_STATUS_CANCELLED once its queued chunks are read. */
PP_API pp_status pp_stream_next(pp_stream *stream, pp_chunk *out, int timeout_ms);

/* The message of the error the stream failed with ("" when none). Valid as long as the stream. */
PP_API const char *pp_stream_error(const pp_stream *stream);

/* Asks the worker to stop generating for this stream; safe from any thread, idempotent. */
PP_API void pp_stream_cancel(pp_stream *stream);

/* Cancels (if still running) and releases the stream. NULL-safe. */
PP_API void pp_stream_free(pp_stream *stream);

/* ---- the pool ------------------------------------------------------------------------------ */

typedef struct pp_pool pp_pool;

/* The process-wide text-to-text pool, created on first use (memory totals read then, see
 * PARAPHYM_HOST_MEM_MB / PARAPHYM_VRAM_MB). NULL only when it cannot be created (pp_last_error
 * says why). After pp_pool_shutdown the next call creates a fresh pool. Thread-safe. */
PP_API pp_pool *pp_text_to_text_pool(void);

/* Live workers of the model (a dead worker awaiting its replacement is not counted); 0 for an
 * unknown key or a NULL pool. Thread-safe. */
PP_API bool pp_pool_has_workers(pp_pool *pool, const char *registry_key);
PP_API size_t pp_pool_worker_count(pp_pool *pool, const char *registry_key);
/* Host RAM plus VRAM the governor has reserved for workers, in MB. */
PP_API size_t pp_pool_total_memory_mb(pp_pool *pool);

#define PP_POOL_STATS_MAX_WORKERS 64

typedef struct pp_worker_stats {
    const char *registry_key;
    int worker;           /* 1-based index within its model */
    int device;           /* -1: CPU worker */
    size_t queued;        /* requests waiting */
    size_t served;        /* requests finished */
    size_t max_batch;     /* most requests one decode step has generated together */
    size_t mixed_steps;   /* forwards that ran a prompt chunk beside decoding requests */
    bool busy;
    bool alive;           /* false between a worker's death and its replacement */
    size_t restarts;      /* times this worker was replaced after dying */
} pp_worker_stats;

typedef struct pp_pool_stats {
    size_t n_workers;
    pp_worker_stats workers[PP_POOL_STATS_MAX_WORKERS];
    uint64_t host_total_mb, host_limit_mb, host_reserved_mb;
    int n_devices;        /* GPUs the pool runs workers on (0: CPU workers) */
    uint64_t vram_limit_mb[16], vram_reserved_mb[16];
    uint64_t vram_used_mb[16]; /* device memory in use, measured (all processes), for each
                                  device the pool holds a reservation on; 0 for the others */
} pp_pool_stats;

/* Snapshot of the pool (strings valid until the pool shuts down). Thread-safe. */
PP_API void pp_pool_get_stats(pp_pool *pool, pp_pool_stats *out);

/* Stops every worker (their streams end with PP_STATUS_CANCELLED), joins the threads, frees the
 * pool. Streams the caller still holds stay valid until freed. Thread-safe. */
PP_API void pp_pool_shutdown(pp_pool *pool);

typedef void (*pp_log_fn)(void *user, const char *line);
/* Where log lines go ("Spawned worker 1 for ..."); NULL restores stderr. Thread-safe. */
PP_API void pp_set_log_callback(pp_log_fn fn, void *user);

#ifdef __cplusplus
}
#endif

#endif /* PARAPHYM_H */
