/* tokenizer.c: Hugging Face byte-level BPE (tokenizer.json) and tiktoken rank-BPE (Kimi's
 * tiktoken.model) encoders and decoders, bit-exact with the reference libraries.
 *
 * Invariants: a loaded tokenizer is immutable (every encode call keeps its scratch state on its
 * own), every piece of text handed to PCRE2 or utf8proc is valid UTF-8 (invalid input is
 * replaced by U+FFFD first, maximal subpart by maximal subpart), and BPE on a piece of n bytes
 * costs O(n log n) (a heap of candidate merges beyond a small-piece linear scan), so long runs
 * stay fast.
 *
 * Reference semantics reproduced here (provenance in the comments next to each):
 *   - HF tokenizers: AddedVocabulary::find_matches (leftmost-longest, lstrip/rstrip/single_word),
 *     NFC normalizer, Split(Isolated) + ByteLevel pre-tokenizers, BPE::merge_word/merge_all,
 *     ByteLevel decoder;
 *   - tiktoken CoreBPE::encode_native / _byte_pair_merge, and tokenization_kimi.py's encode
 *     (400,000-char slices, 25,000-char whitespace / non-whitespace runs, 256 special slots).
 * Regex dialect: HF uses Oniguruma, tiktoken Rust fancy-regex; both take \s as White_Space and a
 * bare script name (\p{Han}) as the Script property, where PCRE2 (UCP) adds U+180E to \s and
 * takes \p{Han} as Script_Extensions. Patterns are rewritten (rewrite_pattern) so PCRE2 matches
 * exactly what the references match.
 */
#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <errno.h>
#include <json.h>
#include <limits.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* Files larger than this are not tokenizers (real tokenizer.json files are 2-30 MB). */
#define MAX_FILE_BYTES ((size_t)1 << 30)
/* Encode input limit: piece positions are kept in uint32. */
#define MAX_TEXT_BYTES ((size_t)INT32_MAX)
/* Ids above this are not plausible (largest real vocabularies are ~260k). */
#define MAX_TOKEN_ID (1 << 24)
/* Pieces up to this many symbols use the O(n^2) linear scan, longer ones the heap. */
#define BPE_SMALL 48
#define RANK_NONE INT32_MAX
/* Per-call piece cache (HF BPE keeps one too): pieces up to this many bytes are remembered. */
#define CACHE_MAX_PIECE 64
/* At most this many slots (16 bytes each, half filled): bounds the cache at a few MB per call. */
#define CACHE_MAX_SLOTS (1u << 18)
#define MAX_SPLIT_STAGES 4
/* tokenization_kimi.py: TIKTOKEN_MAX_ENCODE_CHARS, MAX_NO_WHITESPACES_CHARS,
 * num_reserved_special_tokens. */
#define KIMI_SLICE_CHARS 400000
#define KIMI_RUN_CHARS 25000
#define KIMI_N_SPECIAL 256

/* Kimi K2's pre-tokenizer pattern exactly as tokenization_kimi.py writes it (Rust regex syntax
 * with class intersections); rewrite_pattern turns `[X&&[^Y]]` into `(?:(?![Y])[X])`. */
static const char kimi_pat_str[] =
    "[\\p{Han}]+"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    "|\\p{N}{1,3}"
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)"
    "|\\s+";

/* HF ByteLevel pre-tokenizer with use_regex: the GPT-2 pattern. */
static const char gpt2_pat_str[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Unicode White_Space (what Oniguruma's and Rust regex's \s, Rust char::is_whitespace mean) as
 * the body of a PCRE2 character class. */
static const char white_space_class[] =
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
    "\\x{3000}";

/* ---- small growable buffers ------------------------------------------------------------------ */

typedef struct bbuf {
    char *p;
    size_t n, cap;
} bbuf;

typedef struct ivec {
    int32_t *p;
    size_t n, cap;
} ivec;

static bool bbuf_reserve(bbuf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->n)
        return false;
    size_t need = b->n + extra + 1; /* room for a NUL */
    if (need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool bbuf_add(bbuf *b, const void *s, size_t n)
{
    if (!bbuf_reserve(b, n))
        return false;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

static bool ivec_push(ivec *v, int32_t x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p)
            return false;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return true;
}

/* Grows *p (elements of size elem) to hold at least n; false on overflow / no memory. */
static bool grow(void **p, size_t *cap, size_t n, size_t elem)
{
    if (n <= *cap)
        return true;
    size_t c = *cap ? *cap : 64;
    while (c < n) {
        if (c > SIZE_MAX / 2 / elem)
            return false;
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

static const char replacement_char[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Incremental UTF-8 validation with maximal-subpart replacement (Unicode §3.9 / W3C, as Python's
 * errors="replace" and Rust's from_utf8_lossy do): one U+FFFD per maximal subpart of an
 * ill-formed sequence. `held` holds a valid but incomplete prefix. */
typedef struct utf8_state {
    uint8_t held[4];
    uint8_t n_held, need, lo, hi; /* lo..hi: allowed range of the next byte */
} utf8_state;

/* Classifies a lead byte: length of its sequence (0 = never valid) and the range of its second
 * byte. */
static int utf8_lead(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0)
            *lo = 0xA0;
        else if (c == 0xED)
            *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0)
            *lo = 0x90;
        else if (c == 0xF4)
            *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Feeds n bytes, appending complete characters and U+FFFDs to out. */
static bool utf8_feed(utf8_state *st, const uint8_t *s, size_t n, bbuf *out)
{
    size_t i = 0;
    while (i < n) {
        if (st->n_held == 0) {
            /* fast path: a run of ASCII */
            size_t j = i;
            while (j < n && s[j] < 0x80)
                j++;
            if (j > i) {
                if (!bbuf_add(out, s + i, j - i))
                    return false;
                i = j;
                continue;
            }
            uint8_t lo, hi;
            int len = utf8_lead(s[i], &lo, &hi);
            if (len == 0) {
                if (!bbuf_add(out, replacement_char, 3))
                    return false;
                i++;
                continue;
            }
            /* whole character available and valid: copy it directly */
            if (n - i >= (size_t)len) {
                bool ok = s[i + 1] >= lo && s[i + 1] <= hi;
                for (int k = 2; ok && k < len; k++)
                    ok = s[i + k] >= 0x80 && s[i + k] <= 0xBF;
                if (ok) {
                    if (!bbuf_add(out, s + i, (size_t)len))
                        return false;
                    i += (size_t)len;
                    continue;
                }
            }
            st->held[0] = s[i];
            st->n_held = 1;
            st->need = (uint8_t)len;
            st->lo = lo;
            st->hi = hi;
            i++;
            continue;
        }
        uint8_t b = s[i];
        if (b < st->lo || b > st->hi) {
            /* the held prefix is a maximal subpart; b starts afresh */
            st->n_held = 0;
            if (!bbuf_add(out, replacement_char, 3))
                return false;
            continue;
        }
        st->held[st->n_held++] = b;
        st->lo = 0x80;
        st->hi = 0xBF;
        i++;
        if (st->n_held == st->need) {
            if (!bbuf_add(out, st->held, st->n_held))
                return false;
            st->n_held = 0;
        }
    }
    return true;
}

/* End of input: an incomplete character becomes one U+FFFD. */
static bool utf8_finish(utf8_state *st, bbuf *out)
{
    if (st->n_held == 0)
        return true;
    st->n_held = 0;
    return bbuf_add(out, replacement_char, 3);
}

static bool utf8_is_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint8_t lo, hi;
        int len = utf8_lead(s[i], &lo, &hi);
        if (len == 0 || n - i < (size_t)len || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (int k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return false;
        i += (size_t)len;
    }
    return true;
}

/* Decodes the code point at s (valid UTF-8 with at least one byte), returns its length. */
static int utf8_decode(const uint8_t *s, int32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}

/* Start of the code point that ends just before s[i] (valid UTF-8, i > 0). */
static size_t utf8_prev(const uint8_t *s, size_t i)
{
    do
        i--;
    while (i > 0 && (s[i] & 0xC0) == 0x80);
    return i;
}

/* ---- Unicode character classes --------------------------------------------------------------- */

/* Unicode White_Space: Rust char::is_whitespace (HF lstrip/rstrip). */
static bool is_white_space(int32_t c)
{
    if (c <= 0x20)
        return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85)
        return false;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python str.isspace: bidirectional class WS, B or S, or general category Zs
 * (CPython Tools/unicode/makeunicodedata.py). */
static bool is_py_space(int32_t c)
{
    if (c < 0x80)
        return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

/* Rust regex \w (HF single_word's `\w$` / `^\w`): Alphabetic, M, Nd, Pc, Join_Control.
 * Alphabetic is approximated by L, Nl and the Other_Alphabetic symbols (circled letters);
 * Other_Alphabetic marks are covered by M. */
static bool is_word_char(int32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_';
    if (c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) ||
        (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
        (c >= 0x1F170 && c <= 0x1F189))
        return true;
    switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC: return true;
    default: return false;
    }
}

/* ---- hash maps ------------------------------------------------------------------------------- */

static uint32_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    /* MurmurHash3 fmix64 finalizer: every input bit reaches the low bits used as the index */
    h ^= w;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* byte string -> id; the key of id is the tokenizer's model bytes of that id. */
typedef struct vocab_slot {
    uint32_t hash;
    int32_t id; /* -1: empty */
} vocab_slot;

/* (left id, right id) -> merge rank and merged id (HF merges). */
typedef struct pair_slot {
    uint64_t key; /* UINT64_MAX: empty */
    int32_t rank;
    int32_t new_id;
} pair_slot;

static uint32_t pair_hash(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xFF51AFD7ED558CCDull;
    key ^= key >> 33;
    return (uint32_t)key;
}

/* ---- the tokenizer --------------------------------------------------------------------------- */

typedef enum tok_kind { TOK_HF_BPE, TOK_TIKTOKEN } tok_kind;

typedef struct added_token {
    int32_t id;
    char *content; /* as written in the file */
    size_t len;
    char *match; /* what is searched for: content, NFC'd when normalized on an NFC tokenizer */
    size_t match_len;
    bool special, lstrip, rstrip, single_word, normalized;
} added_token;

/* Byte trie over added-token strings for leftmost-longest matching. */
typedef struct trie_node {
    int32_t child, sibling; /* node indices, -1 none */
    int32_t token;          /* index into added[], -1 none */
    uint8_t byte;
} trie_node;

typedef struct trie {
    trie_node *nodes; /* nodes[0] is the root */
    size_t n, cap;
    bool first[256]; /* bytes a token can start with */
    int n_tokens;
} trie;

typedef struct tok_regex {
    pcre2_code *code;
    bool jit;
} tok_regex;

struct eng_tokenizer {
    tok_kind kind;
    int32_t n_vocab;

    /* Model (non-added) token bytes: arena[tok_off[id] .. + tok_len[id]); tok_len -1 when the id
     * has no model token. */
    char *arena;
    size_t arena_n, arena_cap;
    uint64_t *tok_off; /* [n_vocab] */
    int32_t *tok_len;  /* [n_vocab] */
    int32_t *added_of; /* [n_vocab] index into added[], -1 */
    size_t max_token_len;

    vocab_slot *vmap; /* model bytes -> id */
    uint32_t vmask;

    /* HF BPE */
    pair_slot *pmap;
    uint32_t pmask;
    int32_t byte_id[256]; /* id of each single-byte symbol, -1 if not in the vocabulary */
    int32_t unk_id;       /* -1: none */
    bool fuse_unk, ignore_merges, nfc;
    tok_regex split[MAX_SPLIT_STAGES]; /* Split pre-tokenizers, in order */
    int n_split;
    bool prefix_space;  /* ByteLevel add_prefix_space */
    tok_regex bl_regex; /* ByteLevel use_regex (GPT-2 pattern); code NULL when off */

    /* tiktoken */
    tok_regex tk_regex;

    added_token *added;
    int n_added;
    trie raw_trie;  /* added tokens matched on the raw text (all of them for tiktoken) */
    trie norm_trie; /* HF tokens with normalized=true, matched on normalized text */
};

/* ---- per-call scratch ------------------------------------------------------------------------ */

typedef struct heap_entry {
    int32_t rank;
    uint32_t pos;
    int32_t aux; /* HF: merged id; tiktoken: end offset the pair covered */
} heap_entry;

struct cache_slot;

typedef struct scratch {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    bool unlimited;
    /* BPE */
    int32_t *sym;
    size_t sym_cap;
    int32_t *rank;
    size_t rank_cap;
    int32_t *aux;
    size_t aux_cap;
    int32_t *prev;
    size_t prev_cap;
    int32_t *next;
    size_t next_cap;
    heap_entry *heap;
    size_t heap_cap;
    bbuf norm; /* NFC output */
    /* piece cache: piece bytes -> ids, open addressing; keys in cache_keys, values in cache_ids */
    struct cache_slot *cache;
    uint32_t cache_mask, cache_n;
    bbuf cache_keys;
    ivec cache_ids;
    eng_err *err;
} scratch;

typedef struct cache_slot {
    uint32_t hash;
    uint32_t key_off; /* into cache_keys */
    uint32_t ids_off; /* into cache_ids */
    uint8_t key_len;  /* 0: empty slot */
    uint8_t n_ids;
} cache_slot;

static void scratch_free(scratch *s)
{
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jit_stack);
    free(s->sym);
    free(s->rank);
    free(s->aux);
    free(s->prev);
    free(s->next);
    free(s->heap);
    free(s->norm.p);
    free(s->cache);
    free(s->cache_keys.p);
    free(s->cache_ids.p);
}

static pp_status oom(eng_err *err, const char *what)
{
    return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "tokenizer: out of memory (%s)", what);
}

/* ---- vocabulary storage ---------------------------------------------------------------------- */

static const uint8_t *tok_model_bytes(const eng_tokenizer *t, int32_t id, size_t *len)
{
    *len = (size_t)t->tok_len[id];
    return (const uint8_t *)t->arena + t->tok_off[id];
}

static int32_t vmap_find_h(const eng_tokenizer *t, const uint8_t *s, size_t n, uint32_t h)
{
    for (uint32_t i = h & t->vmask;; i = (i + 1) & t->vmask) {
        const vocab_slot *sl = &t->vmap[i];
        if (sl->id < 0)
            return -1;
        if (sl->hash == h && (size_t)t->tok_len[sl->id] == n &&
            memcmp(t->arena + t->tok_off[sl->id], s, n) == 0)
            return sl->id;
    }
}

static int32_t vmap_find(const eng_tokenizer *t, const uint8_t *s, size_t n)
{
    return vmap_find_h(t, s, n, hash_bytes(s, n));
}

/* Builds vmap over every id with model bytes (in_map non-NULL: only the ids it marks, for HF the
 * keys made of byte-level characters); BAD_FORMAT when two ids have the same bytes. */
static pp_status vmap_build(eng_tokenizer *t, const uint8_t *in_map, eng_err *err)
{
    size_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->tok_len[id] >= 0 && (!in_map || in_map[id]))
            n++;
    uint32_t cap = 16;
    while (cap < 2 * n + 16)
        cap *= 2;
    t->vmap = malloc((size_t)cap * sizeof *t->vmap);
    if (!t->vmap)
        return oom(err, "vocabulary map");
    for (uint32_t i = 0; i < cap; i++)
        t->vmap[i].id = -1;
    t->vmask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->tok_len[id] < 0 || (in_map && !in_map[id]))
            continue;
        size_t len;
        const uint8_t *s = tok_model_bytes(t, id, &len);
        if (vmap_find(t, s, len) >= 0)
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "two tokens have the same bytes (id %d and %d)", vmap_find(t, s, len),
                            id);
        uint32_t h = hash_bytes(s, len);
        uint32_t i = h & t->vmask;
        while (t->vmap[i].id >= 0)
            i = (i + 1) & t->vmask;
        t->vmap[i].hash = h;
        t->vmap[i].id = id;
        if (len > t->max_token_len)
            t->max_token_len = len;
    }
    return PP_STATUS_OK;
}

