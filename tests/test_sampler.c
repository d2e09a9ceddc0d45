/* test_sampler.c: the sampler against its definition on small hand-made logit rows.
 * Frequencies are checked over 40000 draws with a bound of 0.015 absolute (the standard error of
 * a frequency near 0.5 over 40000 draws is 0.0025, so 0.015 is six of them).
 * The candidate order (eng_topk and the CPU backend's topk op) is checked against the rule as
 * sampler.h states it, written again here as a comparison; and the sampler's draw from the
 * candidates (eng_sampler_sample_candidates over the topk op's output) against its draw from
 * the whole row, bit for bit, over random rows, settings and seeds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "sampler.h"

static int failures;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "FAIL: %s\n", what);
        failures++;
    }
}

/* Frequencies of each id over n draws. */
static void draw(const eng_sampling *s, const float *logits, int V, int n, double *freq)
{
    eng_sampler *sp = NULL;
    eng_err err;
    if (eng_sampler_create(s, V, &sp, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        failures++;
        return;
    }
    float row[16];
    for (int i = 0; i < V; i++)
        freq[i] = 0;
    for (int k = 0; k < n; k++) {
        memcpy(row, logits, (size_t)V * sizeof(float));
        freq[eng_sampler_sample(sp, row, NULL, 0)] += 1.0;
    }
    for (int i = 0; i < V; i++)
        freq[i] /= n;
    eng_sampler_free(sp);
}

/* splitmix64 for the random rows below */
static uint64_t next_rand(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The greedy rule as backend.h's argmax op states it, written independently of eng_argmax: a
 * NaN at 0 gives 0, else the first column of the largest non-NaN value. */
static int32_t argmax_as_documented(const float *x, int32_t n)
{
    if (isnan(x[0]))
        return 0;
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (!isnan(x[i]) && x[i] > x[best])
            best = i;
    return best;
}

/* The backends' argmax op (the CPU backend here; tests/gpu/test_ops.c holds the others to it)
 * picks what the sampler's greedy path picks (temperature 0, and top_k 1 at temperature 0.7;
 * repetition penalty 1), and both follow the documented rule, on random rows made of few values
 * (ties everywhere), NaN (often at column 0), +-inf, signed zeros and subnormals. */
static void test_argmax_op(void)
{
    static const float pool[] = {1.0f, 2.0f, 3.0f, -1.0f, 0.0f, -0.0f, INFINITY, -INFINITY, NAN, 0x1p-149f,
                                 -0x1p-149f, 0x1p-130f};
    enum { N_POOL = sizeof pool / sizeof pool[0], MAX_V = 300, N_ROWS = 8 };
    eng_backend *cpu = NULL;
    eng_err err;
    if (eng_backend_cpu_create(2, &cpu, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        failures++;
        return;
    }
    uint64_t seed = 12345;
    static float x[N_ROWS * (MAX_V + 5)], row[MAX_V];
    int n_rows_checked = 0, n_bad = 0;
    for (int batch = 0; batch < 400; batch++) {
        int32_t V = 1 + (int32_t)(next_rand(&seed) % MAX_V);
        int64_t stride = V + (int64_t)(batch % 5);
        int kinds = 1 + (int)(next_rand(&seed) % N_POOL); /* rows drawn from the first `kinds` values */
        for (int r = 0; r < N_ROWS; r++)
            for (int32_t c = 0; c < V; c++) {
                uint64_t u = next_rand(&seed);
                x[r * stride + c] = u % 4 == 0 ? (float)(int)(u >> 40 & 7) - 3.0f : pool[(u >> 8) % (uint64_t)kinds];
                if (r == 1 && c == 0)
                    x[r * stride + c] = NAN;
                if (r == 2)
                    x[r * stride + c] = c % 3 ? -INFINITY : NAN;
            }
        x[2 * stride] = -INFINITY;
        int32_t out[N_ROWS];
        check(cpu->ops->argmax(cpu, x, stride, N_ROWS, V, out) == PP_STATUS_OK, "argmax op");
        for (int variant = 0; variant < 2; variant++) {
            eng_sampling s;
            eng_sampling_default(&s);
            if (variant) {
                s.temperature = 0.7f;
                s.top_k = 1;
            }
            eng_sampler *sp = NULL;
            check(eng_sampler_create(&s, V, &sp, &err) == PP_STATUS_OK, "create");
            for (int r = 0; r < N_ROWS && sp; r++) {
                memcpy(row, x + r * stride, (size_t)V * sizeof *row);
                int32_t picked = eng_sampler_sample(sp, row, NULL, 0);
                int32_t doc = argmax_as_documented(x + r * stride, V);
                n_rows_checked++;
                if (picked != out[r] || doc != out[r]) {
                    if (n_bad++ < 5)
                        fprintf(stderr, "FAIL: argmax batch %d row %d (V %d): op %d, sampler %d, documented rule %d\n",
                                batch, r, V, out[r], picked, doc);
                    failures++;
                }
            }
            eng_sampler_free(sp);
        }
    }
    /* hand-made rows */
    static const struct { float v[4]; int32_t n, want; } hand[] = {
        {{NAN, INFINITY, 5, 5}, 4, 0},           {{-INFINITY, -INFINITY, -INFINITY, -INFINITY}, 4, 0},
        {{NAN, NAN, NAN, NAN}, 4, 0},            {{-0.0f, 0.0f, -1, -2}, 4, 0},
        {{1, NAN, 2, 2}, 4, 2},                  {{-INFINITY, NAN, -INFINITY, -3e38f}, 4, 3},
        {{INFINITY, INFINITY, NAN, 1}, 4, 0},    {{0x1p-149f, 0x1p-148f, 0x1p-148f, 0}, 4, 1},
        {{7, 0, 0, 0}, 1, 0},                    {{-1, NAN, -1, -0.5f}, 4, 3},
    };
    for (size_t i = 0; i < sizeof hand / sizeof hand[0]; i++) {
        int32_t out = -1;
        check(cpu->ops->argmax(cpu, hand[i].v, 4, 1, hand[i].n, &out) == PP_STATUS_OK && out == hand[i].want,
              "argmax op on a hand-made row");
        check(eng_argmax(hand[i].v, hand[i].n) == hand[i].want, "eng_argmax on a hand-made row");
    }
    /* the argument checks */
    int32_t untouched = -7;
    check(cpu->ops->argmax(cpu, x, 4, -1, 4, &untouched) == PP_STATUS_INVALID_ARG, "argmax n_rows < 0");
    check(cpu->ops->argmax(cpu, x, 4, 1, 0, &untouched) == PP_STATUS_INVALID_ARG, "argmax n_cols 0");
    check(cpu->ops->argmax(cpu, x, 3, 1, 4, &untouched) == PP_STATUS_INVALID_ARG, "argmax stride < n_cols");
    check(cpu->ops->argmax(cpu, x, 4, 0, 4, &untouched) == PP_STATUS_OK && untouched == -7, "argmax of 0 rows");
    printf("argmax: %d rows, op = sampler = documented rule on %d\n", n_rows_checked, n_rows_checked - n_bad);
    eng_backend_destroy(cpu);
}

/* The candidate order as sampler.h states it, written independently of eng_topk's key: does
 * column c of x come before column d? */
static const float *order_x;
static int before_as_documented(const float *x, int32_t c, int32_t d)
{
    if (c == 0 && isnan(x[0]))
        return 1;
    if (d == 0 && isnan(x[0]))
        return 0;
    if (isnan(x[c]) != isnan(x[d]))
        return isnan(x[d]); /* the number first */
    if (!isnan(x[c]) && x[c] != x[d])
        return x[c] > x[d];
    return c < d; /* equal numbers (-0 == +0), or two NaNs past column 0 */
}

static int cmp_documented(const void *a, const void *b)
{
    int32_t c = *(const int32_t *)a, d = *(const int32_t *)b;
    return c == d ? 0 : before_as_documented(order_x, c, d) ? -1 : 1;
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* eng_topk and the CPU backend's topk op against the documented order, on random rows made of
 * few values (ties everywhere), NaN (often at column 0), +-inf, signed zeros and subnormals,
 * for k below, at and above n; the first id is eng_argmax's; bad arguments are refused. */
static void test_topk(void)
{
    static const float pool[] = {1.0f, 2.0f, 3.0f, -1.0f, 0.0f, -0.0f, INFINITY, -INFINITY, NAN, 0x1p-149f,
                                 -0x1p-149f, 0x1p-130f, -NAN};
    enum { N_POOL = sizeof pool / sizeof pool[0], MAX_V = 600, N_ROWS = 4, MAX_K = MAX_V + 10 };
    eng_backend *cpu = NULL;
    eng_err err;
    if (eng_backend_cpu_create(2, &cpu, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        failures++;
        return;
    }
    uint64_t seed = 777;
    static float x[N_ROWS * (MAX_V + 5)], vals[N_ROWS * MAX_K], v1[MAX_K];
    static int32_t ids[N_ROWS * MAX_K], i1[MAX_K], order[MAX_V];
    int n_rows = 0, n_bad = 0;
    for (int batch = 0; batch < 1500; batch++) {
        int32_t V = 1 + (int32_t)(next_rand(&seed) % (batch % 3 ? 40 : MAX_V));
        int64_t stride = V + (int64_t)(batch % 4);
        int kinds = 1 + (int)(next_rand(&seed) % N_POOL);
        int k_pick = (int)(next_rand(&seed) % 5);
        int k = k_pick == 0 ? 1 : k_pick == 1 ? V : k_pick == 2 ? V + 1 + (int)(next_rand(&seed) % 9)
                              : 1 + (int)(next_rand(&seed) % (uint64_t)V);
        for (int r = 0; r < N_ROWS; r++)
            for (int32_t c = 0; c < V; c++) {
                uint64_t u = next_rand(&seed);
                x[r * stride + c] = u % 4 == 0 ? (float)(int)(u >> 40 & 7) - 3.0f : pool[(u >> 8) % (uint64_t)kinds];
                if (r == 1 && c == 0)
                    x[r * stride + c] = NAN;
            }
        check(cpu->ops->topk(cpu, x, stride, N_ROWS, V, k, vals, ids) == PP_STATUS_OK, "topk op");
        for (int r = 0; r < N_ROWS; r++) {
            const float *row = x + r * stride;
            for (int32_t c = 0; c < V; c++)
                order[c] = c;
            order_x = row;
            qsort(order, (size_t)V, sizeof *order, cmp_documented);
            int32_t m = eng_topk(row, V, k, v1, i1);
            int bad = m != (k < V ? k : V) || i1[0] != eng_argmax(row, V);
            for (int j = 0; j < k && !bad; j++) {
                int32_t want = j < V ? order[j] : -1;
                float want_v = j < V ? row[want] : -INFINITY;
                bad = i1[j] != want || bits(v1[j]) != bits(want_v) || ids[r * k + j] != want ||
                      bits(vals[r * k + j]) != bits(want_v);
            }
            n_rows++;
            if (bad && n_bad++ < 5) {
                fprintf(stderr, "FAIL: topk batch %d row %d (V %d, k %d): eng_topk / the op differ from the "
                        "documented order\n", batch, r, V, k);
                failures++;
            }
        }
    }
    int32_t untouched = -7;
    float fv = 5;
    check(cpu->ops->topk(cpu, x, 4, -1, 4, 2, &fv, &untouched) == PP_STATUS_INVALID_ARG, "topk n_rows < 0");
    check(cpu->ops->topk(cpu, x, 4, 1, 0, 2, &fv, &untouched) == PP_STATUS_INVALID_ARG, "topk n_cols 0");
    check(cpu->ops->topk(cpu, x, 3, 1, 4, 2, &fv, &untouched) == PP_STATUS_INVALID_ARG, "topk stride < n_cols");
    check(cpu->ops->topk(cpu, x, 4, 1, 4, 0, &fv, &untouched) == PP_STATUS_INVALID_ARG, "topk k 0");
    check(cpu->ops->topk(cpu, x, 4, 1, 4, ENG_TOPK_MAX + 1, &fv, &untouched) == PP_STATUS_INVALID_ARG,
          "topk k > ENG_TOPK_MAX");
    check(cpu->ops->topk(cpu, x, 4, 0, 4, 2, &fv, &untouched) == PP_STATUS_OK && untouched == -7 && fv == 5,
          "topk of 0 rows");
    printf("topk: %d rows, eng_topk = op = documented order on %d\n", n_rows, n_rows - n_bad);
    eng_backend_destroy(cpu);
}

/* One random logit row of V: pattern 0 f32 values, 1 bf16 values (ties), 2 few integers, 3 a
 * wide spread with -inf padding at the end, 4 NaN and +-inf sprinkled (NaN at column 0 every
 * other time). */
static void random_logits(float *x, int32_t V, int pattern, uint64_t *seed)
{
    for (int32_t c = 0; c < V; c++) {
        double g = ((double)(next_rand(seed) >> 11) / 9007199254740992.0 - 0.5) * 16;
        float v = (float)g;
        if (pattern == 1)
            v = eng_round_bf16(v);
        else if (pattern == 2)
            v = (float)(next_rand(seed) % 4);
        else if (pattern == 3)
            v = c >= V - V / 8 ? -INFINITY : (float)(g * 4);
        else if (pattern == 4) {
            uint64_t u = next_rand(seed) % 16;
            v = u == 0 ? NAN : u == 1 ? -INFINITY : u == 2 ? INFINITY : v;
        }
        x[c] = v;
    }
    if (pattern == 4 && next_rand(seed) % 2)
        x[0] = NAN;
}

/* The contract of eng_sampler_sample_candidates: for a sampler with eng_sampler_candidates_k > 0,
 * drawing from the topk op's candidates (k of them, or more: the rest are ignored) gives what
 * eng_sampler_sample gives on the whole row, bit for bit, draw after draw (the generator states
 * stay equal), over random rows, temperatures (tiny and huge included), top_k (1 .. ENG_TOPK_MAX
 * and 0 with n_vocab <= ENG_TOPK_MAX), top_p, min_p and seeds. Also which samplers qualify. */
static void test_candidates(void)
{
    static const float temps[] = {0.0f, 1e-6f, 0.05f, 0.3f, 0.7f, 1.0f, 1.5f, 4.0f, 1e-38f, 3e38f};
    static const float top_ps[] = {1.0f, 0.95f, 0.5f, 0.999999f, 0.1f};
    static const float min_ps[] = {0.0f, 0.05f, 0.5f, 1.0f};
    enum { MAX_V = 3000, N_DRAWS = 4 };
    eng_backend *cpu = NULL;
    eng_err err;
    if (eng_backend_cpu_create(2, &cpu, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        failures++;
        return;
    }
    static float x[MAX_V], row[MAX_V], vals[ENG_TOPK_MAX];
    static int32_t ids[ENG_TOPK_MAX];
    uint64_t seed = 4242;
    int n_rows = 0, n_draws = 0, n_bad = 0;
    for (int it = 0; it < 6000; it++) {
        int32_t V = 1 + (int32_t)(next_rand(&seed) % (it % 2 ? 64 : MAX_V));
        eng_sampling s;
        eng_sampling_default(&s);
        s.temperature = temps[next_rand(&seed) % (sizeof temps / sizeof temps[0])];
        int kc = (int)(next_rand(&seed) % 7);
        s.top_k = kc == 0 ? 0 : kc == 1 ? 1 : kc == 2 ? 2 : kc == 3 ? 50 : kc == 4 ? ENG_TOPK_MAX
                : kc == 5 ? V : 1 + (int)(next_rand(&seed) % (uint64_t)V);
        s.top_p = top_ps[next_rand(&seed) % (sizeof top_ps / sizeof top_ps[0])];
        s.min_p = min_ps[next_rand(&seed) % (sizeof min_ps / sizeof min_ps[0])];
        s.seed = next_rand(&seed);
        eng_sampler *full = NULL, *cand = NULL;
        if (eng_sampler_create(&s, V, &full, &err) != PP_STATUS_OK ||
            eng_sampler_create(&s, V, &cand, &err) != PP_STATUS_OK) {
            fprintf(stderr, "FAIL: %s\n", err.msg);
            failures++;
            eng_sampler_free(full);
            return;
        }
        int32_t k = eng_sampler_candidates_k(full);
        int32_t want_k = s.top_k > 0 && s.top_k < V ? s.top_k : V;
        check(k == (want_k <= ENG_TOPK_MAX ? want_k : 0), "candidates_k: top_k, or n_vocab, up to ENG_TOPK_MAX");
        if (k > 0) {
            random_logits(x, V, (int)(next_rand(&seed) % 5), &seed);
            int extra = (int)(next_rand(&seed) % 3);
            if (k + extra > ENG_TOPK_MAX)
                extra = 0;
            n_rows++;
            for (int d = 0; d < N_DRAWS; d++) {
                memcpy(row, x, (size_t)V * sizeof *row);
                int32_t a = eng_sampler_sample(full, row, NULL, 0);
                int32_t b = -1;
                if (cpu->ops->topk(cpu, x, V, 1, V, k + extra, vals, ids) == PP_STATUS_OK)
                    b = eng_sampler_sample_candidates(cand, vals, ids, k + extra);
                n_draws++;
                if (a != b) {
                    if (n_bad++ < 5)
                        fprintf(stderr, "FAIL: candidates: row %d draw %d (V %d, T %g, top_k %d, top_p %g, min_p %g, "
                                "k %d + %d): full row %d, candidates %d\n", it, d, V, (double)s.temperature, s.top_k,
                                (double)s.top_p, (double)s.min_p, k, extra, a, b);
                    failures++;
                    break;
                }
            }
        }
        eng_sampler_free(full);
        eng_sampler_free(cand);
    }
    /* a repetition penalty needs the whole row; more candidates than the cap cannot come from
     * the op */
    eng_sampling s;
    eng_sampling_default(&s);
    s.temperature = 0.8f;
    s.top_k = 40;
    s.repetition_penalty = 1.1f;
    eng_sampler *sp = NULL;
    check(eng_sampler_create(&s, 5000, &sp, &err) == PP_STATUS_OK && eng_sampler_candidates_k(sp) == 0,
          "candidates_k 0 with a repetition penalty");
    eng_sampler_free(sp);
    s.repetition_penalty = 1.0f;
    s.top_k = 0;
    check(eng_sampler_create(&s, 5000, &sp, &err) == PP_STATUS_OK && eng_sampler_candidates_k(sp) == 0,
          "candidates_k 0 for top_k 0 over 5000 ids");
    eng_sampler_free(sp);
    s.top_k = ENG_TOPK_MAX + 1;
    check(eng_sampler_create(&s, 5000, &sp, &err) == PP_STATUS_OK && eng_sampler_candidates_k(sp) == 0,
          "candidates_k 0 for top_k past ENG_TOPK_MAX");
    eng_sampler_free(sp);
    printf("candidates: %d rows, %d draws from the topk op's candidates equal to the whole row's on %d\n", n_rows,
           n_draws, n_draws - n_bad);
    eng_backend_destroy(cpu);
}

int main(void)
{
    eng_sampling s;
    eng_err err;
    double f[16];
    /* probabilities 0.1, 0.2, 0.3, 0.4 */
    float lg[4] = {logf(0.1f), logf(0.2f), logf(0.3f), logf(0.4f)};

    eng_sampling_default(&s);
    draw(&s, lg, 4, 100, f);
    check(f[3] == 1.0, "greedy always picks the argmax");
    float tie[3] = {1.0f, 2.0f, 2.0f};
    draw(&s, tie, 3, 10, f);
    check(f[1] == 1.0, "greedy ties go to the lower id");

    s.temperature = 1.0f;
    s.seed = 7;
    draw(&s, lg, 4, 40000, f);
    check(fabs(f[0] - 0.1) < 0.015 && fabs(f[1] - 0.2) < 0.015 && fabs(f[2] - 0.3) < 0.015 &&
              fabs(f[3] - 0.4) < 0.015,
          "temperature 1 samples the softmax");

    s.temperature = 0.5f; /* probabilities squared and renormalised: 1, 4, 9, 16 over 30 */
    draw(&s, lg, 4, 40000, f);
    check(fabs(f[3] - 16.0 / 30) < 0.015 && fabs(f[0] - 1.0 / 30) < 0.015, "temperature 0.5 sharpens");

    s.temperature = 1.0f;
    s.top_k = 2;
    draw(&s, lg, 4, 40000, f);
    check(f[0] == 0 && f[1] == 0 && fabs(f[3] - 4.0 / 7) < 0.015, "top_k 2 keeps the two best");

    s.top_k = 0;
    s.top_p = 0.65f; /* 0.4 + 0.3 = 0.7 >= 0.65: keeps ids 3 and 2 */
    draw(&s, lg, 4, 40000, f);
    check(f[0] == 0 && f[1] == 0 && fabs(f[2] - 3.0 / 7) < 0.015, "top_p keeps the smallest set reaching p");

    s.top_p = 1.0f;
    s.min_p = 0.6f; /* keeps p >= 0.24: ids 2 and 3 */
    draw(&s, lg, 4, 40000, f);
    check(f[0] == 0 && f[1] == 0 && f[2] > 0.3, "min_p drops tokens below min_p * top probability");

    /* repetition penalty: HF's rule, applied once per distinct id in the history */
    eng_sampling_default(&s);
    s.repetition_penalty = 2.0f;
    eng_sampler *sp = NULL;
    check(eng_sampler_create(&s, 3, &sp, &err) == PP_STATUS_OK, "create");
    float row[3] = {3.0f, 2.0f, -1.0f};
    int32_t hist[3] = {0, 0, 2};
    int32_t got = eng_sampler_sample(sp, row, hist, 3);
    check(row[0] == 1.5f && row[1] == 2.0f && row[2] == -2.0f && got == 1, "repetition penalty");
    eng_sampler_free(sp);

    /* the same seed gives the same draws; another seed gives others */
    eng_sampling_default(&s);
    s.temperature = 1.0f;
    float flat[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        s.seed = run == 2 ? 99 : 42;
        check(eng_sampler_create(&s, 8, &sp, &err) == PP_STATUS_OK, "create");
        for (int k = 0; k < 64; k++) {
            float r8[8];
            memcpy(r8, flat, sizeof r8);
            (run == 0 ? a : run == 1 ? b : c)[k] = eng_sampler_sample(sp, r8, NULL, 0);
        }
        eng_sampler_free(sp);
    }
    check(memcmp(a, b, sizeof a) == 0, "same seed, same draws");
    check(memcmp(a, c, sizeof a) != 0, "another seed, other draws");

    /* validation */
    eng_sampling_default(&s);
    s.temperature = NAN;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "NaN temperature rejected");
    eng_sampling_default(&s);
    s.temperature = -1;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "negative temperature rejected");
    eng_sampling_default(&s);
    s.top_p = 1.5f;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "top_p > 1 rejected");
    eng_sampling_default(&s);
    s.min_p = -0.1f;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "negative min_p rejected");
    eng_sampling_default(&s);
    s.top_k = -2;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "negative top_k rejected");
    eng_sampling_default(&s);
    s.repetition_penalty = 0;
    check(eng_sampling_validate(&s, &err) == PP_STATUS_INVALID_ARG, "zero repetition penalty rejected");

    test_argmax_op();
    test_topk();
    test_candidates();

    printf("sampler: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
