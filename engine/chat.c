/* chat.c: the Kimi K2, Qwen3-Coder and Phi-4 chat formats, rendered natively.
 *
 * Invariant: for every input that the official template renders under transformers'
 * apply_chat_template (jinja2 sandbox, trim_blocks + lstrip_blocks, tojson = json.dumps with
 * ensure_ascii=False), the bytes written here are the bytes Jinja writes. That takes three
 * emulations of Python, each in one place below:
 *   json_dumps()   json.dumps: ", " / ": " separators, key order kept, non-ASCII raw, floats
 *                  as float.__repr__ (NaN / Infinity spelled as json.dumps spells them);
 *   py_str()       Jinja's `| string`, `~` and `{{ x }}`: str(x), so True / None / 1e-05 and
 *                  containers as repr ({'a': [1, 'b']}, quotes chosen and escaped as repr does);
 *   py_strip()     Jinja's `| trim`: str.strip(), which strips Unicode whitespace.
 * Inputs a template would fail on (or render into nonsense) are rejected with a message naming
 * the message / tool at fault; a few the templates cannot render at all are accepted with the
 * meaning the OpenAI convention gives them (see "Where this departs from the templates").
 *
 * Where this departs from the templates:
 *   - roles other than system / user / assistant / tool are rejected (Kimi's template drops the
 *     header and keeps the content; Qwen's renders any role);
 *   - content must be present on every message except an assistant one carrying tool_calls
 *     (there it may be absent or null), and must be a string (Kimi: or a list of parts);
 *   - tool_calls arguments given as a JSON string are parsed first, as vLLM does before
 *     rendering (the Qwen template's `| items` fails on a string); "" means no arguments;
 *   - Qwen: a tool without "parameters" renders as one with "parameters": null (Jinja fails);
 *   - integers beyond 64 bits (json-c saturates them) are rejected.
 * Unicode data (repr's isprintable) comes from utf8proc; Python gets it from its own tables,
 * so characters assigned after utf8proc's Unicode version may be escaped differently.
 */
#include "chat.h"

#include <inttypes.h>
#include <json.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Nesting limit handed to json-c's tokener: messages -> message -> tool_calls -> call ->
 * function -> arguments leaves 58 levels for argument values, far beyond any real schema; it
 * also bounds the recursion of the serialisers below. */
#define CHAT_MAX_DEPTH 64

/* ---- growable string buffer ------------------------------------------------------------------
 * Appends never fail visibly: an allocation failure sets `oom`, later appends do nothing, and
 * the caller turns `oom` into PP_STATUS_OUT_OF_MEMORY once at the end. */

typedef struct sbuf {
    char *data; /* NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (n > SIZE_MAX - 1 - b->len) {
        b->oom = true;
        return;
    }
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = realloc(b->data, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_putc(sbuf *b, char c)
{
    sb_put(b, &c, 1);
}

static void sb_free(sbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- json-c access ------------------------------------------------------------------------- */

/* The member `key` of object `o`: true when present (*v may then be NULL, a JSON null). */
static bool member(json_object *o, const char *key, json_object **v)
{
    *v = NULL;
    return json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, v);
}

static bool is_string(json_object *v)
{
    return json_object_is_type(v, json_type_string);
}

static const char *str_of(json_object *v, size_t *n)
{
    int len = json_object_get_string_len(v);
    *n = len > 0 ? (size_t)len : 0;
    return json_object_get_string(v);
}

/* Parses `text` (n bytes) strictly into *obj (NULL for a JSON null); only whitespace may follow
 * the value. On failure returns false and writes json-c's reason and the byte offset into why. */
