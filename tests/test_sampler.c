/* test_sampler.c: the sampler against its definition on small hand-made logit rows.
 * Frequencies are checked over 40000 draws with a bound of 0.015 absolute (the standard error of
 * a frequency near 0.5 over 40000 draws is 0.0025, so 0.015 is six of them). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

    printf("sampler: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
