/* sampler.h: choosing the next token from a row of logits, as transformers' generate() does:
 * repetition penalty over the prompt and generated ids, then temperature, top-k, top-p, min-p,
 * then a draw from the softmax (or the argmax when temperature is 0).
 *
 * Invariants: the same parameters, seed and logits always give the same choice (a private
 * xoshiro256** generator seeded from `seed`, no global state). A draw depends on the row only
 * through its candidates (eng_topk's first top_k columns, or all of them when top_k is 0), so
 * a backend's topk op can pick them where the logits are and eng_sampler_sample_candidates
 * finish the draw with the same result, bit for bit.
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
 * penalty applies to (prompt + generated so far). The steps, in this order: the repetition
 * penalty; the greedy pick eng_argmax when temperature is 0 or top_k is 1 (no random draw
 * then); else the candidates, eng_topk of the row for k = top_k (all n_vocab columns when top_k
 * is 0 or >= n_vocab), and eng_sampler_sample_candidates' draw over them. */
int32_t eng_sampler_sample(eng_sampler *sp, float *logits, const int32_t *history, size_t n_history);
/* The draw of eng_sampler_sample from the candidates alone: vals / ids [n] are eng_topk's output
 * for the row (its first n pairs: the values as the row holds them, in eng_topk's order), n >=
 * eng_sampler_candidates_k(sp) (pairs past it are not read). For a sampler with
 * eng_sampler_candidates_k(sp) > 0 the result, and the generator state left behind, are then
 * eng_sampler_sample's on that row, bit for bit. The repetition penalty is not applied (a
 * sampler with one needs the whole row: eng_sampler_sample). Greedy samplers (temperature 0
 * or top_k 1) return ids[0], which is eng_argmax of the row. n >= 1. */
int32_t eng_sampler_sample_candidates(eng_sampler *sp, const float *vals, const int32_t *ids, int32_t n);
/* The k for which eng_sampler_sample_candidates over eng_topk(row, k) is eng_sampler_sample(row):
 * top_k, or n_vocab when top_k is 0 or larger, when that is at most ENG_TOPK_MAX (a backend's
 * topk op can pick the candidates) and there is no repetition penalty (which needs the ids of
 * the history, anywhere in the row); 0 otherwise. */
int32_t eng_sampler_candidates_k(const eng_sampler *sp);
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

/* The most candidates a backend's topk op gives per row (backend.h), so the largest top_k served
 * on the device (eng_sampler_candidates_k). Generation configs ask for far fewer (transformers'
 * default 50, Qwen3's 20); 1024 keeps a row's candidates (8 KiB of values and ids) under 2% of a
 * 150k-logit row, and one CTA sorts that many 64-bit keys in 8 KiB of shared memory
 * (kernels/sample.cu, whose KERN_TOPK_MAX must equal it). */
#define ENG_TOPK_MAX 1024

/* The candidate order: a strict total order on the columns of a row x[0 .. n), the same for
 * eng_topk, every backend's topk op and the sampler's draw. Column c comes before column d when
 *   1. c is column 0 holding a NaN (first of all, as eng_argmax picks it), or else
 *   2. both hold numbers (+-inf included) and x[c] > x[d], or x[c] == x[d] (-0 == +0, so the
 *      sign of a zero never matters) and c < d, or else
 *   3. x[c] is a number and x[d] a NaN; NaNs past column 0 come after every number (-inf too),
 *      lower column first.
 * No two columns compare equal, so the first k columns are one set in one order; the first is
 * eng_argmax(x, n). Writes the first min(k, n) columns of x in this order to ids[0 ..) and their
 * values, x[ids[j]] bit for bit, to vals[0 ..); fills j = min(k, n) .. k - 1 with -inf and -1.
 * Returns min(k, n). n >= 1, k >= 1 (any k: the ENG_TOPK_MAX cap is the op's, not this
 * function's). O(n log k) time, no memory beyond the outputs. */
int32_t eng_topk(const float *x, int32_t n, int32_t k, float *vals, int32_t *ids);

#endif /* ENG_SAMPLER_H */