static bool parse_json(const char *text, size_t n, json_object **obj, char *why, size_t why_size)
{
    *obj = NULL;
    if (n > INT_MAX) {
        snprintf(why, why_size, "JSON text of %zu bytes is too large", n);
        return false;
    }
    struct json_tokener *tok = json_tokener_new_ex(CHAT_MAX_DEPTH);
    if (!tok) {
        snprintf(why, why_size, "out of memory");
        return false;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *v = json_tokener_parse_ex(tok, text, (int)n);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (jerr == json_tokener_continue) {
        /* A top-level number or literal needs a terminator; a NUL is one. */
        v = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
        end = n;
    }
    json_tokener_free(tok);
    if (jerr != json_tokener_success) {
        if (jerr == json_tokener_continue || n == 0)
            snprintf(why, why_size, "truncated JSON (%zu bytes)", n);
        else
            snprintf(why, why_size, "malformed JSON at byte %zu: %s", end,
                     json_tokener_error_desc(jerr));
        json_object_put(v);
        return false;
    }
    for (size_t i = end; i < n; i++) {
        char c = text[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            snprintf(why, why_size, "malformed JSON: unexpected data after the value at byte %zu",
                     i);
            json_object_put(v);
            return false;
        }
    }
    *obj = v;
    return true;
}

/* json-c saturates integers outside [INT64_MIN, UINT64_MAX]; Python keeps them exact. Values
 * at the saturation points are therefore refused rather than printed wrong. */
static bool numbers_exact(json_object *v, int depth)
{
    if (depth > CHAT_MAX_DEPTH + 1)
        return false;
    switch (json_object_get_type(v)) {
    case json_type_int:
        return json_object_get_int64(v) != INT64_MIN && json_object_get_uint64(v) != UINT64_MAX;
    case json_type_array: {
        size_t n = json_object_array_length(v);
        for (size_t i = 0; i < n; i++)
            if (!numbers_exact(json_object_array_get_idx(v, i), depth + 1))
                return false;
        return true;
    }
    case json_type_object: {
        struct json_object_iterator it = json_object_iter_begin(v);
        struct json_object_iterator end = json_object_iter_end(v);
        for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
            if (!numbers_exact(json_object_iter_peek_value(&it), depth + 1))
                return false;
        return true;
    }
    default:
        return true;
    }
}

/* ---- Python number formatting -------------------------------------------------------------- */

/* Shortest decimal digits of x (finite, > 0) that read back as x, the closest to x among those
 * (what float.__repr__ prints, David Gay's mode 0): digits without trailing zeros, x ~=
 * 0.DIGITS * 10^decpt. Tries each precision with the correctly rounded %e value and, when that
 * misses (the round-trip interval is lopsided at powers of two), its neighbour across x. */
static void shortest_digits(double x, char digits[20], int *n_digits, int *decpt)
{
    char buf[48];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*e", prec - 1, x);
        uint64_t mant = 0;
        int exp10 = 0;
        const char *p = buf;
        for (; *p && *p != 'e'; p++)
            if (*p >= '0' && *p <= '9')
                mant = mant * 10 + (uint64_t)(*p - '0');
        if (*p == 'e')
            exp10 = atoi(p + 1);
        double back = strtod(buf, NULL);
        if (back != x) {
            /* The neighbour one unit in the last digit towards x. */
            uint64_t pow_lo = 1;
            for (int i = 1; i < prec; i++)
                pow_lo *= 10;
            if (back < x) {
                mant++;
                if (mant == pow_lo * 10) {
                    mant = pow_lo;
                    exp10++;
                }
            } else {
                mant--;
                if (mant < pow_lo) {
                    mant = pow_lo * 10 - 1;
                    exp10--;
                }
            }
            snprintf(buf, sizeof buf, "%" PRIu64 "e%d", mant, exp10 - (prec - 1));
            if (strtod(buf, NULL) != x)
                continue;
        }
        int n = snprintf(digits, 20, "%" PRIu64, mant);
        while (n > 1 && digits[n - 1] == '0')
            digits[--n] = '\0';
        *n_digits = n;
        *decpt = exp10 + 1;
        return;
    }
    /* Unreachable: 17 significant digits always round-trip. */
    snprintf(digits, 20, "0");
    *n_digits = 1;
    *decpt = 1;
}

/* float.__repr__ (json = false) or json.dumps' float (json = true) of x. */
static void put_float(sbuf *b, double x, bool json)
{
    if (isnan(x)) {
        sb_puts(b, json ? "NaN" : "nan");
        return;
    }
    if (isinf(x)) {
        sb_puts(b, x < 0 ? (json ? "-Infinity" : "-inf") : (json ? "Infinity" : "inf"));
        return;
    }
    if (x == 0) {
        sb_puts(b, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    if (x < 0)
        sb_putc(b, '-');
    char digits[20];
    int n, decpt;
    shortest_digits(fabs(x), digits, &n, &decpt);
    if (decpt <= -4 || decpt > 16) { /* Python's repr switches to an exponent here */
        sb_putc(b, digits[0]);
        if (n > 1) {
            sb_putc(b, '.');
            sb_put(b, digits + 1, (size_t)(n - 1));
        }
        char e[16];
        int exp10 = decpt - 1;
        snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        sb_puts(b, e);
    } else if (decpt <= 0) {
        sb_puts(b, "0.");
        for (int i = 0; i < -decpt; i++)
            sb_putc(b, '0');
        sb_put(b, digits, (size_t)n);
    } else if (decpt >= n) {
        sb_put(b, digits, (size_t)n);
        for (int i = n; i < decpt; i++)
            sb_putc(b, '0');
        sb_puts(b, ".0");
    } else {
        sb_put(b, digits, (size_t)decpt);
        sb_putc(b, '.');
        sb_put(b, digits + decpt, (size_t)(n - decpt));
    }
}

/* int.__repr__ of a json-c integer (within 64 bits; numbers_exact() refused the rest). */
static void put_int(sbuf *b, json_object *v)
{
    char buf[32];
    int64_t i = json_object_get_int64(v);
    if (i == INT64_MAX)
        snprintf(buf, sizeof buf, "%" PRIu64, json_object_get_uint64(v));
    else
        snprintf(buf, sizeof buf, "%" PRId64, i);
    sb_puts(b, buf);
}

/* ---- json.dumps ---------------------------------------------------------------------------- */

/* A JSON string literal as json.dumps(ensure_ascii=False) writes it. */
static void json_put_string(sbuf *b, const char *s, size_t n)
{
    sb_putc(b, '"');
    size_t run = 0; /* bytes copied verbatim in one go */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char hex[8];
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                snprintf(hex, sizeof hex, "\\u%04x", c);
                esc = hex;
            }
        }
        if (!esc)
            continue;
        sb_put(b, s + run, i - run);
        sb_puts(b, esc);
        run = i + 1;
    }
    sb_put(b, s + run, n - run);
    sb_putc(b, '"');
}

