#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets with clang and runs each for SECONDS (default 60) over a
# scratch copy of its seed corpus. Fails if a fuzzer finds a crash, leak or undefined behaviour.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
build=$root/build-fuzz
CC=clang cmake -S "$root" -B "$build" -DPP_FUZZ=ON -DPP_CUDA=OFF -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=(safetensors config tokenizer chat)
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null
export PP_FUZZ_TOKENIZER_DIR=$root/tests/fixtures/tokenizers/qwen_bpe_512
for fz in "${targets[@]}"; do
    work=$build/corpus_$fz
    rm -rf "$work"
    mkdir -p "$work"
    if [ -d "$root/tests/fuzz/corpus_$fz" ]; then
        cp "$root/tests/fuzz/corpus_$fz"/* "$work/"
    fi
    echo "fuzz_$fz: ${seconds}s"
    (cd "$build" && "./fuzz_$fz" -max_total_time="$seconds" -print_final_stats=1 "$work" 2>&1 | tail -n 12)
done
