/* test_batch.c: continuous batching over a paged KV cache gives every sequence what it gets alone.
 *
 *   test_batch MODEL_DIR [--mla naive]
 *
 * Five sequences cut from the reference cases' ids (different lengths and prefill sizes) run
 * alone, each in a private session (prefill, then one token at a time), and then together in one
 * shared cache of 3-position blocks, so that their blocks interleave in memory: one batched
 * prefill of four of them, then batched decode steps in which sequences finish at different
 * times and the fifth joins late with a multi-token chunk beside the others' single tokens. Every
 * logit row of the batched run must match the lone run within 1e-5 relative L2 (on the CPU the
 * rows are computed by the same code in the same order: they must be equal, and are checked for
 * that). Sequences also ask for their greedy pick (the argmax op) and sampling candidates (the
 * topk op, k from 1 to ENG_TOPK_MAX, over all or part of the vocabulary), which must be
 * eng_argmax and eng_topk of the logits returned beside them, bit for bit. Then: a cache too
 * small for a step fails with OUT_OF_MEMORY and changes nothing; reset sequences give their
 * blocks back and, reusing blocks full of another sequence's keys, compute the same logits
 * again; batches that break the rules are refused with INVALID_ARG. Decode steps launched as CUDA
 * graphs equal the same steps op by op, bit for bit (check_graphs).
 * PP_TEST_BACKEND=cuda runs it on the CUDA backend (tests/test_backend.h).
 */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sampler.h"
#include "test_backend.h"

#define REL_L2_MAX 1e-5
#define N_SEQ 5
#define MAX_TOK 64

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

typedef struct seq {
    int32_t ids[MAX_TOK];
    int n;        /* tokens */
    int prefill;  /* first chunk */
    int join;     /* decode step at which it starts (0: in the first batch) */
    float *ref;   /* [n][n_vocab]: row i = logits after token i (rows before prefill - 1 unused) */
} seq;