/* ---- Python str() / repr() ----------------------------------------------------------------- */

/* str.isprintable() for one non-ASCII code point: everything but the Other and Separator
 * categories (Cc Cf Cs Co Cn Zl Zp Zs). */
static bool py_isprintable(int32_t cp)
{
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
    }
}

/* str.isspace(): bidirectional class WS, B or S, or category Zs (a fixed list of 29). */
static bool py_isspace(int32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 ||
           cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* The code point at s[0..n) and its byte length; an invalid byte counts as a one-byte code
 * point -1 (json-c validated the UTF-8, so this only guards against surprises). */
static int32_t utf8_next(const char *s, size_t n, size_t *adv)
{
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s,
                                          (utf8proc_ssize_t)(n < 4 ? n : 4), &cp);
    if (k <= 0) {
        *adv = 1;
        return -1;
    }
    *adv = (size_t)k;
    return cp;
}

/* repr() of a str: single quotes unless the text holds ' and no ", escapes as CPython's
 * unicode_repr writes them. */
static void py_repr_string(sbuf *b, const char *s, size_t n)
{
    char quote = (memchr(s, '\'', n) && !memchr(s, '"', n)) ? '"' : '\'';
    sb_putc(b, quote);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        char esc[16];
        if (c < 0x80) {
            i++;
            if (c == (unsigned char)quote || c == '\\') {
                sb_putc(b, '\\');
                sb_putc(b, (char)c);
            } else if (c == '\t') {
                sb_puts(b, "\\t");
            } else if (c == '\n') {
                sb_puts(b, "\\n");
            } else if (c == '\r') {
                sb_puts(b, "\\r");
            } else if (c < 0x20 || c == 0x7f) {
                snprintf(esc, sizeof esc, "\\x%02x", c);
                sb_puts(b, esc);
            } else {
                sb_putc(b, (char)c);
            }
            continue;
        }
        size_t k;
        int32_t cp = utf8_next(s + i, n - i, &k);
        if (cp < 0 || py_isprintable(cp)) {
            sb_put(b, s + i, k);
        } else {
            if (cp <= 0xff)
                snprintf(esc, sizeof esc, "\\x%02" PRIx32, (uint32_t)cp);
            else if (cp <= 0xffff)
                snprintf(esc, sizeof esc, "\\u%04" PRIx32, (uint32_t)cp);
            else
                snprintf(esc, sizeof esc, "\\U%08" PRIx32, (uint32_t)cp);
            sb_puts(b, esc);
        }
        i += k;
    }
    sb_putc(b, quote);
}

/* A JSON value written as json.dumps(ensure_ascii=False) writes it (json) or as Python's repr()
 * writes the decoded value (!json: None/True/False, repr-quoted strings, floats as repr). */
static void dump_value(sbuf *b, json_object *v, bool json)
{
    switch (json_object_get_type(v)) {
    case json_type_null: sb_puts(b, json ? "null" : "None"); break;
    case json_type_boolean:
        if (json)
            sb_puts(b, json_object_get_boolean(v) ? "true" : "false");
        else
            sb_puts(b, json_object_get_boolean(v) ? "True" : "False");
        break;
    case json_type_int: put_int(b, v); break;
    case json_type_double: put_float(b, json_object_get_double(v), json); break;
    case json_type_string: {
        size_t n;
        const char *s = str_of(v, &n);
        if (json)
            json_put_string(b, s, n);
        else
            py_repr_string(b, s, n);
        break;
    }
    case json_type_array: {
        size_t n = json_object_array_length(v);
        sb_putc(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                sb_puts(b, ", ");
            dump_value(b, json_object_array_get_idx(v, i), json);
        }
        sb_putc(b, ']');
        break;
    }
    case json_type_object: {
        struct json_object_iterator it = json_object_iter_begin(v);
        struct json_object_iterator end = json_object_iter_end(v);
        sb_putc(b, '{');
        for (bool first = true; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
            if (!first)
                sb_puts(b, ", ");
            first = false;
            const char *k = json_object_iter_peek_name(&it);
            if (json)
                json_put_string(b, k, strlen(k));
            else
                py_repr_string(b, k, strlen(k));
            sb_puts(b, ": ");
            dump_value(b, json_object_iter_peek_value(&it), json);
        }
        sb_putc(b, '}');
        break;
    }
    }
}

static void json_dumps(sbuf *b, json_object *v) { dump_value(b, v, true); }

/* repr(): the form values take inside a list or dict printed by str(). */
static void py_repr(sbuf *b, json_object *v) { dump_value(b, v, false); }

/* str(): Jinja's `| string`, `~` and `{{ value }}` (a str is itself, anything else its repr). */
static void py_str(sbuf *b, json_object *v)
{
    if (is_string(v)) {
        size_t n;
        const char *s = str_of(v, &n);
        sb_put(b, s, n);
    } else {
        py_repr(b, v);
    }
}