static const pair_slot *pmap_find(const eng_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = pair_hash(key) & t->pmask;; i = (i + 1) & t->pmask) {
        const pair_slot *sl = &t->pmap[i];
        if (sl->key == key)
            return sl;
        if (sl->key == UINT64_MAX)
            return NULL;
    }
}

/* Inserts or overwrites (HF collects merges into a HashMap: a repeated pair keeps the last rank).
 */
static void pmap_put(eng_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = pair_hash(key) & t->pmask;
    while (t->pmap[i].key != UINT64_MAX && t->pmap[i].key != key)
        i = (i + 1) & t->pmask;
    t->pmap[i].key = key;
    t->pmap[i].rank = rank;
    t->pmap[i].new_id = new_id;
}

/* Sets the model bytes of id (copied into the arena). */
static pp_status set_model_bytes(eng_tokenizer *t, int32_t id, const void *s, size_t n,
                                 eng_err *err)
{
    if (n > INT32_MAX)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "token %d is too long", id);
    if (!grow((void **)&t->arena, &t->arena_cap, t->arena_n + n + 1, 1))
        return oom(err, "token bytes");
    memcpy(t->arena + t->arena_n, s, n);
    t->arena[t->arena_n + n] = '\0';
    t->tok_off[id] = t->arena_n;
    t->tok_len[id] = (int32_t)n;
    t->arena_n += n + 1;
    return PP_STATUS_OK;
}

/* Allocates the per-id tables for n_vocab ids, all unassigned. */
static pp_status alloc_ids(eng_tokenizer *t, int32_t n_vocab, eng_err *err)
{
    t->n_vocab = n_vocab;
    t->tok_off = calloc((size_t)n_vocab, sizeof *t->tok_off);
    t->tok_len = malloc((size_t)n_vocab * sizeof *t->tok_len);
    t->added_of = malloc((size_t)n_vocab * sizeof *t->added_of);
    if (!t->tok_off || !t->tok_len || !t->added_of)
        return oom(err, "token tables");
    for (int32_t i = 0; i < n_vocab; i++) {
        t->tok_len[i] = -1;
        t->added_of[i] = -1;
    }
    return PP_STATUS_OK;
}

/* ---- added-token tries ----------------------------------------------------------------------- */

static bool trie_init(trie *tr)
{
    tr->nodes = malloc(64 * sizeof *tr->nodes);
    if (!tr->nodes)
        return false;
    tr->cap = 64;
    tr->n = 1;
    tr->nodes[0] = (trie_node){.child = -1, .sibling = -1, .token = -1, .byte = 0};
    return true;
}

/* Adds s (n >= 1 bytes) for token index tok; an existing identical string keeps its token. */
static bool trie_add(trie *tr, const uint8_t *s, size_t n, int32_t tok)
{
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[node].child;
        while (c >= 0 && tr->nodes[c].byte != s[i])
            c = tr->nodes[c].sibling;
        if (c < 0) {
            if (!grow((void **)&tr->nodes, &tr->cap, tr->n + 1, sizeof *tr->nodes))
                return false;
            c = (int32_t)tr->n++;
            tr->nodes[c] = (trie_node){
                .child = -1, .sibling = tr->nodes[node].child, .token = -1, .byte = s[i]};
            tr->nodes[node].child = c;
        }
        node = c;
    }
    if (tr->nodes[node].token < 0)
        tr->nodes[node].token = tok;
    tr->first[s[0]] = true;
    tr->n_tokens++;
    return true;
}

/* Leftmost-longest match in s[from .. n) (aho-corasick MatchKind::LeftmostLongest, as HF's
 * AddedVocabulary and, for non-overlapping specials, tiktoken). */
static bool trie_find(const trie *tr, const uint8_t *s, size_t n, size_t from, size_t *ms,
                      size_t *me, int32_t *tok)
{
    if (tr->n_tokens == 0)
        return false;
    for (size_t i = from; i < n; i++) {
        if (!tr->first[s[i]])
            continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int32_t c = tr->nodes[node].child;
            while (c >= 0 && tr->nodes[c].byte != s[j])
                c = tr->nodes[c].sibling;
            if (c < 0)
                break;
            node = c;
            if (tr->nodes[node].token >= 0) {
                best = tr->nodes[node].token;
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            *tok = best;
            return true;
        }
    }
    return false;
}

/* ---- regex ----------------------------------------------------------------------------------- */

static bool is_general_category(const char *name, size_t n)
{
    static const char *const gc[] = {"L",  "Lu", "Ll", "Lt", "Lm", "Lo", "L&", "LC", "M",  "Mn",
                                     "Mc", "Me", "N",  "Nd", "Nl", "No", "P",  "Pc", "Pd", "Ps",
                                     "Pe", "Pi", "Pf", "Po", "S",  "Sm", "Sc", "Sk", "So", "Z",
                                     "Zs", "Zl", "Zp", "C",  "Cc", "Cf", "Cs", "Co", "Cn", "Any"};
    for (size_t i = 0; i < sizeof gc / sizeof gc[0]; i++)
        if (strlen(gc[i]) == n && memcmp(gc[i], name, n) == 0)
            return true;
    return false;
}

/* Copies the property escape \p{Name} / \P{Name} at p[k] (p[k + 2] == '{'); a bare script name
 * becomes \p{sc:Name} (Script, as the references mean it, not PCRE2's Script_Extensions).
 * Returns the index after the '}', 0 on failure. */
static size_t rewrite_prop(const char *p, size_t n, size_t k, bbuf *out)
{
    const char *close = memchr(p + k + 3, '}', n - (k + 3));
    if (!close)
        return 0;
    size_t name0 = k + 3, name1 = (size_t)(close - p);
    bool neg = name0 < name1 && p[name0] == '^';
    size_t nb = name0 + (neg ? 1 : 0);
    bool plain = !memchr(p + nb, '=', name1 - nb) && !memchr(p + nb, ':', name1 - nb);
    if (plain && !is_general_category(p + nb, name1 - nb)) {
        char head[3] = {'\\', p[k + 1], '{'};
        if (!bbuf_add(out, head, 3) || (neg && !bbuf_add(out, "^", 1)) ||
            !bbuf_add(out, "sc:", 3) || !bbuf_add(out, p + nb, name1 - nb) ||
            !bbuf_add(out, "}", 1))
            return 0;
    } else if (!bbuf_add(out, p + k, name1 + 1 - k)) {
        return 0;
    }
    return name1 + 1;
}

/* Copies the body of a character class (the text between `[` or `[^` and the matching `]`),
 * rewriting \s and \p{Script}; *i enters at the first body byte and leaves after the `]`. Stops
 * early (without consuming) at `&&` when stop_at_and. Returns false on an unsupported construct. */
