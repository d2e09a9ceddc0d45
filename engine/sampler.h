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

#endif /* ENG_SAMPLER_H */