/* str.strip() of s[0..n): the [*start, *end) range left once Unicode whitespace is cut off. */
static void py_strip(const char *s, size_t n, size_t *start, size_t *end)
{
    size_t i = 0, first = n, last = n;
    while (i < n) {
        size_t k;
        int32_t cp = utf8_next(s + i, n - i, &k);
        if (cp < 0 || !py_isspace(cp)) {
            if (first == n)
                first = i;
            last = i + k;
        }
        i += k;
    }
    *start = first;
    *end = first == n ? n : last;
}

/* `value | trim` (value present): str(value).strip(). */
static void put_trimmed(sbuf *b, json_object *v)
{
    sbuf tmp = {0};
    const char *s;
    size_t n;
    if (is_string(v)) {
        s = str_of(v, &n);
    } else {
        py_str(&tmp, v);
        if (tmp.oom)
            b->oom = true;
        s = tmp.data ? tmp.data : "";
        n = tmp.len;
    }
    size_t start, end;
    py_strip(s, n, &start, &end);
    sb_put(b, s + start, end - start);
    sb_free(&tmp);
}

/* ---- message validation -------------------------------------------------------------------- */

typedef enum chat_role { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL } chat_role;

static const char *const role_names[] = {"system", "user", "assistant", "tool"};

typedef struct chat_msg {
    chat_role role;
    json_object *content;    /* NULL when absent or null (then tool_calls is non-empty) */
    json_object *tool_calls; /* a non-empty array, or NULL */
} chat_msg;

/* The function object of a tool call ({"function": {...}} or the call itself). */
static json_object *call_function(json_object *call)
{
    json_object *fn;
    return member(call, "function", &fn) ? fn : call;
}

/* The arguments of a call as an object: *owned is set when it was parsed from a JSON string and
 * must be released by the caller. NULL with *absent when the call has none; NULL without it on
 * an error, explained in why. */
static json_object *call_arguments(json_object *fn, bool *owned, bool *absent, char *why,
                                   size_t why_size)
{
    json_object *args;
    *owned = false;
    *absent = false;
    if (!member(fn, "arguments", &args)) {
        *absent = true;
        return NULL;
    }
    if (json_object_is_type(args, json_type_object))
        return args;
    if (!is_string(args)) {
        snprintf(why, why_size, "arguments must be an object or a JSON string, not %s",
                 json_type_to_name(json_object_get_type(args)));
        return NULL;
    }
    size_t n;
    const char *s = str_of(args, &n);
    size_t start, end;
    py_strip(s, n, &start, &end);
    if (start == end) {
        *absent = true;
        return NULL;
    }
    char inner[256];
    json_object *parsed;
    if (!parse_json(s, n, &parsed, inner, sizeof inner)) {
        snprintf(why, why_size, "arguments string: %s", inner);
        return NULL;
    }
    if (!json_object_is_type(parsed, json_type_object)) {
        snprintf(why, why_size, "arguments string must hold a JSON object, not %s",
                 json_type_to_name(json_object_get_type(parsed)));
        json_object_put(parsed);
        return NULL;
    }
    if (!numbers_exact(parsed, 0)) {
        snprintf(why, why_size, "arguments string: an integer lies outside the 64-bit range");
        json_object_put(parsed);
        return NULL;
    }
    *owned = true;
    return parsed;
}

static pp_status check_tool_calls(json_object *calls, size_t idx, eng_err *err)
{
    if (!json_object_is_type(calls, json_type_array))
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages[%zu].tool_calls: malformed: must be an array, not %s",
                        idx, json_type_to_name(json_object_get_type(calls)));
    size_t n = json_object_array_length(calls);
    for (size_t j = 0; j < n; j++) {
        json_object *call = json_object_array_get_idx(calls, j);
        if (!json_object_is_type(call, json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: messages[%zu].tool_calls[%zu]: malformed: must be an object",
                            idx, j);
        json_object *fn = call_function(call), *name;
        if (!json_object_is_type(fn, json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: messages[%zu].tool_calls[%zu].function: malformed: must be "
                            "an object", idx, j);
        if (!member(fn, "name", &name) || !is_string(name))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: messages[%zu].tool_calls[%zu]: malformed: function name "
                            "missing or not a string", idx, j);
        bool owned, absent;
        char why[512];
        json_object *args = call_arguments(fn, &owned, &absent, why, sizeof why);
        if (!args && !absent)
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: messages[%zu].tool_calls[%zu]: malformed: %s", idx, j, why);
        if (owned)
            json_object_put(args);
    }
    return PP_STATUS_OK;
}

