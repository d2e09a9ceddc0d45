/* pool.c: the text-to-text worker pool and its completion streams.
 *
 * One process-wide pool. Per model (registry key) a slot holds the loaded weights, the tokenizer
 * and one or two workers; each worker is a thread with its own request queue, its own backend
 * (eng_model_fork shares the weights) and a paged KV cache, generating up to PARAPHYM_MAX_BATCH
 * requests at once (continuous batching: each step is one eng_forward_batch of every decoding
 * request's next token and, in the room left under the prefill step, newcomers' prompt chunks)
 * and pushing chunks into each request's stream. Workers run on the CUDA backend in the bf16
 * compute mode (GPU workers) when the governor counts devices, else on the CPU in the f32 mode.
 * The governor decides how many workers a cold start gets and holds their memory until the slot
 * is evicted. A maintenance thread evicts idle slots and replaces workers that died (a device fault, or the fault-injection hook: PARAPHYM_FAULT_SPAWN_FAIL,
 * PARAPHYM_FAULT_KILL_AFTER_TOKENS).
 *
 * Locking: one pool mutex guards slots, worker queues and counters; each stream has its own
 * mutex. The pool mutex is never held while loading a model, generating, or joining a thread.
 * Invariants: every stream gets exactly one terminal item (final chunk or error); a slot in
 * state READY has n_workers workers, each running or dead and awaiting its replacement (whose
 * queue the replacement serves, or which fails it); a slot is evicted only when no request is
 * queued, running or being prepared for it.
 */
#include "pool.h"

#include <errno.h>
#include <limits.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "generate.h"
#ifdef PP_HAVE_CUDA
#include "kernels.h"
#endif
#include "model.h"
#include "tokenizer.h"

/* How long a prompt waits for another thread's cold start of the same model before giving up
 * with PP_STATUS_TIMEOUT (a 1 TB checkpoint can take minutes to map and check). */
#define SPAWN_WAIT_S 600
/* Default idle time after which a model's workers are evicted (PARAPHYM_IDLE_TIMEOUT_S). */
#define IDLE_TIMEOUT_S 300.0
/* Default most requests waiting on one worker (PARAPHYM_MAX_QUEUE); beyond it, QUEUE_FULL. */
#define MAX_QUEUE 256
/* Default most requests one worker generates together (PARAPHYM_MAX_BATCH; the registry's memory
 * estimate counts the host logits of this many), and its limit. */
#define MAX_BATCH POOL_MAX_BATCH_DEFAULT
#define MAX_BATCH_LIMIT 64

