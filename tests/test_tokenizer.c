/* test_tokenizer.c: `test_tokenizer TOKENIZER_DIR` checks eng_tokenizer against the reference
 * encodings in TOKENIZER_DIR/encodings.json and runs robustness checks on text no fixture holds.
 *
 * Per case (when DIR has encodings.json; a model directory without one gets the built-in checks
 * only): encode(text) (special strings as specials) == ids, decode(ids) == decoded, streaming
 * detokenization of ids == decode(ids) with every chunk valid UTF-8, and the round trip
 * decode(encode(text, no specials)) == NFC(text) (tokenizer.json with an NFC normalizer) or text.
 * A model directory's reference.json greedy prompts must encode (no specials) to their prompt_ids.
 * Built-in checks: other scripts, emoji sequences, 100,000-space and 60,000-char runs (timed),
 * special tokens mid-text, the invalid-UTF-8 policy (U+FFFD per maximal subpart), empty text,
 * bad ids, malformed files. Prints each failure; exits 0 when all pass, 1 otherwise, 77 when DIR
 * does not exist (skipped).
 */
#include <json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "tokenizer.h"

/* Generous bound for the long-run checks: they take milliseconds in a release build; ASan/UBSan
 * builds are ~10x slower. Quadratic behaviour on 100,000 characters would take minutes. */
#define LONG_RUN_SECONDS 5.0

static int n_fail;
static int n_check;

static void fail(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s: ", what);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    n_fail++;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static bool valid_utf8(const char *s, size_t n)
{
    utf8proc_int32_t cp;
    size_t i = 0;
    while (i < n) {
        utf8proc_ssize_t l =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0)
            return false;
        i += (size_t)l;
    }
    return true;
}