/* Checks message idx and fills *m. allow_parts: content may be a list of parts (Kimi). */
static pp_status check_message(json_object *obj, size_t idx, bool allow_parts, chat_msg *m,
                               eng_err *err)
{
    if (!json_object_is_type(obj, json_type_object))
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages[%zu]: must be an object, not %s", idx,
                        json_type_to_name(json_object_get_type(obj)));
    json_object *role, *content, *calls;
    if (!member(obj, "role", &role) || !is_string(role))
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages[%zu]: missing role (or not a string)", idx);
    const char *r = json_object_get_string(role);
    int found = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(r, role_names[i]) == 0 && (size_t)json_object_get_string_len(role) == strlen(r))
            found = i;
    if (found < 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages[%zu]: unknown role \"%.64s\" (expected system, user, "
                        "assistant or tool)", idx, r);
    m->role = (chat_role)found;
    m->tool_calls = NULL;
    if (member(obj, "tool_calls", &calls) && calls) {
        pp_status st = check_tool_calls(calls, idx, err);
        if (st != PP_STATUS_OK)
            return st;
        if (json_object_array_length(calls) > 0)
            m->tool_calls = calls;
    }
    bool has = member(obj, "content", &content);
    m->content = content;
    if (!has || !content) {
        if (m->role == ROLE_ASSISTANT && m->tool_calls)
            return PP_STATUS_OK;
        return eng_fail(err, PP_STATUS_INVALID_ARG, "chat: messages[%zu] (%s): missing content%s",
                        idx, role_names[m->role], has ? " (null)" : "");
    }
    if (is_string(content))
        return PP_STATUS_OK;
    if (!allow_parts || !json_object_is_type(content, json_type_array))
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages[%zu] (%s): content must be a string%s, not %s", idx,
                        role_names[m->role], allow_parts ? " or a list of parts" : "",
                        json_type_to_name(json_object_get_type(content)));
    size_t n = json_object_array_length(content);
    for (size_t j = 0; j < n; j++)
        if (!json_object_is_type(json_object_array_get_idx(content, j), json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: messages[%zu].content[%zu]: a content part must be an object",
                            idx, j);
    return PP_STATUS_OK;
}

static pp_status check_tools(json_object *tools, eng_err *err)
{
    if (!json_object_is_type(tools, json_type_array))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "chat: tools must be a JSON array, not %s",
                        json_type_to_name(json_object_get_type(tools)));
    size_t n = json_object_array_length(tools);
    for (size_t i = 0; i < n; i++) {
        json_object *tool = json_object_array_get_idx(tools, i), *fn, *params, *props;
        if (!json_object_is_type(tool, json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG, "chat: tools[%zu]: must be an object", i);
        if (member(tool, "function", &fn) && !json_object_is_type(fn, json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: tools[%zu].function: must be an object", i);
        if (!fn)
            fn = tool;
        if (member(fn, "parameters", &params) && member(params, "properties", &props) && props &&
            !json_object_is_type(props, json_type_object))
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "chat: tools[%zu]: parameters.properties must be an object", i);
    }
    return PP_STATUS_OK;
}

/* ---- Kimi K2 (Kimi-K2-Instruct's template) ------------------------------------------------- */

static void render_kimi(sbuf *b, const chat_msg *msgs, size_t n, json_object *tools, bool agp)
{
    if (tools && json_object_array_length(tools) > 0) {
        sb_puts(b, "<|im_system|>tool_declare<|im_middle|>");
        json_dumps(b, tools);
        sb_puts(b, "<|im_end|>");
    }
    for (size_t i = 0; i < n; i++) {
        const chat_msg *m = &msgs[i];
        if (i == 0 && m->role != ROLE_SYSTEM)
            sb_puts(b, "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>");
        switch (m->role) {
        case ROLE_SYSTEM: sb_puts(b, "<|im_system|>system<|im_middle|>"); break;
        case ROLE_USER: sb_puts(b, "<|im_user|>user<|im_middle|>"); break;
        case ROLE_ASSISTANT: sb_puts(b, "<|im_assistant|>assistant<|im_middle|>"); break;
        case ROLE_TOOL: sb_puts(b, "<|im_system|>tool<|im_middle|>"); break;
        }
        if (is_string(m->content)) {
            py_str(b, m->content);
        } else if (m->content) { /* parts: text, or an image placeholder */
            size_t np = json_object_array_length(m->content);
            for (size_t j = 0; j < np; j++) {
                json_object *part = json_object_array_get_idx(m->content, j), *v;
                bool image = (member(part, "type", &v) && is_string(v) &&
                              strcmp(json_object_get_string(v), "image") == 0 &&
                              json_object_get_string_len(v) == 5) ||
                             member(part, "image", &v) || member(part, "image_url", &v);
                if (image)
                    sb_puts(b, "<|media_start|>image<|media_content|><|media_pad|><|media_end|>");
                else if (member(part, "text", &v))
                    py_str(b, v);
            }
        }
        sb_puts(b, "<|im_end|>");
    }
    if (agp)
        sb_puts(b, "<|im_assistant|>assistant<|im_middle|>");
}

/* ---- Qwen3-Coder --------------------------------------------------------------------------- */

static const char qwen_default_system[] =
    "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks.";

static const char qwen_tool_reminder[] =
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: an inner <function=...>"
    "</function> block must be nested within <tool_call></tool_call> XML tags\n- Required "
    "parameters MUST be specified\n- You may provide optional reasoning for your function call "
    "in natural language BEFORE the function call, but NOT after\n- If there is no function "
    "call available, answer the question like normal with your current knowledge and do not "
    "tell the user about function calls\n</IMPORTANT>";

/* The template's render_item_list(v, 'required') for a present value: strings, lists and dicts
 * (Jinja's `is sequence`) list their characters, items or keys, strings in backquotes. */
static void qwen_item_list(sbuf *b, json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_string: {
        size_t n;
        const char *s = str_of(v, &n);
        if (n == 0)
            return;
        sb_puts(b, "\n<required>[");
        for (size_t i = 0; i < n;) {
            size_t k;
            utf8_next(s + i, n - i, &k);
            if (i)
                sb_puts(b, ", ");
            sb_putc(b, '`');
            sb_put(b, s + i, k);
            sb_putc(b, '`');
            i += k;
        }
        sb_puts(b, "]</required>");
        return;
    }
    case json_type_array: {
        size_t n = json_object_array_length(v);
        if (n == 0)
            return;
        sb_puts(b, "\n<required>[");
        for (size_t i = 0; i < n; i++) {
            json_object *item = json_object_array_get_idx(v, i);
            if (i)
                sb_puts(b, ", ");
            if (is_string(item)) {
                sb_putc(b, '`');
                py_str(b, item);
                sb_putc(b, '`');
            } else {
                py_str(b, item);
            }
        }
        sb_puts(b, "]</required>");
        return;
    }
    case json_type_object: {
        if (json_object_object_length(v) == 0)
            return;
        struct json_object_iterator it = json_object_iter_begin(v);
        struct json_object_iterator end = json_object_iter_end(v);
        sb_puts(b, "\n<required>[");
        for (bool first = true; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
            if (!first)
                sb_puts(b, ", ");
            first = false;
            sb_putc(b, '`');
            sb_puts(b, json_object_iter_peek_name(&it));
            sb_putc(b, '`');
        }
        sb_puts(b, "]</required>");
        return;
    }
    default: return; /* not iterable: nothing */
    }
}