/* ---- logging and last error ---------------------------------------------------------------- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static pp_log_fn log_fn;
static void *log_user;
static _Thread_local char last_error[1024];

void pp_set_log_callback(pp_log_fn fn, void *user)
{
    pthread_mutex_lock(&log_mu);
    log_fn = fn;
    log_user = user;
    pthread_mutex_unlock(&log_mu);
}

void pool_log(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mu);
    if (log_fn)
        log_fn(log_user, line);
    else
        fprintf(stderr, "paraphym: %s\n", line);
    pthread_mutex_unlock(&log_mu);
}

void pool_set_last_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

const char *pp_last_error(void) { return last_error; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Absolute CLOCK_MONOTONIC deadline `seconds` from now. */
static struct timespec deadline_in(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long ns = (long long)ts.tv_nsec + (long long)((seconds - (double)(long long)seconds) * 1e9);
    ts.tv_sec += (time_t)seconds + (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
}

/* ---- streams --------------------------------------------------------------------------------- */

typedef struct stream_item {
    char *text;
    size_t text_len;
    int32_t *ids;
    size_t n_ids;
    pp_finish_reason finish;
    size_t prompt_tokens, completion_tokens;
    struct stream_item *next;
} stream_item;

struct pp_stream {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    stream_item *head, *tail;
    bool done;            /* the producer has pushed its terminal item */
    pp_status error;      /* PP_STATUS_OK, or the error the stream failed with */
    char error_msg[1024];
    pp_status terminal;   /* what every later pp_stream_next returns; OK until reached */
    atomic_bool cancel;
    int refs;             /* the caller and, while it runs, the producer */
    stream_item *current; /* the item last handed out, freed by the next call */
};

static void item_free(stream_item *it)
{
    if (!it)
        return;
    free(it->text);
    free(it->ids);
    free(it);
}

static pp_stream *stream_new(int refs)
{
    pp_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    cond_init_monotonic(&s->cv);
    s->refs = refs;
    return s;
}

static void stream_destroy(pp_stream *s)
{
    stream_item *it = s->head;
    while (it) {
        stream_item *next = it->next;
        item_free(it);
        it = next;
    }
    item_free(s->current);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void stream_unref(pp_stream *s)
{
    pthread_mutex_lock(&s->mu);
    int left = --s->refs;
    pthread_mutex_unlock(&s->mu);
    if (left == 0)
        stream_destroy(s);
}

/* Queues a chunk; returns false (and queues nothing) when out of memory. */
static bool stream_push(pp_stream *s, const char *text, size_t text_len, const int32_t *ids, size_t n_ids,
                        pp_finish_reason finish, size_t prompt_tokens, size_t completion_tokens)
{
    stream_item *it = calloc(1, sizeof *it);
    if (!it)
        return false;
    it->text = malloc(text_len + 1);
    it->ids = malloc((n_ids ? n_ids : 1) * sizeof *ids);
    if (!it->text || !it->ids) {
        item_free(it);
        return false;
    }
    memcpy(it->text, text, text_len);
    it->text[text_len] = '\0';
    it->text_len = text_len;
    if (n_ids)
        memcpy(it->ids, ids, n_ids * sizeof *ids);
    it->n_ids = n_ids;
    it->finish = finish;
    it->prompt_tokens = prompt_tokens;
    it->completion_tokens = completion_tokens;
    pthread_mutex_lock(&s->mu);
    if (s->tail)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
    if (finish != PP_FINISH_NONE)
        s->done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return true;
}

/* Ends the stream with an error (ignored if it already ended). */
static void stream_fail(pp_stream *s, pp_status status, const char *msg)
{
    pthread_mutex_lock(&s->mu);
    if (!s->done) {
        s->done = true;
        s->error = status;
        snprintf(s->error_msg, sizeof s->error_msg, "%s", msg);
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

pp_stream *pool_error_stream(pp_status status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pool_set_last_error("%s", msg);
    pp_stream *s = stream_new(1);
    if (s)
        stream_fail(s, status, msg);
    return s;
}

pp_status pp_stream_next(pp_stream *s, pp_chunk *out, int timeout_ms)
{
    if (!s || !out)
        return PP_STATUS_INVALID_ARG;
    memset(out, 0, sizeof *out);
    out->text = "";
    pthread_mutex_lock(&s->mu);
    item_free(s->current);
    s->current = NULL;
    struct timespec dl = deadline_in(timeout_ms > 0 ? timeout_ms / 1000.0 : 0.0);
    pp_status st = PP_STATUS_TIMEOUT;
    for (;;) {
        if (s->terminal != PP_STATUS_OK) {
            st = s->terminal;
            break;
        }
        stream_item *it = s->head;
        if (it) {
            s->head = it->next;
            if (!s->head)
                s->tail = NULL;
            if (it->finish == PP_FINISH_CANCELLED) {
                item_free(it);
                st = s->terminal = PP_STATUS_CANCELLED;
                break;
            }
            s->current = it;
            out->text = it->text;
            out->text_len = it->text_len;
            out->token_ids = it->ids;
            out->n_token_ids = it->n_ids;
            out->finish_reason = it->finish;
            out->prompt_tokens = it->prompt_tokens;
            out->completion_tokens = it->completion_tokens;
            if (it->finish != PP_FINISH_NONE)
                s->terminal = PP_STATUS_END;
            st = PP_STATUS_OK;
            break;
        }
        if (atomic_load(&s->cancel)) {
            st = s->terminal = PP_STATUS_CANCELLED;
            break;
        }
        if (s->done) {
            st = s->terminal = s->error != PP_STATUS_OK ? s->error : PP_STATUS_END;
            break;
        }
        if (timeout_ms == 0)
            break;
        if (timeout_ms < 0) {
            pthread_cond_wait(&s->cv, &s->mu);
        } else if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
            st = PP_STATUS_TIMEOUT;
            if (!s->head && !s->done && !atomic_load(&s->cancel))
                break;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

const char *pp_stream_error(const pp_stream *s)
{
    if (!s)
        return "";
    if (s->error != PP_STATUS_OK)
        return s->error_msg;
    return s->terminal == PP_STATUS_CANCELLED ? "the stream was cancelled" : "";
}

void pp_stream_cancel(pp_stream *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->cancel, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void pp_stream_free(pp_stream *s)
{
    if (!s)
        return;
    pp_stream_cancel(s);
    stream_unref(s);
}

void pp_completion_params_default(pp_completion_params *p)
{
    memset(p, 0, sizeof *p);
    p->max_tokens = 256;
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->seed = 0;
}

/* ---- requests, workers, slots ---------------------------------------------------------------- */

typedef struct request {
    pp_stream *stream;
    int32_t *ids;
    size_t n_ids;
    eng_gen_params gp;
    char **stop; /* owned copies of the stop strings */
    struct request *next;
} request;

typedef enum slot_state { SLOT_EMPTY = 0, SLOT_SPAWNING, SLOT_READY, SLOT_EVICTING } slot_state;

struct model_slot;

typedef struct worker {
    struct model_slot *slot;
    pp_pool *pool;
    int index;           /* 1-based */
    pthread_t thread;
    eng_model *model;    /* the slot's base model (worker 1) or a fork of it */
    pthread_cond_t cv;   /* signalled when a request is queued or the worker must stop */
    request *head, *tail;
    size_t queued, served;
    size_t max_batch;    /* most requests one decode step has run together */
    size_t mixed_steps;  /* steps that ran prompt chunks beside decoding requests */
    bool busy;
    bool dead;           /* its thread has exited after a fault; the maintenance thread replaces it */
    size_t restarts;
    atomic_bool stop;
} worker;

typedef struct model_slot {
    char *key;
    char *dir;
    pool_model_desc desc;
    slot_state state;
    pthread_cond_t state_cv; /* signalled on every state change */
    worker *workers[2];
    int n_workers;
    pool_grant grant;
    eng_model *base;
    eng_tokenizer *tok;
    size_t active;           /* requests being prepared, queued or running */
    size_t preparing;        /* requests being built outside the lock (they use tok and base) */
    double last_used;
    struct model_slot *next;
} model_slot;

struct pp_pool {
    pthread_mutex_t mu;
    pool_governor *gov;
    model_slot *slots;
    bool shutting_down;
    double idle_timeout_s;
    size_t max_queue;            /* requests waiting per worker before QUEUE_FULL */
    size_t max_batch;            /* requests a worker generates together (PARAPHYM_MAX_BATCH) */
    bool gpu_workers;            /* the governor counts devices: workers run on CUDA */
    /* fault injection (PARAPHYM_FAULT_SPAWN_FAIL, PARAPHYM_FAULT_KILL_AFTER_TOKENS) */
    long fault_spawn_fail;       /* the n-th worker start fails; 0: never */
    atomic_long spawn_count;     /* worker starts attempted so far */
    long fault_kill_after;       /* a worker dies once a request has streamed this many tokens */
    atomic_int kills_left;       /* deaths still to inject */
    pthread_t maint;
    bool maint_started;
    pthread_cond_t maint_cv;
};

static pthread_mutex_t global_mu = PTHREAD_MUTEX_INITIALIZER;
static pp_pool *global_pool;

static void request_free(request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->gp.n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->ids);
    free(r);
}

static pp_finish_reason finish_of(eng_finish f)
{
    switch (f) {
    case ENG_FINISH_STOP: return PP_FINISH_STOP;
    case ENG_FINISH_LENGTH: return PP_FINISH_LENGTH;
    case ENG_FINISH_CANCELLED: return PP_FINISH_CANCELLED;
    default: return PP_FINISH_NONE;
    }
}

typedef struct gen_ctx {
    worker *w;
    pp_stream *stream;
    bool push_failed;
    bool killed; /* fault injection killed the worker during this request */
    eng_err err; /* why its generation failed */
} gen_ctx;

/* Fault injection: true when this chunk is where a worker must die (once per armed kill). */
static bool fault_kill_now(pp_pool *pool, const eng_chunk *ch)
{
    if (pool->fault_kill_after <= 0 || ch->finish != ENG_FINISH_NONE ||
        ch->completion_tokens < (size_t)pool->fault_kill_after)
        return false;
    int left = atomic_load(&pool->kills_left);
    while (left > 0 && !atomic_compare_exchange_weak(&pool->kills_left, &left, left - 1)) {
    }
    return left > 0;
}

static bool on_chunk(void *user, const eng_chunk *ch)
{
    gen_ctx *g = user;
    if (g->killed || ch->finish == ENG_FINISH_ERROR)
        return false; /* a dead worker streams nothing more; eng_generate's status carries errors */
    if (fault_kill_now(g->w->pool, ch)) {
        g->killed = true;
        return false;
    }
    if (!stream_push(g->stream, ch->text, ch->text_len, ch->ids, ch->n_ids, finish_of(ch->finish),
                     ch->prompt_tokens, ch->completion_tokens)) {
        g->push_failed = true;
        return false;
    }
    /* keep going unless the caller cancelled or the pool is stopping this worker */
    return !atomic_load(&g->stream->cancel) && !atomic_load(&g->w->stop);
}

/* Ends every request queued on w with `status`; pool->mu held. */
static void fail_queue(worker *w, pp_status status, const char *msg)
{
    while (w->head) {
        request *r = w->head;
        w->head = r->next;
        w->queued--;
        w->slot->active--;
        stream_fail(r->stream, status, msg);
        stream_unref(r->stream);
        request_free(r);
    }
    w->tail = NULL;
}

/* Moves the requests queued on a dead worker to a live worker of its model, if there is one
 * (otherwise they wait for the replacement); pool->mu held. */
static void reroute_queue(worker *dead)
{
    model_slot *slot = dead->slot;
    worker *to = NULL;
    for (int i = 0; i < slot->n_workers && !to; i++)
        if (slot->workers[i] != dead && !slot->workers[i]->dead)
            to = slot->workers[i];
    if (!to || !dead->head)
        return;
    pool_log("re-routed %zu queued request(s) of %s from worker %d to worker %d", dead->queued, slot->key,
             dead->index, to->index);
    if (to->tail)
        to->tail->next = dead->head;
    else
        to->head = dead->head;
    to->tail = dead->tail;
    to->queued += dead->queued;
    dead->head = dead->tail = NULL;
    dead->queued = 0;
    pthread_cond_signal(&to->cv);
}

/* A request a worker is generating. */
typedef struct running {
    request *r;
    eng_gen *gen;
    gen_ctx g;
    int blocks; /* KV blocks reserved for its whole context */
} running;

/* The state of one worker thread's batch: the running requests and the paged KV cache they share
 * (created on first use: blocks for the model's context, the memory the governor counted). */
typedef struct batch {
    running *run[MAX_BATCH_LIMIT];
    int n;
    eng_kv_cache *kv;
    int kv_blocks;      /* its size: blocks for the model's context */
    int reserved;       /* blocks reserved by the running requests */
    int cap;            /* most running requests (the worker's batch bound) */
    int n_batch;        /* most tokens one forward runs (the model's prefill step; the
                           scratch is sized for it) */
    float *logits;      /* [cap][n_vocab], host */
    float *cand_logits; /* [cap][ENG_TOPK_MAX], host: sampling candidates (eng_gen_candidates_k) */
    int32_t *cand_ids;  /* [cap][ENG_TOPK_MAX], host */
} batch;

/* Blocks a request's whole context takes (eng_gen_create's session for it). */
static int request_blocks(const worker *w, const request *r)
{
    return (int)eng_ceil_div(eng_gen_context(w->model, &r->gp, r->n_ids), ENG_KV_BLOCK_SIZE);
}

/* Bookkeeping of a request that reached its terminal item (alive) or whose worker died; no lock
 * held. */
static void request_done(worker *w, request *r, bool alive)
{
    stream_unref(r->stream);
    request_free(r);
    pthread_mutex_lock(&w->pool->mu);
    w->served += alive;
    w->slot->active--;
    w->slot->last_used = now_s();
    pthread_mutex_unlock(&w->pool->mu);
}

/* Gives an ended generation's stream its terminal item when the final chunk was not it: an
 * error (on_chunk does not push ERROR chunks) or a push that failed. */
static void running_end_stream(running *x)
{
    pp_status st = eng_gen_status(x->gen);
    if (x->g.push_failed)
        stream_fail(x->r->stream, PP_STATUS_OUT_OF_MEMORY, "out of memory while streaming");
    else if (st != PP_STATUS_OK)
        stream_fail(x->r->stream, st, x->g.err.msg);
}

/* Removes b->run[i] (its generation ended: the final chunk or an error went to its stream). */
static void batch_remove(worker *w, batch *b, int i)
{
    running *x = b->run[i];
    running_end_stream(x);
    eng_gen_free(x->gen);
    b->reserved -= x->blocks;
    request_done(w, x->r, true);
    free(x);
    b->run[i] = b->run[--b->n];
}

/* Starts generating r in the batch; ends r's stream at once when it was cancelled or cannot
 * start. No lock held. */
static void batch_admit(worker *w, batch *b, request *r)
{
    if (atomic_load(&r->stream->cancel)) {
        stream_push(r->stream, "", 0, NULL, 0, PP_FINISH_CANCELLED, r->n_ids, 0);
        request_done(w, r, true);
        return;
    }
    const eng_config *c = eng_model_config(w->model);
    running *x = calloc(1, sizeof *x);
    pp_status st = x ? PP_STATUS_OK : PP_STATUS_OUT_OF_MEMORY;
    eng_err err = {{0}};
    if (!x)
        eng_msgf(err.msg, sizeof err.msg, "out of memory");
    if (st == PP_STATUS_OK && !b->kv)
        st = eng_kv_cache_create(w->model, b->kv_blocks, ENG_KV_BLOCK_SIZE, &b->kv, &err);
    if (st == PP_STATUS_OK && !b->logits &&
        !(b->logits = malloc((size_t)b->cap * (size_t)c->n_vocab * sizeof(float))))
        st = eng_fail(&err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st == PP_STATUS_OK && !b->cand_logits &&
        !(b->cand_logits = malloc((size_t)b->cap * ENG_TOPK_MAX * sizeof(float))))
        st = eng_fail(&err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st == PP_STATUS_OK && !b->cand_ids && !(b->cand_ids = malloc((size_t)b->cap * ENG_TOPK_MAX * sizeof(int32_t))))
        st = eng_fail(&err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st == PP_STATUS_OK) {
        x->r = r;
        x->g = (gen_ctx){w, r->stream, false, false, {{0}}};
        x->blocks = request_blocks(w, r);
        st = eng_gen_create(w->model, b->kv, w->slot->tok, r->ids, r->n_ids, &r->gp, on_chunk, &x->g, &x->gen, &err);
    }
    if (st != PP_STATUS_OK) {
        stream_fail(r->stream, st, err.msg);
        request_done(w, r, true);
        free(x);
        return;
    }
    b->reserved += x->blocks;
    b->run[b->n++] = x;
}

/* What one step ran, for the worker's stats. */
typedef struct step_info {
    size_t n_decode; /* requests that generated a token */
    bool mixed;      /* prompt chunks ran beside them */
} step_info;

/* One forward step: the next token of every request past its prompt, and prompt chunks of the
 * others in the room left under the prefill step; *step says what ran. Returns false when the
 * worker died (an injected kill, or a device fault that leaves its backend unusable); why then
 * says why. No lock held. */
static bool batch_step(worker *w, batch *b, step_info *step, char *why, size_t why_len)
{
    /* a cancelled request, or a stopping worker, ends before its next step */
    for (int i = 0; i < b->n; i++)
        if (atomic_load(&b->run[i]->r->stream->cancel) || atomic_load(&w->stop)) {
            eng_gen_cancel(b->run[i]->gen);
            batch_remove(w, b, i--);
        }
    /* One forward: every decoding request's token, then prompt chunks of the requests still
     * prefilling, in batch order, in the room left under n_batch tokens (the first one always
     * gets at least one token: the batch holds at most n_batch requests) */
    int idx[MAX_BATCH_LIMIT], n = 0, n_tokens = 0, n_decode = 0;
    for (int i = 0; i < b->n; i++)
        if (!eng_gen_prefilling(b->run[i]->gen))
            idx[n++] = i;
    n_decode = n_tokens = n;
    for (int i = 0; i < b->n && n_tokens < b->n_batch; i++) {
        eng_gen *g = b->run[i]->gen;
        if (!eng_gen_prefilling(g))
            continue;
        eng_gen_set_chunk_limit(g, b->n_batch - n_tokens);
        const int32_t *ids;
        int len;
        eng_gen_input(g, &ids, &len);
        idx[n++] = i;
        n_tokens += len;
    }
    if (n == 0)
        return true;
    /* a greedy request gets its token picked by the backend, a sampled one with few enough
     * candidates (eng_gen_candidates_k) those candidates: no logits row to the host */
    eng_batch_seq seqs[MAX_BATCH_LIMIT];
    int32_t picks[MAX_BATCH_LIMIT];
    const eng_config *c = eng_model_config(w->model);
    for (int k = 0; k < n; k++) {
        running *x = b->run[idx[k]];
        eng_gen_input(x->gen, &seqs[k].ids, &seqs[k].n_tokens);
        seqs[k].session = eng_gen_session(x->gen);
        seqs[k].token_vocab = eng_gen_pick_vocab(x->gen);
        seqs[k].token = seqs[k].token_vocab > 0 ? &picks[k] : NULL;
        seqs[k].cand_k = seqs[k].token ? 0 : eng_gen_candidates_k(x->gen, &seqs[k].token_vocab);
        seqs[k].cand_logits = b->cand_logits + (size_t)k * ENG_TOPK_MAX;
        seqs[k].cand_ids = b->cand_ids + (size_t)k * ENG_TOPK_MAX;
        seqs[k].logits = seqs[k].token || seqs[k].cand_k ? NULL : b->logits + (size_t)k * (size_t)c->n_vocab;
    }
    step->n_decode = (size_t)n_decode;
    step->mixed = n_decode > 0 && n > n_decode;
    eng_err err = {{0}};
    pp_status st = eng_forward_batch(seqs, n, &err);
    if (st == PP_STATUS_DEVICE) {
        eng_msgf(why, why_len, "%s", err.msg);
        return false;
    }
    bool killed = false;
    for (int k = 0; k < n; k++) {
        running *x = b->run[idx[k]];
        if (st != PP_STATUS_OK) {
            x->g.err = err;
            eng_gen_fail(x->gen, st);
        } else if (!(seqs[k].token    ? eng_gen_advance_token(x->gen, picks[k], &x->g.err)
                     : seqs[k].cand_k ? eng_gen_advance_candidates(x->gen, seqs[k].cand_logits, seqs[k].cand_ids,
                                                                   seqs[k].cand_k, &x->g.err)
                                      : eng_gen_advance(x->gen, seqs[k].logits, &x->g.err))) {
            killed = killed || x->g.killed;
        }
    }
    if (killed) {
        eng_msgf(why, why_len, "killed by fault injection after %ld tokens (PARAPHYM_FAULT_KILL_AFTER_TOKENS)",
                 w->pool->fault_kill_after);
        return false;
    }
    for (int i = b->n - 1; i >= 0; i--)
        if (eng_gen_done(b->run[i]->gen))
            batch_remove(w, b, i);
    return true;
}

/* A worker's thread: takes requests from its queue into its batch while the batch (at most
 * pool->max_batch requests) and the KV cache (blocks for each request's whole context, reserved
 * on admission) have room, in queue order, and steps the batch until it and the queue are empty.
 * On death every running request ends with WORKER_DIED, once the pool counts the worker dead. */
static void *worker_main(void *arg)
{
    worker *w = arg;
    pp_pool *pool = w->pool;
    batch b = {0};
    b.kv_blocks = (int)eng_ceil_div(w->slot->desc.n_ctx, ENG_KV_BLOCK_SIZE);
    /* a decode step runs one token per request: within the prefill chunk the scratch was sized
     * for */
    int max_batch = (int)pool->max_batch;
    if (w->slot->desc.n_batch > 0 && max_batch > w->slot->desc.n_batch)
        max_batch = w->slot->desc.n_batch;
    b.cap = max_batch;
    b.n_batch = w->slot->desc.n_batch > 0 ? w->slot->desc.n_batch : INT_MAX;
    bool alive = true;
    char why[512] = "";
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (!w->head && b.n == 0 && !w->stop)
            pthread_cond_wait(&w->cv, &pool->mu);
        if (w->stop && b.n == 0)
            break;
        request *admit[MAX_BATCH_LIMIT];
        int n_admit = 0;
        int reserved = b.reserved;
        while (!w->stop && w->head && b.n + n_admit < max_batch) {
            int need = request_blocks(w, w->head);
            if (b.n + n_admit > 0 && reserved + need > b.kv_blocks)
                break; /* it waits, in order, for running requests to give blocks back */
            request *r = w->head;
            w->head = r->next;
            if (!w->head)
                w->tail = NULL;
            w->queued--;
            r->next = NULL;
            admit[n_admit++] = r;
            reserved += need;
        }
        w->busy = true;
        pthread_mutex_unlock(&pool->mu);
        for (int i = 0; i < n_admit; i++)
            batch_admit(w, &b, admit[i]);
        step_info step = {0, false};
        alive = batch_step(w, &b, &step, why, sizeof why);
        pthread_mutex_lock(&pool->mu);
        w->max_batch = step.n_decode > w->max_batch ? step.n_decode : w->max_batch;
        w->mixed_steps += step.mixed;
        w->busy = b.n > 0;
        if (!alive)
            break;
    }
    if (!alive) {
        /* the streams learn of the death only once the pool counts w as dead */
        char msg[1024];
        eng_msgf(msg, sizeof msg, "worker %d of %s died while generating: %s", w->index, w->slot->key, why);
        w->dead = true;
        bool finished[MAX_BATCH_LIMIT]; /* its final chunk went out before the death */
        for (int i = 0; i < b.n; i++) {
            finished[i] = eng_gen_done(b.run[i]->gen) && !b.run[i]->g.killed;
            if (finished[i])
                running_end_stream(b.run[i]);
            else
                stream_fail(b.run[i]->r->stream, PP_STATUS_WORKER_DIED, msg);
        }
        pthread_mutex_unlock(&pool->mu);
        for (int i = 0; i < b.n; i++) {
            eng_gen_free(b.run[i]->gen);
            request_done(w, b.run[i]->r, finished[i]);
            free(b.run[i]);
        }
        b.n = 0;
        eng_kv_cache_free(b.kv);
        free(b.logits);
        free(b.cand_logits);
        free(b.cand_ids);
        pthread_mutex_lock(&pool->mu);
        /* this thread ends; the maintenance thread joins it and starts a replacement */
        w->busy = false;
        pool_log("worker %d of %s died: %s", w->index, w->slot->key, why);
        reroute_queue(w);
        pthread_cond_signal(&pool->maint_cv);
        pthread_mutex_unlock(&pool->mu);
        return NULL;
    }
    /* stopping: whatever is still queued ends with a clear error */
    fail_queue(w, PP_STATUS_CANCELLED, "the pool stopped this model's workers");
    pthread_mutex_unlock(&pool->mu);
    eng_kv_cache_free(b.kv);
    free(b.logits);
    free(b.cand_logits);
    free(b.cand_ids);
    return NULL;
}

/* Stops and joins the slot's workers and frees its runtime; the caller holds no lock and has
 * moved the slot out of READY. Returns the grant to the governor. */
static void slot_teardown(pp_pool *pool, model_slot *slot)
{
    pthread_mutex_lock(&pool->mu);
    for (int i = 0; i < slot->n_workers; i++) {
        atomic_store(&slot->workers[i]->stop, true);
        pthread_cond_signal(&slot->workers[i]->cv);
    }
    pthread_mutex_unlock(&pool->mu);
    for (int i = 0; i < slot->n_workers; i++) {
        worker *w = slot->workers[i];
        pthread_join(w->thread, NULL);
        pthread_mutex_lock(&pool->mu); /* a dead worker's thread left its queue behind */
        fail_queue(w, PP_STATUS_CANCELLED, "the pool stopped this model's workers");
        pthread_mutex_unlock(&pool->mu);
        if (w->model != slot->base)
            eng_model_free(w->model);
        pthread_cond_destroy(&w->cv);
        free(w);
        slot->workers[i] = NULL;
    }
    eng_model_free(slot->base);
    eng_tokenizer_free(slot->tok);
    slot->base = NULL;
    slot->tok = NULL;
    pool_governor_release(pool->gov, slot->grant.device, slot->grant.host_mb, slot->grant.vram_mb);
    pool_log("released the memory of %s: %llu MB host, %llu MB VRAM (%d worker(s) stopped)", slot->key,
             (unsigned long long)slot->grant.host_mb, (unsigned long long)slot->grant.vram_mb, slot->n_workers);
    slot->n_workers = 0;
    memset(&slot->grant, 0, sizeof slot->grant);
}

/* Fault injection: fails the pool's PARAPHYM_FAULT_SPAWN_FAIL-th worker start. */
static pp_status fault_spawn(pp_pool *pool, const model_slot *slot, int index, char *msg, size_t msg_len)
{
    long n = atomic_fetch_add(&pool->spawn_count, 1) + 1;
    if (n != pool->fault_spawn_fail)
        return PP_STATUS_OK;
    eng_msgf(msg, msg_len, "cannot start worker %d of %s: fault injection failed worker start %ld (PARAPHYM_FAULT_SPAWN_FAIL)",
         index, slot->key, n);
    return PP_STATUS_SPAWN_FAILED;
}

static int worker_threads(const model_slot *slot)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = (int)(ncpu > 0 ? ncpu : 1) / (slot->grant.n_workers > 0 ? slot->grant.n_workers : 1);
    return threads < 1 ? 1 : threads;
}

/* Gives worker w (index set, queue possibly non-empty) a model and a running thread: the slot's
 * base model for the first start of worker 1, a fork over the same weights otherwise. No lock
 * held; on failure w->model is NULL and msg says why. */
static pp_status worker_start(model_slot *slot, worker *w, bool use_base, char *msg, size_t msg_len)
{
    eng_err err = {{0}};
    if (use_base) {
        w->model = slot->base;
    } else if (eng_model_fork(slot->base, worker_threads(slot), &w->model, &err) != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "cannot start worker %d of %s: %s", w->index, slot->key, err.msg);
        w->model = NULL;
        return PP_STATUS_SPAWN_FAILED;
    }
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        eng_msgf(msg, msg_len, "cannot start a thread for worker %d of %s", w->index, slot->key);
        if (w->model != slot->base)
            eng_model_free(w->model);
        w->model = NULL;
        return PP_STATUS_SPAWN_FAILED;
    }
    return PP_STATUS_OK;
}

/* Makes a CUDA model's weights resident before its first request: one forward of one token
 * uploads every tensor a forward reads (the CUDA backend uploads on first use, a layer's whole
 * expert array at once), so the upload's time and failures belong to the cold start (a failure
 * is the spawn's) and the VRAM is taken when the governor has counted it. */
static pp_status upload_weights(eng_model *model, eng_err *err)
{
    eng_session *s = NULL;
    float *logits = malloc((size_t)eng_model_config(model)->n_vocab * sizeof *logits);
    pp_status st = logits ? eng_session_create(model, 1, &s, err)
                          : eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st == PP_STATUS_OK) { /* the logits' download waits for the forward: a fault shows here */
        int32_t id = 0;
        st = eng_session_forward(s, &id, 1, logits, false, err);
    }
    eng_session_free(s);
    free(logits);
    if (st != PP_STATUS_OK)
        eng_err_prefix(err, "uploading the weights to the GPU");
    return st;
}

/* Loads the model and starts grant->n_workers workers. When the first worker starts and a
 * second does not, the model runs with one and the second's memory goes back to the governor.
 * No lock held. */
static pp_status slot_spawn(pp_pool *pool, model_slot *slot, char *msg, size_t msg_len)
{
    eng_err err = {{0}};
    pp_status st = fault_spawn(pool, slot, 1, msg, msg_len);
    if (st != PP_STATUS_OK)
        return st;
    eng_model_opts opts;
    eng_model_opts_default(&opts);
    if (slot->grant.device >= 0) { /* a GPU worker: the CUDA backend on the granted device, in the
                                      production bf16 mode (bf16 KV cache, tensor-core prefill) */
        opts.backend = "cuda";
        opts.device = slot->grant.device;
        opts.dtype = ENG_DTYPE_MODE_BF16;
    }
    double t0 = now_s();
    st = eng_model_load(slot->dir, &opts, &slot->base, &err);
    if (st == PP_STATUS_OK && slot->grant.device >= 0)
        st = upload_weights(slot->base, &err);
    if (st == PP_STATUS_OK)
        st = eng_tokenizer_load(slot->dir, &slot->tok, &err);
    if (st != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "cannot load %s: %s", slot->key, err.msg);
        eng_model_free(slot->base);
        slot->base = NULL;
        return PP_STATUS_SPAWN_FAILED;
    }
    for (int i = 0; i < slot->grant.n_workers; i++) {
        worker *w = calloc(1, sizeof *w);
        if (!w) {
            st = PP_STATUS_SPAWN_FAILED;
            eng_msgf(msg, msg_len, "cannot start worker %d of %s: out of memory", i + 1, slot->key);
            break;
        }
        w->slot = slot;
        w->pool = pool;
        w->index = i + 1;
        pthread_cond_init(&w->cv, NULL);
        if ((i > 0 && (st = fault_spawn(pool, slot, i + 1, msg, msg_len)) != PP_STATUS_OK) ||
            (st = worker_start(slot, w, i == 0, msg, msg_len)) != PP_STATUS_OK) {
            pthread_cond_destroy(&w->cv);
            free(w);
            break;
        }
        slot->workers[slot->n_workers++] = w;
        if (slot->grant.device < 0)
            pool_log("Spawned worker %d for %s (CPU)", i + 1, slot->key);
        else
            pool_log("Spawned worker %d for %s (GPU %d, %s compute, %s KV cache; weights uploaded, %.1f s since "
                     "the load began)", i + 1, slot->key, slot->grant.device, eng_model_dtype_name(slot->base),
                     eng_model_kv_name(slot->base), now_s() - t0);
    }
    if (st != PP_STATUS_OK && slot->n_workers == 1) {
        pool_log("warning: %s; %s runs with 1 worker", msg, slot->key);
        pool_governor_release(pool->gov, slot->grant.device, slot->desc.second.host_mb, slot->desc.second.vram_mb);
        slot->grant.n_workers = 1;
        slot->grant.host_mb -= slot->desc.second.host_mb;
        slot->grant.vram_mb -= slot->grant.device >= 0 ? slot->desc.second.vram_mb : 0;
        st = PP_STATUS_OK;
    }
    return st;
}

