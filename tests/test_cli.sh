#!/usr/bin/env bash
# test_cli.sh: the paraphym command line end to end, good and bad input.
#   test_cli.sh PARAPHYM_BINARY PROJECT_DIR
# Bad input must give a clear message on stderr, a non-zero exit that is not a crash (< 128), and
# nothing on stdout. Good input must print one JSON object whose rows do not depend on --prefill.
set -u
bin=$1
root=$2
tiny=$root/tests/fixtures/tiny/qwen3_moe_tiny
nano=$root/models/qwen3_coder_nano
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0

# expect_fail NAME PATTERN ARGS...: non-zero exit < 128, stderr matching PATTERN, empty stdout.
expect_fail() {
    local name=$1 pattern=$2
    shift 2
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ $rc -eq 0 ] || [ $rc -ge 128 ] || [ -s "$tmp/out" ] || ! grep -qiE -e "$pattern" "$tmp/err"; then
        echo "FAIL $name: rc=$rc stdout=$(head -c 200 "$tmp/out") stderr=$(head -c 400 "$tmp/err")"
        fails=$((fails + 1))
    else
        echo "ok   $name: $(head -c 160 "$tmp/err")"
    fi
}

# A copy of a model directory whose files can be damaged.
copy_model() {
    rm -rf "$tmp/$2"
    cp -r "$1" "$tmp/$2"
    chmod -R u+w "$tmp/$2"
}

expect_fail "no arguments" "usage"
expect_fail "unknown command" "unknown command" frobnicate
expect_fail "missing --ids" "--ids" logits --model "$tiny"
expect_fail "bad ids" "integers" logits --model "$tiny" --ids 1,x,3
expect_fail "negative id" "integers" logits --model "$tiny" --ids 1,-3
expect_fail "id >= n_vocab" "outside" logits --model "$tiny" --ids 1,512
expect_fail "prefill too long" "exceeds" logits --model "$tiny" --ids 1,2 --prefill 3
expect_fail "bad --mla" "naive or absorbed" logits --model "$tiny" --ids 1 --mla fast
expect_fail "unknown backend" "backend" logits --model "$tiny" --ids 1 --backend tpu
expect_fail "unknown quantization" "int5.*none, fp8, int8 or int4" logits --model "$tiny" --ids 1 --quant int5

# --quant: the load line says how many weights were converted; the logits stay close to the
# unquantized ones (the bounds on perplexity are in quant_perplexity_*)
if "$bin" logits --model "$tiny" --ids 1,2,3 --backend cpu --quant fp8 >"$tmp/q.json" 2>"$tmp/err" &&
    grep -qE "f32 compute, f32 KV cache, [1-9][0-9]* decoder weights quantized to fp8 at load" "$tmp/err" &&
    grep -q '"logits"' "$tmp/q.json"; then
    echo "ok   --quant fp8: $(grep -o '[0-9]* decoder weights quantized to fp8[^,]*' "$tmp/err")"
else
    echo "FAIL --quant fp8: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
fi
expect_fail "unknown compute dtype" "--dtype.*fp16.*f32, bf16 or auto" logits --model "$tiny" --ids 1 --dtype fp16

# --dtype bf16: the load line says so, and every logit is a bf16 value (low 16 bits of the f32
# zero: lm_head's output is rounded like every op's) close to the f32 run's (the bounds against
# Hugging Face are in fixture_bf16_* and perplexity_bf16_*)
if "$bin" logits --model "$tiny" --ids 1,2,3 --backend cpu >"$tmp/f32.json" 2>"$tmp/err" &&
    "$bin" logits --model "$tiny" --ids 1,2,3 --backend cpu --dtype bf16 >"$tmp/bf16.json" 2>"$tmp/err" &&
    grep -q "on backend cpu, bf16 compute, bf16 KV cache, weights as stored" "$tmp/err" &&
    python3 - "$tmp/f32.json" "$tmp/bf16.json" <<'PY'
