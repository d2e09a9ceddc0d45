/* generate.h: text generation as a stream of chunks: prefill the prompt, then sample one token
 * per decode step, detokenize incrementally, watch stop tokens and stop strings, and hand each
 * piece of new text to a callback. The pool will carry these chunks across threads.
 *
 * Invariants: text handed out is always whole UTF-8 characters; text that could still be the
 * start of a stop string is held back until it cannot be, and a matched stop string is never
 * emitted; the last chunk (and only it) has finish != ENG_FINISH_NONE and carries the usage.
 */
#ifndef ENG_GENERATE_H
#define ENG_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

typedef enum eng_finish {
    ENG_FINISH_NONE = 0,  /* more chunks follow */
    ENG_FINISH_STOP,      /* an end-of-sequence token or a stop string */
    ENG_FINISH_LENGTH,    /* max_tokens generated or the context is full */
    ENG_FINISH_CANCELLED, /* the callback asked to stop */
    ENG_FINISH_ERROR,     /* the forward pass failed (the status says why) */
} eng_finish;

const char *eng_finish_name(eng_finish f); /* "stop", "length", "cancelled", "error", "" */

typedef struct eng_chunk {
    const char *text;   /* new text, NUL-terminated, valid during the callback */
    size_t text_len;
    const int32_t *ids; /* ids generated since the previous chunk */
    size_t n_ids;
    eng_finish finish;
    size_t prompt_tokens;     /* usage so far */
    size_t completion_tokens;
} eng_chunk;

/* Called for every chunk; return false to cancel (a final chunk with ENG_FINISH_CANCELLED
 * follows). */
typedef bool (*eng_chunk_fn)(void *user, const eng_chunk *chunk);

#define ENG_MAX_STOP_IDS 16

typedef struct eng_gen_params {
    eng_sampling sampling;
    int max_tokens;            /* > 0 */
    int n_ctx;                 /* context limit; <= 0: min(max_position_embeddings, prompt + max_tokens) */
    int n_batch;               /* the prompt is prefilled in steps of at most n_batch tokens
                                  (bounds the scratch memory); <= 0: the whole prompt at once */
    const char *const *stop;   /* stop strings (may be NULL) */
    size_t n_stop;
    int32_t stop_ids[ENG_MAX_STOP_IDS]; /* end-of-sequence ids: generation stops after one */
    int n_stop_ids;
} eng_gen_params;

/* Fills defaults: greedy, max_tokens 256, no stop strings, the model's eos ids as stop ids. */
void eng_gen_params_default(eng_gen_params *p, const eng_model *model);

/* Reads DIR/generation_config.json's sampling defaults (do_sample, temperature, top_k, top_p,
 * min_p, repetition_penalty) into *s when the file exists; do_sample false means greedy.
 * Leaves *s unchanged when there is no file. */
pp_status eng_sampling_load_defaults(const char *dir, eng_sampling *s, eng_err *err);

/* Generates a continuation of prompt_ids. INVALID_ARG (before any chunk) for bad parameters, an
 * empty prompt or a prompt that does not fit the context (no truncation: the caller decides).
 * Returns the forward pass's status when it fails mid-stream, after a final chunk with
 * ENG_FINISH_ERROR. */
pp_status eng_generate(eng_model *model, const eng_tokenizer *tok, const int32_t *prompt_ids,
                       size_t n_prompt, const eng_gen_params *p, eng_chunk_fn fn, void *user,
                       eng_err *err);

/* ---- step by step (several generations batched by the caller) ------------------------------
 *
 * eng_generate is eng_gen_create, then until eng_gen_advance returns false: eng_gen_input, a
 * forward of those tokens with the last row's logits, eng_gen_advance. A caller driving several
 * generations whose sessions share one KV cache runs their inputs in one eng_forward_batch. The
 * chunks, the final chunk and the status are exactly eng_generate's. */
typedef struct eng_gen eng_gen;

/* The context a generation of n_prompt tokens with p takes: prompt + max_tokens, within p->n_ctx
 * (or the model's max_position_embeddings); what eng_gen_create makes its session for. */
int eng_gen_context(const eng_model *model, const eng_gen_params *p, size_t n_prompt);