/* A short printable rendering of text for messages. */
static const char *show(const char *s, size_t n)
{
    static char buf[128];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 8 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, sizeof buf - o, "\\x%02x", c);
    }
    if (o + 8 >= sizeof buf)
        memcpy(buf + o, "...", 4);
    else
        buf[o] = '\0';
    return buf;
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    fprintf(stderr, "    %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 40; i++)
        fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Streams ids through eng_detok and checks the chunks against decode(ids). */
static void check_stream(const eng_tokenizer *tok, const int32_t *ids, size_t n, const char *what)
{
    n_check++;
    eng_err err;
    char *full = NULL;
    size_t full_len = 0;
    if (eng_tokenizer_decode(tok, ids, n, &full, &full_len, &err) != PP_STATUS_OK) {
        fail(what, "decode: %s", err.msg);
        return;
    }
    eng_detok *d = NULL;
    if (eng_detok_create(tok, &d, &err) != PP_STATUS_OK) {
        fail(what, "detok_create: %s", err.msg);
        free(full);
        return;
    }
    char *cat = malloc(full_len + 16);
    size_t cat_len = 0;
    bool ok = cat != NULL;
    for (size_t i = 0; ok && i <= n; i++) {
        const char *chunk;
        size_t len;
        pp_status st = i < n ? eng_detok_push(d, ids[i], &chunk, &len, &err)
                             : eng_detok_flush(d, &chunk, &len);
        if (st != PP_STATUS_OK) {
            fail(what, "detok at %zu: %s", i, err.msg);
            ok = false;
            break;
        }
        if (chunk[len] != '\0') {
            fail(what, "detok chunk %zu is not NUL-terminated", i);
            ok = false;
        }
        if (!valid_utf8(chunk, len)) {
            fail(what, "detok chunk %zu is not valid UTF-8: %s", i, show(chunk, len));
            ok = false;
        }
        if (cat_len + len > full_len) {
            fail(what, "detok emits more than decode (%zu > %zu bytes)", cat_len + len, full_len);
            ok = false;
            break;
        }
        memcpy(cat + cat_len, chunk, len);
        cat_len += len;
    }
    if (ok && (cat_len != full_len || memcmp(cat, full, full_len) != 0))
        fail(what, "streamed text differs from decode: %s", show(cat, cat_len));
    free(cat);
    free(full);
    eng_detok_free(d);
}

/* NFC of s when nfc, else a copy. */
static char *normalize(const char *s, size_t n, bool nfc, size_t *out_n)
{
    if (!nfc || n == 0) {
        char *c = malloc(n + 1);
        memcpy(c, s, n);
        c[n] = '\0';
        *out_n = n;
        return c;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (r < 0) {
        *out_n = 0;
        return NULL;
    }
    *out_n = (size_t)r;
    return (char *)dst;
}

/* decode(encode(s, allow_special=false)) == NFC(s) or s; streaming agrees. Returns the time. */
static double check_round_trip(const eng_tokenizer *tok, bool nfc, const char *s, size_t n,
                               const char *what)
{
    n_check++;
    eng_err err;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    double t0 = now_s();
    if (eng_tokenizer_encode(tok, s, n, false, &ids, &n_ids, &err) != PP_STATUS_OK) {
        fail(what, "encode: %s", err.msg);
        return 0;
    }
    double dt = now_s() - t0;
    char *text = NULL;
    size_t len = 0;
    if (eng_tokenizer_decode(tok, ids, n_ids, &text, &len, &err) != PP_STATUS_OK) {
        fail(what, "decode: %s", err.msg);
        free(ids);
        return dt;
    }
    size_t en;
    char *expect = normalize(s, n, nfc, &en);
    if (!expect || len != en || memcmp(text, expect, en) != 0)
        fail(what, "round trip differs: got %s", show(text, len));
    for (size_t i = 0; i < n_ids; i++)
        if (eng_tokenizer_is_special(tok, ids[i])) {
            fail(what, "special id %d produced with allow_special=false", ids[i]);
            break;
        }
    check_stream(tok, ids, n_ids, what);
    free(expect);
    free(text);
    free(ids);
    return dt;
}

static bool encode_eq(const eng_tokenizer *tok, const char *a, size_t an, const char *b, size_t bn,
                      bool allow_special, const char *what)
{
    n_check++;
    eng_err err;
    int32_t *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    if (eng_tokenizer_encode(tok, a, an, allow_special, &x, &nx, &err) != PP_STATUS_OK ||
        eng_tokenizer_encode(tok, b, bn, allow_special, &y, &ny, &err) != PP_STATUS_OK) {
        fail(what, "encode: %s", err.msg);
        free(x);
        return false;
    }
    bool ok = nx == ny && memcmp(x, y, nx * sizeof *x) == 0;
    if (!ok) {
        fail(what, "encodings differ");
        print_ids("got", x, nx);
        print_ids("expected", y, ny);
    }
    free(x);
    free(y);
    return ok;
}

/* ---- encodings.json -------------------------------------------------------------------------- */

static void check_cases(const eng_tokenizer *tok, const char *dir, bool nfc)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/encodings.json", dir);
    if (access(path, F_OK) != 0) {
        printf("no encodings.json: reference cases skipped, built-in checks only\n");
        return;
    }
    struct json_object *root = json_object_from_file(path);
    struct json_object *cases = NULL;
    if (!root || !json_object_object_get_ex(root, "cases", &cases) ||
        !json_object_is_type(cases, json_type_array)) {
        fail("encodings.json", "%s: cannot read cases", path);
        json_object_put(root);
        return;
    }
    size_t n = json_object_array_length(cases);
    size_t n_ok = 0;
    for (size_t c = 0; c < n; c++) {
        struct json_object *cs = json_object_array_get_idx(cases, c), *jt, *ji, *jd;
        if (!json_object_object_get_ex(cs, "text", &jt) ||
            !json_object_object_get_ex(cs, "ids", &ji) ||
            !json_object_object_get_ex(cs, "decoded", &jd)) {
            fail("encodings.json", "case %zu lacks text/ids/decoded", c);
            continue;
        }
        char what[64];
        snprintf(what, sizeof what, "case %zu", c);
        const char *text = json_object_get_string(jt);
        size_t text_len = (size_t)json_object_get_string_len(jt);
        size_t n_ref = json_object_array_length(ji);
        int32_t *ref = malloc((n_ref + 1) * sizeof *ref);
        for (size_t i = 0; i < n_ref; i++)
            ref[i] = (int32_t)json_object_get_int(json_object_array_get_idx(ji, i));
        int fails_before = n_fail;

        n_check++;
        eng_err err;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (eng_tokenizer_encode(tok, text, text_len, true, &ids, &n_ids, &err) != PP_STATUS_OK) {
            fail(what, "encode: %s", err.msg);
        } else if (n_ids != n_ref || memcmp(ids, ref, n_ref * sizeof *ref) != 0) {
            size_t k = 0;
            while (k < n_ids && k < n_ref && ids[k] == ref[k])
                k++;
            fail(what, "ids differ at %zu for text %s", k, show(text, text_len));
            print_ids("got", ids + k, n_ids - k);
            print_ids("expected", ref + k, n_ref - k);
        }
        free(ids);

        n_check++;
        char *dec = NULL;
        size_t dec_len = 0;
        if (eng_tokenizer_decode(tok, ref, n_ref, &dec, &dec_len, &err) != PP_STATUS_OK) {
            fail(what, "decode: %s", err.msg);
        } else if (dec_len != (size_t)json_object_get_string_len(jd) ||
                   memcmp(dec, json_object_get_string(jd), dec_len) != 0) {
            fail(what, "decode differs: got %s", show(dec, dec_len));
        }
        free(dec);
        check_stream(tok, ref, n_ref, what);
        check_round_trip(tok, nfc, text, text_len, what);
        if (n_fail == fails_before)
            n_ok++;
        free(ref);
    }
    printf("encodings.json: %zu/%zu cases pass\n", n_ok, n);
    json_object_put(root);
}

/* A model directory's reference.json: encode(prompt) without specials == prompt_ids for every
 * greedy case (the token ids the reference model was run on). */
static void check_reference_prompts(const eng_tokenizer *tok, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/reference.json", dir);
    if (access(path, F_OK) != 0)
        return;
    struct json_object *root = json_object_from_file(path), *greedy = NULL;
    if (!root || !json_object_object_get_ex(root, "greedy", &greedy) ||
        !json_object_is_type(greedy, json_type_array)) {
        json_object_put(root);
        return; /* a logits fixture without prompts */
    }
    size_t n = json_object_array_length(greedy), n_ok = 0;
    for (size_t c = 0; c < n; c++) {
        struct json_object *g = json_object_array_get_idx(greedy, c), *jp, *ji;
        char what[64];
        snprintf(what, sizeof what, "reference prompt %zu", c);
        n_check++;
        if (!json_object_object_get_ex(g, "prompt", &jp) ||
            !json_object_object_get_ex(g, "prompt_ids", &ji)) {
            fail(what, "lacks prompt / prompt_ids");
            continue;
        }
        eng_err err;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        if (eng_tokenizer_encode(tok, json_object_get_string(jp),
                                 (size_t)json_object_get_string_len(jp), false, &ids, &n_ids,
                                 &err) != PP_STATUS_OK) {
            fail(what, "encode: %s", err.msg);
            continue;
        }
        bool ok = n_ids == json_object_array_length(ji);
        for (size_t i = 0; ok && i < n_ids; i++)
            ok = ids[i] == (int32_t)json_object_get_int(json_object_array_get_idx(ji, i));
        if (ok)
            n_ok++;
        else
            fail(what, "encode(prompt) != prompt_ids");
        free(ids);
    }
    printf("reference.json: %zu/%zu prompts encode to prompt_ids\n", n_ok, n);
    json_object_put(root);
}

/* ---- built-in robustness checks -------------------------------------------------------------- */

static void check_builtin(const eng_tokenizer *tok, bool nfc)
{
    /* Devanagari with conjuncts; Thai (no spaces between words); Hebrew with niqqud; emoji ZWJ
     * sequences, flags and skin-tone modifiers; NFC-sensitive sequences (decomposed accents,
     * Hangul jamo, a ligature); every kind of whitespace (NBSP, ideographic space, U+180E, NEL);
     * digits of other scripts and other numbers; contractions in other cases and the long s;
     * zero-width characters; an embedded NUL (the last text, 12 bytes). */
    static const char *const texts[] = {
        "नमस्ते दुनिया, यह एक परीक्षण है। क्षत्रिय",
        "สวัสดีชาวโลก นี่คือการทดสอบ ภาษาไทย",
        "שָׁלוֹם עוֹלָם, זֶה מִבְחָן",
        "👩‍👩‍👧‍👦 family, 🇯🇵🇺🇸🇩🇪 flags, 🏳️‍🌈 🧑🏽‍💻 👍🏿",
        "e\xcc\x81 A\xcc\x8a \xe1\x84\x80\xe1\x85\xa1 \xef\xac\x81",
        "tab\t\tnl\n\n\r\ncr\r \xc2\xa0nbsp \xe3\x80\x80ideo \xe1\xa0\x8emvs \xc2\x85nel",
        "mixed 123456789 ١٢٣٤ ⅷ ² ½ 𝟘𝟙 x²+y²",
        "caps I'M YOU'LL 'S 'ſ we've",
        "\xf0\x9f\x98\x80\xf0\x9f\x98\x81 \xe2\x80\x8b\xe2\x80\x8c\xe2\x80\x8d zero widths",
        "embedded\0nul",
    };
    char what[64];
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        snprintf(what, sizeof what, "builtin text %zu", i);
        size_t n = i + 1 == sizeof texts / sizeof texts[0] ? 12 : strlen(texts[i]);
        check_round_trip(tok, nfc, texts[i], n, what);
    }

    /* long runs: must stay fast (no quadratic behaviour) and round-trip */
    size_t big = 100000;
    char *s = malloc(big + 8);
    s[0] = 'a';
    memset(s + 1, ' ', big);
    s[big + 1] = 'b';
    double dt = check_round_trip(tok, nfc, s, big + 2, "100000 spaces");
    printf("100,000-space run: %.3f s\n", dt);
    if (dt > LONG_RUN_SECONDS)
        fail("100000 spaces", "took %.2f s", dt);
    for (size_t i = 0; i < big; i++)
        s[i] = "\n \t"[i % 3];
    dt = check_round_trip(tok, nfc, s, big, "100000 mixed whitespace");
    if (dt > LONG_RUN_SECONDS)
        fail("100000 mixed whitespace", "took %.2f s", dt);
    size_t nospace = 60000;
    for (size_t i = 0; i < nospace; i++)
        s[i] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"[(i * 7) % 63];
    dt = check_round_trip(tok, nfc, s, nospace, "60000 no-space chars");
    printf("60,000-char no-space run: %.3f s\n", dt);
    if (dt > LONG_RUN_SECONDS)
        fail("60000 no-space chars", "took %.2f s", dt);
    memset(s, 'x', nospace);
    dt = check_round_trip(tok, nfc, s, nospace, "60000 x");
    if (dt > LONG_RUN_SECONDS)
        fail("60000 x", "took %.2f s", dt);
    memset(s, '.', nospace);
    dt = check_round_trip(tok, nfc, s, nospace, "60000 dots");
    if (dt > LONG_RUN_SECONDS)
        fail("60000 dots", "took %.2f s", dt);
    free(s);

    /* special tokens mid-text */
    const char *names[] = {"<|im_end|>", "<|endoftext|>", "[EOS]"};
    for (size_t k = 0; k < 3; k++) {
        int32_t sid = eng_tokenizer_special_id(tok, names[k]);
        if (sid < 0)
            continue;
        n_check++;
        size_t bl;
        const char *b = eng_tokenizer_token_bytes(tok, sid, &bl);
        if (!b || bl != strlen(names[k]) || memcmp(b, names[k], bl) != 0 ||
            !eng_tokenizer_is_special(tok, sid))
            fail("special", "%s: id %d has bytes %s", names[k], sid, b ? show(b, bl) : "NULL");
        char text[64];
        snprintf(text, sizeof text, "a%sb", names[k]);
        eng_err err;
        int32_t *ids = NULL, *ia = NULL, *ib = NULL;
        size_t n = 0, na = 0, nb = 0;
        snprintf(what, sizeof what, "special mid-text %s", names[k]);
        if (eng_tokenizer_encode(tok, text, strlen(text), true, &ids, &n, &err) != PP_STATUS_OK ||
            eng_tokenizer_encode(tok, "a", 1, true, &ia, &na, &err) != PP_STATUS_OK ||
            eng_tokenizer_encode(tok, "b", 1, true, &ib, &nb, &err) != PP_STATUS_OK) {
            fail(what, "encode: %s", err.msg);
        } else if (n != na + 1 + nb || memcmp(ids, ia, na * sizeof *ids) != 0 || ids[na] != sid ||
                   memcmp(ids + na + 1, ib, nb * sizeof *ids) != 0) {
            fail(what, "expected encode(a) + [%d] + encode(b)", sid);
            print_ids("got", ids, n);
        }
        free(ids);
        free(ia);
        free(ib);
        check_round_trip(tok, nfc, text, strlen(text), what); /* as plain text */
        snprintf(text, sizeof text, "%s%s", names[k], names[k]);
        if (eng_tokenizer_encode(tok, text, strlen(text), true, &ids, &n, &err) == PP_STATUS_OK) {
            n_check++;
            if (n != 2 || ids[0] != sid || ids[1] != sid)
                fail(what, "two adjacent specials did not give two ids");
            free(ids);
        }
    }

    /* invalid UTF-8: every maximal subpart becomes one U+FFFD (Python errors="replace") */
    static const struct {
        const char *bad, *good;
    } inv[] = {
        {"ab\xff"
         "cd",
         "ab\xef\xbf\xbd"
         "cd"},
        {"x\xe4\xb8", "x\xef\xbf\xbd"},
        {"\xf0\x9f\x98"
         "a",
         "\xef\xbf\xbd"
         "a"},
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xed\xa0\x80!", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd!"},
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe0\x80\x80 z", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd z"},
        {"\x80\x80 \xfe", "\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd"},
        {"\xe2\x82 \xe2\x82\xac", "\xef\xbf\xbd \xe2\x82\xac"},
    };
    for (size_t i = 0; i < sizeof inv / sizeof inv[0]; i++) {
        snprintf(what, sizeof what, "invalid UTF-8 %zu", i);
        encode_eq(tok, inv[i].bad, strlen(inv[i].bad), inv[i].good, strlen(inv[i].good), true,
                  what);
    }

    /* decode of byte pieces that do not form characters: U+FFFD, streamed identically */
    int32_t n_vocab = eng_tokenizer_n_vocab(tok);
    int32_t *rnd = malloc(4096 * sizeof *rnd);
    size_t nr = 0;
    uint64_t x = 0x243F6A8885A308D3ull;
    while (nr < 4096) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int32_t id = (int32_t)(x % (uint64_t)n_vocab);
        if (eng_tokenizer_token_bytes(tok, id, NULL))
            rnd[nr++] = id;
    }
    for (size_t off = 0; off < nr; off += 512)
        check_stream(tok, rnd + off, 512, "random ids");
    free(rnd);

    /* empty text, bad ids, NULL arguments */
    eng_err err;
    int32_t *ids = (int32_t *)&err;
    size_t n = 99;
    n_check++;
    if (eng_tokenizer_encode(tok, "", 0, true, &ids, &n, &err) != PP_STATUS_OK || n != 0)
        fail("empty", "encode(\"\") should give 0 ids, got %zu", n);
    else
        free(ids);
    n_check++;
    if (eng_tokenizer_encode(tok, NULL, 0, false, &ids, &n, &err) != PP_STATUS_OK || n != 0)
        fail("empty", "encode(NULL, 0) should give 0 ids");
    else
        free(ids);
    char *text = NULL;
    size_t len = 1;
    n_check++;
    if (eng_tokenizer_decode(tok, NULL, 0, &text, &len, &err) != PP_STATUS_OK || len != 0 ||
        !text || text[0] != '\0')
        fail("empty", "decode of no ids should give \"\"");
    free(text);
    int32_t bad[] = {0, n_vocab};
    n_check++;
    if (eng_tokenizer_decode(tok, bad, 2, &text, &len, &err) != PP_STATUS_INVALID_ARG || text)
        fail("bad id", "decode(n_vocab) should be INVALID_ARG");
    bad[1] = -1;
    n_check++;
    if (eng_tokenizer_decode(tok, bad, 2, &text, &len, &err) != PP_STATUS_INVALID_ARG)
        fail("bad id", "decode(-1) should be INVALID_ARG");
    n_check++;
    if (eng_tokenizer_token_bytes(tok, -1, &len) || eng_tokenizer_token_bytes(tok, n_vocab, &len) ||
        eng_tokenizer_is_special(tok, n_vocab) ||
        eng_tokenizer_special_id(tok, "no such token") != -1)
        fail("bad id", "out-of-range ids must be unassigned");
    n_check++;
    if (eng_tokenizer_encode(NULL, "a", 1, true, &ids, &n, &err) != PP_STATUS_INVALID_ARG ||
        eng_tokenizer_encode(tok, "a", 1, true, NULL, &n, &err) != PP_STATUS_INVALID_ARG)
        fail("null", "NULL arguments should be INVALID_ARG");
    eng_detok *d = NULL;
    n_check++;
    if (eng_detok_create(tok, &d, &err) != PP_STATUS_OK) {
        fail("detok", "%s", err.msg);
    } else {
        const char *chunk;
        if (eng_detok_push(d, n_vocab, &chunk, &len, &err) != PP_STATUS_INVALID_ARG)
            fail("detok", "push(n_vocab) should be INVALID_ARG");
        eng_detok_free(d);
    }
    eng_detok_free(NULL);
    eng_tokenizer_free(NULL);
}

