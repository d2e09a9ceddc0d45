/* fuzz_tokenizer.c: libFuzzer entry point for eng_tokenizer_encode / decode / eng_detok.
 *
 * Loads one tokenizer once: $PP_FUZZ_TOKENIZER_DIR, default tests/fixtures/tokenizers/qwen_bpe_512
 * (run from the project root). Each input is encoded with and without special tokens; the
 * harness traps (so the fuzzer reports a crash) when an invariant breaks:
 *   - every id is in [0, n_vocab) and assigned, specials only with allow_special;
 *   - decode(encode(x)) succeeds and is valid UTF-8; without specials it is x itself, up to the
 *     U+FFFD replacement of invalid input and, on an NFC tokenizer, normalization (so it is
 *     checked exactly only when x is valid UTF-8 made of code points below U+0300);
 *   - streaming the ids through eng_detok yields valid UTF-8 chunks that concatenate to decode;
 *   - the input bytes read as ids (4 bytes each, folded into the vocabulary) decode and stream
 *     consistently too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static eng_tokenizer *tok;

static void require(int ok)
{
    if (!ok)
        __builtin_trap();
}

static void load_once(void)
{
    if (tok)
        return;
    const char *dir = getenv("PP_FUZZ_TOKENIZER_DIR");
    if (!dir || !*dir)
        dir = "tests/fixtures/tokenizers/qwen_bpe_512";
    eng_err err;
    if (eng_tokenizer_load(dir, &tok, &err) != PP_STATUS_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", dir, err.msg);
        abort();
    }
}

/* Strict UTF-8 validity (no surrogates, no overlongs, <= U+10FFFF). */
static int valid_utf8(const uint8_t *s, size_t n, int *below_0300)
{
    *below_0300 = 1;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF)
            len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return 0;
        if (n - i < (size_t)len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (int k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return 0;
        if (c >= 0xCC)
            *below_0300 = 0;
        i += (size_t)len;
    }
    return 1;
}

/* decode(ids) and the streamed chunks agree and are valid UTF-8; returns the decoded text. */
static char *check_decode(const int32_t *ids, size_t n, size_t *len)
{
    eng_err err;
    char *text = NULL;
    require(eng_tokenizer_decode(tok, ids, n, &text, len, &err) == PP_STATUS_OK);
    int dummy;
    require(text[*len] == '\0' && valid_utf8((const uint8_t *)text, *len, &dummy));
    eng_detok *d = NULL;
    require(eng_detok_create(tok, &d, &err) == PP_STATUS_OK);
    size_t pos = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *chunk;
        size_t cl;
        pp_status st =
            i < n ? eng_detok_push(d, ids[i], &chunk, &cl, &err) : eng_detok_flush(d, &chunk, &cl);
        require(st == PP_STATUS_OK);
        require(chunk[cl] == '\0' && valid_utf8((const uint8_t *)chunk, cl, &dummy));
        require(pos + cl <= *len && memcmp(text + pos, chunk, cl) == 0);
        pos += cl;
    }
    require(pos == *len);
    eng_detok_free(d);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_once();
    int32_t n_vocab = eng_tokenizer_n_vocab(tok);
    int below_0300;
    int valid = valid_utf8(data, size, &below_0300);
    for (int allow = 0; allow < 2; allow++) {
        eng_err err;
        int32_t *ids = NULL;
        size_t n = 0;
        require(eng_tokenizer_encode(tok, (const char *)data, size, allow, &ids, &n, &err) ==
                PP_STATUS_OK);
        require(size > 0 || n == 0);
        for (size_t i = 0; i < n; i++) {
            require(ids[i] >= 0 && ids[i] < n_vocab);
            require(eng_tokenizer_token_bytes(tok, ids[i], NULL) != NULL);
            require(allow || !eng_tokenizer_is_special(tok, ids[i]));
        }
        size_t len;
        char *text = check_decode(ids, n, &len);
        if (!allow && valid && below_0300)
            require(len == size && memcmp(text, data, size) == 0);
        free(text);
        free(ids);
    }
    /* the bytes as ids */
    size_t n_raw = size / 4;
    if (n_raw > 0) {
        int32_t *ids = malloc(n_raw * sizeof *ids);
        require(ids != NULL);
        size_t m = 0;
        for (size_t i = 0; i < n_raw; i++) {
            uint32_t v;
            memcpy(&v, data + 4 * i, 4);
            int32_t id = (int32_t)(v % (uint32_t)n_vocab);
            if (eng_tokenizer_token_bytes(tok, id, NULL))
                ids[m++] = id;
        }
        size_t len;
        free(check_decode(ids, m, &len));
        free(ids);
    }
    return 0;
}
