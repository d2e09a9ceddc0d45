/* sampler.c: logits processors in transformers' order (repetition penalty, temperature, top-k,
 * top-p, min-p) and a seeded draw, split in two so that a backend can do the first part:
 * eng_sampler_sample = repetition penalty, the candidates (eng_topk, the order the backends'
 * topk op shares), then draw_candidates; eng_sampler_sample_candidates = draw_candidates over
 * candidates the backend picked. One draw routine, so the two cannot drift apart.
 *
 * top-k keeps the top_k largest logits as the row holds them (before the temperature), the set
 * the topk op returns; the draw then orders them by logit / temperature, ties (distinct logits
 * the division rounds to one value) to the lower id, which is transformers' order of
 * temperature then top-k. The two sets differ only where the division merges the top_k-th
 * logit with one outside the top_k. */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A candidate of the draw: its logit divided by the temperature, and its id. */
typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct eng_sampler {
    eng_sampling p;
    int32_t n_vocab;
    int32_t n_cand;       /* candidates a draw uses: top_k, or n_vocab when top_k is 0 or larger */
    uint64_t rng[4];      /* xoshiro256** state */
    float *top_val;       /* [n_cand] (greedy samplers: [1]) eng_sampler_sample's candidates:
                             eng_topk's values */
    int32_t *top_id;      /* [n_cand] and ids */
    cand *c;              /* [n_cand] the candidates in the draw's order */
    double *prob;         /* [n_cand] probabilities of c[i] */
    uint8_t *seen;        /* [n_vocab] repetition-penalty marks; NULL without a penalty */
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
    sp->n_cand = s->top_k > 0 && s->top_k < n_vocab ? s->top_k : n_vocab;
    bool greedy = s->temperature == 0.0f || s->top_k == 1; /* never draws: no candidates kept */
    size_t n = greedy ? 1 : (size_t)sp->n_cand;
    sp->top_val = malloc(n * sizeof *sp->top_val);
    sp->top_id = malloc(n * sizeof *sp->top_id);
    sp->c = malloc(n * sizeof *sp->c);
    sp->prob = malloc(n * sizeof *sp->prob);
    sp->seen = s->repetition_penalty != 1.0f ? calloc((size_t)n_vocab, 1) : NULL;
    if (!sp->top_val || !sp->top_id || !sp->c || !sp->prob || (s->repetition_penalty != 1.0f && !sp->seen)) {
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
    free(sp->top_val);
    free(sp->top_id);
    free(sp->c);
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

/* The candidate order (sampler.h) as one unsigned key per column, the larger first. High 32
 * bits: the value's class and order: a float's bits made monotone (the sign bit set for
 * positives, all bits flipped for negatives; -0 taken as +0), +inf's 0xff800000 for a NaN at
 * column 0, 0 for any other NaN (below -inf's 0x007fffff). Low 32 bits: ~c, so that the lower
 * column wins equal values. Every column's key differs. kernels/sample.cu computes the same key. */
static uint64_t topk_key(float v, int32_t c)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    uint32_t mag = u & 0x7fffffffu, hi;
    if (mag > 0x7f800000u)
        hi = c == 0 ? 0xff800000u : 0u;
    else if (mag == 0)
        hi = 0x80000000u;
    else
        hi = u & 0x80000000u ? ~u : u | 0x80000000u;
    return (uint64_t)hi << 32 | (uint32_t)~(uint32_t)c;
}

/* Restores the min-heap ids[0 .. n) (root: the smallest key) below position i. */
static void heap_sift(const float *x, int32_t *ids, int32_t n, int32_t i)
{
    int32_t id = ids[i];
    uint64_t key = topk_key(x[id], id);
    for (;;) {
        int32_t l = 2 * i + 1;
        if (l >= n)
            break;
        uint64_t kl = topk_key(x[ids[l]], ids[l]);
        if (l + 1 < n) {
            uint64_t kr = topk_key(x[ids[l + 1]], ids[l + 1]);
            if (kr < kl) {
                l++;
                kl = kr;
            }
        }
        if (kl >= key)
            break;
        ids[i] = ids[l];
        i = l;
    }
    ids[i] = id;
}

int32_t eng_topk(const float *x, int32_t n, int32_t k, float *vals, int32_t *ids)
{
    int32_t m = k < n ? k : n;
    /* a min-heap of the best m columns seen: the first m, then each later column that beats
     * the root replaces it */
    for (int32_t i = 0; i < m; i++)
        ids[i] = i;
    for (int32_t i = m / 2 - 1; i >= 0; i--)
        heap_sift(x, ids, m, i);
    uint64_t root = topk_key(x[ids[0]], ids[0]);
    for (int32_t c = m; c < n; c++) {
        if (topk_key(x[c], c) <= root)
            continue;
        ids[0] = c;
        heap_sift(x, ids, m, 0);
        root = topk_key(x[ids[0]], ids[0]);
    }
    /* heapsort: the smallest goes to the end each time, leaving the best first */
    for (int32_t end = m - 1; end > 0; end--) {
        int32_t t = ids[0];
        ids[0] = ids[end];
        ids[end] = t;
        heap_sift(x, ids, end, 0);
    }
    for (int32_t j = 0; j < k; j++) {
        vals[j] = j < m ? x[ids[j]] : -INFINITY;
        if (j >= m)
            ids[j] = -1;
    }
    return m;
}

static int cmp_cand_id(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

bool eng_sampler_is_argmax(const eng_sampler *sp)
{
    return (sp->p.temperature == 0.0f || sp->p.top_k == 1) && sp->p.repetition_penalty == 1.0f;
}

int32_t eng_sampler_candidates_k(const eng_sampler *sp)
{
    return sp->p.repetition_penalty == 1.0f && sp->n_cand <= ENG_TOPK_MAX ? sp->n_cand : 0;
}

/* eng_topk(x, n, n, ...): every column in the candidate order, by a radix sort, as the heap is
 * slow for a whole row (top_k 0). The keys are made in column order, and a stable sort of their
 * high halves, largest first, keeps lower columns first among equal ones: the key order. Without
 * the memory for it, eng_topk itself (the same result). */
static void sort_all(const float *x, int32_t n, float *vals, int32_t *ids)
{
    uint64_t *buf = malloc(2 * (size_t)n * sizeof *buf);
    if (!buf) {
        eng_topk(x, n, n, vals, ids);
        return;
    }
    uint64_t *a = buf, *b = buf + n;
    for (int32_t i = 0; i < n; i++)
        a[i] = topk_key(x[i], i);
    for (int shift = 32; shift < 64; shift += 8) { /* four passes: the result ends in buf */
        size_t at[256] = {0};
        for (int32_t i = 0; i < n; i++)
            at[255 - (a[i] >> shift & 255)]++;
        for (size_t d = 0, sum = 0; d < 256; d++) {
            size_t cnt = at[d];
            at[d] = sum;
            sum += cnt;
        }
        for (int32_t i = 0; i < n; i++)
            b[at[255 - (a[i] >> shift & 255)]++] = a[i];
        uint64_t *t = a;
        a = b;
        b = t;
    }
    for (int32_t i = 0; i < n; i++) {
        ids[i] = (int32_t)~(uint32_t)a[i];
        vals[i] = x[ids[i]];
    }
    free(buf);
}

/* The draw over candidates vals / ids [n] (n >= 1) in the candidate order: temperature, the
 * draw's order, softmax over the n, top-p, min-p, then one uniform number picks the token. */
static int32_t draw_candidates(eng_sampler *sp, const float *vals, const int32_t *ids, int32_t n)
{
    const eng_sampling *p = &sp->p;
    cand *c = sp->c;
    for (int32_t i = 0; i < n; i++) {
        c[i].logit = vals[i] / p->temperature;
        c[i].id = ids[i];
    }
    /* x / temperature never reverses two logits but may make distinct ones equal: such runs are
     * contiguous, and go lower id first (their order by logit / temperature, as the temperature
     * comes before top-k in transformers) */
    for (int32_t i = 0; i < n;) {
        int32_t j = i + 1;
        bool sorted = true;
        for (; j < n && c[j].logit == c[i].logit; j++)
            sorted = sorted && c[j].id > c[j - 1].id;
        if (!sorted)
            qsort(c + i, (size_t)(j - i), sizeof *c, cmp_cand_id);
        i = j;
    }
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
    return chosen;
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
    if (sp->n_cand == V)
        sort_all(logits, V, sp->top_val, sp->top_id);
    else
        eng_topk(logits, V, sp->n_cand, sp->top_val, sp->top_id);
    return draw_candidates(sp, sp->top_val, sp->top_id, sp->n_cand);
}

int32_t eng_sampler_sample_candidates(eng_sampler *sp, const float *vals, const int32_t *ids, int32_t n)
{
    if (sp->p.temperature == 0.0f || sp->p.top_k == 1)
        return ids[0];
    return draw_candidates(sp, vals, ids, n < sp->n_cand ? n : sp->n_cand);
}