/* Malformed and unsupported tokenizer files give BAD_FORMAT / UNSUPPORTED with a message and
 * leave *out NULL; written to a temporary directory. */
static void check_load_errors(void)
{
    static const struct {
        const char *file, *text;
        pp_status want;
    } cases[] = {
        {"tokenizer.json", "{", PP_STATUS_BAD_FORMAT},
        {"tokenizer.json", "[1, 2]", PP_STATUS_BAD_FORMAT},
        {"tokenizer.json", "{\"normalizer\": {\"type\": \"NFKC\"}}", PP_STATUS_UNSUPPORTED},
        {"tokenizer.json", "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
         PP_STATUS_UNSUPPORTED},
        {"tokenizer.json",
         "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a&&b]\"}, "
         "\"behavior\": "
         "\"Isolated\"}}",
         PP_STATUS_UNSUPPORTED},
        {"tokenizer.json",
         "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}, "
         "\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}",
         PP_STATUS_UNSUPPORTED},
        {"tokenizer.json",
         "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}, "
         "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}",
         PP_STATUS_BAD_FORMAT},
        {"tiktoken.model", "IQ== 0\n!!! 1\n", PP_STATUS_BAD_FORMAT},
        {"tiktoken.model", "IQ== zero\n", PP_STATUS_BAD_FORMAT},
        {"tiktoken.model", "IQ== 0\n", PP_STATUS_BAD_FORMAT}, /* bytes without a rank */
    };
    char dir[] = "/tmp/test_tokenizer.XXXXXX";
    if (!mkdtemp(dir)) {
        fail("load errors", "mkdtemp failed");
        return;
    }
    char path[256], cfg[256];
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, cases[i].file);
        FILE *f = fopen(path, "w");
        FILE *g = fopen(cfg, "w");
        if (!f || !g) {
            fail("load errors", "cannot write %s", path);
            if (f)
                fclose(f);
            if (g)
                fclose(g);
            break;
        }
        fputs(cases[i].text, f);
        fputs("{}", g);
        fclose(f);
        fclose(g);
        n_check++;
        eng_err err;
        err.msg[0] = '\0';
        eng_tokenizer *t = (eng_tokenizer *)&err;
        pp_status st = eng_tokenizer_load(dir, &t, &err);
        if (st != cases[i].want || t != NULL || err.msg[0] == '\0')
            fail("load errors", "case %zu: status %d (want %d), message '%s'", i, (int)st,
                 (int)cases[i].want, err.msg);
        unlink(path);
        unlink(cfg);
    }
    rmdir(dir);
}

