/* tokenizer.h: text <-> token ids exactly as the reference libraries compute them:
 *   - Hugging Face tokenizer.json, byte-level BPE (Qwen3-Coder, Phi-4): normalizer (NFC or none),
 *     Split pre-tokenizer regex (PCRE2, UTF + UCP, JIT), ByteLevel byte-to-unicode mapping, BPE
 *     merges by rank, added/special tokens matched in the text before splitting;
 *   - tiktoken.model (`base64 rank` lines, Kimi K2) with Kimi's pre-tokenizer pattern (Rust `&&`
 *     class intersections rewritten for PCRE2), special tokens from tokenizer_config.json's
 *     added_tokens_decoder, the reference's splitting of very long whitespace / non-whitespace
 *     runs, no BOS added.
 *
 * Invalid UTF-8 on input: every maximal invalid subsequence is replaced by U+FFFD before
 * encoding (as Python's bytes.decode("utf-8", errors="replace") does), so the result is what the
 * reference libraries give for the text a Python program would read with that policy.
 * Decoding: token bytes are concatenated and invalid UTF-8 in the result is replaced by U+FFFD
 * (as the references' decode does); special tokens decode to their text.
 *
 * Thread-safety: a loaded tokenizer is immutable and may be used from any number of threads.
 */
#ifndef ENG_TOKENIZER_H
#define ENG_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct eng_tokenizer eng_tokenizer;

/* Loads DIR/tokenizer.json, or DIR/tiktoken.model with DIR/tokenizer_config.json. NOT_FOUND
 * naming the files looked for when neither exists; BAD_FORMAT / UNSUPPORTED (an unsupported
 * model type, normalizer or pre-tokenizer, named) otherwise. */
pp_status eng_tokenizer_load(const char *dir, eng_tokenizer **out, eng_err *err);
void eng_tokenizer_free(eng_tokenizer *tok); /* NULL-safe */

/* One past the largest token id (specials included). */
int32_t eng_tokenizer_n_vocab(const eng_tokenizer *tok);

/* Encodes text[0 .. len) (UTF-8, any bytes). With allow_special, special/added token strings in
 * the text become their ids; otherwise they are encoded as ordinary text. *ids is malloc'ed
 * (caller frees), *n_ids its length. */
pp_status eng_tokenizer_encode(const eng_tokenizer *tok, const char *text, size_t len,
                               bool allow_special, int32_t **ids, size_t *n_ids, eng_err *err);

/* Decodes ids into a malloc'ed NUL-terminated UTF-8 string (*len excludes the NUL).
 * INVALID_ARG when an id is outside [0, n_vocab) or unassigned. */
pp_status eng_tokenizer_decode(const eng_tokenizer *tok, const int32_t *ids, size_t n_ids,
                               char **text, size_t *len, eng_err *err);

/* The raw bytes of one token (special tokens: their text); NULL when the id is not assigned. */
const char *eng_tokenizer_token_bytes(const eng_tokenizer *tok, int32_t id, size_t *len);

/* The id of a special/added token given its text ("<|im_end|>"), or -1. */
int32_t eng_tokenizer_special_id(const eng_tokenizer *tok, const char *text);
bool eng_tokenizer_is_special(const eng_tokenizer *tok, int32_t id);

/* Streaming detokenization: feed ids one at a time and get back only complete UTF-8 characters;
 * the bytes of a partial character are held until it completes. */
typedef struct eng_detok eng_detok;

pp_status eng_detok_create(const eng_tokenizer *tok, eng_detok **out, eng_err *err);
void eng_detok_free(eng_detok *d); /* NULL-safe */
/* Appends id; *text / *len receive the newly completed text (NUL-terminated, valid until the
 * next call on d; may be empty). Bytes that can no longer become a valid character are emitted
 * as U+FFFD. */
pp_status eng_detok_push(eng_detok *d, int32_t id, const char **text, size_t *len, eng_err *err);
/* End of stream: returns any held bytes (an incomplete character becomes U+FFFD). */
pp_status eng_detok_flush(eng_detok *d, const char **text, size_t *len);

#endif /* ENG_TOKENIZER_H */
