/* bench_tokenizer.c: `bench_tokenizer TOKENIZER_DIR FILE [--reps N]` measures encode (and
 * decode) throughput of eng_tokenizer on one text file, single-threaded.
 *
 * The file is encoded as one text without special tokens (the perplexity protocol of the nano
 * references), N times (default 5); the best time counts. MB = 10^6 bytes of input text. Prints
 * JSON on stdout and one markdown table row on stderr:
 *   | tokenizer | file | bytes | tokens | encode MB/s | decode MB/s | load ms |
 * bench/bench_tokenizer_peer.py measures the same with Hugging Face tokenizers / tiktoken.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "tokenizer.h"

static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap)
            break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *n = len;
    return buf;
}

/* The last path component, for labels. */
static const char *base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    const char *p = path + n;
    while (p > path && p[-1] != '/')
        p--;
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER_DIR FILE [--reps N]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *file = argv[2];
    int reps = 5;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    size_t n = 0;
    char *text = read_all(file, &n);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", file);
        return 1;
    }
    eng_err err;
    eng_tokenizer *tok = NULL;
    double t0 = bench_now_s();
    if (eng_tokenizer_load(dir, &tok, &err) != PP_STATUS_OK) {
        fprintf(stderr, "load %s: %s\n", dir, err.msg);
        free(text);
        return 1;
    }
    double load_s = bench_now_s() - t0;

    double best_enc = 1e30, best_dec = 1e30;
    size_t n_tokens = 0;
    for (int r = 0; r < reps; r++) {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        t0 = bench_now_s();
        if (eng_tokenizer_encode(tok, text, n, false, &ids, &n_ids, &err) != PP_STATUS_OK) {
            fprintf(stderr, "encode: %s\n", err.msg);
            eng_tokenizer_free(tok);
            free(text);
            return 1;
        }
        double dt = bench_now_s() - t0;
        if (dt < best_enc)
            best_enc = dt;
        n_tokens = n_ids;
        char *dec = NULL;
        size_t dec_len = 0;
        t0 = bench_now_s();
        if (eng_tokenizer_decode(tok, ids, n_ids, &dec, &dec_len, &err) != PP_STATUS_OK) {
            fprintf(stderr, "decode: %s\n", err.msg);
            free(ids);
            eng_tokenizer_free(tok);
            free(text);
            return 1;
        }
        dt = bench_now_s() - t0;
        if (dt < best_dec)
            best_dec = dt;
        free(dec);
        free(ids);
    }
    double enc_mbs = (double)n / best_enc / 1e6, dec_mbs = (double)n / best_dec / 1e6;
    printf("{\"bench\": \"tokenizer\", \"impl\": \"paraphym\", \"tokenizer\": \"%s\", \"file\": "
           "\"%s\", "
           "\"bytes\": %zu, \"tokens\": %zu, \"reps\": %d, \"encode_s\": %.6f, "
           "\"encode_mb_per_s\": %.2f, "
           "\"decode_s\": %.6f, \"decode_mb_per_s\": %.2f, \"load_s\": %.4f}\n",
           dir, file, n, n_tokens, reps, best_enc, enc_mbs, best_dec, dec_mbs, load_s);
    fprintf(stderr, "| paraphym | %s | %s | %zu | %zu | %.1f | %.1f | %.1f |\n", base_name(dir),
            base_name(file), n, n_tokens, enc_mbs, dec_mbs, load_s * 1e3);
    eng_tokenizer_free(tok);
    free(text);
    return 0;
}
