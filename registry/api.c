/* api.c: the public registry functions and pp_model_prompt, which ties the registry to the pool.
 *
 * Models live in a process-wide list (never freed before exit): pp_registry_get and
 * pp_registry_register return the same pp_model for the same key. The pool only ever sees a
 * pool_model_desc (key, directory, per-worker costs, context), so pool/ does not depend on
 * registry/.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "paraphym.h"
#include "pool.h"
#include "registry.h"

#ifndef PP_DEFAULT_MODEL_DIR
#define PP_DEFAULT_MODEL_DIR NULL
#endif

struct pp_model {
    char key[256];
    char hf_repo[256];
    char dir[4096];
    char model_type[32];
    reg_model_info est;
    pp_model_info info;
    struct pp_model *next;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static pp_model *models;

static pp_model *find_locked(const char *key)
{
    for (pp_model *m = models; m; m = m->next)
        if (strcmp(m->key, key) == 0)
            return m;
    return NULL;
}

/* Fills info from est (strings point into the model). */
static void fill_info(pp_model *m, int n_ctx, int n_batch)
{
    pp_model_info *i = &m->info;
    memset(i, 0, sizeof *i);
    snprintf(m->model_type, sizeof m->model_type, "%s", m->est.model_type);
    i->registry_key = m->key;
    i->hf_repo = m->hf_repo;
    i->model_dir = m->dir;
    i->family = m->est.family;
    i->model_type = m->model_type;
    i->n_params = m->est.params.total;
    i->n_params_active = m->est.params.active;
    i->context_tokens = n_ctx;
    i->batch_tokens = n_batch;
    const uint64_t mib = 1u << 20;
    i->memory.weights_mb = (m->est.weight_bytes + mib - 1) / mib;
    i->memory.kv_cache_mb = (m->est.kv_bytes + mib - 1) / mib;
    i->memory.activations_mb = (m->est.act_bytes + mib - 1) / mib;
    i->memory.first_worker_host_mb = m->est.cpu_first.host_mb;
    i->memory.second_worker_host_mb = m->est.cpu_second.host_mb;
    i->memory.first_worker_vram_mb = m->est.gpu_first.vram_mb;
    i->memory.second_worker_vram_mb = m->est.gpu_second.vram_mb;
    i->memory.gpu_worker_host_mb = m->est.gpu_first.host_mb;
}

/* Creates a model for (key, dir); registry_mu held. */
static pp_status create_locked(const char *key, const char *hf_repo, const char *dir, pp_model **out)
{
    pp_model *m = calloc(1, sizeof *m);
    if (!m) {
        pool_set_last_error("out of memory");
        return PP_STATUS_OUT_OF_MEMORY;
    }
    if (strlen(key) >= sizeof m->key || strlen(dir) >= sizeof m->dir) {
        free(m);
        pool_set_last_error("registry key or directory too long");
        return PP_STATUS_INVALID_ARG;
    }
    snprintf(m->key, sizeof m->key, "%s", key);
    snprintf(m->hf_repo, sizeof m->hf_repo, "%s", hf_repo ? hf_repo : "");
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    char msg[1024] = "";
    pp_status st = reg_estimate(dir, REG_DEFAULT_N_CTX, REG_DEFAULT_N_BATCH, 0, &m->est, msg, sizeof msg);
    if (st != PP_STATUS_OK) {
        pool_set_last_error("%s: %s", key, msg);
        free(m);
        return st;
    }
    fill_info(m, REG_DEFAULT_N_CTX, REG_DEFAULT_N_BATCH);
    m->next = models;
    models = m;
    *out = m;
    return PP_STATUS_OK;
}

