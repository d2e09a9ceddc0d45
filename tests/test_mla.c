/* test_mla.c: DeepSeek-V3's absorbed (latent-cache) MLA equals the naive form.
 *
 *   test_mla MODEL_DIR
 *
 * Runs the reference cases' ids through both forms, as one prefill and as prefill + decode steps,
 * and requires every logit row to agree within 1e-5 relative L2 (the bound; the two forms
 * are the same math in a different order, so f32 differences are ~1e-6).
 */
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

#define REL_L2_MAX 1e-5

static int run(eng_model *m, const int32_t *ids, int n, int prefill, float *logits, eng_err *err)
{
    int n_vocab = eng_model_config(m)->n_vocab;
    eng_session *s = NULL;
    pp_status st = eng_session_create(m, n, &s, err);
    if (st == PP_STATUS_OK)
        st = eng_session_forward(s, ids, prefill, logits, true, err);
    for (int i = prefill; i < n && st == PP_STATUS_OK; i++)
        st = eng_session_forward(s, ids + i, 1, logits + (size_t)i * (size_t)n_vocab, true, err);
    eng_session_free(s);
    return st == PP_STATUS_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_mla MODEL_DIR\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/reference.json", argv[1]);
    json_object *ref = json_object_from_file(path);
    eng_model_opts on, oa;
    eng_model_opts_default(&on);
    eng_model_opts_default(&oa);
    on.mla = ENG_MLA_NAIVE;
    oa.mla = ENG_MLA_ABSORBED;
    eng_model *mn = NULL, *ma = NULL;
    eng_err err = {{0}};
    if (!ref || eng_model_load(argv[1], &on, &mn, &err) != PP_STATUS_OK ||
        eng_model_load(argv[1], &oa, &ma, &err) != PP_STATUS_OK) {
        fprintf(stderr, "FAIL: %s\n", ref ? err.msg : "cannot read reference.json");
        return 1;
    }
    if (eng_model_config(mn)->arch != ENG_ARCH_DEEPSEEK_V3) {
        fprintf(stderr, "FAIL: %s is not a DeepSeek-V3 / Kimi K2 model\n", argv[1]);
        return 1;
    }
    int n_vocab = eng_model_config(mn)->n_vocab;
    json_object *cases = json_object_object_get(ref, "cases");
    int failures = 0;
    double worst = 0;
    for (size_t ci = 0; ci < json_object_array_length(cases); ci++) {
        json_object *cs = json_object_array_get_idx(cases, ci);
        json_object *jids = json_object_object_get(cs, "ids");
        int n = (int)json_object_array_length(jids);
        int prompt_len = json_object_get_int(json_object_object_get(cs, "prompt_len"));
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        float *ln = malloc((size_t)n * (size_t)n_vocab * sizeof(float));
        float *la = malloc((size_t)n * (size_t)n_vocab * sizeof(float));
        for (int i = 0; i < n; i++)
            ids[i] = json_object_get_int(json_object_array_get_idx(jids, (size_t)i));
        for (int mode = 0; mode < 2; mode++) {
            int prefill = mode == 0 ? n : prompt_len;
            if (run(mn, ids, n, prefill, ln, &err) || run(ma, ids, n, prefill, la, &err)) {
                fprintf(stderr, "FAIL: %s\n", err.msg);
                failures++;
                continue;
            }
            for (int i = 0; i < n; i++) {
                double num = 0, den = 0;
                for (int v = 0; v < n_vocab; v++) {
                    double a = la[(size_t)i * n_vocab + v], b = ln[(size_t)i * n_vocab + v];
                    num += (a - b) * (a - b);
                    den += b * b;
                }
                double rel = sqrt(num / den);
                worst = fmax(worst, rel);
                if (!(rel <= REL_L2_MAX)) {
                    fprintf(stderr, "FAIL case %zu position %d (%s): absorbed vs naive %.3g\n", ci, i,
                            mode == 0 ? "prefill" : "decode", rel);
                    failures++;
                }
            }
        }
        free(ids);
        free(ln);
        free(la);
    }
    printf("%s: absorbed vs naive MLA worst relative L2 %.3g%s\n", argv[1], worst, failures ? "" : ": ok");
    eng_model_free(mn);
    eng_model_free(ma);
    json_object_put(ref);
    return failures ? 1 : 0;
}