/* One `<parameter>` block: fields of a non-object schema are all undefined to Jinja. */
static void qwen_parameter(sbuf *b, const char *name, json_object *fields)
{
    static const char *const handled[] = {"type", "description", "enum", "required"};
    json_object *v;
    sb_puts(b, "\n<parameter>\n<name>");
    sb_puts(b, name);
    sb_puts(b, "</name>");
    if (json_object_is_type(fields, json_type_object)) {
        if (member(fields, "type", &v)) {
            sb_puts(b, "\n<type>");
            py_str(b, v);
            sb_puts(b, "</type>");
        }
        if (member(fields, "description", &v)) {
            sb_puts(b, "\n<description>");
            put_trimmed(b, v);
            sb_puts(b, "</description>");
        }
        struct json_object_iterator it = json_object_iter_begin(fields);
        struct json_object_iterator end = json_object_iter_end(fields);
        for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
            const char *key = json_object_iter_peek_name(&it);
            json_object *value = json_object_iter_peek_value(&it);
            bool skip = key[0] == '\0' || !value;
            for (size_t i = 0; i < sizeof handled / sizeof handled[0] && !skip; i++)
                skip = strcmp(key, handled[i]) == 0;
            if (skip)
                continue;
            /* key | replace("-", "_") | replace(" ", "_") | replace("$", "") */
            sbuf tag = {0};
            for (const char *p = key; *p; p++)
                if (*p != '$')
                    sb_putc(&tag, (*p == '-' || *p == ' ') ? '_' : *p);
            const char *t = tag.data ? tag.data : "";
            sb_puts(b, "\n<");
            sb_puts(b, t);
            sb_putc(b, '>');
            if (json_object_is_type(value, json_type_object))
                json_dumps(b, value);
            else
                py_str(b, value);
            sb_puts(b, "</");
            sb_puts(b, t);
            sb_putc(b, '>');
            if (tag.oom)
                b->oom = true;
            sb_free(&tag);
        }
        if (member(fields, "required", &v))
            qwen_item_list(b, v);
    }
    sb_puts(b, "\n</parameter>");
}

static void qwen_tools(sbuf *b, json_object *tools)
{
    sb_puts(b, "\n\nYou have access to the following functions:\n\n<tools>");
    size_t n = json_object_array_length(tools);
    for (size_t i = 0; i < n; i++) {
        json_object *tool = json_object_array_get_idx(tools, i), *fn, *v, *params = NULL;
        if (!member(tool, "function", &fn))
            fn = tool;
        sb_puts(b, "\n<function>\n<name>");
        if (member(fn, "name", &v))
            py_str(b, v);
        sb_puts(b, "</name>\n<description>");
        if (member(fn, "description", &v))
            put_trimmed(b, v);
        sb_puts(b, "</description>\n<parameters>");
        member(fn, "parameters", &params);
        if (member(params, "properties", &v) && v) {
            struct json_object_iterator it = json_object_iter_begin(v);
            struct json_object_iterator end = json_object_iter_end(v);
            for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
                qwen_parameter(b, json_object_iter_peek_name(&it),
                               json_object_iter_peek_value(&it));
        }
        if (member(params, "required", &v))
            qwen_item_list(b, v);
        sb_puts(b, "\n</parameters>");
        if (member(fn, "return", &v)) {
            sb_puts(b, "\n<return>");
            if (json_object_is_type(v, json_type_object))
                json_dumps(b, v);
            else
                py_str(b, v);
            sb_puts(b, "</return>");
        }
        sb_puts(b, "\n</function>");
    }
    sb_puts(b, "\n</tools>");
    sb_puts(b, qwen_tool_reminder);
}