static bool rewrite_class_body(const char *p, size_t n, size_t *i, bbuf *out, bool stop_at_and,
                               bool *at_and)
{
    size_t k = *i;
    *at_and = false;
    bool first = true;
    while (k < n) {
        char c = p[k];
        if (c == ']' && !first) {
            *i = k + 1;
            return true;
        }
        first = false;
        if (c == '&' && k + 1 < n && p[k + 1] == '&') {
            if (!stop_at_and)
                return false;
            *at_and = true;
            *i = k;
            return true;
        }
        if (c == '[') {
            if (k + 1 < n && p[k + 1] == ':') { /* POSIX class [:name:] */
                const char *end = strstr(p + k + 2, ":]");
                if (!end || (size_t)(end - p) >= n)
                    return false;
                size_t len = (size_t)(end - (p + k)) + 2;
                if (!bbuf_add(out, p + k, len))
                    return false;
                k += len;
                continue;
            }
            return false; /* nested classes are Rust-only */
        }
        if (c == '\\' && k + 1 < n) {
            char e = p[k + 1];
            if (e == 's') {
                if (!bbuf_add(out, white_space_class, strlen(white_space_class)))
                    return false;
                k += 2;
                continue;
            }
            if ((e == 'p' || e == 'P') && k + 2 < n && p[k + 2] == '{') {
                k = rewrite_prop(p, n, k, out);
                if (k == 0)
                    return false;
                continue;
            }
            if (!bbuf_add(out, p + k, 2))
                return false;
            k += 2;
            continue;
        }
        if (!bbuf_add(out, p + k, 1))
            return false;
        k++;
    }
    return false; /* unterminated class */
}

/* Rewrites an Oniguruma / Rust-regex pattern into PCRE2 syntax with the same meaning:
 *   \s -> [White_Space], \S -> [^White_Space] (outside classes; inside a class \s becomes the
 *   White_Space ranges), \p{Script} -> \p{sc:Script}, Rust `[X&&[^Y]]` -> `(?:(?![Y])[X])`.
 * Returns false (with *why) when the pattern uses something this rewrite does not handle. */
static bool rewrite_pattern(const char *p, size_t n, bbuf *out, const char **why)
{
    *why = "out of memory";
    size_t k = 0;
    while (k < n) {
        char c = p[k];
        if (c == '\\' && k + 1 < n) {
            char e = p[k + 1];
            if (e == 's' || e == 'S') {
                if (!bbuf_add(out, e == 's' ? "[" : "[^", e == 's' ? 1 : 2) ||
                    !bbuf_add(out, white_space_class, strlen(white_space_class)) ||
                    !bbuf_add(out, "]", 1))
                    return false;
                k += 2;
                continue;
            }
            if ((e == 'p' || e == 'P') && k + 2 < n && p[k + 2] == '{') {
                k = rewrite_prop(p, n, k, out);
                if (k == 0) {
                    *why = "bad \\p{...}";
                    return false;
                }
                continue;
            }
            if (!bbuf_add(out, p + k, 2))
                return false;
            k += 2;
            continue;
        }
        if (c == '[') {
            size_t j = k + 1;
            bool neg = j < n && p[j] == '^';
            if (neg)
                j++;
            bbuf a = {0};
            bool at_and;
            if (!rewrite_class_body(p, n, &j, &a, true, &at_and)) {
                free(a.p);
                *why = "unsupported character class";
                return false;
            }
            if (!at_and) {
                bool ok = bbuf_add(out, neg ? "[^" : "[", neg ? 2 : 1) && bbuf_add(out, a.p, a.n) &&
                          bbuf_add(out, "]", 1);
                free(a.p);
                if (!ok)
                    return false;
                k = j;
                continue;
            }
            /* [A&&[^B]] */
            bbuf b = {0};
            bool ok = !neg && j + 4 <= n && memcmp(p + j, "&&[^", 4) == 0;
            if (ok) {
                j += 4;
                bool and2;
                ok = rewrite_class_body(p, n, &j, &b, false, &and2) && j < n && p[j] == ']';
                j++;
            }
            if (!ok) {
                free(a.p);
                free(b.p);
                *why = "class intersection other than [X&&[^Y]]";
                return false;
            }
            ok = bbuf_add(out, "(?:(?![", 7) && bbuf_add(out, b.p, b.n) &&
                 bbuf_add(out, "])[", 3) && bbuf_add(out, a.p, a.n) && bbuf_add(out, "])", 2);
            free(a.p);
            free(b.p);
            if (!ok)
                return false;
            k = j;
            continue;
        }
        if (!bbuf_add(out, p + k, 1))
            return false;
        k++;
    }
    if (!out->p && !bbuf_add(out, "", 0))
        return false;
    return true;
}

/* Compiles a reference-dialect pattern (literal when is_literal) for UTF-8 + UCP with JIT. */
static pp_status regex_compile(tok_regex *re, const char *pat, size_t n, bool is_literal,
                               const char *what, eng_err *err)
{
    bbuf rw = {0};
    const char *why = NULL;
    if (is_literal) {
        if (!bbuf_add(&rw, pat, n)) {
            free(rw.p);
            return oom(err, "regex");
        }
    } else if (!rewrite_pattern(pat, n, &rw, &why)) {
        free(rw.p);
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "%s: regex %.200s: %s", what, pat, why);
    }
    int code;
    PCRE2_SIZE off;
    /* PCRE2_LITERAL admits UTF but not UCP (which a literal does not need) */
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (is_literal ? PCRE2_LITERAL : PCRE2_UCP);
    re->code = pcre2_compile((PCRE2_SPTR)rw.p, rw.n, opts, &code, &off, NULL);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        pp_status st = eng_fail(err, PP_STATUS_UNSUPPORTED, "%s: regex %.200s: %s at offset %zu",
                                what, rw.p, (const char *)msg, (size_t)off);
        free(rw.p);
        return st;
    }
    free(rw.p);
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return PP_STATUS_OK;
}

/* Next match of re in s[0 .. n) at or after `from`: 1 found, 0 none, -1 error (message set). */
static int regex_next(const tok_regex *re, scratch *sc, const uint8_t *s, size_t n, size_t from,
                      size_t *ms, size_t *me)
{
    if (!sc->md) {
        sc->md = pcre2_match_data_create(1, NULL);
        if (!sc->md) {
            oom(sc->err, "regex match data");
            return -1;
        }
    }
    for (;;) {
        int rc = re->jit ? pcre2_jit_match(re->code, s, n, from, 0, sc->md, sc->mctx)
                         : pcre2_match(re->code, s, n, from, PCRE2_NO_UTF_CHECK, sc->md, sc->mctx);
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (!sc->unlimited && (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT ||
                               rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT)) {
            /* retry once with a large JIT stack and no limits */
            sc->unlimited = true;
            sc->mctx = pcre2_match_context_create(NULL);
            sc->jit_stack = pcre2_jit_stack_create(32 * 1024, 256 * 1024 * 1024, NULL);
            if (!sc->mctx || !sc->jit_stack) {
                oom(sc->err, "regex stack");
                return -1;
            }
            pcre2_jit_stack_assign(sc->mctx, NULL, sc->jit_stack);
            pcre2_set_match_limit(sc->mctx, UINT32_MAX);
            pcre2_set_depth_limit(sc->mctx, UINT32_MAX);
            pcre2_set_heap_limit(sc->mctx, UINT32_MAX);
            continue;
        }
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        eng_fail(sc->err, PP_STATUS_INTERNAL, "tokenizer: regex match failed: %s",
                 (const char *)msg);
        return -1;
    }
}

/* ---- HF BPE ---------------------------------------------------------------------------------- */

static bool heap_less(const heap_entry *a, const heap_entry *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static bool heap_push(scratch *sc, size_t *n, heap_entry e)
{
    if (!grow((void **)&sc->heap, &sc->heap_cap, *n + 1, sizeof *sc->heap))
        return false;
    heap_entry *h = sc->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&e, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
    return true;
}

static heap_entry heap_pop(scratch *sc, size_t *n)
{
    heap_entry *h = sc->heap;
    heap_entry top = h[0];
    heap_entry last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c]))
            c++;
        if (!heap_less(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = last;
    return top;
}

static bool scratch_symbols(scratch *sc, size_t n)
{
    return grow((void **)&sc->sym, &sc->sym_cap, n, sizeof(int32_t)) &&
           grow((void **)&sc->rank, &sc->rank_cap, n, sizeof(int32_t)) &&
           grow((void **)&sc->aux, &sc->aux_cap, n, sizeof(int32_t)) &&
           grow((void **)&sc->prev, &sc->prev_cap, n, sizeof(int32_t)) &&
           grow((void **)&sc->next, &sc->next_cap, n, sizeof(int32_t));
}

static void pair_rank(const eng_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *new_id)
{
    const pair_slot *ps = pmap_find(t, a, b);
    if (ps) {
        *rank = ps->rank;
        *new_id = ps->new_id;
    } else {
        *rank = RANK_NONE;
        *new_id = -1;
    }
}

/* HF BPE::merge_word + Word::merge_all on one pre-tokenized piece (raw bytes; each byte is one
 * byte-level character): repeatedly merge the adjacent pair with the lowest merge rank, the
 * leftmost among equal ranks. */

/* The lowest rank of the m - 1 adjacent pairs of m parts (rank[i]: parts i and i + 1) and its
 * first index (*best); RANK_NONE when no pair merges. */
static int32_t lowest_rank(const int32_t *rank, size_t m, size_t *best)
{
    int32_t br = RANK_NONE;
    *best = 0;
    for (size_t i = 0; i + 1 < m; i++)
        if (rank[i] < br) {
            br = rank[i];
            *best = i;
        }
    return br;
}

static pp_status hf_bpe_piece(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                              ivec *out)
{
    if (t->ignore_merges) {
        int32_t id = vmap_find(t, s, n);
        if (id >= 0)
            return ivec_push(out, id) ? PP_STATUS_OK : oom(sc->err, "ids");
    }
    if (n == 1 && t->byte_id[s[0]] >= 0)
        return ivec_push(out, t->byte_id[s[0]]) ? PP_STATUS_OK : oom(sc->err, "ids");
    if (!scratch_symbols(sc, n))
        return oom(sc->err, "bpe symbols");
    int32_t *sym = sc->sym;
    size_t m = 0;
    bool prev_unk = false;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) {
            /* HF: a character missing from the vocabulary becomes unk (fused when fuse_unk) or
             * is dropped when there is no unk token */
            if (t->unk_id < 0)
                continue;
            if (t->fuse_unk && prev_unk)
                continue;
            sym[m++] = t->unk_id;
            prev_unk = true;
            continue;
        }
        sym[m++] = id;
        prev_unk = false;
    }
    if (m >= 2 && m <= BPE_SMALL) {
        int32_t *rank = sc->rank, *nid = sc->aux;
        for (size_t i = 0; i + 1 < m; i++)
            pair_rank(t, sym[i], sym[i + 1], &rank[i], &nid[i]);
        for (;;) {
            size_t best;
            if (lowest_rank(rank, m, &best) == RANK_NONE)
                break;
            sym[best] = nid[best];
            memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
            if (m >= best + 3) {
                memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
                memmove(nid + best + 1, nid + best + 2, (m - best - 3) * sizeof *nid);
            }
            m--;
            if (best > 0)
                pair_rank(t, sym[best - 1], sym[best], &rank[best - 1], &nid[best - 1]);
            if (best + 1 < m)
                pair_rank(t, sym[best], sym[best + 1], &rank[best], &nid[best]);
        }
    } else if (m > BPE_SMALL) {
        /* Word::merge_all: a heap of (rank, pos, new id); stale entries are skipped when the
         * symbol at pos is gone or its pair no longer produces new id. */
        int32_t *prev = sc->prev, *next = sc->next;
        for (size_t i = 0; i < m; i++) {
            prev[i] = (int32_t)i - 1;
            next[i] = i + 1 < m ? (int32_t)(i + 1) : -1;
        }
        size_t hn = 0;
        for (size_t i = 0; i + 1 < m; i++) {
            int32_t r, nid;
            pair_rank(t, sym[i], sym[i + 1], &r, &nid);
            if (r != RANK_NONE && !heap_push(sc, &hn, (heap_entry){r, (uint32_t)i, nid}))
                return oom(sc->err, "bpe heap");
        }
        uint8_t *alive = (uint8_t *)sc->rank; /* reuse: m bytes fit in m int32 */
        memset(alive, 1, m);
        while (hn > 0) {
            heap_entry top = heap_pop(sc, &hn);
            uint32_t p = top.pos;
            if (!alive[p] || next[p] < 0)
                continue;
            int32_t q = next[p];
            int32_t r, nid;
            pair_rank(t, sym[p], sym[q], &r, &nid);
            if (r == RANK_NONE || nid != top.aux)
                continue;
            sym[p] = nid;
            alive[q] = 0;
            next[p] = next[q];
            if (next[q] >= 0)
                prev[next[q]] = (int32_t)p;
            if (prev[p] >= 0) {
                int32_t a = prev[p];
                pair_rank(t, sym[a], sym[p], &r, &nid);
                if (r != RANK_NONE && !heap_push(sc, &hn, (heap_entry){r, (uint32_t)a, nid}))
                    return oom(sc->err, "bpe heap");
            }
            if (next[p] >= 0) {
                pair_rank(t, sym[p], sym[next[p]], &r, &nid);
                if (r != RANK_NONE && !heap_push(sc, &hn, (heap_entry){r, p, nid}))
                    return oom(sc->err, "bpe heap");
            }
        }
        size_t k = 0;
        for (int32_t i = 0; i >= 0; i = next[i])
            sym[k++] = sym[i];
        m = k;
    }
    for (size_t i = 0; i < m; i++)
        if (!ivec_push(out, sym[i]))
            return oom(sc->err, "ids");
    return PP_STATUS_OK;
}

