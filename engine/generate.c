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

pp_status eng_generate(eng_model *model, const eng_tokenizer *tok, const int32_t *prompt_ids,
                       size_t n_prompt, const eng_gen_params *p, eng_chunk_fn fn, void *user,
                       eng_err *err)
{
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
    long long want = (long long)n_prompt + p->max_tokens;
    int n_ctx = (int)(want < limit ? want : limit);

    eng_session *sess = NULL;
    eng_sampler *sampler = NULL;
    eng_detok *detok = NULL;
    float *logits = NULL;
    int32_t *history = NULL;
    text_buf pending = {0}, out = {0};
    size_t n_hist = 0, n_new_ids = 0, completion = 0;
    eng_finish finish = ENG_FINISH_NONE;
    bool by_stop_string = false;

    if ((st = eng_session_create(model, n_ctx, &sess, err)) != PP_STATUS_OK ||
        (st = eng_sampler_create(&p->sampling, c->n_vocab, &sampler, err)) != PP_STATUS_OK ||
        (st = eng_detok_create(tok, &detok, err)) != PP_STATUS_OK)
        goto done;
    logits = malloc((size_t)c->n_vocab * sizeof *logits);
    history = malloc((size_t)n_ctx * sizeof *history);
    if (!logits || !history) {
        st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    memcpy(history, prompt_ids, n_prompt * sizeof *history);
    n_hist = n_prompt;
    size_t step = p->n_batch > 0 ? (size_t)p->n_batch : n_prompt;
    for (size_t off = 0; off < n_prompt; off += step) {
        size_t len = n_prompt - off < step ? n_prompt - off : step;
        if ((st = eng_session_forward(sess, prompt_ids + off, (int)len, logits, false, err)) != PP_STATUS_OK) {
            finish = ENG_FINISH_ERROR;
            goto final;
        }
    }
    int32_t n_text_vocab = eng_tokenizer_n_vocab(tok);
    for (;;) {
        /* Rows past the tokenizer's vocabulary are padding (Qwen pads 151669 ids to 151936):
         * they have no text, so they are never chosen (HF does not mask them). */
        for (int32_t v = n_text_vocab; v < c->n_vocab; v++)
            logits[v] = -INFINITY;
        int32_t id = eng_sampler_sample(sampler, logits, history, n_hist);
        history[n_hist++] = id;
        completion++;
        n_new_ids++;
        bool is_stop_id = false;
        for (int i = 0; i < p->n_stop_ids; i++)
            is_stop_id = is_stop_id || p->stop_ids[i] == id;
        if (is_stop_id) {
            finish = ENG_FINISH_STOP;
            break;
        }
        const char *piece;
        size_t piece_len;
        if ((st = eng_detok_push(detok, id, &piece, &piece_len, err)) != PP_STATUS_OK) {
            finish = ENG_FINISH_ERROR;
            break;
        }
        if (!buf_append(&pending, piece, piece_len)) {
            st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "out of memory");
            finish = ENG_FINISH_ERROR;
            break;
        }
        size_t hit = find_stop(pending.data, pending.len, p->stop, p->n_stop);
        if (hit != (size_t)-1) {
            pending.len = hit;
            pending.data[hit] = '\0';
            finish = ENG_FINISH_STOP;
            by_stop_string = true;
            break;
        }
        if ((int)completion >= p->max_tokens || n_hist >= (size_t)n_ctx) {
            finish = ENG_FINISH_LENGTH;
            break;
        }
        size_t hold = stop_prefix_len(pending.data, pending.len, p->stop, p->n_stop);
        if (pending.len - hold > 0) {
            emit_prefix(&pending, pending.len - hold, &out);
            eng_chunk ch = {out.data, out.len, history + n_hist - n_new_ids, n_new_ids, ENG_FINISH_NONE,
                            n_prompt, completion};
            n_new_ids = 0;
            if (!fn(user, &ch)) {
                finish = ENG_FINISH_CANCELLED;
                break;
            }
        }
        if ((st = eng_session_forward(sess, &id, 1, logits, false, err)) != PP_STATUS_OK) {
            finish = ENG_FINISH_ERROR;
            break;
        }
    }
final:
    if ((finish == ENG_FINISH_LENGTH || finish == ENG_FINISH_STOP) && !by_stop_string) {
        /* the held bytes of an unfinished character, then a last look for stop strings */
        const char *tail;
        size_t tail_len;
        eng_detok_flush(detok, &tail, &tail_len);
        buf_append(&pending, tail, tail_len);
        size_t hit = find_stop(pending.data, pending.len, p->stop, p->n_stop);
        if (hit != (size_t)-1) {
            pending.len = hit;
            pending.data[hit] = '\0';
            finish = ENG_FINISH_STOP;
        }
    }
    {
        if (finish == ENG_FINISH_ERROR || finish == ENG_FINISH_CANCELLED)
            pending.len = 0; /* nothing more is handed out */
        emit_prefix(&pending, pending.len, &out);
        eng_chunk ch = {out.data ? out.data : "", out.len, history + n_hist - n_new_ids, n_new_ids, finish,
                        n_prompt, completion};
        fn(user, &ch);
    }
done:
    free(pending.data);
    free(out.data);
    free(logits);
    free(history);
    eng_detok_free(detok);
    eng_sampler_free(sampler);
    eng_session_free(sess);
    return st;
}
