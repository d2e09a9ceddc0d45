#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it:
#   1. release build with warnings as errors (CUDA targets too when nvcc is present) and ctest
#   2. the CPU suite again under AddressSanitizer + UndefinedBehaviorSanitizer (without the
#      tests labelled slow: the perplexity runs (f32, bf16, quantized), minutes each under
#      ASan; and the pool's load phase at 16 x 5 prompts instead of 16 x 13)
#   3. the safetensors and config.json fuzzers, 60 s each
# GPU tests report "skipped" (exit 77) on machines without a CUDA device.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
"$root/scripts/install-deps.sh"

echo "== build (warnings as errors) and test"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DPP_WERROR=ON
cmake --build "$root/build" -j"$jobs"
(cd "$root/build" && ctest --output-on-failure -j"$jobs")

echo "== ASan + UBSan (tests labelled slow, the full-protocol perplexity runs, are left out)"
cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPP_WERROR=ON \
    -DPP_SANITIZE=ON -DPP_CUDA=OFF
cmake --build "$root/build-asan" -j"$jobs"
(cd "$root/build-asan" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    PP_TEST_POOL_PER_THREAD=5 ctest --output-on-failure -j"$jobs" -LE slow)

echo "== fuzzing"
"$root/scripts/fuzz.sh" "${PP_FUZZ_SECONDS:-60}"
echo "== all tests passed"