/* ---- tiktoken rank BPE ----------------------------------------------------------------------- */

static int32_t tk_rank(const eng_tokenizer *t, const uint8_t *s, size_t a, size_t b)
{
    if (b - a > t->max_token_len)
        return RANK_NONE;
    int32_t id = vmap_find(t, s + a, b - a);
    return id < 0 ? RANK_NONE : id;
}

/* End of the part starting at offset i: the start of its next part, or n. */
static size_t part_end(const int32_t *next, int32_t i, size_t n)
{
    return next[i] >= 0 ? (size_t)next[i] : n;
}

/* tiktoken CoreBPE byte_pair_encode / _byte_pair_merge: a piece that is a token is that token;
 * otherwise repeatedly merge the adjacent pair whose concatenation has the lowest rank (the
 * leftmost among equal ranks). */
static pp_status tk_bpe_piece(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                              ivec *out)
{
    int32_t whole = n <= t->max_token_len ? vmap_find(t, s, n) : -1;
    if (whole >= 0)
        return ivec_push(out, whole) ? PP_STATUS_OK : oom(sc->err, "ids");
    if (!scratch_symbols(sc, n + 1))
        return oom(sc->err, "bpe symbols");
    int32_t *start = sc->sym; /* part start offsets */
    size_t m = n;
    for (size_t i = 0; i <= n; i++)
        start[i] = (int32_t)i;
    if (n <= BPE_SMALL) {
        /* rank[i]: rank of bytes start[i] .. start[i + 2] (the pair i, i + 1) */
        int32_t *rank = sc->rank;
        for (size_t i = 0; i + 1 < m; i++)
            rank[i] = tk_rank(t, s, (size_t)start[i], (size_t)start[i + 2]);
        for (;;) {
            size_t best;
            if (lowest_rank(rank, m, &best) == RANK_NONE)
                break;
            memmove(start + best + 1, start + best + 2, (m - best - 1) * sizeof *start);
            if (m >= best + 3)
                memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
            m--;
            if (best > 0)
                rank[best - 1] = tk_rank(t, s, (size_t)start[best - 1], (size_t)start[best + 1]);
            if (best + 1 < m)
                rank[best] = tk_rank(t, s, (size_t)start[best], (size_t)start[best + 2]);
        }
    } else {
        int32_t *prev = sc->prev, *next = sc->next;
        uint8_t *alive = (uint8_t *)sc->rank;
        memset(alive, 1, n);
        for (size_t i = 0; i < n; i++) {
            prev[i] = (int32_t)i - 1;
            next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        }
        size_t hn = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            int32_t r = tk_rank(t, s, i, i + 2);
            if (r != RANK_NONE &&
                !heap_push(sc, &hn, (heap_entry){r, (uint32_t)i, (int32_t)(i + 2)}))
                return oom(sc->err, "bpe heap");
        }
        while (hn > 0) {
            heap_entry top = heap_pop(sc, &hn);
            uint32_t p = top.pos;
            if (!alive[p] || next[p] < 0 || part_end(next, next[p], n) != (size_t)top.aux)
                continue;
            int32_t q = next[p];
            alive[q] = 0;
            next[p] = next[q];
            if (next[q] >= 0)
                prev[next[q]] = (int32_t)p;
            if (prev[p] >= 0) {
                int32_t a = prev[p];
                size_t e = part_end(next, (int32_t)p, n);
                int32_t r = tk_rank(t, s, (size_t)a, e);
                if (r != RANK_NONE && !heap_push(sc, &hn, (heap_entry){r, (uint32_t)a, (int32_t)e}))
                    return oom(sc->err, "bpe heap");
            }
            if (next[p] >= 0) {
                size_t e = part_end(next, next[p], n);
                int32_t r = tk_rank(t, s, p, e);
                if (r != RANK_NONE && !heap_push(sc, &hn, (heap_entry){r, p, (int32_t)e}))
                    return oom(sc->err, "bpe heap");
            }
        }
        m = 0;
        for (int32_t i = 0; i >= 0; i = next[i])
            start[m++] = i;
        start[m] = (int32_t)n;
    }
    for (size_t i = 0; i < m; i++) {
        int32_t r = tk_rank(t, s, (size_t)start[i], (size_t)start[i + 1]);
        if (r == RANK_NONE) /* cannot happen: single bytes are checked at load */
            return eng_fail(sc->err, PP_STATUS_INTERNAL, "tokenizer: byte sequence without a rank");
        if (!ivec_push(out, r))
            return oom(sc->err, "ids");
    }
    return PP_STATUS_OK;
}

/* ---- per-call piece cache -------------------------------------------------------------------- */

/* The cached ids of piece s[0..n), or NULL (*n_ids set when found). */
static const int32_t *cache_get(const scratch *sc, const uint8_t *s, size_t n, uint32_t h,
                                size_t *n_ids)
{
    if (!sc->cache)
        return NULL;
    for (uint32_t i = h & sc->cache_mask;; i = (i + 1) & sc->cache_mask) {
        const cache_slot *c = &sc->cache[i];
        if (c->key_len == 0)
            return NULL;
        if (c->hash == h && c->key_len == n && memcmp(sc->cache_keys.p + c->key_off, s, n) == 0) {
            *n_ids = c->n_ids;
            return sc->cache_ids.p + c->ids_off;
        }
    }
}

/* Remembers piece -> ids[0..n_ids); a full or failed insert is skipped (the cache is only a
 * speed-up). */
static void cache_put(scratch *sc, const uint8_t *s, size_t n, uint32_t h, const int32_t *ids,
                      size_t n_ids)
{
    if (n_ids > 255 || sc->cache_keys.n > UINT32_MAX / 2 || sc->cache_ids.n > UINT32_MAX / 2)
        return;
    if (!sc->cache || 2 * (sc->cache_n + 1) > sc->cache_mask + 1) {
        uint32_t cap = sc->cache ? 2 * (sc->cache_mask + 1) : 256;
        if (cap > CACHE_MAX_SLOTS)
            return; /* full: stop remembering */
        cache_slot *nt = calloc(cap, sizeof *nt);
        if (!nt)
            return;
        if (sc->cache) {
            for (uint32_t i = 0; i <= sc->cache_mask; i++) {
                if (sc->cache[i].key_len == 0)
                    continue;
                uint32_t j = sc->cache[i].hash & (cap - 1);
                while (nt[j].key_len != 0)
                    j = (j + 1) & (cap - 1);
                nt[j] = sc->cache[i];
            }
            free(sc->cache);
        }
        sc->cache = nt;
        sc->cache_mask = cap - 1;
    }
    size_t key_off = sc->cache_keys.n, ids_off = sc->cache_ids.n;
    if (!bbuf_add(&sc->cache_keys, s, n))
        return;
    for (size_t i = 0; i < n_ids; i++)
        if (!ivec_push(&sc->cache_ids, ids[i])) {
            sc->cache_ids.n = ids_off;
            return;
        }
    uint32_t j = h & sc->cache_mask;
    while (sc->cache[j].key_len != 0)
        j = (j + 1) & sc->cache_mask;
    sc->cache[j] = (cache_slot){.hash = h,
                                .key_off = (uint32_t)key_off,
                                .ids_off = (uint32_t)ids_off,
                                .key_len = (uint8_t)n,
                                .n_ids = (uint8_t)n_ids};
    sc->cache_n++;
}

/* BPE of one piece through the cache. */
static pp_status bpe_piece(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                           ivec *out)
{
    if (n < 2 || n > CACHE_MAX_PIECE)
        return t->kind == TOK_HF_BPE ? hf_bpe_piece(t, sc, s, n, out)
                                     : tk_bpe_piece(t, sc, s, n, out);
    uint32_t h = hash_bytes(s, n);
    if (t->kind == TOK_TIKTOKEN) {
        /* tiktoken: a piece that is a token is that token (checked first, as tk_bpe_piece does) */
        int32_t whole = vmap_find_h(t, s, n, h);
        if (whole >= 0)
            return ivec_push(out, whole) ? PP_STATUS_OK : oom(sc->err, "ids");
    }
    size_t n_ids;
    const int32_t *hit = cache_get(sc, s, n, h, &n_ids);
    if (hit) {
        if (!grow((void **)&out->p, &out->cap, out->n + n_ids, sizeof *out->p))
            return oom(sc->err, "ids");
        memcpy(out->p + out->n, hit, n_ids * sizeof *hit);
        out->n += n_ids;
        return PP_STATUS_OK;
    }
    size_t before = out->n;
    pp_status st =
        t->kind == TOK_HF_BPE ? hf_bpe_piece(t, sc, s, n, out) : tk_bpe_piece(t, sc, s, n, out);
    if (st == PP_STATUS_OK)
        cache_put(sc, s, n, h, out->p + before, out->n - before);
    return st;
}

/* ---- HF encode pipeline ---------------------------------------------------------------------- */

static pp_status hf_pretokenize(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                                int stage, ivec *out);

/* ByteLevel pre-tokenizer (add_prefix_space, use_regex) then BPE on each piece. */
static pp_status hf_bytelevel(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                              ivec *out)
{
    if (n == 0)
        return PP_STATUS_OK;
    if (t->prefix_space && s[0] != ' ') {
        bbuf b = {0};
        if (!bbuf_add(&b, " ", 1) || !bbuf_add(&b, s, n)) {
            free(b.p);
            return oom(sc->err, "prefix space");
        }
        pp_status st = PP_STATUS_OK;
        if (t->bl_regex.code)
            st = hf_pretokenize(t, sc, (const uint8_t *)b.p, b.n, -1, out);
        else
            st = bpe_piece(t, sc, (const uint8_t *)b.p, b.n, out);
        free(b.p);
        return st;
    }
    if (t->bl_regex.code)
        return hf_pretokenize(t, sc, s, n, -1, out);
    return bpe_piece(t, sc, s, n, out);
}

