/* generate.c: the generation loop (prefill, sample, decode step, detokenize, stop handling). */
#include "generate.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

const char *eng_finish_name(eng_finish f)
{
    switch (f) {
    case ENG_FINISH_STOP: return "stop";
    case ENG_FINISH_LENGTH: return "length";
    case ENG_FINISH_CANCELLED: return "cancelled";
    case ENG_FINISH_ERROR: return "error";
    case ENG_FINISH_NONE: break;
    }
    return "";
}

void eng_gen_params_default(eng_gen_params *p, const eng_model *model)
{
    memset(p, 0, sizeof *p);
    eng_sampling_default(&p->sampling);
    p->max_tokens = 256;
    const eng_config *c = eng_model_config(model);
    for (int i = 0; i < c->n_eos && p->n_stop_ids < ENG_MAX_STOP_IDS; i++)
        p->stop_ids[p->n_stop_ids++] = c->eos_token_ids[i];
}

static pp_status read_number(json_object *o, const char *key, double *out, bool *found, eng_err *err)
{
    json_object *v;
    *found = false;
    if (!json_object_object_get_ex(o, key, &v) || json_object_get_type(v) == json_type_null)
        return PP_STATUS_OK;
    if (json_object_get_type(v) != json_type_int && json_object_get_type(v) != json_type_double)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "generation_config.json: '%s' must be a number", key);
    *out = json_object_get_double(v);
    *found = true;
    return PP_STATUS_OK;
}

pp_status eng_sampling_load_defaults(const char *dir, eng_sampling *s, eng_err *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return PP_STATUS_OK;
    json_object *o = json_object_from_file(path);
    if (!o || json_object_get_type(o) != json_type_object) {
        json_object_put(o);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: not a JSON object", path);
    }
    eng_sampling d = *s;
    double v;
    bool found;
    pp_status st = PP_STATUS_OK;
    if (st == PP_STATUS_OK && (st = read_number(o, "temperature", &v, &found, err)) == PP_STATUS_OK && found)
        d.temperature = (float)v;
    if (st == PP_STATUS_OK && (st = read_number(o, "top_k", &v, &found, err)) == PP_STATUS_OK && found)
        d.top_k = v >= 0 && v < 1e9 ? (int)v : -1;
    if (st == PP_STATUS_OK && (st = read_number(o, "top_p", &v, &found, err)) == PP_STATUS_OK && found)
        d.top_p = (float)v;
    if (st == PP_STATUS_OK && (st = read_number(o, "min_p", &v, &found, err)) == PP_STATUS_OK && found)
        d.min_p = (float)v;
    if (st == PP_STATUS_OK &&
        (st = read_number(o, "repetition_penalty", &v, &found, err)) == PP_STATUS_OK && found)
        d.repetition_penalty = (float)v;
    json_object *ds;
    if (st == PP_STATUS_OK && json_object_object_get_ex(o, "do_sample", &ds) &&
        json_object_get_type(ds) == json_type_boolean && !json_object_get_boolean(ds))
        d.temperature = 0.0f; /* HF: do_sample false is greedy whatever the temperature says */
    json_object_put(o);
    if (st != PP_STATUS_OK)
        return st;
    if ((st = eng_sampling_validate(&d, err)) != PP_STATUS_OK) {
        eng_err_prefix(err, "%s", path);
        return st;
    }
    *s = d;
    return PP_STATUS_OK;
}

/* Text decoded but not yet handed out (it may be the start of a stop string). */
typedef struct text_buf {
    char *data;
    size_t len, cap;
} text_buf;

