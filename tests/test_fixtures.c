/* test_fixtures.c: teacher-forced logits of a tiny fixture model against Hugging Face's
 * reference.json.
 *
 *   test_fixtures MODEL_DIR [--mla naive|absorbed] [--decode] [--fork] [--dtype f32|bf16]
 *
 * For every case (ids = prompt + the reference's greedy continuation) each position's logits must
 * be within relative L2 error 1e-4 of the reference row, and the argmax must agree wherever the
 * reference's top-2 margin exceeds 1e-3 (the bounds; the fixtures README expects an f32
 * engine near 1e-5). --decode runs the prompt as one prefill and every later id as a one-token
 * decode step through the KV cache; without it the whole sequence is one prefill. --fork runs every
 * other case on eng_model_fork of the loaded model (a second backend over the same weights; for
 * cuda, one sharing the first one's device weight cache, so the fork's cases use tensors the
 * first model uploaded).
 *
 * --dtype bf16 runs the bf16 compute mode (engine/backend_bf16.c) against the same f32 reference:
 * the check is then that the MEDIAN over all rows of the relative L2 error is <= 2e-2 (the CUDA
 * issue's bound for the bf16 path), with no per-row bound and no argmax check, since bf16 noise
 * may flip an expert choice in the MoE fixtures and move a row far; and that every logit is a
 * bf16 value (the mode is really on, for the fork too). The median and the max are printed.
 *
 * The backend comes from PP_TEST_BACKEND (cpu, the default, or cuda: tests/test_backend.h); the
 * bounds are the same on both.
 */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "test_backend.h"

#define REL_L2_MAX 1e-4
#define MARGIN_MIN 1e-3
#define BF16_MEDIAN_MAX 2e-2

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* True when f is a bf16 value (the low 16 bits of its f32 pattern are zero). */
static bool is_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0xffffu) == 0;
}