static double rel_l2(const float *a, const float *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static double worst;
static bool exact_expected;

/* The bf16 compute mode on a GPU: a product or attention of a batched step runs another kernel
 * than the lone run's smaller step (GEMV below 17 tokens, tensor cores from there; the split or
 * the tensor-core attention), so their f32 sums differ in order, and the bf16 rounding after
 * every op turns some of those last-bit differences into whole bf16 ulps (2^-8) that propagate.
 * Rows are then not compared one by one: their errors are collected and their median must stay
 * within the bf16 bound (a flipped expert choice can make single rows far off, as it
 * does between Hugging Face's own bf16 runs). */
#define BF16_MEDIAN_MAX 2e-2
#define MAX_TOLERANT_ROWS 4096
static bool tolerant;
static double tolerant_err[MAX_TOLERANT_ROWS];
static int n_tolerant;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Compares a batched row with the lone run's row. */
static void compare(const char *what, int s, int tok, const float *got, const float *want, int n_vocab)
{
    double e = rel_l2(got, want, n_vocab);
    if (tolerant) {
        CHECK(n_tolerant < MAX_TOLERANT_ROWS && isfinite(e), "%s: sequence %d token %d: rel L2 %.3g", what, s, tok, e);
        if (n_tolerant < MAX_TOLERANT_ROWS)
            tolerant_err[n_tolerant++] = e;
        return;
    }
    worst = e > worst ? e : worst;
    CHECK(e <= REL_L2_MAX, "%s: sequence %d token %d: rel L2 %.3g > %g", what, s, tok, e, REL_L2_MAX);
    if (exact_expected)
        CHECK(memcmp(got, want, (size_t)n_vocab * sizeof(float)) == 0,
              "%s: sequence %d token %d: not bit-identical to the lone run on the CPU", what, s, tok);
}

/* The lone run: prefill, then one token at a time, in a private session. */
static int run_alone(eng_model *m, seq *q, int n_vocab)
{
    eng_err err = {{0}};
    eng_session *s = NULL;
    pp_status st = eng_session_create(m, q->n, &s, &err);
    if (st == PP_STATUS_OK)
        st = eng_session_forward(s, q->ids, q->prefill, q->ref + (size_t)(q->prefill - 1) * n_vocab, false, &err);
    for (int i = q->prefill; i < q->n && st == PP_STATUS_OK; i++)
        st = eng_session_forward(s, q->ids + i, 1, q->ref + (size_t)i * n_vocab, false, &err);
    eng_session_free(s);
    if (st != PP_STATUS_OK)
        fprintf(stderr, "FAIL: lone run: %s\n", err.msg);
    return st == PP_STATUS_OK ? 0 : -1;
}

/* Runs the sequences together in kv: step 0 prefills the ones with join == 0; each later step
 * gives every started, unfinished sequence its next token, and a sequence joining at that step
 * its prefill chunk. Compares every row. */
static int n_picks; /* greedy picks made by the backend and checked */
static int n_cands; /* candidate lists made by the backend's topk op and checked */

static void run_batched(eng_kv_cache *kv, seq *qs, int n_seq, int n_vocab, const char *what)
{
    eng_session *ss[N_SEQ] = {0};
    int done[N_SEQ] = {0}; /* tokens run so far */
    float *out = malloc((size_t)N_SEQ * (size_t)n_vocab * sizeof(float));
    eng_err err = {{0}};
    for (int i = 0; i < n_seq; i++)
        if (eng_session_create_in(kv, qs[i].n, &ss[i], &err) != PP_STATUS_OK) {
            CHECK(false, "%s: session: %s", what, err.msg);
            goto out;
        }
    static float cand_logits[N_SEQ][ENG_TOPK_MAX], want_logits[ENG_TOPK_MAX];
    static int32_t cand_ids[N_SEQ][ENG_TOPK_MAX], want_ids[ENG_TOPK_MAX];
    static const int cand_ks[] = {1, 5, 50, 2, ENG_TOPK_MAX};
    for (int step = 0;; step++) {
        eng_batch_seq b[N_SEQ];
        int32_t picks[N_SEQ];
        int idx[N_SEQ], nb = 0;
        for (int i = 0; i < n_seq; i++) {
            seq *q = &qs[i];
            if (done[i] == q->n || step < q->join)
                continue;
            int take = done[i] == 0 ? q->prefill : 1;
            b[nb] = (eng_batch_seq){.session = ss[i], .ids = q->ids + done[i], .n_tokens = take,
                                    .logits = out + (size_t)nb * n_vocab};
            /* every other sequence also asks for its greedy pick, over all or part of the
             * vocabulary (the backend's argmax op beside the logits it must equal) */
            if ((i + step) % 2 == 0) {
                b[nb].token = &picks[nb];
                b[nb].token_vocab = (i + step) % 4 == 0 ? 0 : n_vocab - 1 - step % 7;
            }
            /* and two sequences in three their sampling candidates (the topk op beside the
             * logits), neighbours often with the same k and columns (one launch for both) */
            if ((i + step) % 3 != 2) {
                b[nb].cand_k = cand_ks[(step + (i >= 3)) % 5];
                b[nb].cand_logits = cand_logits[nb];
                b[nb].cand_ids = cand_ids[nb];
                if (!b[nb].token && (i + step) % 3 == 1)
                    b[nb].token_vocab = n_vocab - 3 - step % 5;
            }
            idx[nb++] = i;
        }
        if (nb == 0)
            break;
        pp_status st = eng_forward_batch(b, nb, &err);
        CHECK(st == PP_STATUS_OK, "%s: step %d (%d sequences): %s", what, step, nb, err.msg);
        if (st != PP_STATUS_OK)
            break;
        for (int k = 0; k < nb; k++) {
            int i = idx[k];
            done[i] += b[k].n_tokens;
            CHECK(eng_session_pos(ss[i]) == done[i], "%s: position %d, expected %d", what,
                  eng_session_pos(ss[i]), done[i]);
            compare(what, i, done[i] - 1, b[k].logits, qs[i].ref + (size_t)(done[i] - 1) * n_vocab, n_vocab);
            if (b[k].token) {
                int cols = b[k].token_vocab > 0 ? b[k].token_vocab : n_vocab;
                CHECK(*b[k].token == eng_argmax(b[k].logits, cols), "%s: sequence %d's pick %d, argmax of its "
                      "logits' first %d: %d", what, i, *b[k].token, cols, eng_argmax(b[k].logits, cols));
                n_picks++;
            }
            if (b[k].cand_k) {
                int cols = b[k].token_vocab > 0 ? b[k].token_vocab : n_vocab, kk = b[k].cand_k;
                eng_topk(b[k].logits, cols, kk, want_logits, want_ids);
                CHECK(memcmp(b[k].cand_ids, want_ids, (size_t)kk * sizeof *want_ids) == 0 &&
                          memcmp(b[k].cand_logits, want_logits, (size_t)kk * sizeof *want_logits) == 0,
                      "%s: sequence %d's %d candidates over %d columns differ from eng_topk of its logits (first "
                      "id %d, want %d)", what, i, kk, cols, b[k].cand_ids[0], want_ids[0]);
                n_cands++;
            }
        }
    }
out:
    for (int i = 0; i < n_seq; i++)
        eng_session_free(ss[i]);
    free(out);
}

/* The bf16 KV cache: in the bf16 compute mode K and V are bf16 values, so a cache that stores
 * them as bf16 must give the logits an f32 cache gives, bit for bit, on the CPU (attention reads
 * the same f32 values); and its batched runs must equal its lone runs as the f32 cache's do. On
 * another backend the bf16 cache also selects other kernels (CUDA: tensor-core attention for
 * prefill chunks, whose probabilities are bf16) and batched steps run other kernels than lone
 * ones, so both comparisons are tolerant there (BF16_MEDIAN_MAX). Returns the number of sequences
 * compared; *median gets the tolerant comparisons' median row error (0 on the CPU). */
static int check_bf16_kv(const char *dir, const eng_model_opts *base, seq *qs, int n_vocab, double *median)
{
    *median = 0;
    tolerant = !exact_expected;
    n_tolerant = 0;
    eng_model_opts o = *base;
    o.dtype = ENG_DTYPE_MODE_BF16;
    eng_model *m32 = NULL, *m16 = NULL;
    eng_err err = {{0}};
    o.kv = ENG_KV_MODE_F32;
    pp_status st = eng_model_load(dir, &o, &m32, &err);
    o.kv = ENG_KV_MODE_AUTO; /* resolves to bf16 in the bf16 mode */
    if (st == PP_STATUS_OK)
        st = eng_model_load(dir, &o, &m16, &err);
    CHECK(st == PP_STATUS_OK, "bf16 KV: load: %s", err.msg);
    int n = 0;
    if (st == PP_STATUS_OK) {
        CHECK(strcmp(eng_model_kv_name(m16), "bf16") == 0 && strcmp(eng_model_kv_name(m32), "f32") == 0,
              "bf16 KV: the auto mode gave %s", eng_model_kv_name(m16));
        seq q16[N_SEQ];
        for (int i = 0; i < N_SEQ; i++) {
            seq q32 = qs[i];
            q16[i] = qs[i];
            q32.ref = calloc((size_t)qs[i].n * (size_t)n_vocab, sizeof(float));
            q16[i].ref = calloc((size_t)qs[i].n * (size_t)n_vocab, sizeof(float));
            if (run_alone(m32, &q32, n_vocab) == 0 && run_alone(m16, &q16[i], n_vocab) == 0) {
                for (int t = q32.prefill - 1; t < q32.n; t++) {
                    if (tolerant)
                        compare("bf16 KV vs f32 KV", i, t, q16[i].ref + (size_t)t * n_vocab,
                                q32.ref + (size_t)t * n_vocab, n_vocab);
                    else
                        CHECK(memcmp(q32.ref + (size_t)t * n_vocab, q16[i].ref + (size_t)t * n_vocab,
                                     (size_t)n_vocab * sizeof(float)) == 0,
                              "bf16 KV: sequence %d token %d: logits differ from the f32 cache's", i, t);
                }
                n++;
            } else {
                CHECK(false, "bf16 KV: lone runs of sequence %d failed", i);
            }
            free(q32.ref);
        }
        eng_kv_cache *kv = NULL;
        if (eng_kv_cache_create(m16, 40, 3, &kv, &err) == PP_STATUS_OK) {
            run_batched(kv, q16, N_SEQ, n_vocab, "batched, bf16 KV");
            eng_kv_cache_free(kv);
        } else {
            CHECK(false, "bf16 KV: cache: %s", err.msg);
        }
        for (int i = 0; i < N_SEQ; i++)
            free(q16[i].ref);
    }
    eng_model_free(m32);
    eng_model_free(m16);
    if (tolerant) {
        CHECK(n_tolerant > 0, "bf16 KV: no row compared");
        if (n_tolerant > 0) {
            qsort(tolerant_err, (size_t)n_tolerant, sizeof tolerant_err[0], cmp_double);
            *median = tolerant_err[n_tolerant / 2];
            CHECK(*median <= BF16_MEDIAN_MAX, "bf16 KV: median row rel L2 %.3g > %g over %d rows", *median,
                  BF16_MEDIAN_MAX, n_tolerant);
        }
        tolerant = false;
    }
    return n;
}

/* Decode-only steps in a fresh cache: every sequence's tokens one at a time, all sequences in
 * each step until they finish (the batch shrinks as the shorter ones do), every sequence asking
 * for its greedy pick and most for sampling candidates. Writes each step's logits, picks and
 * candidates to *out (malloc'd, *out_len bytes), in order. The model's first forward is such a
 * step when m is fresh. */
static void decode_steps(eng_model *m, seq *qs, int n_vocab, const char *what, unsigned char **out, size_t *out_len)
{
    enum { K = 7 };
    size_t per_seq = (size_t)n_vocab * sizeof(float) + sizeof(int32_t) + K * (sizeof(float) + sizeof(int32_t));
    size_t cap = (size_t)N_SEQ * MAX_TOK * per_seq, len = 0;
    unsigned char *buf = malloc(cap);
    eng_kv_cache *kv = NULL;
    eng_session *ss[N_SEQ] = {0};
    eng_err err = {{0}};
    pp_status st = eng_kv_cache_create(m, 40, 3, &kv, &err);
    for (int i = 0; i < N_SEQ && st == PP_STATUS_OK; i++)
        st = eng_session_create_in(kv, qs[i].n, &ss[i], &err);
    CHECK(st == PP_STATUS_OK, "%s: cache or session: %s", what, err.msg);
    for (int t = 0; st == PP_STATUS_OK; t++) {
        eng_batch_seq b[N_SEQ];
        float *logits = malloc((size_t)N_SEQ * (size_t)n_vocab * sizeof(float));
        int32_t picks[N_SEQ], cand_ids[N_SEQ][K];
        float cand_logits[N_SEQ][K];
        int nb = 0;
        for (int i = 0; i < N_SEQ; i++) {
            if (t >= qs[i].n)
                continue;
            b[nb] = (eng_batch_seq){.session = ss[i], .ids = qs[i].ids + t, .n_tokens = 1,
                                    .logits = logits + (size_t)nb * n_vocab, .token = &picks[nb],
                                    .cand_k = i % 3 == 2 ? 0 : K, .cand_logits = cand_logits[nb],
                                    .cand_ids = cand_ids[nb]};
            nb++;
        }
        if (nb == 0) {
            free(logits);
            break;
        }
        st = eng_forward_batch(b, nb, &err);
        CHECK(st == PP_STATUS_OK, "%s: decode step %d (%d sequences): %s", what, t, nb, err.msg);
        for (int k = 0; k < nb && st == PP_STATUS_OK && len + per_seq <= cap; k++) {
            memcpy(buf + len, b[k].logits, (size_t)n_vocab * sizeof(float));
            len += (size_t)n_vocab * sizeof(float);
            memcpy(buf + len, &picks[k], sizeof(int32_t));
            len += sizeof(int32_t);
            memcpy(buf + len, cand_logits[k], (size_t)b[k].cand_k * sizeof(float));
            len += (size_t)b[k].cand_k * sizeof(float);
            memcpy(buf + len, cand_ids[k], (size_t)b[k].cand_k * sizeof(int32_t));
            len += (size_t)b[k].cand_k * sizeof(int32_t);
        }
        free(logits);
    }
    for (int i = 0; i < N_SEQ; i++)
        eng_session_free(ss[i]);
    eng_kv_cache_free(kv);
    *out = buf;
    *out_len = len;
}

/* CUDA graphs: decode steps recorded and launched as one graph each (the default) give the
 * logits, picks and candidates of the same steps issued op by op (PARAPHYM_CUDA_GRAPHS=0) bit for
 * bit (the same kernels with the same arguments), in the f32 and the bf16 modes. The fresh
 * model's first forward is a decode step whose recording falls back (a weight's first upload
 * cannot be recorded), so both paths run. On the CPU (no recording) both runs are op by op and
 * no graph is counted. */
static void check_graphs(const char *dir, const eng_model_opts *base, seq *qs, int n_vocab)
{
    for (int mode = 0; mode < 2; mode++) {
        eng_model_opts o = *base;
        o.dtype = mode ? ENG_DTYPE_MODE_BF16 : ENG_DTYPE_MODE_F32;
        unsigned char *run[2] = {NULL, NULL};
        size_t len[2] = {0, 0}, launched[2] = {0, 0}, fallbacks[2] = {0, 0};
        for (int graphs = 0; graphs < 2; graphs++) {
            setenv("PARAPHYM_CUDA_GRAPHS", graphs ? "1" : "0", 1); /* read when the backend is made */
            eng_model *m = NULL;
            eng_err err = {{0}};
            if (eng_model_load(dir, &o, &m, &err) != PP_STATUS_OK) {
                CHECK(false, "graphs: load: %s", err.msg);
                continue;
            }
            decode_steps(m, qs, n_vocab, graphs ? "graphs on" : "graphs off", &run[graphs], &len[graphs]);
            eng_model_graph_counts(m, &launched[graphs], &fallbacks[graphs]);
            eng_model_free(m);
        }
        unsetenv("PARAPHYM_CUDA_GRAPHS");
        const char *name = mode ? "bf16" : "f32";
        CHECK(len[0] > 0 && len[0] == len[1] && memcmp(run[0], run[1], len[0]) == 0,
              "graphs (%s mode): decode steps launched as CUDA graphs differ from the same steps op by op", name);
        CHECK(launched[0] == 0 && fallbacks[0] == 0, "graphs (%s mode): PARAPHYM_CUDA_GRAPHS=0 still recorded (%zu "
              "launched, %zu fallbacks)", name, launched[0], fallbacks[0]);
        if (exact_expected) /* the CPU */
            CHECK(launched[1] == 0 && fallbacks[1] == 0, "graphs (%s mode): the CPU counted graphs", name);
        else
            CHECK(launched[1] > 0 && fallbacks[1] > 0, "graphs (%s mode): %zu decode steps launched as graphs and %zu "
                  "fallbacks (want both: the first step uploads weights)", name, launched[1], fallbacks[1]);
        printf("graphs (%s mode): %zu bytes of decode results equal with and without graphs; %zu steps launched as "
               "graphs, %zu fell back\n", name, len[0], launched[1], fallbacks[1]);
        free(run[0]);
        free(run[1]);
    }
}

/* A cache with too few blocks: the step that needs one more than is free fails and changes
 * nothing; after another sequence resets, it goes on. */
static void check_exhaustion(eng_model *m, seq *qs, int n_vocab)
{
    eng_err err = {{0}};
    eng_kv_cache *kv = NULL;
    /* block size 4: sequence 0's prefill (5 tokens) takes 2 blocks, sequence 1's 1 block */
    pp_status st = eng_kv_cache_create(m, 3, 4, &kv, &err);
    CHECK(st == PP_STATUS_OK, "small cache: %s", err.msg);
    if (st != PP_STATUS_OK)
        return;
    eng_session *a = NULL, *b = NULL;
    eng_session_create_in(kv, qs[0].n, &a, &err);
    eng_session_create_in(kv, qs[1].n, &b, &err);
    float *lg = malloc((size_t)n_vocab * sizeof(float));
    eng_batch_seq two[2] = {{.session = a, .ids = qs[0].ids, .n_tokens = 5, .logits = lg},
                            {.session = b, .ids = qs[1].ids, .n_tokens = 1}};
    CHECK(eng_forward_batch(two, 2, &err) == PP_STATUS_OK, "small cache prefill: %s", err.msg);
    CHECK(eng_kv_cache_free_blocks(kv) == 0, "free blocks %d after taking 3 of 3", eng_kv_cache_free_blocks(kv));
    /* a: positions 5..7 fit its second block; b: 1..3 fit its first; then a at 8 needs a block */
    for (int i = 0; i < 3; i++) {
        eng_batch_seq st2[2] = {{.session = a, .ids = qs[0].ids + 5 + i, .n_tokens = 1, .logits = lg},
                                {.session = b, .ids = qs[1].ids + 1 + i, .n_tokens = 1}};
        CHECK(eng_forward_batch(st2, 2, &err) == PP_STATUS_OK, "small cache step %d: %s", i, err.msg);
    }
    eng_batch_seq more = {.session = a, .ids = qs[0].ids + 8, .n_tokens = 1, .logits = lg};
    err.msg[0] = 0;
    st = eng_forward_batch(&more, 1, &err);
    CHECK(st == PP_STATUS_OUT_OF_MEMORY, "full cache: status %s, expected OUT_OF_MEMORY", pp_status_str(st));
    CHECK(strstr(err.msg, "free blocks") != NULL, "full cache message: '%s'", err.msg);
    CHECK(eng_session_pos(a) == 8 && eng_kv_cache_free_blocks(kv) == 0, "a failed step changed state");
    eng_session_reset(b);
    CHECK(eng_kv_cache_free_blocks(kv) == 1, "reset returned %d blocks, expected 1", eng_kv_cache_free_blocks(kv));
    st = eng_forward_batch(&more, 1, &err);
    CHECK(st == PP_STATUS_OK, "after reset: %s", err.msg);
    if (st == PP_STATUS_OK)
        compare("exhaustion", 0, 8, lg, qs[0].ref + (size_t)8 * n_vocab, n_vocab);
    eng_session_free(a);
    eng_session_free(b);
    CHECK(eng_kv_cache_free_blocks(kv) == 3, "sessions freed, free blocks %d of 3", eng_kv_cache_free_blocks(kv));
    eng_kv_cache_free(kv);
    free(lg);
}

/* Batches that break the rules. */
static void check_refusals(eng_model *m, seq *qs)
{
    eng_err err = {{0}};
    eng_kv_cache *k1 = NULL, *k2 = NULL;
    eng_session *a = NULL, *b = NULL, *c = NULL, *p = NULL;
    if (eng_kv_cache_create(m, 8, 0, &k1, &err) != PP_STATUS_OK || eng_kv_cache_create(m, 8, 0, &k2, &err) != PP_STATUS_OK ||
        eng_session_create_in(k1, 16, &a, &err) != PP_STATUS_OK || eng_session_create_in(k1, 16, &b, &err) != PP_STATUS_OK ||
        eng_session_create_in(k2, 16, &c, &err) != PP_STATUS_OK || eng_session_create(m, 16, &p, &err) != PP_STATUS_OK) {
        CHECK(false, "refusal setup: %s", err.msg);
        goto out;
    }
    CHECK(eng_kv_cache_block_size(k1) == ENG_KV_BLOCK_SIZE, "default block size %d", eng_kv_cache_block_size(k1));
    const int32_t *ids = qs[0].ids;
    int32_t pick = 0;
    static float cand_v[ENG_TOPK_MAX + 1];
    static int32_t cand_i[ENG_TOPK_MAX + 1];
    struct {
        const char *what;
        eng_batch_seq b[2];
        int n;
    } bad[] = {
        {"the same session twice", {{.session = a, .ids = ids, .n_tokens = 1}, {.session = a, .ids = ids, .n_tokens = 1}}, 2},
        {"sessions of two caches", {{.session = a, .ids = ids, .n_tokens = 1}, {.session = c, .ids = ids, .n_tokens = 1}}, 2},
        {"a private session in a batch", {{.session = p, .ids = ids, .n_tokens = 1}, {.session = a, .ids = ids, .n_tokens = 1}}, 2},
        {"a sequence with no tokens", {{.session = a, .ids = ids, .n_tokens = 1}, {.session = b, .ids = ids, .n_tokens = 0}}, 2},
        {"a context overflow", {{.session = a, .ids = ids, .n_tokens = 1}, {.session = b, .ids = ids, .n_tokens = 17}}, 2},
        {"an empty batch", {{.session = a, .ids = ids, .n_tokens = 1}}, 0},
        {"a pick vocabulary past n_vocab",
         {{.session = a, .ids = ids, .n_tokens = 1, .token = &pick, .token_vocab = eng_model_config(m)->n_vocab + 1}},
         1},
        {"a candidate vocabulary past n_vocab",
         {{.session = a, .ids = ids, .n_tokens = 1, .cand_k = 3, .cand_logits = cand_v, .cand_ids = cand_i,
           .token_vocab = eng_model_config(m)->n_vocab + 1}},
         1},
        {"more candidates than ENG_TOPK_MAX",
         {{.session = a, .ids = ids, .n_tokens = 1, .cand_k = ENG_TOPK_MAX + 1, .cand_logits = cand_v,
           .cand_ids = cand_i}},
         1},
        {"negative cand_k", {{.session = a, .ids = ids, .n_tokens = 1, .cand_k = -1, .cand_logits = cand_v,
                              .cand_ids = cand_i}}, 1},
        {"candidates without their arrays", {{.session = a, .ids = ids, .n_tokens = 1, .cand_k = 2}}, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = 0;
        pp_status st = eng_forward_batch(bad[i].b, bad[i].n, &err);
        CHECK(st == PP_STATUS_INVALID_ARG && err.msg[0], "%s: status %s, message '%s'", bad[i].what,
              pp_status_str(st), err.msg);
        CHECK(eng_session_pos(a) == 0 && eng_session_pos(b) == 0, "%s changed a position", bad[i].what);
    }
    CHECK(eng_kv_cache_free_blocks(k1) == 8, "refused batches took blocks");
out:
    eng_session_free(a);
    eng_session_free(b);
    eng_session_free(c);
    eng_session_free(p);
    eng_kv_cache_free(k1);
    eng_kv_cache_free(k2);
}

int main(int argc, char **argv)
{
    const char *backend;
    int rc = test_backend_pick(&backend);
    if (rc != 0)
        return rc;
    if (argc < 2) {
        fprintf(stderr, "usage: test_batch MODEL_DIR [--mla naive]\n");
        return 2;
    }
    eng_model_opts o;
    eng_model_opts_default(&o);
    o.backend = backend;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--mla") == 0 && i + 1 < argc && strcmp(argv[i + 1], "naive") == 0) {
            o.mla = ENG_MLA_NAIVE;
            i++;
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    exact_expected = strcmp(backend, "cpu") == 0;
    char path[4096];
    snprintf(path, sizeof path, "%s/reference.json", argv[1]);
    json_object *ref = json_object_from_file(path);
    json_object *cases = ref ? json_object_object_get(ref, "cases") : NULL;
    eng_model *m = NULL;
    eng_err err = {{0}};
    if (!cases || json_object_array_length(cases) < 2 || eng_model_load(argv[1], &o, &m, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", cases ? err.msg : "reference.json with two cases needed");
        return 1;
    }
    int n_vocab = eng_model_config(m)->n_vocab;

    /* lengths, prefill chunks and join steps: ragged on purpose */
    const int spec[N_SEQ][4] = {
        /* case, tokens, prefill, join */
        {0, 19, 5, 0}, {1, 13, 1, 0}, {0, 11, 9, 0}, {1, 6, 3, 0}, {1, 14, 7, 4},
    };
    seq qs[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        json_object *ids = json_object_object_get(json_object_array_get_idx(cases, (size_t)spec[i][0]), "ids");
        qs[i].n = spec[i][1];
        qs[i].prefill = spec[i][2];
        qs[i].join = spec[i][3];
        if ((int)json_object_array_length(ids) < qs[i].n) {
            fprintf(stderr, "FAIL: case %d has fewer than %d ids\n", spec[i][0], qs[i].n);
            return 1;
        }
        for (int t = 0; t < qs[i].n; t++)
            qs[i].ids[t] = json_object_get_int(json_object_array_get_idx(ids, (size_t)t));
        qs[i].ref = calloc((size_t)qs[i].n * (size_t)n_vocab, sizeof(float));
        if (run_alone(m, &qs[i], n_vocab) != 0)
            return 1;
    }

    /* block size 3: every sequence's blocks interleave with the others' */
    eng_kv_cache *kv = NULL;
    if (eng_kv_cache_create(m, 40, 3, &kv, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: cache: %s\n", err.msg);
        return 1;
    }
    run_batched(kv, qs, N_SEQ, n_vocab, "batched");
    CHECK(eng_kv_cache_free_blocks(kv) == 40, "blocks not returned: %d of 40 free", eng_kv_cache_free_blocks(kv));
    /* again in the same cache: the blocks now hold the first run's keys, in another order */
    run_batched(kv, qs + 1, N_SEQ - 1, n_vocab, "reused blocks");
    eng_kv_cache_free(kv);

    check_exhaustion(m, qs, n_vocab);
    check_refusals(m, qs);
    CHECK(n_picks > 0, "no greedy pick was checked");
    CHECK(n_cands > 0, "no candidate list was checked");
    double kv16_median = 0;
    int n_kv16 = check_bf16_kv(argv[1], &o, qs, n_vocab, &kv16_median);
    check_graphs(argv[1], &o, qs, n_vocab);

    printf("%s on %s%s: %d sequences, worst rel L2 vs the lone runs %.3g (bound %g%s); %d greedy picks by the "
           "backend equal to eng_argmax of the logits\n", argv[1], backend, o.mla == ENG_MLA_NAIVE ? " (naive MLA)" : "",
           N_SEQ, worst, REL_L2_MAX, exact_expected ? ", bit-identical required" : "", n_picks);
    printf("%d candidate lists by the backend's topk op equal to eng_topk of the logits, bit for bit\n", n_cands);
    if (exact_expected)
        printf("bf16 compute mode: %d sequences with a bf16 KV cache bit-identical to an f32 one\n", n_kv16);
    else
        printf("bf16 compute mode: %d sequences with a bf16 KV cache; its lone and batched runs against the f32 "
               "cache's and the lone runs: median row rel L2 %.3g over %d rows (bound %g)\n",
               n_kv16, kv16_median, n_tolerant, BF16_MEDIAN_MAX);
    for (int i = 0; i < N_SEQ; i++)
        free(qs[i].ref);
    eng_model_free(m);
    json_object_put(ref);
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