static bool buf_append(text_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return false;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

/* Length of the longest suffix of s that is a proper prefix of some stop string. */
static size_t stop_prefix_len(const char *s, size_t len, const char *const *stop, size_t n_stop)
{
    size_t best = 0;
    for (size_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        for (size_t k = sl > 0 ? sl - 1 : 0; k > best; k--) {
            if (k <= len && memcmp(s + len - k, stop[i], k) == 0) {
                best = k;
                break;
            }
        }
    }
    return best;
}

/* First occurrence of any stop string in s; returns its offset or (size_t)-1. */
static size_t find_stop(const char *s, size_t len, const char *const *stop, size_t n_stop)
{
    size_t first = (size_t)-1;
    for (size_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        if (sl == 0 || sl > len)
            continue;
        for (size_t off = 0; off + sl <= len && off < first; off++)
            if (memcmp(s + off, stop[i], sl) == 0) {
                first = off;
                break;
            }
    }
    return first;
}

/* Moves bytes [0, n) of pending to out, keeping UTF-8 characters whole (n is always at a
 * character boundary because stop strings are whole UTF-8 strings and pending is valid UTF-8). */
static void emit_prefix(text_buf *pending, size_t n, text_buf *out)
{
    out->len = 0;
    if (n == 0) {
        buf_append(out, "", 0);
        return;
    }
    buf_append(out, pending->data, n);
    memmove(pending->data, pending->data + n, pending->len - n);
    pending->len -= n;
    pending->data[pending->len] = '\0';
}

struct eng_gen {
    eng_model *model;
    const eng_gen_params *p;
    eng_chunk_fn fn;
    void *user;
    eng_session *sess;
    eng_sampler *sampler;
    eng_detok *detok;
    int32_t *history;    /* [n_ctx]: the prompt, then every sampled id */
    size_t n_hist, n_prompt, n_new_ids, completion;
    size_t prefilled;    /* prompt tokens run so far */
    int chunk_limit;     /* most prompt tokens per chunk besides p->n_batch; 0: none */
    int n_ctx;
    int32_t n_text_vocab;
    int32_t vocab;       /* the ids the sampler picks from: 0 .. min(n_text_vocab, n_vocab) - 1 */
    text_buf pending, out;
    bool by_stop_string;
    bool done;           /* the final chunk was handed out */
    pp_status status;    /* what eng_generate returns for it */
};

int eng_gen_context(const eng_model *model, const eng_gen_params *p, size_t n_prompt)
{
    long long limit = p->n_ctx > 0 ? p->n_ctx : eng_model_config(model)->max_position_embeddings;
    long long want = (long long)n_prompt + p->max_tokens;
    return (int)(want < limit ? want : limit);
}

pp_status eng_gen_create(eng_model *model, eng_kv_cache *kv, const eng_tokenizer *tok, const int32_t *prompt_ids,
                         size_t n_prompt, const eng_gen_params *p, eng_chunk_fn fn, void *user, eng_gen **out,
                         eng_err *err)
{
    *out = NULL;
    const eng_config *c = eng_model_config(model);
    pp_status st = eng_sampling_validate(&p->sampling, err);
    if (st != PP_STATUS_OK)
        return st;
    if (p->max_tokens <= 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "max_tokens must be positive (got %d)", p->max_tokens);
    if (n_prompt == 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "the prompt is empty (0 tokens)");
    for (size_t i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0])
            return eng_fail(err, PP_STATUS_INVALID_ARG, "stop strings must be non-empty");
    long long limit = p->n_ctx > 0 ? p->n_ctx : c->max_position_embeddings;
    if ((long long)n_prompt >= limit)
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "the prompt has %zu tokens, which leaves no room in the context of %lld "
                        "(prompts are not truncated)", n_prompt, limit);
    eng_gen *g = calloc(1, sizeof *g);
    if (!g)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    g->model = model;
    g->p = p;
    g->fn = fn;
    g->user = user;
    g->n_ctx = eng_gen_context(model, p, n_prompt);
    g->n_prompt = n_prompt;
    g->n_text_vocab = eng_tokenizer_n_vocab(tok);
    g->vocab = g->n_text_vocab > 0 && g->n_text_vocab < c->n_vocab ? g->n_text_vocab : c->n_vocab;
    if ((st = kv ? eng_session_create_in(kv, g->n_ctx, &g->sess, err) : eng_session_create(model, g->n_ctx, &g->sess, err)) !=
            PP_STATUS_OK ||
        (st = eng_sampler_create(&p->sampling, g->vocab, &g->sampler, err)) != PP_STATUS_OK ||
        (st = eng_detok_create(tok, &g->detok, err)) != PP_STATUS_OK) {
        eng_gen_free(g);
        return st;
    }
    g->history = malloc((size_t)g->n_ctx * sizeof *g->history);
    if (!g->history) {
        eng_gen_free(g);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    }
    memcpy(g->history, prompt_ids, n_prompt * sizeof *g->history);
    g->n_hist = n_prompt;
    *out = g;
    return PP_STATUS_OK;
}

eng_session *eng_gen_session(eng_gen *g) { return g->sess; }
bool eng_gen_prefilling(const eng_gen *g) { return g->prefilled < g->n_prompt; }
pp_status eng_gen_status(const eng_gen *g) { return g->status; }
bool eng_gen_done(const eng_gen *g) { return g->done; }