static int argmax(const double *v, int n, double *margin)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    double second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != best && v[i] > second)
            second = v[i];
    if (margin)
        *margin = v[best] - second;
    return best;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: test_fixtures MODEL_DIR [--mla naive|absorbed] [--decode] [--fork] [--dtype f32|bf16]\n");
        return 2;
    }
    const char *dir = argv[1];
    eng_model_opts mo;
    eng_model_opts_default(&mo);
    int rc = test_backend_pick(&mo.backend);
    if (rc != 0)
        return rc;
    bool decode = false, use_fork = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--decode") == 0)
            decode = true;
        else if (strcmp(argv[i], "--fork") == 0)
            use_fork = true;
        else if (strcmp(argv[i], "--mla") == 0 && i + 1 < argc)
            mo.mla = strcmp(argv[++i], "naive") == 0 ? ENG_MLA_NAIVE : ENG_MLA_ABSORBED;
        else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            eng_err derr = {{0}};
            if (eng_dtype_mode_parse(argv[++i], &mo.dtype, &derr) != PP_STATUS_OK) {
                fprintf(stderr, "%s\n", derr.msg);
                return 2;
            }
        } else {
            fprintf(stderr, "test_fixtures: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    bool bf16 = mo.dtype == ENG_DTYPE_MODE_BF16;
    char path[4096];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_object *ref = json_object_from_file(path);
    if (!ref) {
        fprintf(stderr, "FAIL: cannot read %s\n", path);
        return 1;
    }
    eng_model *loaded = NULL, *forked = NULL;
    eng_err err = {{0}};
    if (eng_model_load(dir, &mo, &loaded, &err) != PP_STATUS_OK ||
        (use_fork && eng_model_fork(loaded, 0, &forked, &err) != PP_STATUS_OK)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        eng_model_free(loaded);
        json_object_put(ref);
        return 1;
    }
    int n_vocab = eng_model_config(loaded)->n_vocab;
    json_object *cases = json_object_object_get(ref, "cases");
    int failures = 0;
    double worst = 0.0;
    int n_rows = 0, n_not_bf16 = 0, n_argmax_moved = 0;
    size_t n_cases = json_object_array_length(cases);
    double *rels = NULL; /* [every row] relative L2 errors, for the median */
    size_t cap_rels = 0;
    const char *want_dtype = eng_dtype_mode_name(mo.dtype);
    if (strcmp(eng_model_dtype_name(loaded), want_dtype) != 0 ||
        (forked && strcmp(eng_model_dtype_name(forked), want_dtype) != 0)) {
        fprintf(stderr, "FAIL: the model (or its fork) computes in %s, not %s\n", eng_model_dtype_name(loaded),
                want_dtype);
        failures++;
    }
    for (size_t ci = 0; ci < n_cases; ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        eng_model *model = forked && ci % 2 == 1 ? forked : loaded;
        json_object *jids = json_object_object_get(cs, "ids");
        json_object *jlog = json_object_object_get(cs, "logits");
        int prompt_len = json_object_get_int(json_object_object_get(cs, "prompt_len"));
        int n = (int)json_object_array_length(jids);
        if ((size_t)n_rows + (size_t)n > cap_rels) {
            cap_rels = 2 * ((size_t)n_rows + (size_t)n);
            double *grown = realloc(rels, cap_rels * sizeof *rels);
            if (!grown) {
                fprintf(stderr, "FAIL: out of memory\n");
                failures++;
                break;
            }
            rels = grown;
        }
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        float *logits = malloc((size_t)n * (size_t)n_vocab * sizeof(float));
        double *refrow = malloc((size_t)n_vocab * sizeof(double));
        double *ourrow = malloc((size_t)n_vocab * sizeof(double));
        for (int i = 0; i < n; i++)
            ids[i] = json_object_get_int(json_object_array_get_idx(jids, (size_t)i));
        eng_session *sess = NULL;
        pp_status st = eng_session_create(model, n, &sess, &err);
        int prefill = decode ? prompt_len : n;
        if (st == PP_STATUS_OK)
            st = eng_session_forward(sess, ids, prefill, logits, true, &err);
        for (int i = prefill; i < n && st == PP_STATUS_OK; i++)
            st = eng_session_forward(sess, ids + i, 1, logits + (size_t)i * (size_t)n_vocab, true, &err);
        if (st != PP_STATUS_OK) {
            fprintf(stderr, "FAIL case %zu: %s\n", ci, err.msg);
            failures++;
        }
        for (int i = 0; i < n && st == PP_STATUS_OK; i++) {
            json_object *row = json_object_array_get_idx(jlog, (size_t)i);
            if ((int)json_object_array_length(row) != n_vocab) {
                fprintf(stderr, "FAIL case %zu row %d: reference has %zu logits, model %d\n", ci, i,
                        json_object_array_length(row), n_vocab);
                failures++;
                break;
            }
            double num = 0.0, den = 0.0;
            bool finite = true;
            for (int v = 0; v < n_vocab; v++) {
                refrow[v] = json_object_get_double(json_object_array_get_idx(row, (size_t)v));
                ourrow[v] = logits[(size_t)i * (size_t)n_vocab + (size_t)v];
                finite = finite && isfinite(ourrow[v]);
                n_not_bf16 += bf16 && !is_bf16(logits[(size_t)i * (size_t)n_vocab + (size_t)v]);
                num += (ourrow[v] - refrow[v]) * (ourrow[v] - refrow[v]);
                den += refrow[v] * refrow[v];
            }
            double rel = finite ? sqrt(num / den) : INFINITY;
            rels[n_rows++] = rel;
            if (rel > worst)
                worst = rel;
            double margin;
            int ref_top = argmax(refrow, n_vocab, &margin);
            int our_top = argmax(ourrow, n_vocab, NULL);
            if (bf16) {
                n_argmax_moved += margin > MARGIN_MIN && ref_top != our_top;
                continue; /* judged by the median below */
            }
            if (!(rel <= REL_L2_MAX)) {
                fprintf(stderr, "FAIL case %zu position %d: relative L2 error %.3g > %.0e\n", ci, i, rel,
                        REL_L2_MAX);
                failures++;
            }
            if (margin > MARGIN_MIN && ref_top != our_top) {
                fprintf(stderr, "FAIL case %zu position %d: argmax %d, reference %d (margin %.4g)\n", ci,
                        i, our_top, ref_top, margin);
                failures++;
            }
        }
        eng_session_free(sess);
        free(ids);
        free(logits);
        free(refrow);
        free(ourrow);
    }
    double median = NAN;
    if (bf16) {
        if (n_not_bf16) {
            fprintf(stderr, "FAIL: %d logits are not bf16 values in the bf16 mode\n", n_not_bf16);
            failures++;
        }
        if (n_rows > 0) {
            qsort(rels, (size_t)n_rows, sizeof *rels, cmp_double);
            median = n_rows % 2 ? rels[n_rows / 2] : 0.5 * (rels[n_rows / 2 - 1] + rels[n_rows / 2]);
        }
        if (!(median <= BF16_MEDIAN_MAX)) {
            fprintf(stderr, "FAIL: median relative L2 error %.3g > %.0e\n", median, BF16_MEDIAN_MAX);
            failures++;
        }
        printf("%s: bf16 compute: %d rows, median relative L2 error %.3g (bound %.0e), max %.3g; %d argmax "
               "changes where the reference margin > %.0e\n",
               dir, n_rows, median, BF16_MEDIAN_MAX, worst, n_argmax_moved, MARGIN_MIN);
    }
    printf("%s: %d rows, worst relative L2 error %.3g (%s, %s, backend %s, %s compute%s)%s\n", dir, n_rows, worst,
           decode ? "prefill + decode steps" : "one prefill",
           mo.mla == ENG_MLA_NAIVE ? "naive MLA" : "absorbed MLA", eng_model_backend_name(loaded),
           eng_model_dtype_name(loaded), use_fork ? ", every other case on a fork" : "", failures ? "" : ": ok");
    free(rels);
    eng_model_free(forked);
    eng_model_free(loaded);
    json_object_put(ref);
    return failures ? 1 : 0;
}
