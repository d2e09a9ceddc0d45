/* sampler.c: logits processors in transformers' order (repetition penalty, temperature, top-k,
 * top-p, min-p) and a seeded draw. */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

struct eng_sampler {
    eng_sampling p;
    int32_t n_vocab;
    uint64_t rng[4];      /* xoshiro256** state */
    int32_t *order;       /* [n_vocab] candidate ids sorted by logit, descending */
    double *prob;         /* [n_vocab] probabilities of order[i] */
    uint8_t *seen;        /* [n_vocab] repetition-penalty marks */
};

void eng_sampling_default(eng_sampling *s)
{
    s->temperature = 0.0f;
    s->top_k = 0;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repetition_penalty = 1.0f;
    s->seed = 0;
}

pp_status eng_sampling_validate(const eng_sampling *s, eng_err *err)
{
    if (!(s->temperature >= 0.0f) || isinf(s->temperature))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "temperature must be a finite number >= 0 (got %g)",
                        (double)s->temperature);
    if (s->top_k < 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "top_k must be >= 0 (got %d)", s->top_k);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "top_p must be in (0, 1] (got %g)", (double)s->top_p);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "min_p must be in [0, 1] (got %g)", (double)s->min_p);
    if (!(s->repetition_penalty > 0.0f) || isinf(s->repetition_penalty))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "repetition_penalty must be a finite number > 0 (got %g)",
                        (double)s->repetition_penalty);
    return PP_STATUS_OK;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t next_u64(uint64_t *s)
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_uniform(uint64_t *s) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

pp_status eng_sampler_create(const eng_sampling *s, int32_t n_vocab, eng_sampler **out, eng_err *err)
{
    *out = NULL;
    pp_status st = eng_sampling_validate(s, err);
    if (st != PP_STATUS_OK)
        return st;
    if (n_vocab <= 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "sampler: n_vocab must be positive");
    eng_sampler *sp = calloc(1, sizeof *sp);
    if (!sp)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "sampler: out of memory");
    sp->p = *s;
    sp->n_vocab = n_vocab;
    sp->order = malloc((size_t)n_vocab * sizeof *sp->order);
    sp->prob = malloc((size_t)n_vocab * sizeof *sp->prob);
    sp->seen = calloc((size_t)n_vocab, 1);
    if (!sp->order || !sp->prob || !sp->seen) {
        eng_sampler_free(sp);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "sampler: out of memory");
    }
    uint64_t x = s->seed;
    for (int i = 0; i < 4; i++)
        sp->rng[i] = splitmix64(&x);
    *out = sp;
    return PP_STATUS_OK;
}

void eng_sampler_free(eng_sampler *sp)
{
    if (!sp)
        return;
    free(sp->order);
    free(sp->prob);
    free(sp->seen);
    free(sp);
}

int32_t eng_argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Sort context: qsort has no user pointer, so candidates carry their logit. */
typedef struct cand {
    float logit;
    int32_t id;
} cand;

static int cmp_cand(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

bool eng_sampler_is_argmax(const eng_sampler *sp)
{
    return (sp->p.temperature == 0.0f || sp->p.top_k == 1) && sp->p.repetition_penalty == 1.0f;
}

int32_t eng_sampler_sample(eng_sampler *sp, float *logits, const int32_t *history, size_t n_history)
{
    int32_t V = sp->n_vocab;
    const eng_sampling *p = &sp->p;
    if (p->repetition_penalty != 1.0f) {
        for (size_t i = 0; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= V || sp->seen[id])
                continue;
            sp->seen[id] = 1;
            float l = logits[id];
            logits[id] = l < 0 ? l * p->repetition_penalty : l / p->repetition_penalty;
        }
        for (size_t i = 0; i < n_history; i++)
            if (history[i] >= 0 && history[i] < V)
                sp->seen[history[i]] = 0;
    }
    if (p->temperature == 0.0f || p->top_k == 1)
        return eng_argmax(logits, V);
    /* candidates sorted by logit, descending (ties: lower id first) */
    cand *c = malloc((size_t)V * sizeof *c);
    if (!c) /* no memory for sampling: fall back to the argmax rather than fail mid-stream */
        return eng_argmax(logits, V);
    for (int32_t i = 0; i < V; i++) {
        c[i].logit = logits[i] / p->temperature;
        c[i].id = i;
    }
    qsort(c, (size_t)V, sizeof *c, cmp_cand);
    int32_t n = V;
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    double mx = c[0].logit, sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        sp->prob[i] = exp((double)c[i].logit - mx);
        sum += sp->prob[i];
    }
    for (int32_t i = 0; i < n; i++)
        sp->prob[i] /= sum;
    if (p->top_p < 1.0f) {
        /* keep the smallest prefix whose mass reaches top_p (always at least one token) */
        double cum = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            cum += sp->prob[i];
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        double floor_p = p->min_p * sp->prob[0];
        int32_t keep = 1;
        while (keep < n && sp->prob[keep] >= floor_p)
            keep++;
        n = keep;
    }
    double mass = 0.0;
    for (int32_t i = 0; i < n; i++)
        mass += sp->prob[i];
    double r = next_uniform(sp->rng) * mass, acc = 0.0;
    int32_t chosen = c[n - 1].id;
    for (int32_t i = 0; i < n; i++) {
        acc += sp->prob[i];
        if (r < acc) {
            chosen = c[i].id;
            break;
        }
    }
    free(c);
    return chosen;
}