static pp_status qwen_tool_calls(sbuf *b, const chat_msg *m, eng_err *err)
{
    sb_puts(b, "<|im_start|>assistant");
    if (is_string(m->content)) {
        size_t n, start, end;
        const char *s = str_of(m->content, &n);
        py_strip(s, n, &start, &end);
        if (end > start) {
            sb_putc(b, '\n');
            sb_put(b, s + start, end - start);
            sb_putc(b, '\n');
        }
    }
    size_t n = json_object_array_length(m->tool_calls);
    for (size_t j = 0; j < n; j++) {
        json_object *fn = call_function(json_object_array_get_idx(m->tool_calls, j)), *name;
        member(fn, "name", &name);
        sb_puts(b, "\n<tool_call>\n<function=");
        py_str(b, name);
        sb_puts(b, ">\n");
        bool owned, absent;
        char why[512];
        json_object *args = call_arguments(fn, &owned, &absent, why, sizeof why);
        if (!args && !absent) /* check_tool_calls() parsed it already: only memory fails here */
            return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "chat: tool call arguments: %s", why);
        if (args) {
            struct json_object_iterator it = json_object_iter_begin(args);
            struct json_object_iterator end = json_object_iter_end(args);
            for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
                sb_puts(b, "<parameter=");
                sb_puts(b, json_object_iter_peek_name(&it));
                sb_puts(b, ">\n");
                py_str(b, json_object_iter_peek_value(&it));
                sb_puts(b, "\n</parameter>\n");
            }
        }
        if (owned)
            json_object_put(args);
        sb_puts(b, "</function>\n</tool_call>");
    }
    sb_puts(b, "<|im_end|>\n");
    return PP_STATUS_OK;
}

static pp_status render_qwen(sbuf *b, const chat_msg *msgs, size_t n, json_object *tools,
                             bool agp, eng_err *err)
{
    if (n == 0) /* the template reads messages[0]["role"] */
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "chat: messages is empty (the Qwen3-Coder template needs one)");
    bool has_tools = tools && json_object_array_length(tools) > 0;
    size_t first = 0;
    if (msgs[0].role == ROLE_SYSTEM) {
        sb_puts(b, "<|im_start|>system\n");
        py_str(b, msgs[0].content);
        first = 1;
    } else if (has_tools) {
        sb_puts(b, "<|im_start|>system\n");
        sb_puts(b, qwen_default_system);
    }
    if (has_tools)
        qwen_tools(b, tools);
    if (first == 1 || has_tools)
        sb_puts(b, "<|im_end|>\n");
    for (size_t i = first; i < n; i++) {
        const chat_msg *m = &msgs[i];
        if (m->role == ROLE_ASSISTANT && m->tool_calls) {
            pp_status st = qwen_tool_calls(b, m, err);
            if (st != PP_STATUS_OK)
                return st;
        } else if (m->role == ROLE_TOOL) {
            /* Consecutive tool results share one user turn; loop.previtem is undefined on the
             * first iteration, so a leading tool result opens none. */
            if (i > first && msgs[i - 1].role != ROLE_TOOL)
                sb_puts(b, "<|im_start|>user\n");
            sb_puts(b, "<tool_response>\n");
            py_str(b, m->content);
            sb_puts(b, "\n</tool_response>\n");
            if (i + 1 == n || msgs[i + 1].role != ROLE_TOOL)
                sb_puts(b, "<|im_end|>\n");
        } else {
            sb_puts(b, "<|im_start|>");
            sb_puts(b, role_names[m->role]);
            sb_putc(b, '\n');
            py_str(b, m->content);
            sb_puts(b, "<|im_end|>\n");
        }
    }
    if (agp)
        sb_puts(b, "<|im_start|>assistant\n");
    return PP_STATUS_OK;
}

/* ---- Phi-4 --------------------------------------------------------------------------------- */

/* Phi-4-reasoning's system prompt (model card; MODELS.md 3.6). Its chat template injects it as a
 * system turn when the conversation does not start with one (as copies of the template in public
 * code do; the official tokenizer_config.json could not be read here to confirm). */
