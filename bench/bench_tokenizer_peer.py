#!/usr/bin/env python3
"""bench_tokenizer_peer.py: the bench_tokenizer measurement with the reference libraries.

    bench_tokenizer_peer.py TOKENIZER_DIR FILE [--reps N]

tokenizer.json -> Hugging Face `tokenizers` (Tokenizer.from_file, special strings encoded as
text); tiktoken.model + tokenizer_config.json -> `tiktoken` with Kimi K2's pat_str and 256 special
slots, text cut as tokenization_kimi.py cuts it (400,000-char slices, 25,000-char runs).
Single-threaded (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false); best of N; MB = 10^6 bytes.
Prints JSON on stdout and a markdown row on stderr, as bench_tokenizer does. Run it from a
throwaway venv: python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers tiktoken
"""
import base64
import json
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KIMI_PAT = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


def split_runs(s, max_len):
    """tokenization_kimi.py _split_whitespaces_or_nonwhitespaces."""
    cur = 0
    is_space = s[0].isspace() if s else False
    start = 0
    for i, ch in enumerate(s):
        now = ch.isspace()
        if is_space ^ now:
            cur = 1
            is_space = now
        else:
            cur += 1
            if cur > max_len:
                yield s[start:i]
                start = i
                cur = 1
    yield s[start:]


def load(d):
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        tok.encode_special_tokens = True
        return "tokenizers", lambda text: tok.encode(text).ids, lambda ids: tok.decode(ids)
    import tiktoken
    ranks = {}
    with open(os.path.join(d, "tiktoken.model"), "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    with open(os.path.join(d, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    names = {int(k): v["content"] for k, v in cfg.get("added_tokens_decoder", {}).items()}
    base = len(ranks)
    specials = {names.get(i, f"<|reserved_token_{i}|>"): i for i in range(base, base + 256)}
    enc = tiktoken.Encoding(name="kimi", pat_str=KIMI_PAT, mergeable_ranks=ranks,
                            special_tokens=specials)

    def encode(text):
        ids = []
        for i in range(0, len(text), 400_000):
            for sub in split_runs(text[i:i + 400_000], 25_000):
                ids.extend(enc.encode(sub, disallowed_special=()))
        return ids
    return "tiktoken", encode, lambda ids: enc.decode(ids)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    d, path = sys.argv[1], sys.argv[2]
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 5
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    t0 = time.perf_counter()
    impl, encode, decode = load(d)
    load_s = time.perf_counter() - t0
    best_enc = best_dec = float("inf")
    ids = []
    for _ in range(max(reps, 1)):
        t0 = time.perf_counter()
        ids = encode(text)
        best_enc = min(best_enc, time.perf_counter() - t0)
        t0 = time.perf_counter()
        decode(ids)
        best_dec = min(best_dec, time.perf_counter() - t0)
    n = len(raw)
    res = {"bench": "tokenizer", "impl": impl, "tokenizer": d, "file": path, "bytes": n,
           "tokens": len(ids), "reps": reps, "encode_s": best_enc, "encode_mb_per_s": n / best_enc / 1e6,
           "decode_s": best_dec, "decode_mb_per_s": n / best_dec / 1e6, "load_s": load_s}
    print(json.dumps(res))
    print(f"| {impl} | {os.path.basename(d.rstrip('/'))} | {os.path.basename(path)} | {n} | {len(ids)} | "
          f"{res['encode_mb_per_s']:.1f} | {res['decode_mb_per_s']:.1f} | {load_s * 1e3:.1f} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