/* Hands one piece of stage `stage` on: to the next Split stage, to ByteLevel after the last one,
 * or to BPE after the ByteLevel regex (stage -1). */
static pp_status split_piece(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                             int stage, ivec *out)
{
    if (stage < 0)
        return bpe_piece(t, sc, s, n, out);
    if (stage + 1 < t->n_split)
        return hf_pretokenize(t, sc, s, n, stage + 1, out);
    return hf_bytelevel(t, sc, s, n, out);
}

/* Split(Isolated) stage `stage` (-1: the ByteLevel GPT-2 regex, whose pieces go to BPE): the
 * matches and the gaps between them are pieces, in order; empty matches split nothing
 * (onig find_iter: an empty match right after the previous match is skipped one char on). */
static pp_status hf_pretokenize(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                                int stage, ivec *out)
{
    if (n == 0)
        return PP_STATUS_OK;
    const tok_regex *re = stage < 0 ? &t->bl_regex : &t->split[stage];
    size_t last_end = 0, prev = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    pp_status st;
    while (last_end <= n) {
        size_t ms, me;
        int rc = regex_next(re, sc, s, n, last_end, &ms, &me);
        if (rc < 0)
            return PP_STATUS_INTERNAL;
        if (rc == 0)
            break;
        if (ms == me && have_last && last_match_end == me) {
            if (last_end >= n)
                break;
            int32_t cp;
            last_end += (size_t)utf8_decode(s + last_end, &cp);
            continue;
        }
        last_end = me;
        have_last = true;
        last_match_end = me;
        if (ms == me) {
            /* an empty match still ends the current gap */
            if (ms > prev) {
                st = split_piece(t, sc, s + prev, ms - prev, stage, out);
                if (st != PP_STATUS_OK)
                    return st;
            }
            prev = me;
            continue;
        }
        for (int part = 0; part < 2; part++) {
            size_t a = part == 0 ? prev : ms, b = part == 0 ? ms : me;
            if (b <= a)
                continue;
            st = split_piece(t, sc, s + a, b - a, stage, out);
            if (st != PP_STATUS_OK)
                return st;
        }
        prev = me;
    }
    if (prev < n) {
        st = split_piece(t, sc, s + prev, n - prev, stage, out);
        if (st != PP_STATUS_OK)
            return st;
    }
    return PP_STATUS_OK;
}

static pp_status hf_pretokenize_all(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                                    ivec *out)
{
    if (t->n_split > 0)
        return hf_pretokenize(t, sc, s, n, 0, out);
    return hf_bytelevel(t, sc, s, n, out);
}

/* NFC of s[0..n) into sc->norm when it may change anything; *res points at the result. Only
 * code points >= U+0300 (lead byte >= 0xCC) can be affected, and NFC may be applied piecewise
 * at boundaries before ASCII characters (starters that never compose with what precedes). */
static pp_status nfc(scratch *sc, const uint8_t *s, size_t n, const uint8_t **res, size_t *res_n)
{
    size_t i = 0;
    while (i < n && s[i] < 0xCC)
        i++;
    if (i == n) {
        *res = s;
        *res_n = n;
        return PP_STATUS_OK;
    }
    sc->norm.n = 0;
    size_t done = 0;
    while (i < n) {
        /* region: from the last ASCII byte before i (a safe boundary) to the next ASCII byte */
        size_t a = i;
        while (a > done && s[a - 1] >= 0x80)
            a--;
        if (a > done)
            a--; /* include the ASCII starter: it may compose with following marks */
        size_t b = i;
        while (b < n && s[b] >= 0x80)
            b++;
        if (!bbuf_add(&sc->norm, s + done, a - done))
            return oom(sc->err, "normalization");
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r = utf8proc_map(s + a, (utf8proc_ssize_t)(b - a), &dst,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) {
            free(dst);
            return eng_fail(sc->err, PP_STATUS_INTERNAL, "tokenizer: NFC failed: %s",
                            utf8proc_errmsg(r));
        }
        bool ok = bbuf_add(&sc->norm, dst, (size_t)r);
        free(dst);
        if (!ok)
            return oom(sc->err, "normalization");
        done = b;
        i = b;
        while (i < n && s[i] < 0xCC)
            i++;
    }
    if (!bbuf_add(&sc->norm, s + done, n - done))
        return oom(sc->err, "normalization");
    *res = (const uint8_t *)sc->norm.p;
    *res_n = sc->norm.n;
    return PP_STATUS_OK;
}

typedef struct span {
    size_t a, b;
    int32_t id; /* -1: text */
} span;

typedef struct span_vec {
    span *p;
    size_t n, cap;
} span_vec;

static bool span_push(span_vec *v, size_t a, size_t b, int32_t id)
{
    if (!grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p))
        return false;
    v->p[v->n++] = (span){a, b, id};
    return true;
}

/* HF AddedVocabulary::find_matches on s[0..n): added tokens and the text between them. */
static bool added_find_matches(const eng_tokenizer *t, const trie *tr, const uint8_t *s, size_t n,
                               span_vec *out)
{
    size_t start_offset = 0, pos = 0, ms, me;
    int32_t ti;
    while (pos < n && trie_find(tr, s, n, pos, &ms, &me, &ti)) {
        pos = me; /* aho-corasick's find_iter goes on after the match as found */
        const added_token *at = &t->added[ti];
        size_t start = ms, stop = me;
        if (at->single_word) {
            int32_t cp;
            bool start_space = start == 0;
            if (!start_space) {
                utf8_decode(s + utf8_prev(s, start), &cp);
                start_space = !is_word_char(cp);
            }
            bool stop_space = stop == n;
            if (!stop_space) {
                utf8_decode(s + stop, &cp);
                stop_space = !is_word_char(cp);
            }
            if (!start_space || !stop_space)
                continue;
        }
        if (at->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t p = utf8_prev(s, ns);
                int32_t cp;
                utf8_decode(s + p, &cp);
                if (!is_white_space(cp))
                    break;
                ns = p;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (at->rstrip) {
            while (stop < n) {
                int32_t cp;
                int l = utf8_decode(s + stop, &cp);
                if (!is_white_space(cp))
                    break;
                stop += (size_t)l;
            }
        }
        if (start > start_offset && !span_push(out, start_offset, start, -1))
            return false;
        if (!span_push(out, start, stop, at->id))
            return false;
        start_offset = stop;
    }
    if (start_offset < n && !span_push(out, start_offset, n, -1))
        return false;
    return true;
}

/* Normalizer, then (allow_special) normalized added tokens, then pre-tokenizers and BPE. */
static pp_status hf_encode_text(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                                bool allow_special, ivec *out)
{
    const uint8_t *ns = s;
    size_t nn = n;
    if (t->nfc) {
        pp_status st = nfc(sc, s, n, &ns, &nn);
        if (st != PP_STATUS_OK)
            return st;
    }
    if (!allow_special || t->norm_trie.n_tokens == 0)
        return hf_pretokenize_all(t, sc, ns, nn, out);
    /* ns may live in sc->norm, which the pass below does not touch */
    span_vec sp = {0};
    if (!added_find_matches(t, &t->norm_trie, ns, nn, &sp)) {
        free(sp.p);
        return oom(sc->err, "added tokens");
    }
    pp_status st = PP_STATUS_OK;
    for (size_t i = 0; i < sp.n && st == PP_STATUS_OK; i++) {
        if (sp.p[i].id >= 0)
            st = ivec_push(out, sp.p[i].id) ? PP_STATUS_OK : oom(sc->err, "ids");
        else
            st = hf_pretokenize_all(t, sc, ns + sp.p[i].a, sp.p[i].b - sp.p[i].a, out);
    }
    free(sp.p);
    return st;
}

static pp_status hf_encode(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                           bool allow_special, ivec *out)
{
    if (!allow_special || t->raw_trie.n_tokens == 0)
        return hf_encode_text(t, sc, s, n, allow_special, out);
    span_vec sp = {0};
    if (!added_find_matches(t, &t->raw_trie, s, n, &sp)) {
        free(sp.p);
        return oom(sc->err, "added tokens");
    }
    pp_status st = PP_STATUS_OK;
    for (size_t i = 0; i < sp.n && st == PP_STATUS_OK; i++) {
        if (sp.p[i].id >= 0)
            st = ivec_push(out, sp.p[i].id) ? PP_STATUS_OK : oom(sc->err, "ids");
        else
            st = hf_encode_text(t, sc, s + sp.p[i].a, sp.p[i].b - sp.p[i].a, allow_special, out);
    }
    free(sp.p);
    return st;
}

/* ---- tiktoken encode pipeline ---------------------------------------------------------------- */

/* tiktoken encode_native on s[0..n): specials (when allowed) cut the text; regex matches of the
 * pieces between them are BPE'd; text the regex does not match is dropped, as tiktoken does. */
static pp_status tk_encode_substr(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                                  bool allow_special, ivec *out)
{
    size_t pos = 0;
    while (pos <= n) {
        size_t ss = n, se = n;
        int32_t ti = -1;
        if (allow_special && !trie_find(&t->raw_trie, s, n, pos, &ss, &se, &ti)) {
            ss = se = n;
            ti = -1;
        }
        /* regex matches in s[pos .. ss) (fancy-regex find_iter semantics for empty matches) */
        const uint8_t *seg = s + pos;
        size_t sn = ss - pos, last_end = 0;
        bool have_last = false;
        size_t last_match = 0;
        while (last_end <= sn) {
            size_t ms, me;
            int rc = regex_next(&t->tk_regex, sc, seg, sn, last_end, &ms, &me);
            if (rc < 0)
                return PP_STATUS_INTERNAL;
            if (rc == 0)
                break;
            if (ms == me) {
                int32_t cp;
                last_end = me < sn ? me + (size_t)utf8_decode(seg + me, &cp) : sn + 1;
                if (have_last && last_match == me)
                    continue;
                have_last = true;
                last_match = me;
                continue; /* an empty piece encodes to nothing */
            }
            last_end = me;
            have_last = true;
            last_match = me;
            pp_status st = bpe_piece(t, sc, seg + ms, me - ms, out);
            if (st != PP_STATUS_OK)
                return st;
        }
        if (ti < 0)
            break;
        if (!ivec_push(out, t->added[ti].id))
            return oom(sc->err, "ids");
        pos = se;
    }
    return PP_STATUS_OK;
}

/* tokenization_kimi.py encode: 400,000-char slices, each cut by
 * _split_whitespaces_or_nonwhitespaces into pieces whose runs of consecutive str.isspace() /
 * non-space characters are at most 25,000 long; each piece is encoded on its own. */
static pp_status tk_encode(const eng_tokenizer *t, scratch *sc, const uint8_t *s, size_t n,
                           bool allow_special, ivec *out)
{
    size_t slice0 = 0;
    while (slice0 < n) {
        /* one slice of up to KIMI_SLICE_CHARS code points */
        size_t slice1 = slice0, chars = 0;
        while (slice1 < n && chars < KIMI_SLICE_CHARS) {
            slice1++;
            while (slice1 < n && (s[slice1] & 0xC0) == 0x80)
                slice1++;
            chars++;
        }
        size_t piece0 = slice0, i = slice0, run_len = 0;
        int32_t cp0;
        utf8_decode(s + slice0, &cp0);
        bool run_space = is_py_space(cp0);
        while (i < slice1) {
            int32_t cp = s[i];
            int l = cp < 0x80 ? 1 : utf8_decode(s + i, &cp);
            bool sp = is_py_space(cp);
            if (sp != run_space) {
                run_len = 1;
                run_space = sp;
            } else if (++run_len > KIMI_RUN_CHARS) {
                pp_status st = tk_encode_substr(t, sc, s + piece0, i - piece0, allow_special, out);
                if (st != PP_STATUS_OK)
                    return st;
                piece0 = i;
                run_len = 1;
            }
            i += (size_t)l;
        }
        pp_status st = tk_encode_substr(t, sc, s + piece0, slice1 - piece0, allow_special, out);
        if (st != PP_STATUS_OK)
            return st;
        slice0 = slice1;
    }
    return PP_STATUS_OK;
}

/* ---- public: encode / decode ----------------------------------------------------------------- */

pp_status eng_tokenizer_encode(const eng_tokenizer *tok, const char *text, size_t len,
                               bool allow_special, int32_t **ids, size_t *n_ids, eng_err *err)
{
    if (ids)
        *ids = NULL;
    if (n_ids)
        *n_ids = 0;
    if (!tok || !ids || !n_ids || (!text && len > 0))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "tokenizer_encode: NULL argument");
    if (len > MAX_TEXT_BYTES)
        return eng_fail(err, PP_STATUS_INVALID_ARG,
                        "tokenizer_encode: text of %zu bytes exceeds %zu", len, MAX_TEXT_BYTES);
    const uint8_t *s = (const uint8_t *)text;
    bbuf clean = {0};
    if (len > 0 && !utf8_is_valid(s, len)) {
        utf8_state u = {0};
        if (!utf8_feed(&u, s, len, &clean) || !utf8_finish(&u, &clean)) {
            free(clean.p);
            return oom(err, "text");
        }
        if (clean.n > MAX_TEXT_BYTES) {
            free(clean.p);
            return eng_fail(err, PP_STATUS_INVALID_ARG, "tokenizer_encode: text too long");
        }
        s = (const uint8_t *)clean.p;
        len = clean.n;
    }
    scratch sc = {.err = err};
    ivec out = {0};
    pp_status st = PP_STATUS_OK;
    if (len > 0)
        st = tok->kind == TOK_HF_BPE ? hf_encode(tok, &sc, s, len, allow_special, &out)
                                     : tk_encode(tok, &sc, s, len, allow_special, &out);
    scratch_free(&sc);
    free(clean.p);
    if (st != PP_STATUS_OK) {
        free(out.p);
        return st;
    }
    if (!out.p) {
        out.p = malloc(sizeof *out.p);
        if (!out.p)
            return oom(err, "ids");
    }
    *ids = out.p;
    *n_ids = out.n;
    return PP_STATUS_OK;
}