/* ---- the pool -------------------------------------------------------------------------------- */

/* Replaces the dead worker w of a READY slot: joins its thread, starts a fresh fork over the
 * slot's weights, and lets it serve the requests queued on w meanwhile. The worker's memory stays
 * reserved throughout. When the replacement cannot start, w's queued requests end with
 * SPAWN_FAILED and w is removed: its memory goes back to the governor (all of the slot's when w
 * was the last worker, and the slot is torn down). Called and returns with pool->mu held (it is
 * released while the worker starts); only the maintenance thread calls it. */
static void replace_worker(pp_pool *pool, model_slot *slot, worker *w)
{
    pthread_mutex_unlock(&pool->mu);
    pthread_join(w->thread, NULL);
    if (w->model != slot->base)
        eng_model_free(w->model);
    w->model = NULL;
    char msg[1024] = "";
    pp_status st = fault_spawn(pool, slot, w->index, msg, sizeof msg);
    pthread_mutex_lock(&pool->mu);
    w->dead = false; /* the new thread may start serving as soon as it exists */
    w->restarts++;
    atomic_store(&w->stop, false);
    pthread_mutex_unlock(&pool->mu);
    if (st == PP_STATUS_OK)
        st = worker_start(slot, w, false, msg, sizeof msg);
    pthread_mutex_lock(&pool->mu);
    if (st == PP_STATUS_OK) {
        pool_log("Replaced worker %d of %s (restart %zu)", w->index, slot->key, w->restarts);
        return;
    }
    w->dead = true;
    pool_log("cannot replace worker %d of %s: %s", w->index, slot->key, msg);
    fail_queue(w, PP_STATUS_SPAWN_FAILED, msg);
    if (slot->n_workers == 1) {
        /* the last worker: new prompts wait for the slot to empty (then cold-start); prompts
         * being prepared use the slot's tokenizer until they see it is no longer READY */
        slot->state = SLOT_EVICTING;
        while (slot->preparing > 0)
            pthread_cond_wait(&slot->state_cv, &pool->mu);
    }
    int i = 0;
    while (slot->workers[i] != w)
        i++;
    for (; i + 1 < slot->n_workers; i++)
        slot->workers[i] = slot->workers[i + 1];
    slot->workers[--slot->n_workers] = NULL;
    pthread_cond_destroy(&w->cv);
    free(w);
    if (slot->n_workers > 0) {
        pool_governor_release(pool->gov, slot->grant.device, slot->desc.second.host_mb, slot->desc.second.vram_mb);
        slot->grant.n_workers--;
        slot->grant.host_mb -= slot->desc.second.host_mb;
        slot->grant.vram_mb -= slot->grant.device >= 0 ? slot->desc.second.vram_mb : 0;
        return;
    }
    pthread_mutex_unlock(&pool->mu); /* no worker left: release everything */
    slot_teardown(pool, slot);
    pthread_mutex_lock(&pool->mu);
    slot->state = SLOT_EMPTY;
    pthread_cond_broadcast(&slot->state_cv);
}

