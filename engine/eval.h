/* eval.h: perplexity of a model on a token sequence, windowed as the nano references were
 * computed: consecutive windows of n_ctx tokens, each predicting its tokens 1 .. n_ctx - 1 from
 * the tokens before them in that window (a shorter last window of >= 2 tokens counts too).
 */
#ifndef ENG_EVAL_H
#define ENG_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "model.h"

typedef void (*eng_progress_fn)(void *user, size_t done, size_t total);

/* *perplexity = exp(mean negative log-likelihood) over *n_predicted tokens (log-softmax in
 * double). INVALID_ARG when fewer than 2 ids are given or n_ctx < 2. progress may be NULL. */
pp_status eng_perplexity(eng_model *model, const int32_t *ids, size_t n_ids, int n_ctx,
                         double *perplexity, size_t *n_predicted, eng_progress_fn progress,
                         void *user, eng_err *err);

#endif /* ENG_EVAL_H */
