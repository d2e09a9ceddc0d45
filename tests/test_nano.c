/* test_nano.c: a trained nano model's greedy references (reference.json "greedy").
 *
 *   test_nano MODEL_DIR [--prefill-all]
 *
 * For each case, feeds prompt_ids + greedy_ids teacher-forced (the prompt as one prefill, then one
 * decode step per token; --prefill-all runs everything as one prefill) and checks, at every step,
 * the chosen id's logit and the row's logsumexp within 1e-4 relative of the reference (the issue's
 * bound), and reports the greedy agreement. A missing directory (the nano models other than the
 * committed Qwen one live in ../shared) is reported as skipped (exit 77). The backend comes from
 * PP_TEST_BACKEND (cpu, the default, or cuda: tests/test_backend.h), with the same bounds.
 */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "test_backend.h"

#define REL_MAX 1e-4

static double rel_err(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_nano MODEL_DIR [--prefill-all]\n");
        return 2;
    }
    const char *dir = argv[1];
    bool prefill_all = argc > 2 && strcmp(argv[2], "--prefill-all") == 0;
    eng_model_opts mo;
    eng_model_opts_default(&mo);
    int rc = test_backend_pick(&mo.backend);
    if (rc != 0)
        return rc;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        printf("skipped: %s not found (the nano fixtures live in ../shared/fixtures/nano)\n", dir);
        return 77;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_object *ref = json_object_from_file(path);
    if (!ref) {
        fprintf(stderr, "FAIL: cannot read %s\n", path);
        return 1;
    }
    eng_model *model = NULL;
    eng_err err = {{0}};
    if (eng_model_load(dir, &mo, &model, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        json_object_put(ref);
        return 1;
    }
    int n_vocab = eng_model_config(model)->n_vocab;
    json_object *cases = json_object_object_get(ref, "greedy");
    int failures = 0, steps = 0, greedy_same = 0;
    double worst_logit = 0, worst_lse = 0;
    for (size_t ci = 0; ci < json_object_array_length(cases); ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        json_object *jp = json_object_object_get(cs, "prompt_ids");
        json_object *jsteps = json_object_object_get(cs, "steps");
        int np = (int)json_object_array_length(jp), ns = (int)json_object_array_length(jsteps);
        int n = np + ns;
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        float *logits = malloc((size_t)n * (size_t)n_vocab * sizeof(float));
        for (int i = 0; i < np; i++)
            ids[i] = json_object_get_int(json_object_array_get_idx(jp, (size_t)i));
        for (int i = 0; i < ns; i++)
            ids[np + i] = json_object_get_int(
                json_object_object_get(json_object_array_get_idx(jsteps, (size_t)i), "id"));
        eng_session *sess = NULL;
        pp_status st = eng_session_create(model, n, &sess, &err);
        int prefill = prefill_all ? n : np;
        if (st == PP_STATUS_OK)
            st = eng_session_forward(sess, ids, prefill, logits, true, &err);
        for (int i = prefill; i < n && st == PP_STATUS_OK; i++)
            st = eng_session_forward(sess, ids + i, 1, logits + (size_t)i * (size_t)n_vocab, true, &err);
        if (st != PP_STATUS_OK) {
            fprintf(stderr, "FAIL case %zu: %s\n", ci, err.msg);
            failures++;
        }
        for (int i = 0; i < ns && st == PP_STATUS_OK; i++) {
            json_object *js = json_object_array_get_idx(jsteps, (size_t)i);
            int id = ids[np + i];
            double ref_logit = json_object_get_double(json_object_object_get(js, "logit"));
            double ref_lse = json_object_get_double(json_object_object_get(js, "logsumexp"));
            const float *row = logits + (size_t)(np - 1 + i) * (size_t)n_vocab;
            double mx = -INFINITY, sum = 0.0;
            int top = 0;
            for (int v = 0; v < n_vocab; v++) {
                if (row[v] > mx) {
                    mx = row[v];
                    top = v;
                }
            }
            for (int v = 0; v < n_vocab; v++)
                sum += exp((double)row[v] - mx);
            double lse = mx + log(sum);
            double el = rel_err(row[id], ref_logit), es = rel_err(lse, ref_lse);
            worst_logit = fmax(worst_logit, el);
            worst_lse = fmax(worst_lse, es);
            steps++;
            greedy_same += top == id;
            if (!(el <= REL_MAX) || !(es <= REL_MAX)) {
                fprintf(stderr, "FAIL case %zu step %d: logit %.7g (ref %.7g), logsumexp %.7g (ref %.7g)\n",
                        ci, i, (double)row[id], ref_logit, lse, ref_lse);
                failures++;
            }
        }
        eng_session_free(sess);
        free(ids);
        free(logits);
    }
    printf("%s: %d steps, worst relative error logit %.3g, logsumexp %.3g; argmax equals the "
           "reference's greedy id at %d of %d steps (%s, backend %s)%s\n",
           dir, steps, worst_logit, worst_lse, greedy_same, steps,
           prefill_all ? "one prefill" : "prefill + decode steps", eng_model_backend_name(model),
           failures ? "" : ": ok");
    eng_model_free(model);
    json_object_put(ref);
    return failures ? 1 : 0;
}