import json, math, struct, sys
f32, bf16 = (json.load(open(p))["logits"] for p in sys.argv[1:])
assert len(bf16) == 3 and all(len(r) == 512 for r in bf16), "shape"
for a, b in zip(f32, bf16):
    assert all(struct.unpack("<I", struct.pack("<f", x))[0] & 0xffff == 0 for x in b), "not bf16 values"
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(x * x for x in a)
    assert math.sqrt(num / den) < 0.05, math.sqrt(num / den)
    assert a != b, "bf16 run identical to f32"
PY
then
    echo "ok   --dtype bf16: $(grep -o 'on backend.*' "$tmp/err"); logits are bf16 values near the f32 ones"
else
    echo "FAIL --dtype bf16: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
fi
expect_fail "act-quant without bf16" "part of the bf16 compute mode" logits --model "$tiny" --ids 1 --act-quant fp8
expect_fail "unknown act-quant" "--act-quant.*none or fp8" logits --model "$tiny" --ids 1 --dtype bf16 --act-quant int4
expect_fail "unknown kv dtype" "--kv-dtype.*fp8.*f32, bf16 or auto" logits --model "$tiny" --ids 1 --kv-dtype fp8
# the bf16 mode's bf16 KV cache (its default) gives the logits an f32 cache gives, byte for byte
if "$bin" logits --model "$tiny" --ids 1,2,3,4,5 --backend cpu --dtype bf16 --kv-dtype f32 >"$tmp/kv32.json" 2>/dev/null &&
    "$bin" logits --model "$tiny" --ids 1,2,3,4,5 --backend cpu --dtype bf16 >"$tmp/kv16.json" 2>"$tmp/err" &&
    grep -q "bf16 KV cache" "$tmp/err" && cmp -s "$tmp/kv32.json" "$tmp/kv16.json"; then
    echo "ok   --kv-dtype: the bf16 mode's bf16 cache equals an f32 cache byte for byte"
else
    echo "FAIL --kv-dtype: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
fi
expect_fail "negative device" "--device expects an integer >= 0" logits --model "$tiny" --ids 1 --device -1
# --act-quant fp8 on a stored-FP8 model: the load line says so, and the logits differ from the
# plain bf16 run's (its inputs to the fp8 weights are quantized)
fp8dir="$(dirname "$tiny")/kimi_k2_fp8_tiny"
if "$bin" logits --model "$fp8dir" --ids 1,2,3 --backend cpu --dtype bf16 >"$tmp/a.json" 2>"$tmp/err" &&
    "$bin" logits --model "$fp8dir" --ids 1,2,3 --backend cpu --dtype bf16 --act-quant fp8 >"$tmp/w8a8.json" 2>"$tmp/err" &&
    grep -q "bf16 compute with fp8 activations for fp8 weights" "$tmp/err" &&
    ! cmp -s "$tmp/a.json" "$tmp/w8a8.json"; then
    echo "ok   --act-quant fp8: $(grep -o 'bf16 compute with[^,]*' "$tmp/err"); logits differ from bf16 alone"
else
    echo "FAIL --act-quant fp8: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
fi
expect_fail "not a model dir" "config.json" logits --model "$tmp" --ids 1
expect_fail "nonexistent dir" "config.json|not found|no such" logits --model "$tmp/nope" --ids 1

copy_model "$nano" shard
rm "$tmp/shard/model-00002-of-00002.safetensors"
expect_fail "missing shard" "model-00002-of-00002" logits --model "$tmp/shard" --ids 1

copy_model "$tiny" trunc
truncate -s 100000 "$tmp/trunc/model.safetensors"
expect_fail "truncated safetensors" "safetensors|offset|range|truncat" logits --model "$tmp/trunc" --ids 1

copy_model "$tiny" hdr
printf '\xff\xff\xff\xff\x00\x00\x00\x00' | dd of="$tmp/hdr/model.safetensors" bs=1 count=8 conv=notrunc 2>/dev/null
expect_fail "header length past EOF" "header" logits --model "$tmp/hdr" --ids 1

copy_model "$tiny" tiny_file
printf 'abc' >"$tmp/tiny_file/model.safetensors"
expect_fail "3-byte safetensors" "safetensors|short|truncat" logits --model "$tmp/tiny_file" --ids 1