/* Does DIR/tokenizer.json declare an NFC normalizer? (tiktoken: no normalizer) */
static bool dir_has_nfc(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    struct json_object *root = json_object_from_file(path);
    if (!root)
        return false;
    struct json_object *norm = NULL;
    bool nfc = json_object_object_get_ex(root, "normalizer", &norm) && norm &&
               strstr(json_object_to_json_string(norm), "\"NFC\"") != NULL;
    json_object_put(root);
    return nfc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    if (access(dir, F_OK) != 0) {
        printf("skipped: %s does not exist\n", dir);
        return 77; /* ctest SKIP_RETURN_CODE, for fixtures outside the project */
    }
    eng_err err;
    eng_tokenizer *tok = NULL;
    pp_status st = eng_tokenizer_load(dir, &tok, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "FAIL load %s: %s\n", dir, err.msg);
        return 1;
    }
    bool nfc = dir_has_nfc(dir);
    printf("%s: n_vocab %d, normalizer %s\n", dir, eng_tokenizer_n_vocab(tok),
           nfc ? "NFC" : "none");

    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-dir", dir);
    eng_tokenizer *none = (eng_tokenizer *)&err;
    n_check++;
    if (eng_tokenizer_load(missing, &none, &err) != PP_STATUS_NOT_FOUND || none)
        fail("load", "a missing directory should be NOT_FOUND with *out NULL");

    check_cases(tok, dir, nfc);
    check_reference_prompts(tok, dir);
    check_builtin(tok, nfc);
    check_load_errors();
    eng_tokenizer_free(tok);
    printf("%d checks, %d failures\n", n_check, n_fail);
    return n_fail ? 1 : 0;
}