/* Replaces dead workers and evicts slots idle for longer than the pool's idle timeout. */
static void *maintenance_main(void *arg)
{
    pp_pool *pool = arg;
    pthread_mutex_lock(&pool->mu);
    while (!pool->shutting_down) {
        struct timespec dl = deadline_in(0.25);
        pthread_cond_timedwait(&pool->maint_cv, &pool->mu, &dl);
        if (pool->shutting_down)
            break;
        for (model_slot *slot = pool->slots; slot; slot = slot->next)
            for (int i = 0; slot->state == SLOT_READY && i < slot->n_workers; i++)
                if (slot->workers[i]->dead)
                    replace_worker(pool, slot, slot->workers[i--]); /* i-- : the array may shrink */
        double now = now_s();
        for (model_slot *slot = pool->slots; slot; slot = slot->next) {
            if (slot->state != SLOT_READY || slot->active > 0 || now - slot->last_used < pool->idle_timeout_s)
                continue;
            slot->state = SLOT_EVICTING;
            pthread_mutex_unlock(&pool->mu);
            pool_log("evicting %s after %.1f s idle", slot->key, now - slot->last_used);
            slot_teardown(pool, slot);
            pthread_mutex_lock(&pool->mu);
            slot->state = SLOT_EMPTY;
            pthread_cond_broadcast(&slot->state_cv);
        }
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

static double env_seconds(const char *name, double fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    double x = strtod(v, &end);
    return (*end == '\0' && x >= 0) ? x : fallback;
}

static long env_count(const char *name, long fallback)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    long x = strtol(v, &end, 10);
    return (*end == '\0' && x >= 0) ? x : fallback;
}

pp_pool *pp_text_to_text_pool(void)
{
    pthread_mutex_lock(&global_mu);
    if (global_pool) {
        pp_pool *p = global_pool;
        pthread_mutex_unlock(&global_mu);
        return p;
    }
    pp_pool *pool = calloc(1, sizeof *pool);
    char msg[512] = "";
    if (!pool) {
        pool_set_last_error("cannot create the pool: out of memory");
        pthread_mutex_unlock(&global_mu);
        return NULL;
    }
    if (pool_governor_create_system(&pool->gov, msg, sizeof msg) != PP_STATUS_OK) {
        pool_set_last_error("cannot create the pool: %s", msg);
        free(pool);
        pthread_mutex_unlock(&global_mu);
        return NULL;
    }
    pool_governor_stats gs;
    pool_governor_get_stats(pool->gov, &gs);
    pool->gpu_workers = gs.n_devices > 0;
    pthread_mutex_init(&pool->mu, NULL);
    cond_init_monotonic(&pool->maint_cv);
    pool->idle_timeout_s = env_seconds("PARAPHYM_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S);
    long max_queue = env_count("PARAPHYM_MAX_QUEUE", MAX_QUEUE);
    pool->max_queue = max_queue > 0 ? (size_t)max_queue : 1;
    long max_batch = env_count("PARAPHYM_MAX_BATCH", MAX_BATCH);
    pool->max_batch = max_batch < 1 ? 1 : max_batch > MAX_BATCH_LIMIT ? MAX_BATCH_LIMIT : (size_t)max_batch;
    pool->fault_spawn_fail = env_count("PARAPHYM_FAULT_SPAWN_FAIL", 0);
    pool->fault_kill_after = env_count("PARAPHYM_FAULT_KILL_AFTER_TOKENS", 0);
    atomic_init(&pool->spawn_count, 0);
    atomic_init(&pool->kills_left, pool->fault_kill_after > 0 ? (int)env_count("PARAPHYM_FAULT_KILL_COUNT", 1) : 0);
    if (pool->fault_spawn_fail > 0)
        pool_log("fault injection: worker start %ld will fail", pool->fault_spawn_fail);
    if (pool->fault_kill_after > 0)
        pool_log("fault injection: %d worker(s) will die after %ld tokens of a request", atomic_load(&pool->kills_left),
                 pool->fault_kill_after);
    pool->maint_started = pthread_create(&pool->maint, NULL, maintenance_main, pool) == 0;
    if (!pool->maint_started)
        pool_log("warning: no maintenance thread (idle models will not be evicted)");
    global_pool = pool;
    pthread_mutex_unlock(&global_mu);
    return pool;
}

void pp_pool_shutdown(pp_pool *pool)
{
    pthread_mutex_lock(&global_mu);
    if (!pool || pool != global_pool) {
        pthread_mutex_unlock(&global_mu);
        return;
    }
    global_pool = NULL;
    pthread_mutex_unlock(&global_mu);

    pthread_mutex_lock(&pool->mu);
    pool->shutting_down = true;
    pthread_cond_broadcast(&pool->maint_cv);
    /* wait for cold starts in flight to settle */
    for (model_slot *slot = pool->slots; slot; slot = slot->next)
        while (slot->state == SLOT_SPAWNING || slot->state == SLOT_EVICTING || slot->preparing > 0)
            pthread_cond_wait(&slot->state_cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    if (pool->maint_started)
        pthread_join(pool->maint, NULL);
    for (model_slot *slot = pool->slots; slot;) {
        model_slot *next = slot->next;
        if (slot->state == SLOT_READY) {
            /* running generations see the stop flag at their next token */
            pthread_mutex_lock(&pool->mu);
            for (int i = 0; i < slot->n_workers; i++)
                atomic_store(&slot->workers[i]->stop, true);
            pthread_mutex_unlock(&pool->mu);
            slot_teardown(pool, slot);
        }
        pthread_cond_destroy(&slot->state_cv);
        free(slot->key);
        free(slot->dir);
        free(slot);
        slot = next;
    }
    pool_governor_free(pool->gov);
    pthread_cond_destroy(&pool->maint_cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}

static model_slot *slot_find(pp_pool *pool, const char *key)
{
    for (model_slot *s = pool->slots; s; s = s->next)
        if (strcmp(s->key, key) == 0)
            return s;
    return NULL;
}

bool pp_pool_has_workers(pp_pool *pool, const char *key)
{
    return pp_pool_worker_count(pool, key) > 0;
}

size_t pp_pool_worker_count(pp_pool *pool, const char *key)
{
    if (!pool || !key)
        return 0;
    pthread_mutex_lock(&pool->mu);
    model_slot *s = slot_find(pool, key);
    size_t n = 0;
    for (int i = 0; s && s->state == SLOT_READY && i < s->n_workers; i++)
        n += !s->workers[i]->dead;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

size_t pp_pool_total_memory_mb(pp_pool *pool)
{
    if (!pool)
        return 0;
    pool_governor_stats gs;
    pool_governor_get_stats(pool->gov, &gs);
    uint64_t total = gs.host_reserved_mb;
    for (int i = 0; i < gs.n_devices; i++)
        total += gs.vram_reserved_mb[i];
    return (size_t)total;
}

void pp_pool_get_stats(pp_pool *pool, pp_pool_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!pool)
        return;
    pool_governor_stats gs;
    pool_governor_get_stats(pool->gov, &gs);
    out->host_total_mb = gs.host_total_mb;
    out->host_limit_mb = gs.host_limit_mb;
    out->host_reserved_mb = gs.host_reserved_mb;
    out->n_devices = gs.n_devices < 16 ? gs.n_devices : 16;
    for (int i = 0; i < out->n_devices; i++) {
        out->vram_limit_mb[i] = gs.vram_limit_mb[i];
        out->vram_reserved_mb[i] = gs.vram_reserved_mb[i];
#ifdef PP_HAVE_CUDA
        size_t used = 0; /* only where the pool has workers: asking creates a context */
        char why[256];
        if (gs.vram_reserved_mb[i] > 0 && kern_device_mem_used(i, &used, why, sizeof why) == 0)
            out->vram_used_mb[i] = used >> 20;
#endif
    }
    pthread_mutex_lock(&pool->mu);
    for (model_slot *s = pool->slots; s; s = s->next) {
        if (s->state != SLOT_READY)
            continue;
        for (int i = 0; i < s->n_workers && out->n_workers < PP_POOL_STATS_MAX_WORKERS; i++) {
            pp_worker_stats *ws = &out->workers[out->n_workers++];
            ws->registry_key = s->key;
            ws->worker = s->workers[i]->index;
            ws->device = s->grant.device;
            ws->queued = s->workers[i]->queued;
            ws->served = s->workers[i]->served;
            ws->busy = s->workers[i]->busy;
            ws->max_batch = s->workers[i]->max_batch;
            ws->mixed_steps = s->workers[i]->mixed_steps;
            ws->alive = !s->workers[i]->dead;
            ws->restarts = s->workers[i]->restarts;
        }
    }
    pthread_mutex_unlock(&pool->mu);
}

/* ---- prompts --------------------------------------------------------------------------------- */

/* Turns the prompt into ids with the slot's tokenizer (chat format for messages). */
static pp_status prompt_ids(const model_slot *slot, const pp_prompt *prompt, int32_t **ids, size_t *n_ids,
                            bool *is_chat, char *msg, size_t msg_len)
{
    eng_err err = {{0}};
    *is_chat = prompt->messages != NULL;
    if (!prompt->messages) {
        if (!prompt->text) {
            eng_msgf(msg, msg_len, "the prompt has neither text nor messages");
            return PP_STATUS_INVALID_ARG;
        }
        pp_status st = eng_tokenizer_encode(slot->tok, prompt->text, strlen(prompt->text), true, ids, n_ids, &err);
        if (st != PP_STATUS_OK)
            eng_msgf(msg, msg_len, "%s", err.msg);
        return st;
    }
    json_object *arr = json_object_new_array();
    for (size_t i = 0; arr && i < prompt->n_messages; i++) {
        const pp_message *m = &prompt->messages[i];
        if (!m->role || !m->content) {
            json_object_put(arr);
            eng_msgf(msg, msg_len, "message %zu has no %s", i, m->role ? "content" : "role");
            return PP_STATUS_INVALID_ARG;
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "role", json_object_new_string(m->role));
        json_object_object_add(o, "content", json_object_new_string(m->content));
        json_object_array_add(arr, o);
    }
    if (!arr) {
        eng_msgf(msg, msg_len, "out of memory");
        return PP_STATUS_OUT_OF_MEMORY;
    }
    char *text = NULL;
    size_t len = 0;
    const char *js = json_object_to_json_string_ext(arr, JSON_C_TO_STRING_PLAIN);
    pp_status st = eng_chat_render(eng_chat_format_for(eng_model_config(slot->base)->arch), js, NULL, true, &text,
                                   &len, &err);
    json_object_put(arr);
    if (st == PP_STATUS_OK)
        st = eng_tokenizer_encode(slot->tok, text, len, true, ids, n_ids, &err);
    if (st != PP_STATUS_OK)
        eng_msgf(msg, msg_len, "%s", err.msg);
    free(text);
    return st;
}

/* Builds the request (ids, generation parameters, stop strings). */
static pp_status build_request(const model_slot *slot, const pp_prompt *prompt, const pp_completion_params *p,
                               request **out, char *msg, size_t msg_len)
{
    *out = NULL;
    request *r = calloc(1, sizeof *r);
    if (!r) {
        eng_msgf(msg, msg_len, "out of memory");
        return PP_STATUS_OUT_OF_MEMORY;
    }
    bool is_chat;
    pp_status st = prompt_ids(slot, prompt, &r->ids, &r->n_ids, &is_chat, msg, msg_len);
    if (st != PP_STATUS_OK) {
        request_free(r);
        return st;
    }
    eng_gen_params_default(&r->gp, slot->base);
    r->gp.max_tokens = p->max_tokens;
    r->gp.n_ctx = slot->desc.n_ctx;
    r->gp.n_batch = slot->desc.n_batch;
    r->gp.sampling.temperature = p->temperature;
    r->gp.sampling.top_k = p->top_k;
    r->gp.sampling.top_p = p->top_p;
    r->gp.sampling.min_p = p->min_p;
    r->gp.sampling.repetition_penalty = p->repetition_penalty;
    r->gp.sampling.seed = p->seed;
    if (is_chat) {
        int32_t end_turn = eng_tokenizer_special_id(slot->tok, "<|im_end|>");
        if (end_turn >= 0 && r->gp.n_stop_ids < ENG_MAX_STOP_IDS)
            r->gp.stop_ids[r->gp.n_stop_ids++] = end_turn;
    }
    if (p->n_stop) {
        r->stop = calloc(p->n_stop, sizeof *r->stop);
        if (!r->stop) {
            request_free(r);
            eng_msgf(msg, msg_len, "out of memory");
            return PP_STATUS_OUT_OF_MEMORY;
        }
        for (size_t i = 0; i < p->n_stop; i++) {
            if (!p->stop || !p->stop[i] || !p->stop[i][0]) {
                r->gp.n_stop = i;
                request_free(r);
                eng_msgf(msg, msg_len, "stop string %zu is NULL or empty", i);
                return PP_STATUS_INVALID_ARG;
            }
            r->stop[i] = strdup(p->stop[i]);
            r->gp.n_stop = i + 1;
            if (!r->stop[i]) {
                request_free(r);
                eng_msgf(msg, msg_len, "out of memory");
                return PP_STATUS_OUT_OF_MEMORY;
            }
        }
        r->gp.stop = (const char *const *)r->stop;
    }
    /* everything eng_generate would reject, rejected here so the error comes before any chunk */
    eng_err err = {{0}};
    if ((st = eng_sampling_validate(&r->gp.sampling, &err)) != PP_STATUS_OK) {
        eng_msgf(msg, msg_len, "%s", err.msg);
    } else if (r->gp.max_tokens <= 0) {
        eng_msgf(msg, msg_len, "max_tokens must be positive (got %d)", r->gp.max_tokens);
        st = PP_STATUS_INVALID_ARG;
    } else if (r->n_ids == 0) {
        eng_msgf(msg, msg_len, "the prompt is empty (0 tokens)");
        st = PP_STATUS_INVALID_ARG;
    } else if (r->n_ids >= (size_t)slot->desc.n_ctx) {
        eng_msgf(msg, msg_len, "the prompt has %zu tokens, which leaves no room in the context of %d (prompts are not truncated)",
                 r->n_ids, slot->desc.n_ctx);
        st = PP_STATUS_INVALID_ARG;
    }
    if (st != PP_STATUS_OK) {
        request_free(r);
        return st;
    }
    *out = r;
    return PP_STATUS_OK;
}

/* Makes sure the slot has workers; called and returns with pool->mu held. */
static pp_status ensure_workers(pp_pool *pool, model_slot *slot, char *msg, size_t msg_len)
{
    struct timespec dl = deadline_in(SPAWN_WAIT_S);
    for (;;) {
        if (pool->shutting_down) {
            eng_msgf(msg, msg_len, "the pool is shutting down");
            return PP_STATUS_CANCELLED;
        }
        if (slot->state == SLOT_READY)
            return PP_STATUS_OK;
        if (slot->state == SLOT_EMPTY)
            break;
        if (pthread_cond_timedwait(&slot->state_cv, &pool->mu, &dl) == ETIMEDOUT && slot->state != SLOT_READY &&
            slot->state != SLOT_EMPTY) {
            eng_msgf(msg, msg_len, "timed out after %d s waiting for another thread's cold start of %s", SPAWN_WAIT_S,
                     slot->key);
            return PP_STATUS_TIMEOUT;
        }
    }
    /* cold start: this thread spawns, concurrent prompts for the model wait on state_cv */
    slot->state = SLOT_SPAWNING;
    pp_status st = pool_governor_cold_start(pool->gov, slot->key, &slot->desc.first, &slot->desc.second, &slot->grant,
                                            msg, msg_len);
    if (st != PP_STATUS_OK) {
        slot->state = SLOT_EMPTY;
        pthread_cond_broadcast(&slot->state_cv);
        return st;
    }
    pthread_mutex_unlock(&pool->mu);
    st = slot_spawn(pool, slot, msg, msg_len);
    if (st != PP_STATUS_OK)
        slot_teardown(pool, slot);
    pthread_mutex_lock(&pool->mu);
    slot->state = st == PP_STATUS_OK ? SLOT_READY : SLOT_EMPTY;
    slot->last_used = now_s();
    pthread_cond_broadcast(&slot->state_cv);
    return st;
}

/* The slot's worker costs (slot->desc.first / second, what the governor counts): the GPU ones
 * when the pool's workers run on CUDA. */
static void slot_costs(const pp_pool *pool, model_slot *slot, const pool_model_desc *model)
{
    slot->desc.first = pool->gpu_workers ? model->gpu_first : model->first;
    slot->desc.second = pool->gpu_workers ? model->gpu_second : model->second;
}

pp_stream *pool_prompt(pp_pool *pool, const pool_model_desc *model, const pp_prompt *prompt,
                       const pp_completion_params *params)
{
    if (!pool)
        return pool_error_stream(PP_STATUS_INTERNAL, "no pool: %s", pp_last_error());
    if (!model || !model->key || !model->model_dir || !prompt || model->n_ctx < 2)
        return pool_error_stream(PP_STATUS_INVALID_ARG, "pp_model_prompt: missing model or prompt");
    pp_completion_params defaults;
    if (!params) {
        pp_completion_params_default(&defaults);
        params = &defaults;
    }
    char msg[1024] = "";
    pthread_mutex_lock(&pool->mu);
    model_slot *slot = slot_find(pool, model->key);
    if (!slot) {
        slot = calloc(1, sizeof *slot);
        char *key = strdup(model->key), *dir = strdup(model->model_dir);
        if (!slot || !key || !dir) {
            free(slot);
            free(key);
            free(dir);
            pthread_mutex_unlock(&pool->mu);
            return pool_error_stream(PP_STATUS_OUT_OF_MEMORY, "out of memory");
        }
        slot->key = key;
        slot->dir = dir;
        slot->desc = *model;
        slot->desc.key = slot->key;
        slot->desc.model_dir = slot->dir;
        slot_costs(pool, slot, model);
        cond_init_monotonic(&slot->state_cv);
        slot->next = pool->slots;
        pool->slots = slot;
    }
    if (slot->state == SLOT_EMPTY) { /* the next cold start uses the model's current settings */
        slot_costs(pool, slot, model);
        slot->desc.n_ctx = model->n_ctx;
        slot->desc.n_batch = model->n_batch;
    }
    pp_status st = ensure_workers(pool, slot, msg, sizeof msg);
    if (st != PP_STATUS_OK) {
        pthread_mutex_unlock(&pool->mu);
        return pool_error_stream(st, "%s", msg);
    }
    slot->active++; /* keeps the slot from eviction while the request is prepared */
    slot->preparing++;
    pthread_mutex_unlock(&pool->mu);

    request *r = NULL;
    st = build_request(slot, prompt, params, &r, msg, sizeof msg);
    pp_stream *stream = st == PP_STATUS_OK ? stream_new(2) : NULL;
    pthread_mutex_lock(&pool->mu);
    slot->preparing--;
    pthread_cond_broadcast(&slot->state_cv);
    if (st != PP_STATUS_OK || !stream || pool->shutting_down || slot->state != SLOT_READY) {
        if (st == PP_STATUS_OK && stream) { /* shut down, or the last worker lost, meanwhile */
            st = pool->shutting_down ? PP_STATUS_CANCELLED : PP_STATUS_WORKER_DIED;
            eng_msgf(msg, sizeof msg, "%s", pool->shutting_down ? "the pool is shutting down"
                                       : "the model's last worker died and could not be replaced; retry");
            stream_destroy(stream); /* not handed out yet: nobody else holds it */
            stream = NULL;
        }
        slot->active--;
        slot->last_used = now_s();
        pthread_mutex_unlock(&pool->mu);
        request_free(r);
        return st != PP_STATUS_OK ? pool_error_stream(st, "%s", msg) : NULL;
    }
    /* the least loaded live worker; with none alive, the queue of one being replaced */
    worker *best = NULL;
    for (int i = 0; i < slot->n_workers; i++) {
        worker *w = slot->workers[i];
        if (!best || (best->dead && !w->dead) ||
            (best->dead == w->dead && w->queued + w->busy < best->queued + best->busy))
            best = w;
    }
    if (best->queued >= pool->max_queue) {
        slot->active--;
        pthread_mutex_unlock(&pool->mu);
        stream_destroy(stream); /* not handed out yet */
        request_free(r);
        return pool_error_stream(PP_STATUS_QUEUE_FULL,
                                 "the queue of %s is full: %zu request(s) waiting on each of its %d worker(s) "
                                 "(PARAPHYM_MAX_QUEUE); retry later",
                                 model->key, pool->max_queue, slot->n_workers);
    }
    r->stream = stream;
    if (best->tail)
        best->tail->next = r;
    else
        best->head = r;
    best->tail = r;
    best->queued++;
    pthread_cond_signal(&best->cv);
    pthread_mutex_unlock(&pool->mu);
    return stream;
}