const char *eng_tokenizer_token_bytes(const eng_tokenizer *tok, int32_t id, size_t *len)
{
    if (len)
        *len = 0;
    if (!tok || id < 0 || id >= tok->n_vocab)
        return NULL;
    size_t n;
    const char *p;
    if (tok->added_of[id] >= 0) {
        const added_token *at = &tok->added[tok->added_of[id]];
        p = at->content;
        n = at->len;
    } else if (tok->tok_len[id] >= 0) {
        p = (const char *)tok_model_bytes(tok, id, &n);
    } else {
        return NULL;
    }
    if (len)
        *len = n;
    return p;
}

pp_status eng_tokenizer_decode(const eng_tokenizer *tok, const int32_t *ids, size_t n_ids,
                               char **text, size_t *len, eng_err *err)
{
    if (text)
        *text = NULL;
    if (len)
        *len = 0;
    if (!tok || !text || (!ids && n_ids > 0))
        return eng_fail(err, PP_STATUS_INVALID_ARG, "tokenizer_decode: NULL argument");
    bbuf out = {0};
    utf8_state u = {0};
    for (size_t i = 0; i < n_ids; i++) {
        size_t n;
        const char *p = eng_tokenizer_token_bytes(tok, ids[i], &n);
        if (!p) {
            free(out.p);
            return eng_fail(err, PP_STATUS_INVALID_ARG,
                            "tokenizer_decode: id %d at position %zu is not a token (n_vocab %d)",
                            ids[i], i, tok->n_vocab);
        }
        if (!utf8_feed(&u, (const uint8_t *)p, n, &out)) {
            free(out.p);
            return oom(err, "decode");
        }
    }
    if (!utf8_finish(&u, &out) || !bbuf_reserve(&out, 0)) {
        free(out.p);
        return oom(err, "decode");
    }
    out.p[out.n] = '\0';
    *text = out.p;
    if (len)
        *len = out.n;
    return PP_STATUS_OK;
}

int32_t eng_tokenizer_n_vocab(const eng_tokenizer *tok)
{
    return tok ? tok->n_vocab : 0;
}

int32_t eng_tokenizer_special_id(const eng_tokenizer *tok, const char *text)
{
    if (!tok || !text)
        return -1;
    size_t n = strlen(text);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && memcmp(tok->added[i].content, text, n) == 0)
            return tok->added[i].id;
    return -1;
}

bool eng_tokenizer_is_special(const eng_tokenizer *tok, int32_t id)
{
    if (!tok || id < 0 || id >= tok->n_vocab || tok->added_of[id] < 0)
        return false;
    return tok->added[tok->added_of[id]].special;
}

/* ---- streaming detokenizer ------------------------------------------------------------------- */

struct eng_detok {
    const eng_tokenizer *tok;
    utf8_state u;
    bbuf out;
};

pp_status eng_detok_create(const eng_tokenizer *tok, eng_detok **out, eng_err *err)
{
    if (out)
        *out = NULL;
    if (!tok || !out)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "detok_create: NULL argument");
    eng_detok *d = calloc(1, sizeof *d);
    if (!d || !bbuf_reserve(&d->out, 64)) {
        free(d);
        return oom(err, "detokenizer");
    }
    d->tok = tok;
    d->out.p[0] = '\0';
    *out = d;
    return PP_STATUS_OK;
}

void eng_detok_free(eng_detok *d)
{
    if (!d)
        return;
    free(d->out.p);
    free(d);
}

pp_status eng_detok_push(eng_detok *d, int32_t id, const char **text, size_t *len, eng_err *err)
{
    if (text)
        *text = "";
    if (len)
        *len = 0;
    if (!d || !text || !len)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "detok_push: NULL argument");
    size_t n;
    const char *p = eng_tokenizer_token_bytes(d->tok, id, &n);
    if (!p)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "detok_push: id %d is not a token (n_vocab %d)",
                        id, d->tok->n_vocab);
    d->out.n = 0;
    d->out.p[0] = '\0';
    if (!utf8_feed(&d->u, (const uint8_t *)p, n, &d->out))
        return oom(err, "detokenizer");
    *text = d->out.p;
    *len = d->out.n;
    return PP_STATUS_OK;
}

pp_status eng_detok_flush(eng_detok *d, const char **text, size_t *len)
{
    if (text)
        *text = "";
    if (len)
        *len = 0;
    if (!d || !text || !len)
        return PP_STATUS_INVALID_ARG;
    d->out.n = 0;
    d->out.p[0] = '\0';
    if (!utf8_finish(&d->u, &d->out))
        return PP_STATUS_OUT_OF_MEMORY;
    *text = d->out.p;
    *len = d->out.n;
    return PP_STATUS_OK;
}

/* ---- loading: shared ------------------------------------------------------------------------- */

void eng_tokenizer_free(eng_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->arena);
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->added_of);
    free(tok->vmap);
    free(tok->pmap);
    for (int i = 0; i < tok->n_split; i++)
        pcre2_code_free(tok->split[i].code);
    pcre2_code_free(tok->bl_regex.code);
    pcre2_code_free(tok->tk_regex.code);
    for (int i = 0; i < tok->n_added; i++) {
        if (tok->added[i].match != tok->added[i].content)
            free(tok->added[i].match);
        free(tok->added[i].content);
    }
    free(tok->added);
    free(tok->raw_trie.nodes);
    free(tok->norm_trie.nodes);
    free(tok);
}

static pp_status read_file(const char *path, char **data, size_t *size, eng_err *err)
{
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return eng_fail(err, errno == ENOENT ? PP_STATUS_NOT_FOUND : PP_STATUS_IO, "%s: %s", path,
                        strerror(errno));
    struct stat stt;
    if (fstat(fileno(f), &stt) != 0 || !S_ISREG(stt.st_mode)) {
        fclose(f);
        return eng_fail(err, PP_STATUS_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)stt.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: %lld bytes is too large for a tokenizer",
                        path, (long long)stt.st_size);
    }
    size_t n = (size_t)stt.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return oom(err, path);
    }
    if (n > 0 && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return eng_fail(err, PP_STATUS_IO, "%s: read failed", path);
    }
    fclose(f);
    buf[n] = '\0';
    *data = buf;
    *size = n;
    return PP_STATUS_OK;
}

static pp_status parse_json(const char *path, const char *data, size_t n, struct json_object **out,
                            eng_err *err)
{
    *out = NULL;
    if (n > INT_MAX)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: too large for the JSON parser", path);
    struct json_tokener *jt = json_tokener_new_ex(64);
    if (!jt)
        return oom(err, "json");
    struct json_object *root = json_tokener_parse_ex(jt, data, (int)n);
    enum json_tokener_error je = json_tokener_get_error(jt);
    if (!root || je != json_tokener_success) {
        if (je == json_tokener_continue)
            je = json_tokener_error_parse_eof;
        pp_status st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: invalid JSON: %s", path,
                                json_tokener_error_desc(je));
        json_object_put(root);
        json_tokener_free(jt);
        return st;
    }
    json_tokener_free(jt);
    *out = root;
    return PP_STATUS_OK;
}

static struct json_object *jget(struct json_object *obj, const char *key)
{
    struct json_object *v = NULL;
    if (!obj || !json_object_is_type(obj, json_type_object) ||
        !json_object_object_get_ex(obj, key, &v))
        return NULL;
    return v; /* NULL for JSON null too */
}

static bool jbool(struct json_object *obj, const char *key, bool dflt)
{
    struct json_object *v = jget(obj, key);
    if (!v || !json_object_is_type(v, json_type_boolean))
        return dflt;
    return json_object_get_boolean(v);
}

static const char *jtype(struct json_object *obj)
{
    struct json_object *v = jget(obj, "type");
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

/* Registers added token (id, content) with its flags; builds its matching form. */
static pp_status add_token(eng_tokenizer *t, int32_t id, const char *content, size_t len,
                           bool special, bool lstrip, bool rstrip, bool single_word,
                           bool normalized, eng_err *err)
{
    if (id < 0 || id >= t->n_vocab)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "added token id %d out of range", id);
    if (t->added_of[id] >= 0)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "added token id %d listed twice", id);
    if (!utf8_is_valid((const uint8_t *)content, len))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "added token %d is not valid UTF-8", id);
    added_token *at = &t->added[t->n_added];
    *at = (added_token){.id = id,
                        .special = special,
                        .lstrip = lstrip,
                        .rstrip = rstrip,
                        .single_word = single_word,
                        .normalized = normalized};
    at->content = malloc(len + 1);
    if (!at->content)
        return oom(err, "added token");
    memcpy(at->content, content, len);
    at->content[len] = '\0';
    at->len = len;
    at->match = at->content;
    at->match_len = len;
    t->added_of[id] = t->n_added++;
    if (normalized && t->nfc && len > 0) {
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)content, (utf8proc_ssize_t)len,
                                          &dst, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0) {
            free(dst);
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "added token %d: NFC failed", id);
        }
        at->match = (char *)dst;
        at->match_len = (size_t)r;
    }
    if (at->match_len == 0)
        return PP_STATUS_OK; /* an empty token never matches */
    /* HF: tokens with normalized=true are matched on normalized text; tiktoken: all on raw text */
    trie *tr = (t->kind == TOK_HF_BPE && normalized) ? &t->norm_trie : &t->raw_trie;
    if (!trie_add(tr, (const uint8_t *)at->match, at->match_len, t->n_added - 1))
        return oom(err, "added token trie");
    return PP_STATUS_OK;
}