void eng_gen_input(const eng_gen *g, const int32_t **ids, int *n_tokens)
{
    if (g->prefilled < g->n_prompt) {
        size_t step = g->p->n_batch > 0 ? (size_t)g->p->n_batch : g->n_prompt;
        if (g->chunk_limit > 0 && (size_t)g->chunk_limit < step)
            step = (size_t)g->chunk_limit;
        size_t left = g->n_prompt - g->prefilled;
        *ids = g->history + g->prefilled;
        *n_tokens = (int)(left < step ? left : step);
    } else {
        *ids = g->history + g->n_hist - 1; /* the last sampled id */
        *n_tokens = 1;
    }
}

void eng_gen_set_chunk_limit(eng_gen *g, int max_tokens) { g->chunk_limit = max_tokens > 0 ? max_tokens : 0; }

/* Hands out the final chunk: the held text (after a last look for stop strings when the
 * generation ended normally) with the finish reason. */
static void gen_finish(eng_gen *g, eng_finish finish)
{
    const eng_gen_params *p = g->p;
    if ((finish == ENG_FINISH_LENGTH || finish == ENG_FINISH_STOP) && !g->by_stop_string) {
        /* the held bytes of an unfinished character, then a last look for stop strings */
        const char *tail;
        size_t tail_len;
        eng_detok_flush(g->detok, &tail, &tail_len);
        buf_append(&g->pending, tail, tail_len);
        size_t hit = find_stop(g->pending.data, g->pending.len, p->stop, p->n_stop);
        if (hit != (size_t)-1) {
            g->pending.len = hit;
            g->pending.data[hit] = '\0';
            finish = ENG_FINISH_STOP;
        }
    }
    if (finish == ENG_FINISH_ERROR || finish == ENG_FINISH_CANCELLED)
        g->pending.len = 0; /* nothing more is handed out */
    emit_prefix(&g->pending, g->pending.len, &g->out);
    eng_chunk ch = {g->out.data ? g->out.data : "", g->out.len, g->history + g->n_hist - g->n_new_ids, g->n_new_ids,
                    finish, g->n_prompt, g->completion};
    g->fn(g->user, &ch);
    g->done = true;
}

void eng_gen_fail(eng_gen *g, pp_status st)
{
    if (g->done)
        return;
    g->status = st;
    gen_finish(g, ENG_FINISH_ERROR);
}

void eng_gen_cancel(eng_gen *g)
{
    if (!g->done)
        gen_finish(g, ENG_FINISH_CANCELLED);
}

/* Counts the chunk of the prompt a forward just ran; false while more of it remains (nothing
 * to sample yet). */
static bool gen_prompt_done(eng_gen *g)
{
    if (g->prefilled < g->n_prompt) {
        const int32_t *ids;
        int n;
        eng_gen_input(g, &ids, &n);
        g->prefilled += (size_t)n;
    }
    return g->prefilled >= g->n_prompt;
}

static bool gen_accept(eng_gen *g, int32_t id, eng_err *err);

bool eng_gen_advance(eng_gen *g, float *logits, eng_err *err)
{
    if (g->done)
        return false;
    if (!gen_prompt_done(g))
        return true; /* more of the prompt to run before the first sample */
    const eng_config *c = eng_model_config(g->model);
    /* Rows past the tokenizer's vocabulary are padding (Qwen pads 151669 ids to 151936): they
     * have no text, so they are never chosen (HF does not mask them): the sampler reads only the
     * first g->vocab logits, and the others are masked for whoever reads the row after. */
    for (int32_t v = g->n_text_vocab; v < c->n_vocab; v++)
        logits[v] = -INFINITY;
    return gen_accept(g, eng_sampler_sample(g->sampler, logits, g->history, g->n_hist), err);
}

int eng_gen_pick_vocab(const eng_gen *g) { return eng_sampler_is_argmax(g->sampler) ? g->vocab : 0; }

int eng_gen_candidates_k(const eng_gen *g, int *vocab)
{
    *vocab = g->vocab;
    return eng_sampler_is_argmax(g->sampler) ? 0 : eng_sampler_candidates_k(g->sampler);
}

/* The sampler reads the first g->vocab logits only, so the pick over them is the one
 * eng_gen_advance's sampler makes. */
bool eng_gen_advance_token(eng_gen *g, int32_t id, eng_err *err)
{
    if (g->done)
        return false;
    if (!gen_prompt_done(g))
        return true;
    return gen_accept(g, id, err);
}

