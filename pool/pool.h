/* pool.h: the text-to-text worker pool, as the registry sees it.
 *
 * The pool knows models only by what the registry tells it (key, directory, per-worker costs),
 * so pool/ does not depend on registry/. The public pp_pool_* and pp_stream_* functions of
 * paraphym.h are implemented in pool.c; pp_model_prompt (registry/) calls pool_prompt.
 */
#ifndef POOL_POOL_H
#define POOL_POOL_H

#include "governor.h"
#include "paraphym.h"

/* Requests a worker generates together unless PARAPHYM_MAX_BATCH says otherwise (continuous
 * batching); the worker keeps host logits for that many, which the registry's estimate counts. */
#define POOL_MAX_BATCH_DEFAULT 16

/* A model as the pool needs it. Strings are copied by pool_prompt. */
typedef struct pool_model_desc {
    const char *key;       /* registry key, the pool's identity for the model */
    const char *model_dir; /* checkpoint directory */
    pool_cost first;       /* a CPU worker's cost, the first (weights included) */
    pool_cost second;      /* the second CPU worker's (weights shared, excluded) */
    pool_cost gpu_first;   /* the same for GPU workers (used when the governor has devices) */
    pool_cost gpu_second;
    int n_ctx;             /* positions of each worker's context */
    int n_batch;           /* most prompt tokens one prefill step runs */
} pool_model_desc;

/* Cold-starts the model's workers if it has none, then queues the prompt on the least loaded
 * worker. Never returns NULL unless the stream itself cannot be allocated. */
pp_stream *pool_prompt(pp_pool *pool, const pool_model_desc *model, const pp_prompt *prompt,
                       const pp_completion_params *params);

/* A stream that carries only an error (status and message). */
pp_stream *pool_error_stream(pp_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Thread-local last error used by pp_last_error. */
void pool_set_last_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes a log line through the pp_set_log_callback callback (stderr by default). */
void pool_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* POOL_POOL_H */