/* ---- loading: tokenizer.json ----------------------------------------------------------------- */

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100.. in order. */
static void byte_level_tables(int32_t byte_to_cp[256], int16_t cp_to_byte[324])
{
    for (int i = 0; i < 324; i++)
        cp_to_byte[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_to_cp[b] = self ? b : 256 + extra++;
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

/* Maps a byte-level string to raw bytes; false when a character is outside the alphabet. */
static bool byte_level_decode(const int16_t cp_to_byte[324], const char *s, size_t n, bbuf *out)
{
    out->n = 0;
    if (!bbuf_reserve(out, n))
        return false;
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        uint8_t lo, hi;
        int len = utf8_lead(u[i], &lo, &hi);
        if (len == 0 || n - i < (size_t)len)
            return false;
        int32_t cp;
        utf8_decode(u + i, &cp);
        if (cp >= 324 || cp_to_byte[cp] < 0)
            return false;
        out->p[out->n++] = (char)cp_to_byte[cp];
        i += (size_t)len;
    }
    return true;
}

static pp_status load_normalizer(eng_tokenizer *t, struct json_object *norm, eng_err *err)
{
    if (!norm)
        return PP_STATUS_OK;
    const char *type = jtype(norm);
    if (type && strcmp(type, "NFC") == 0) {
        t->nfc = true;
        return PP_STATUS_OK;
    }
    if (type && strcmp(type, "Sequence") == 0) {
        struct json_object *list = jget(norm, "normalizers");
        size_t n =
            list && json_object_is_type(list, json_type_array) ? json_object_array_length(list) : 0;
        for (size_t i = 0; i < n; i++) {
            const char *ty = jtype(json_object_array_get_idx(list, i));
            if (!ty || strcmp(ty, "NFC") != 0)
                return eng_fail(err, PP_STATUS_UNSUPPORTED,
                                "normalizer Sequence holds '%s' (only NFC is supported)",
                                ty ? ty : "?");
            t->nfc = true;
        }
        return PP_STATUS_OK;
    }
    return eng_fail(err, PP_STATUS_UNSUPPORTED, "normalizer '%s' is not supported (null or NFC)",
                    type ? type : "?");
}

static pp_status load_pre_tokenizer_one(eng_tokenizer *t, struct json_object *pt, bool last,
                                        bool *have_bytelevel, eng_err *err)
{
    const char *type = jtype(pt);
    if (*have_bytelevel)
        return eng_fail(err, PP_STATUS_UNSUPPORTED,
                        "pre_tokenizer '%s' after ByteLevel is not supported", type ? type : "?");
    if (type && strcmp(type, "Split") == 0) {
        const char *behavior = json_object_get_string(jget(pt, "behavior"));
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return eng_fail(err, PP_STATUS_UNSUPPORTED,
                            "Split pre_tokenizer behavior '%s' (only Isolated)",
                            behavior ? behavior : "?");
        if (jbool(pt, "invert", false))
            return eng_fail(err, PP_STATUS_UNSUPPORTED, "Split with invert=true");
        if (t->n_split == MAX_SPLIT_STAGES)
            return eng_fail(err, PP_STATUS_UNSUPPORTED, "more than %d Split stages",
                            MAX_SPLIT_STAGES);
        struct json_object *pat = jget(pt, "pattern");
        struct json_object *rx = jget(pat, "Regex"), *lit = jget(pat, "String");
        struct json_object *p = rx ? rx : lit;
        if (!p || !json_object_is_type(p, json_type_string))
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "Split without a pattern");
        pp_status st = regex_compile(&t->split[t->n_split], json_object_get_string(p),
                                     (size_t)json_object_get_string_len(p), !rx, "Split", err);
        if (st != PP_STATUS_OK)
            return st;
        t->n_split++;
        return PP_STATUS_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0) {
        if (!last)
            return eng_fail(err, PP_STATUS_UNSUPPORTED, "ByteLevel must be the last pre_tokenizer");
        *have_bytelevel = true;
        t->prefix_space = jbool(pt, "add_prefix_space", true);
        if (jbool(pt, "use_regex", true))
            return regex_compile(&t->bl_regex, gpt2_pat_str, strlen(gpt2_pat_str), false,
                                 "ByteLevel", err);
        return PP_STATUS_OK;
    }
    return eng_fail(err, PP_STATUS_UNSUPPORTED,
                    "pre_tokenizer '%s' is not supported (Split, ByteLevel)", type ? type : "?");
}

static pp_status load_pre_tokenizer(eng_tokenizer *t, struct json_object *pt, eng_err *err)
{
    bool have_bl = false;
    pp_status st;
    const char *type = jtype(pt);
    if (!pt) {
        st = eng_fail(err, PP_STATUS_UNSUPPORTED,
                      "pre_tokenizer null (a byte-level BPE needs ByteLevel)");
    } else if (type && strcmp(type, "Sequence") == 0) {
        struct json_object *list = jget(pt, "pretokenizers");
        size_t n =
            list && json_object_is_type(list, json_type_array) ? json_object_array_length(list) : 0;
        st = PP_STATUS_OK;
        for (size_t i = 0; i < n && st == PP_STATUS_OK; i++)
            st = load_pre_tokenizer_one(t, json_object_array_get_idx(list, i), i + 1 == n, &have_bl,
                                        err);
    } else {
        st = load_pre_tokenizer_one(t, pt, true, &have_bl, err);
    }
    if (st == PP_STATUS_OK && !have_bl)
        st = eng_fail(err, PP_STATUS_UNSUPPORTED,
                      "pre_tokenizer without ByteLevel (only byte-level BPE is supported)");
    return st;
}

static pp_status load_hf_model(eng_tokenizer *t, struct json_object *model,
                               struct json_object *added, eng_err *err)
{
    const char *type = jtype(model);
    struct json_object *vocab = jget(model, "vocab"), *merges = jget(model, "merges");
    if (type ? strcmp(type, "BPE") != 0 : !merges)
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "model type '%s' (only BPE)",
                        type ? type : "?");
    if (!vocab || !json_object_is_type(vocab, json_type_object) || !merges ||
        !json_object_is_type(merges, json_type_array))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "model.vocab / model.merges missing");
    if (jbool(model, "byte_fallback", false))
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "BPE byte_fallback");
    struct json_object *dropout = jget(model, "dropout");
    if (dropout && json_object_get_double(dropout) != 0.0)
        return eng_fail(err, PP_STATUS_UNSUPPORTED, "BPE dropout");
    const char *keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        struct json_object *v = jget(model, keys[i]);
        if (v && json_object_is_type(v, json_type_string) && json_object_get_string_len(v) > 0)
            return eng_fail(err, PP_STATUS_UNSUPPORTED, "BPE %s", keys[i]);
    }
    t->ignore_merges = jbool(model, "ignore_merges", false);
    t->fuse_unk = jbool(model, "fuse_unk", false);

    /* n_vocab: one past the largest model or added id */
    int32_t max_id = -1;
    {
        json_object_object_foreach(vocab, key, val) {
            if (!json_object_is_type(val, json_type_int))
                return eng_fail(err, PP_STATUS_BAD_FORMAT, "vocab entry '%.100s' is not an integer",
                                key);
            int64_t id = json_object_get_int64(val);
            if (id < 0 || id >= MAX_TOKEN_ID)
                return eng_fail(err, PP_STATUS_BAD_FORMAT, "vocab id %lld out of range",
                                (long long)id);
            if (id > max_id)
                max_id = (int32_t)id;
        }
    }
    size_t n_added =
        added && json_object_is_type(added, json_type_array) ? json_object_array_length(added) : 0;
    for (size_t i = 0; i < n_added; i++) {
        struct json_object *a = json_object_array_get_idx(added, i);
        struct json_object *idv = jget(a, "id"), *cv = jget(a, "content");
        if (!idv || !json_object_is_type(idv, json_type_int) || !cv ||
            !json_object_is_type(cv, json_type_string))
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "added_tokens[%zu] needs id and content", i);
        int64_t id = json_object_get_int64(idv);
        if (id < 0 || id >= MAX_TOKEN_ID)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "added token id %lld out of range",
                            (long long)id);
        if (id > max_id)
            max_id = (int32_t)id;
    }
    if (max_id < 0)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "empty vocabulary");
    pp_status st = alloc_ids(t, max_id + 1, err);
    if (st != PP_STATUS_OK)
        return st;

    int32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
    byte_level_tables(byte_to_cp, cp_to_byte);
    uint8_t *in_map = calloc((size_t)t->n_vocab, 1);
    bbuf tmp = {0};
    if (!in_map)
        return oom(err, "vocabulary");
    st = PP_STATUS_OK;
    {
        json_object_object_foreach(vocab, key, val) {
            int32_t id = (int32_t)json_object_get_int64(val);
            size_t klen = strlen(key);
            if (t->tok_len[id] >= 0) {
                st = eng_fail(err, PP_STATUS_BAD_FORMAT, "vocab id %d used twice", id);
                break;
            }
            /* a key made of byte-level characters stands for those bytes; any other key decodes
             * to its own UTF-8 (HF ByteLevel decoder) and can never come out of BPE */
            if (!bbuf_reserve(&tmp, klen)) {
                st = oom(err, "vocabulary");
                break;
            }
            if (byte_level_decode(cp_to_byte, key, klen, &tmp) && tmp.n > 0) {
                in_map[id] = 1;
                st = set_model_bytes(t, id, tmp.p, tmp.n, err);
            } else {
                st = set_model_bytes(t, id, key, klen, err);
            }
            if (st != PP_STATUS_OK)
                break;
        }
    }
    if (st == PP_STATUS_OK)
        st = vmap_build(t, in_map, err);
    free(in_map);
    if (st != PP_STATUS_OK) {
        free(tmp.p);
        return st;
    }
    for (int b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        t->byte_id[b] = vmap_find(t, &c, 1);
    }
    t->unk_id = -1;
    struct json_object *unk = jget(model, "unk_token");
    if (unk && json_object_is_type(unk, json_type_string)) {
        bbuf ub = {0};
        if (byte_level_decode(cp_to_byte, json_object_get_string(unk),
                              (size_t)json_object_get_string_len(unk), &ub))
            t->unk_id = vmap_find(t, (const uint8_t *)ub.p, ub.n);
        free(ub.p);
    }

    /* merges -> pair map */
    size_t n_merges = json_object_array_length(merges);
    if (n_merges >= (size_t)INT32_MAX) {
        free(tmp.p);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "too many merges");
    }
    uint32_t cap = 16;
    while (cap < 2 * n_merges + 16)
        cap *= 2;
    t->pmap = malloc((size_t)cap * sizeof *t->pmap);
    if (!t->pmap) {
        free(tmp.p);
        return oom(err, "merges");
    }
    for (uint32_t i = 0; i < cap; i++)
        t->pmap[i].key = UINT64_MAX;
    t->pmask = cap - 1;
    bbuf ab = {0};
    for (size_t r = 0; r < n_merges && st == PP_STATUS_OK; r++) {
        struct json_object *m = json_object_array_get_idx(merges, r);
        const char *a = NULL, *b = NULL;
        size_t al = 0, bl = 0;
        if (m && json_object_is_type(m, json_type_string)) {
            const char *s = json_object_get_string(m);
            size_t sl = (size_t)json_object_get_string_len(m);
            const char *sp = memchr(s, ' ', sl);
            if (sp && !memchr(sp + 1, ' ', sl - (size_t)(sp + 1 - s))) {
                a = s;
                al = (size_t)(sp - s);
                b = sp + 1;
                bl = sl - al - 1;
            }
        } else if (m && json_object_is_type(m, json_type_array) &&
                   json_object_array_length(m) == 2) {
            struct json_object *x = json_object_array_get_idx(m, 0),
                               *y = json_object_array_get_idx(m, 1);
            if (x && y && json_object_is_type(x, json_type_string) &&
                json_object_is_type(y, json_type_string)) {
                a = json_object_get_string(x);
                al = (size_t)json_object_get_string_len(x);
                b = json_object_get_string(y);
                bl = (size_t)json_object_get_string_len(y);
            }
        }
        if (!a) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT, "merges[%zu] is not a pair", r);
            break;
        }
        /* merges of non-byte-level strings can never apply (BPE only sees byte-level symbols) */
        if (!byte_level_decode(cp_to_byte, a, al, &tmp) || tmp.n == 0)
            continue;
        int32_t ia = vmap_find(t, (const uint8_t *)tmp.p, tmp.n);
        ab.n = 0;
        if (!bbuf_add(&ab, tmp.p, tmp.n)) {
            st = oom(err, "merges");
            break;
        }
        if (!byte_level_decode(cp_to_byte, b, bl, &tmp) || tmp.n == 0)
            continue;
        int32_t ib = vmap_find(t, (const uint8_t *)tmp.p, tmp.n);
        if (!bbuf_add(&ab, tmp.p, tmp.n)) {
            st = oom(err, "merges");
            break;
        }
        int32_t inew = vmap_find(t, (const uint8_t *)ab.p, ab.n);
        if (ia < 0 || ib < 0 || inew < 0) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                          "merges[%zu] ('%.*s' '%.*s') uses a token missing from the vocabulary", r,
                          (int)(al > 100 ? 100 : al), a, (int)(bl > 100 ? 100 : bl), b);
            break;
        }
        pmap_put(t, ia, ib, (int32_t)r, inew);
    }
    free(ab.p);
    free(tmp.p);
    if (st != PP_STATUS_OK)
        return st;

    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->added)
        return oom(err, "added tokens");
    for (size_t i = 0; i < n_added && st == PP_STATUS_OK; i++) {
        struct json_object *a = json_object_array_get_idx(added, i);
        struct json_object *cv = jget(a, "content");
        bool special = jbool(a, "special", false);
        st = add_token(t, (int32_t)json_object_get_int64(jget(a, "id")), json_object_get_string(cv),
                       (size_t)json_object_get_string_len(cv), special, jbool(a, "lstrip", false),
                       jbool(a, "rstrip", false), jbool(a, "single_word", false),
                       jbool(a, "normalized", !special), err);
    }
    return st;
}