bool eng_gen_advance_candidates(eng_gen *g, const float *logits, const int32_t *ids, int n, eng_err *err)
{
    if (g->done)
        return false;
    if (!gen_prompt_done(g))
        return true;
    return gen_accept(g, eng_sampler_sample_candidates(g->sampler, logits, ids, n), err);
}

/* Takes the sampled id: history, stop ids, detokenized text, stop strings, length, and the
 * chunk it completes. False once the final chunk was handed out. */
static bool gen_accept(eng_gen *g, int32_t id, eng_err *err)
{
    const eng_gen_params *p = g->p;
    g->history[g->n_hist++] = id;
    g->completion++;
    g->n_new_ids++;
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == id) {
            gen_finish(g, ENG_FINISH_STOP);
            return false;
        }
    const char *piece;
    size_t piece_len;
    pp_status st = eng_detok_push(g->detok, id, &piece, &piece_len, err);
    if (st == PP_STATUS_OK && !buf_append(&g->pending, piece, piece_len))
        st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    if (st != PP_STATUS_OK) {
        eng_gen_fail(g, st);
        return false;
    }
    size_t hit = find_stop(g->pending.data, g->pending.len, p->stop, p->n_stop);
    if (hit != (size_t)-1) {
        g->pending.len = hit;
        g->pending.data[hit] = '\0';
        g->by_stop_string = true;
        gen_finish(g, ENG_FINISH_STOP);
        return false;
    }
    if ((int)g->completion >= p->max_tokens || g->n_hist >= (size_t)g->n_ctx) {
        gen_finish(g, ENG_FINISH_LENGTH);
        return false;
    }
    size_t hold = stop_prefix_len(g->pending.data, g->pending.len, p->stop, p->n_stop);
    if (g->pending.len - hold > 0) {
        emit_prefix(&g->pending, g->pending.len - hold, &g->out);
        eng_chunk ch = {g->out.data, g->out.len, g->history + g->n_hist - g->n_new_ids, g->n_new_ids, ENG_FINISH_NONE,
                        g->n_prompt, g->completion};
        g->n_new_ids = 0;
        if (!g->fn(g->user, &ch)) {
            gen_finish(g, ENG_FINISH_CANCELLED);
            return false;
        }
    }
    return true;
}

void eng_gen_free(eng_gen *g)
{
    if (!g)
        return;
    free(g->pending.data);
    free(g->out.data);
    free(g->history);
    eng_detok_free(g->detok);
    eng_sampler_free(g->sampler);
    eng_session_free(g->sess);
    free(g);
}

pp_status eng_generate(eng_model *model, const eng_tokenizer *tok, const int32_t *prompt_ids,
                       size_t n_prompt, const eng_gen_params *p, eng_chunk_fn fn, void *user,
                       eng_err *err)
{
    eng_gen *g = NULL;
    pp_status st = eng_gen_create(model, NULL, tok, prompt_ids, n_prompt, p, fn, user, &g, err);
    if (st != PP_STATUS_OK)
        return st;
    float *logits = malloc((size_t)eng_model_config(model)->n_vocab * sizeof *logits);
    if (!logits) {
        eng_gen_free(g);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
    }
    /* greedy: the backend picks the token; sampling with few enough candidates: the backend
     * picks those (eng_gen_candidates_k); either way no logits row crosses to the host */
    int pick_vocab = eng_gen_pick_vocab(g), cand_vocab = 0, cand_k = eng_gen_candidates_k(g, &cand_vocab);
    float cand_logits[ENG_TOPK_MAX];
    int32_t cand_ids[ENG_TOPK_MAX];
    for (bool more = true; more;) {
        int32_t id = 0;
        eng_batch_seq one = {.session = g->sess, .logits = pick_vocab || cand_k ? NULL : logits,
                             .token = pick_vocab ? &id : NULL, .token_vocab = pick_vocab ? pick_vocab : cand_vocab,
                             .cand_k = cand_k, .cand_logits = cand_logits, .cand_ids = cand_ids};
        eng_gen_input(g, &one.ids, &one.n_tokens);
        if ((st = eng_forward_batch(&one, 1, err)) != PP_STATUS_OK) {
            eng_gen_fail(g, st);
            break;
        }
        more = pick_vocab ? eng_gen_advance_token(g, id, err)
               : cand_k   ? eng_gen_advance_candidates(g, cand_logits, cand_ids, cand_k, err)
                          : eng_gen_advance(g, logits, err);
    }
    st = g->status;
    free(logits);
    eng_gen_free(g);
    return st;
}