pp_status pp_registry_get(const char *key, pp_model **out)
{
    if (!out)
        return PP_STATUS_INVALID_ARG;
    *out = NULL;
    if (!key) {
        pool_set_last_error("pp_registry_get: key is NULL");
        return PP_STATUS_INVALID_ARG;
    }
    pthread_mutex_lock(&registry_mu);
    pp_model *m = find_locked(key);
    pp_status st = PP_STATUS_OK;
    if (!m) {
        char dir[4096], msg[4096];
        st = reg_resolve_dir(key, PP_DEFAULT_MODEL_DIR, dir, sizeof dir, msg, sizeof msg);
        if (st != PP_STATUS_OK) {
            pool_set_last_error("%s", msg);
        } else {
            const reg_entry *e = reg_find(key);
            st = create_locked(key, e ? e->hf_repo : NULL, dir, &m);
        }
    }
    pthread_mutex_unlock(&registry_mu);
    *out = st == PP_STATUS_OK ? m : NULL;
    return st;
}

pp_status pp_registry_register(const char *key, const char *model_dir, pp_model **out)
{
    if (!out)
        return PP_STATUS_INVALID_ARG;
    *out = NULL;
    if (!key || !model_dir || !key[0]) {
        pool_set_last_error("pp_registry_register: key and model_dir are required");
        return PP_STATUS_INVALID_ARG;
    }
    pthread_mutex_lock(&registry_mu);
    pp_model *m = find_locked(key);
    pp_status st = PP_STATUS_OK;
    if (m && strcmp(m->dir, model_dir) != 0) {
        pool_set_last_error("key %s is already registered for %s", key, m->dir);
        st = PP_STATUS_INVALID_ARG;
    } else if (!m) {
        const reg_entry *e = reg_find(key);
        st = create_locked(key, e ? e->hf_repo : NULL, model_dir, &m);
    }
    pthread_mutex_unlock(&registry_mu);
    *out = st == PP_STATUS_OK ? m : NULL;
    return st;
}

const pp_model_info *pp_model_info_get(const pp_model *model) { return model ? &model->info : NULL; }

pp_status pp_model_set_context(pp_model *model, int context_tokens, int batch_tokens)
{
    if (!model || context_tokens < 2 || batch_tokens < 1) {
        pool_set_last_error("pp_model_set_context: context_tokens must be >= 2 and batch_tokens >= 1");
        return PP_STATUS_INVALID_ARG;
    }
    reg_model_info est;
    char msg[1024] = "";
    pthread_mutex_lock(&registry_mu);
    pp_status st = reg_estimate(model->dir, context_tokens, batch_tokens, 0, &est, msg, sizeof msg);
    if (st == PP_STATUS_OK) {
        model->est = est;
        fill_info(model, context_tokens, batch_tokens);
    } else {
        pool_set_last_error("%s: %s", model->key, msg);
    }
    pthread_mutex_unlock(&registry_mu);
    return st;
}

pp_stream *pp_model_prompt(pp_model *model, const pp_prompt *prompt, const pp_completion_params *params)
{
    if (!model)
        return pool_error_stream(PP_STATUS_INVALID_ARG, "pp_model_prompt: model is NULL");
    if (!prompt)
        return pool_error_stream(PP_STATUS_INVALID_ARG, "pp_model_prompt: prompt is NULL");
    pthread_mutex_lock(&registry_mu); /* pp_model_set_context may change the costs */
    pool_model_desc desc = {
        .key = model->key,
        .model_dir = model->dir,
        .first = {model->est.cpu_first.host_mb, model->est.cpu_first.vram_mb},
        .second = {model->est.cpu_second.host_mb, model->est.cpu_second.vram_mb},
        .gpu_first = {model->est.gpu_first.host_mb, model->est.gpu_first.vram_mb},
        .gpu_second = {model->est.gpu_second.host_mb, model->est.gpu_second.vram_mb},
        .n_ctx = model->info.context_tokens,
        .n_batch = model->info.batch_tokens,
    };
    pthread_mutex_unlock(&registry_mu);
    return pool_prompt(pp_text_to_text_pool(), &desc, prompt, params);
}