/* Validates as eng_generate (INVALID_ARG before any chunk) and makes the generation's session:
 * in the shared cache kv (eng_session_create_in; the session then takes blocks as it grows), or
 * in a private cache of its own when kv is NULL. p, tok and the prompt's copy are used until
 * eng_gen_free; p must stay valid that long. */
pp_status eng_gen_create(eng_model *model, eng_kv_cache *kv, const eng_tokenizer *tok, const int32_t *prompt_ids,
                         size_t n_prompt, const eng_gen_params *p, eng_chunk_fn fn, void *user, eng_gen **out,
                         eng_err *err);
/* The tokens the next forward must run: the next prompt chunk (at most p->n_batch tokens, and
 * at most the chunk limit), or the token sampled last. Valid until the next eng_gen_advance. */
void eng_gen_input(const eng_gen *g, const int32_t **ids, int *n_tokens);
/* Limits the prompt chunks eng_gen_input hands out to max_tokens (<= 0: no limit beyond
 * p->n_batch), so that a caller can fit a chunk beside other sequences' tokens in one forward.
 * It must not change between eng_gen_input and the eng_gen_advance of that forward (advance
 * counts the chunk it consumed the same way). */
void eng_gen_set_chunk_limit(eng_gen *g, int max_tokens);
eng_session *eng_gen_session(eng_gen *g);
/* True while prompt chunks remain to be run. */
bool eng_gen_prefilling(const eng_gen *g);
/* After a successful forward of eng_gen_input's tokens: logits [n_vocab] of their last token
 * (modified: padding rows are masked). Samples once the prompt is complete and hands out the
 * chunks; returns false once the final chunk has been handed out (stop, length, cancel by the
 * callback, or an error detokenizing: then eng_gen_status says which). */
bool eng_gen_advance(eng_gen *g, float *logits, eng_err *err);
/* When the next token is the greedy argmax of the raw logits (greedy sampling without a
 * repetition penalty): the vocabulary to pick from (the tokenizer's, padding rows excluded), so
 * that the forward can make the pick on the backend (eng_batch_seq.token, token_vocab) and
 * eng_gen_advance_token take it. 0 when the sampler needs the logits. */
int eng_gen_pick_vocab(const eng_gen *g);
/* eng_gen_advance for a forward that returned only its greedy pick (eng_gen_pick_vocab > 0):
 * the same chunks and results as eng_gen_advance on those logits. */
bool eng_gen_advance_token(eng_gen *g, int32_t id, eng_err *err);
/* When the next token is drawn from few enough candidates (sampling whose sampler qualifies,
 * eng_sampler_candidates_k; never for greedy picks, which eng_gen_pick_vocab serves): k, 1 ..
 * ENG_TOPK_MAX, and *vocab = the vocabulary to pick from (as eng_gen_pick_vocab's), so that the
 * forward can pick the candidates on the backend (eng_batch_seq.cand_k = k, token_vocab =
 * *vocab) and eng_gen_advance_candidates draw from them. 0 when the sampler needs the logits. */
int eng_gen_candidates_k(const eng_gen *g, int *vocab);
/* eng_gen_advance for a forward that returned only the candidates of eng_gen_candidates_k
 * (logits / ids [n], n = that k, as eng_batch_seq.cand_logits / cand_ids hold them): the same
 * chunks, results and sampler state as eng_gen_advance on those logits, bit for bit. */
bool eng_gen_advance_candidates(eng_gen *g, const float *logits, const int32_t *ids, int n, eng_err *err);
/* The forward failed with st: hands out the final ERROR chunk (once); eng_gen_status is st. */
void eng_gen_fail(eng_gen *g, pp_status st);
/* Ends the generation now with a final CANCELLED chunk (once). */
void eng_gen_cancel(eng_gen *g);
/* True once the final chunk was handed out. */
bool eng_gen_done(const eng_gen *g);
/* PP_STATUS_OK, or the error that ended the generation. */
pp_status eng_gen_status(const eng_gen *g);
void eng_gen_free(eng_gen *g); /* NULL-safe; frees the session (its blocks go back to the cache) */

#endif /* ENG_GENERATE_H */