copy_model "$tiny" cfgtype
sed -i 's/"hidden_size": 128/"hidden_size": "128"/' "$tmp/cfgtype/config.json"
expect_fail "config value of the wrong type" "hidden_size" logits --model "$tmp/cfgtype" --ids 1

copy_model "$tiny" cfgtype2
sed -i 's/"model_type": "qwen3_moe"/"model_type": "llama"/' "$tmp/cfgtype2/config.json"
expect_fail "unknown model_type" "model_type" logits --model "$tmp/cfgtype2" --ids 1

copy_model "$tiny" cfgjson
printf '{"model_type": "qwen3_moe", ' >"$tmp/cfgjson/config.json"
expect_fail "config not JSON" "config.json|json" logits --model "$tmp/cfgjson" --ids 1

copy_model "$tiny" shape
sed -i 's/"hidden_size": 128/"hidden_size": 64/' "$tmp/shape/config.json"
expect_fail "weights do not match the config" "shape|expected" logits --model "$tmp/shape" --ids 1

# Text commands: bad input.
expect_fail "run without --prompt" "--prompt" run --model "$nano"
expect_fail "NaN temperature" "finite number" run --model "$nano" --prompt hi --temperature nan
expect_fail "negative temperature" "temperature" run --model "$nano" --prompt hi --temperature -1
expect_fail "top_p 0" "top_p" run --model "$nano" --prompt hi --top-p 0
expect_fail "negative top_k" "top-k" run --model "$nano" --prompt hi --top-k -5
expect_fail "negative repetition penalty" "repetition_penalty" run --model "$nano" --prompt hi --repetition-penalty -1
expect_fail "prompt longer than the context" "context" run --model "$nano" --prompt "def f(x): return x + 1" --ctx 4
expect_fail "--system without --chat" "--chat" run --model "$nano" --prompt hi --system "be terse"
mkdir -p "$tmp/notok"
cp "$nano/config.json" "$tmp/notok/"
expect_fail "no tokenizer files" "tokenizer.json" tokenize --model "$tmp/notok"
expect_fail "detokenize bad JSON" "JSON array" detokenize --model "$nano" <<<"[1, 2"
expect_fail "detokenize id out of range" "8000|range|outside" detokenize --model "$nano" <<<"[1, 99999]"
expect_fail "perplexity missing file" "cannot open" perplexity --model "$nano" --file "$tmp/none.txt"

# Text commands: good input. A directory holding only tokenizer files can tokenize.
mkdir -p "$tmp/tokonly"
cp "$nano/tokenizer.json" "$tmp/tokonly/"
printf 'def fibonacci(n):\n    return <|im_end|> caf\xc3\xa9\n' >"$tmp/text.txt"
if "$bin" tokenize --model "$tmp/tokonly" <"$tmp/text.txt" >"$tmp/ids.json" 2>"$tmp/err" &&
    "$bin" detokenize --model "$tmp/tokonly" <"$tmp/ids.json" >"$tmp/back.txt" 2>>"$tmp/err" &&
    cmp -s "$tmp/text.txt" "$tmp/back.txt" && grep -qE "(^|[^0-9])7999([^0-9]|$)" "$tmp/ids.json"; then
    echo "ok   tokenize | detokenize round trip from a tokenizer-only directory: $(cat "$tmp/ids.json")"
else
    echo "FAIL tokenize/detokenize round trip: $(cat "$tmp/err") ids=$(cat "$tmp/ids.json" 2>/dev/null)"
    fails=$((fails + 1))
fi
"$bin" run --model "$nano" --prompt 'def fibonacci(n):
' --temperature 0 --max-tokens 48 --backend cpu >"$tmp/run.txt" 2>"$tmp/err"
want='    return fibonacci(n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,'
if [ "$(cat "$tmp/run.txt")" = "$want" ]; then
    echo "ok   run --temperature 0 reproduces the reference greedy text, stdout holds only it"
else
    echo "FAIL run: got '$(cat "$tmp/run.txt")' stderr $(tail -c 300 "$tmp/err")"
    fails=$((fails + 1))