static const char phi4_default_system[] =
    "You are Phi, a language model trained by Microsoft to help users. Your role as an "
    "assistant involves thoroughly exploring questions through a systematic thinking process "
    "before providing the final precise and accurate solutions. This requires engaging in a "
    "comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, "
    "backtracing, and iteration to develop well-considered thinking process. Please structure "
    "your response into two main sections: Thought and Solution using the specified format: "
    "<think> {Thought section} </think> {Solution section}. In the Thought section, detail "
    "your reasoning process in steps. Each step should include detailed considerations such "
    "as analysing questions, summarizing relevant findings, brainstorming new ideas, "
    "verifying the accuracy of the current steps, refining any errors, and revisiting "
    "previous steps. In the Solution section, based on various attempts, explorations, and "
    "reflections from the Thought section, systematically present the final solution that you "
    "deem correct. The Solution section should be logical, accurate, and concise and detail "
    "necessary steps needed to reach the conclusion. Now, try to solve the following question "
    "through the above guidelines:";

static void render_phi4(sbuf *b, const chat_msg *msgs, size_t n, bool agp)
{
    if (n == 0 || msgs[0].role != ROLE_SYSTEM) {
        sb_puts(b, "<|im_start|>system<|im_sep|>");
        sb_puts(b, phi4_default_system);
        sb_puts(b, "<|im_end|>");
    }
    for (size_t i = 0; i < n; i++) {
        sb_puts(b, "<|im_start|>");
        sb_puts(b, role_names[msgs[i].role]);
        sb_puts(b, "<|im_sep|>");
        if (msgs[i].content)
            py_str(b, msgs[i].content);
        sb_puts(b, "<|im_end|>");
    }
    if (agp)
        sb_puts(b, "<|im_start|>assistant<|im_sep|>");
}

/* ---- entry points -------------------------------------------------------------------------- */

eng_chat_format eng_chat_format_for(eng_arch arch)
{
    switch (arch) {
    case ENG_ARCH_DEEPSEEK_V3: return ENG_CHAT_KIMI_K2;
    case ENG_ARCH_QWEN3_MOE: return ENG_CHAT_QWEN3_CODER;
    case ENG_ARCH_PHI3: return ENG_CHAT_PHI4;
    }
    return ENG_CHAT_QWEN3_CODER; /* not reached for a valid eng_arch */
}

pp_status eng_chat_render(eng_chat_format fmt, const char *messages_json, const char *tools_json,
                          bool add_generation_prompt, char **out, size_t *len, eng_err *err)
{
    if (out)
        *out = NULL;
    if (len)
        *len = 0;
    if (!out || !len || !messages_json)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "chat: NULL %s",
                        !messages_json ? "messages_json" : "output pointer");
    if (fmt != ENG_CHAT_KIMI_K2 && fmt != ENG_CHAT_QWEN3_CODER && fmt != ENG_CHAT_PHI4)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "chat: unknown chat format %d", (int)fmt);

    pp_status st = PP_STATUS_OK;
    json_object *messages = NULL, *tools = NULL;
    chat_msg *msgs = NULL;
    sbuf b = {0};
    char why[256];

    if (!parse_json(messages_json, strlen(messages_json), &messages, why, sizeof why)) {
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "chat: messages: %s", why);
        goto done;
    }
    if (tools_json) {
        if (!parse_json(tools_json, strlen(tools_json), &tools, why, sizeof why)) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT, "chat: tools: %s", why);
            goto done;
        }
    }
    if (!json_object_is_type(messages, json_type_array)) {
        st = eng_fail(err, PP_STATUS_INVALID_ARG, "chat: messages must be a JSON array, not %s",
                      json_type_to_name(json_object_get_type(messages)));
        goto done;
    }
    if (tools && (st = check_tools(tools, err)) != PP_STATUS_OK)
        goto done;
    if (!numbers_exact(messages, 0) || (tools && !numbers_exact(tools, 0))) {
        st = eng_fail(err, PP_STATUS_INVALID_ARG,
                      "chat: an integer lies outside the 64-bit range (-2^63, 2^64 - 1)");
        goto done;
    }

    size_t n = json_object_array_length(messages);
    if (n > 0) {
        msgs = calloc(n, sizeof *msgs);
        if (!msgs) {
            st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "chat: out of memory (%zu messages)", n);
            goto done;
        }
    }
    for (size_t i = 0; i < n; i++) {
        st = check_message(json_object_array_get_idx(messages, i), i, fmt == ENG_CHAT_KIMI_K2,
                           &msgs[i], err);
        if (st != PP_STATUS_OK)
            goto done;
    }

    switch (fmt) {
    case ENG_CHAT_KIMI_K2: render_kimi(&b, msgs, n, tools, add_generation_prompt); break;
    case ENG_CHAT_QWEN3_CODER:
        st = render_qwen(&b, msgs, n, tools, add_generation_prompt, err);
        break;
    case ENG_CHAT_PHI4: render_phi4(&b, msgs, n, add_generation_prompt); break;
    }
    if (st != PP_STATUS_OK)
        goto done;
    if (!b.oom && !b.data) { /* an empty prompt still gets its own allocation */
        b.data = malloc(1);
        if (b.data)
            b.data[0] = '\0';
        else
            b.oom = true;
    }
    if (b.oom) {
        st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "chat: out of memory rendering the prompt");
        goto done;
    }
    *out = b.data;
    *len = b.len;
    b.data = NULL;

done:
    sb_free(&b);
    free(msgs);
    json_object_put(messages);
    json_object_put(tools);
    return st;
}
