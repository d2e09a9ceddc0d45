/* sampler.h: choosing the next token from a row of logits, as transformers' generate() does:
 * repetition penalty over the prompt and generated ids, then temperature, top-k, top-p, min-p,
 * then a draw from the softmax (or the argmax when temperature is 0).
 *
 * Invariant: the same parameters, seed and logits always give the same choice (a private
 * xoshiro256** generator seeded from `seed`, no global state).
 */
#ifndef ENG_SAMPLER_H
#define ENG_SAMPLER_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "common.h"

typedef struct eng_sampling {
    float temperature;        /* 0: greedy (argmax, ties to the lower id); > 0 divides logits */
    int top_k;                /* 0: off; keep the k most likely */
    float top_p;              /* 1: off; keep the smallest set whose probability reaches top_p */
    float min_p;              /* 0: off; drop tokens below min_p times the top probability */
    float repetition_penalty; /* 1: off; HF's rule: logit < 0 ? logit * r : logit / r */
    uint64_t seed;
} eng_sampling;

/* Greedy decoding with every filter off. */
void eng_sampling_default(eng_sampling *s);

/* INVALID_ARG with a message naming the parameter for NaN, negative temperature, top_k < 0,
 * top_p outside (0, 1], min_p outside [0, 1], repetition_penalty <= 0. */
pp_status eng_sampling_validate(const eng_sampling *s, eng_err *err);

typedef struct eng_sampler eng_sampler;

pp_status eng_sampler_create(const eng_sampling *s, int32_t n_vocab, eng_sampler **out, eng_err *err);
void eng_sampler_free(eng_sampler *sp); /* NULL-safe */

/* Picks a token from logits[0 .. n_vocab) (modified in place). history: the ids the repetition
 * penalty applies to (prompt + generated so far). */
int32_t eng_sampler_sample(eng_sampler *sp, float *logits, const int32_t *history, size_t n_history);
/* True when eng_sampler_sample is eng_argmax of the logits as given (greedy: temperature 0 or
 * top_k 1, and no repetition penalty to change them first): a backend's argmax op can then
 * pick the token where the logits are. */
bool eng_sampler_is_argmax(const eng_sampler *sp);

/* The greedy pick of x[0 .. n) (n >= 1), defined by the scan
 *   best = 0; for i = 1 .. n - 1: if (x[i] > x[best]) best = i;
 * that is: the lowest index of the largest value (ties to the lowest index; -0 and +0 are
 * equal); a NaN never compares greater, so a NaN at index 0 gives 0 whatever follows, and a NaN
 * elsewhere is never picked; a row all -inf (or all NaN) gives 0; +inf is the largest value.
 * eng_sampler_sample's greedy path (temperature 0 or top_k 1) and every backend's argmax op
 * (backend.h) follow this rule. */
int32_t eng_argmax(const float *x, int32_t n);

#endif /* ENG_SAMPLER_H */