fi
"$bin" run --prompt 'import numpy as np' --max-tokens 8 --seed 5 >"$tmp/run1.txt" 2>"$tmp/err1"
"$bin" run --prompt 'import numpy as np' --max-tokens 8 --seed 5 >"$tmp/run2.txt" 2>"$tmp/err2"
if [ -s "$tmp/run1.txt" ] && cmp -s "$tmp/run1.txt" "$tmp/run2.txt"; then
    echo "ok   run with the embedded default model: same seed, same text"
else
    echo "FAIL run default model / seed: $(cat "$tmp/err1")"
    fails=$((fails + 1))
fi

# A short perplexity through the CLI (8 windows of 256: 8 x 255 predicted tokens).
"$bin" perplexity --model "$nano" --file "$nano/heldout.txt" --max-tokens 2048 >"$tmp/ppl.json" 2>"$tmp/err"
if python3 -c 'import json,math,sys; d=json.load(open(sys.argv[1])); assert d["tokens"] == 2040 and 1 < d["perplexity"] < 100, d' "$tmp/ppl.json"; then
    echo "ok   perplexity --max-tokens 2048: $(cat "$tmp/ppl.json")"
else
    echo "FAIL perplexity: $(cat "$tmp/ppl.json") $(tail -c 300 "$tmp/err")"
    fails=$((fails + 1))
fi

# Good input: one JSON object, n_ids rows of n_vocab, identical whatever --prefill is (on the CPU
# reference, whose results do not depend on the split into steps beyond 1e-6).
ids=3,17,42,7,99,1
"$bin" logits --model "$tiny" --ids $ids --backend cpu >"$tmp/a.json" 2>"$tmp/err" || { echo "FAIL logits: $(cat "$tmp/err")"; fails=$((fails + 1)); }
"$bin" logits --model "$tiny" --ids $ids --prefill 2 --backend cpu >"$tmp/b.json" 2>"$tmp/err" || { echo "FAIL logits --prefill: $(cat "$tmp/err")"; fails=$((fails + 1)); }
"$bin" logits --model "$tiny" --ids $ids --prefill 6 --threads 1 --backend cpu >"$tmp/c.json" 2>"$tmp/err" || { echo "FAIL logits --threads: $(cat "$tmp/err")"; fails=$((fails + 1)); }
if python3 - "$tmp/a.json" "$tmp/b.json" "$tmp/c.json" <<'PY'
import json, sys
rows = [json.load(open(p))["logits"] for p in sys.argv[1:]]
assert all(len(r) == 6 and all(len(x) == 512 for x in r) for r in rows), "shape"
for other in rows[1:]:
    for x, y in zip(rows[0], other):
        for a, b in zip(x, y):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (a, b)
PY
then
    echo "ok   logits: 6 rows of 512, the same with --prefill 2 and --threads 1"
else
    echo "FAIL logits output"
    fails=$((fails + 1))
fi

# --backend: auto (the default) says on stderr which backend it picked, and --dtype auto (the
# default) computes in bf16 on cuda, f32 on cpu; cuda either runs (a CUDA device is present) or
# fails cleanly naming CUDA.
"$bin" logits --model "$tiny" --ids 1,2 >/dev/null 2>"$tmp/err"
if grep -qE "on backend (cpu \(picked by --backend auto\), f32|cuda \(device 0\) \(picked by --backend auto\), bf16) compute" "$tmp/err"; then
    echo "ok   --backend auto: $(grep -o 'on backend.*' "$tmp/err")"
else
    echo "FAIL --backend auto: $(cat "$tmp/err")"
    fails=$((fails + 1))
fi
"$bin" logits --model "$tiny" --ids 1,2 --backend cuda >"$tmp/out" 2>"$tmp/err"
rc=$?
if { [ $rc -eq 0 ] && grep -q "on backend cuda (device 0), bf16 compute" "$tmp/err"; } ||
    { [ $rc -eq 1 ] && [ ! -s "$tmp/out" ] && grep -qiE "cuda.*(no CUDA device|not available)" "$tmp/err"; }; then
    echo "ok   --backend cuda: rc=$rc $(tail -n 1 "$tmp/err" | head -c 160)"
else
    echo "FAIL --backend cuda: rc=$rc $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
fi

if [ $fails -ne 0 ]; then
    echo "$fails CLI checks failed"
    exit 1
fi
echo "all CLI checks passed"