static pp_status load_hf(eng_tokenizer *t, const char *path, eng_err *err)
{
    char *data;
    size_t n;
    pp_status st = read_file(path, &data, &n, err);
    if (st != PP_STATUS_OK)
        return st;
    struct json_object *root;
    st = parse_json(path, data, n, &root, err);
    free(data);
    if (st != PP_STATUS_OK)
        return st;
    t->kind = TOK_HF_BPE;
    if (!json_object_is_type(root, json_type_object))
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "not a JSON object");
    if (st == PP_STATUS_OK)
        st = load_normalizer(t, jget(root, "normalizer"), err);
    if (st == PP_STATUS_OK)
        st = load_pre_tokenizer(t, jget(root, "pre_tokenizer"), err);
    if (st == PP_STATUS_OK) {
        const char *dt = jtype(jget(root, "decoder"));
        if (!dt || strcmp(dt, "ByteLevel") != 0)
            st = eng_fail(err, PP_STATUS_UNSUPPORTED, "decoder '%s' is not supported (ByteLevel)",
                          dt ? dt : "null");
    }
    /* post_processor is not applied: encode never adds template tokens (BOS/EOS); chat
     * templates write the special tokens they need. */
    if (st == PP_STATUS_OK) {
        struct json_object *model = jget(root, "model");
        if (!model)
            st = eng_fail(err, PP_STATUS_BAD_FORMAT, "no model");
        else
            st = load_hf_model(t, model, jget(root, "added_tokens"), err);
    }
    json_object_put(root);
    if (st != PP_STATUS_OK)
        eng_err_prefix(err, "%s", path);
    return st;
}

/* ---- loading: tiktoken.model + tokenizer_config.json ----------------------------------------- */

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Standard base64 with optional '=' padding; false on any other character. */
static bool b64_decode(const char *s, size_t n, bbuf *out)
{
    out->n = 0;
    if (!bbuf_reserve(out, n))
        return false;
    uint32_t acc = 0;
    int bits = 0;
    size_t i = 0;
    for (; i < n && s[i] != '='; i++) {
        int v = b64_value((uint8_t)s[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out->p[out->n++] = (char)((acc >> bits) & 0xFF);
        }
    }
    for (; i < n; i++)
        if (s[i] != '=')
            return false;
    return true;
}

static pp_status load_tiktoken(eng_tokenizer *t, const char *model_path, const char *config_path,
                               eng_err *err)
{
    t->kind = TOK_TIKTOKEN;
    char *data;
    size_t n;
    pp_status st = read_file(model_path, &data, &n, err);
    if (st != PP_STATUS_OK)
        return st;
    /* pass 1: count lines, find the largest rank (tiktoken load_tiktoken_bpe: non-empty lines of
     * `base64 rank`) */
    size_t n_ranks = 0;
    int64_t max_rank = -1;
    for (size_t i = 0, line = 1; i < n; line++) {
        size_t e = i;
        while (e < n && data[e] != '\n')
            e++;
        size_t le = e;
        if (le > i && data[le - 1] == '\r')
            le--;
        if (le > i) {
            const char *sp = memchr(data + i, ' ', le - i);
            char *endp = NULL;
            long long r = -1;
            if (sp) {
                errno = 0;
                r = strtoll(sp + 1, &endp, 10);
                if (errno != 0 || endp != data + le)
                    r = -1;
            }
            if (!sp || r < 0 || r >= MAX_TOKEN_ID) {
                free(data);
                return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s:%zu: expected `base64 rank`",
                                model_path, line);
            }
            n_ranks++;
            if (r > max_rank)
                max_rank = r;
        }
        i = e + 1;
    }
    if (n_ranks == 0) {
        free(data);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: no ranks", model_path);
    }
    /* tokenization_kimi.py: specials take ids len(ranks) .. len(ranks) + 255 */
    int64_t base = (int64_t)n_ranks;
    int64_t nv = base + KIMI_N_SPECIAL;
    if (max_rank + 1 > nv)
        nv = max_rank + 1;
    st = alloc_ids(t, (int32_t)nv, err);
    bbuf tok = {0};
    for (size_t i = 0, line = 1; i < n && st == PP_STATUS_OK; line++) {
        size_t e = i;
        while (e < n && data[e] != '\n')
            e++;
        size_t le = e;
        if (le > i && data[le - 1] == '\r')
            le--;
        if (le > i) {
            const char *sp = memchr(data + i, ' ', le - i);
            int32_t r = (int32_t)strtoll(sp + 1, NULL, 10);
            if (!b64_decode(data + i, (size_t)(sp - (data + i)), &tok) || tok.n == 0)
                st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s:%zu: bad base64", model_path, line);
            else if (t->tok_len[r] >= 0)
                st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s:%zu: rank %d repeated", model_path,
                              line, r);
            else if (r >= base && r < base + KIMI_N_SPECIAL)
                st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                              "%s:%zu: rank %d collides with the special-token range", model_path,
                              line, r);
            else
                st = set_model_bytes(t, r, tok.p, tok.n, err);
        }
        i = e + 1;
    }
    free(tok.p);
    free(data);
    if (st == PP_STATUS_OK)
        st = vmap_build(t, NULL, err);
    for (int b = 0; b < 256 && st == PP_STATUS_OK; b++) {
        uint8_t c = (uint8_t)b;
        if (vmap_find(t, &c, 1) < 0)
            st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: byte 0x%02x has no rank", model_path, b);
    }
    if (st != PP_STATUS_OK)
        return st;

    /* specials: names from added_tokens_decoder, the rest <|reserved_token_{id}|> */
    st = read_file(config_path, &data, &n, err);
    if (st != PP_STATUS_OK)
        return st;
    struct json_object *root;
    st = parse_json(config_path, data, n, &root, err);
    free(data);
    if (st != PP_STATUS_OK)
        return st;
    struct json_object *dec = jget(root, "added_tokens_decoder");
    if (dec && !json_object_is_type(dec, json_type_object))
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: added_tokens_decoder is not an object",
                      config_path);
    t->added = calloc(KIMI_N_SPECIAL, sizeof *t->added);
    if (!t->added && st == PP_STATUS_OK)
        st = oom(err, "special tokens");
    for (int k = 0; k < KIMI_N_SPECIAL && st == PP_STATUS_OK; k++) {
        int32_t id = (int32_t)base + k;
        char key[32], name[64];
        snprintf(key, sizeof key, "%d", id);
        struct json_object *e = jget(dec, key);
        struct json_object *cv = jget(e, "content");
        const char *content;
        size_t len;
        if (cv && json_object_is_type(cv, json_type_string)) {
            content = json_object_get_string(cv);
            len = (size_t)json_object_get_string_len(cv);
        } else {
            snprintf(name, sizeof name, "<|reserved_token_%d|>", id);
            content = name;
            len = strlen(name);
        }
        st = add_token(t, id, content, len, true, false, false, false, false, err);
    }
    json_object_put(root);
    return st;
}

/* ---- public: load ---------------------------------------------------------------------------- */

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

pp_status eng_tokenizer_load(const char *dir, eng_tokenizer **out, eng_err *err)
{
    if (out)
        *out = NULL;
    if (!dir || !out)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "tokenizer_load: NULL argument");
    size_t dl = strlen(dir);
    char *p1 = malloc(dl + 32), *p2 = malloc(dl + 32), *p3 = malloc(dl + 32);
    if (!p1 || !p2 || !p3) {
        free(p1);
        free(p2);
        free(p3);
        return oom(err, "path");
    }
    snprintf(p1, dl + 32, "%s/tokenizer.json", dir);
    snprintf(p2, dl + 32, "%s/tiktoken.model", dir);
    snprintf(p3, dl + 32, "%s/tokenizer_config.json", dir);
    pp_status st;
    eng_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !trie_init(&t->raw_trie) || !trie_init(&t->norm_trie)) {
        st = oom(err, "tokenizer");
    } else if (file_exists(p1)) {
        st = load_hf(t, p1, err);
    } else if (file_exists(p2) && file_exists(p3)) {
        st = load_tiktoken(t, p2, p3, err);
        if (st == PP_STATUS_OK)
            st = regex_compile(&t->tk_regex, kimi_pat_str, strlen(kimi_pat_str), false,
                               "tiktoken pattern", err);
    } else {
        st = eng_fail(err, PP_STATUS_NOT_FOUND,
                      "no tokenizer in %s: looked for tokenizer.json, and for tiktoken.model with "
                      "tokenizer_config.json",
                      dir);
    }
    free(p1);
    free(p2);
    free(p3);
    if (st != PP_STATUS_OK) {
        eng_tokenizer_free(t);
        return st;
    }
    *out = t;
    return PP_STATUS_OK;
}
