/* eval.c: windowed perplexity (see eval.h). */
#include "eval.h"

#include <math.h>
#include <stdlib.h>

pp_status eng_perplexity(eng_model *model, const int32_t *ids, size_t n_ids, int n_ctx,
                         double *perplexity, size_t *n_predicted, eng_progress_fn progress,
                         void *user, eng_err *err)
{
    *perplexity = NAN;
    *n_predicted = 0;
    if (n_ctx < 2)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "perplexity: the window must hold at least 2 tokens (got %d)", n_ctx);
    if (n_ids < 2)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "perplexity: needs at least 2 tokens (got %zu)", n_ids);
    int n_vocab = eng_model_config(model)->n_vocab;
    eng_session *s = NULL;
    pp_status st = eng_session_create(model, n_ctx, &s, err);
    if (st != PP_STATUS_OK)
        return st;
    float *logits = malloc((size_t)n_ctx * (size_t)n_vocab * sizeof *logits);
    if (!logits) {
        eng_session_free(s);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "perplexity: out of memory");
    }
    double nll = 0.0;
    size_t count = 0;
    for (size_t start = 0; start + 1 < n_ids; start += (size_t)n_ctx) {
        size_t len = n_ids - start < (size_t)n_ctx ? n_ids - start : (size_t)n_ctx;
        if (len < 2)
            break;
        eng_session_reset(s);
        if ((st = eng_session_forward(s, ids + start, (int)len, logits, true, err)) != PP_STATUS_OK)
            break;
        for (size_t i = 0; i + 1 < len; i++) {
            const float *row = logits + i * (size_t)n_vocab;
            double mx = -INFINITY, sum = 0.0;
            for (int v = 0; v < n_vocab; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < n_vocab; v++)
                sum += exp((double)row[v] - mx);
            nll += mx + log(sum) - (double)row[ids[start + i + 1]];
            count++;
        }
        if (progress)
            progress(user, start + len, n_ids);
    }
    free(logits);
    eng_session_free(s);
    if (st != PP_STATUS_OK)
        return st;
    *perplexity = exp(nll / (double)count);
    *n_predicted = count;
    return PP_STATUS_OK;
}
