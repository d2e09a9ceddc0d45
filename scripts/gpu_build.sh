#!/usr/bin/env bash
# gpu_build.sh: builds, on this machine, what tests/gpu/device_check.sh runs on a GPU machine, so
# that the device's minutes go to running, not compiling (its image may also lack the -dev
# packages we build against). Output: build-gpu/ (Release, sm_90a, PP_CUDA=ON, the kernels in
# libpp_kernels.so) holding only the programs the check runs, stripped, plus build-gpu/devlibs/ with the shared libraries they need
# beyond the CUDA runtime (json-c, PCRE2, utf8proc), build-gpu/shared_nano/ with the Kimi nano
# model, and build-gpu/.prebuilt. Carry build-gpu
# to the device (it must stay within the 64 MiB the working tree and carried paths may take).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-gpu
jobs=$(nproc)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPP_CUDA=ON -DPP_CUDA_ARCHITECTURES=90a \
    -DPP_WERROR=ON -DPP_KERNELS_SHARED=ON >/dev/null
targets="test_gpu_device test_ops test_fixtures test_batch test_nano test_perplexity test_pool paraphym bench_kernels bench_decode"
cmake --build "$build" -j"$jobs" --target $targets
# only what the check runs travels: drop objects and static libraries
find "$build" \( -name '*.o' -o -name '*.a' \) -delete
# nor CMake's own records (dependency scans, makefiles): ctest needs only the CTestTestfile.cmake
# files and CMakeCache.txt; the working tree and build-gpu travel within 64 MiB together
find "$build" -name CMakeFiles -type d -prune -exec rm -rf {} +
for exe in tests/test_gpu_device tests/test_ops tests/test_fixtures tests/test_batch tests/test_nano tests/test_perplexity \
    tests/test_pool paraphym bench/bench_kernels bench/bench_decode; do
    strip "$build/$exe"
done
strip "$build"/libpp_kernels.so "$build"/libparaphym.so.*.*
mkdir -p "$build/devlibs"
for lib in libjson-c.so libpcre2-8.so libutf8proc.so; do
    path=$(ldd "$build/paraphym" | awk -v l="$lib" 'index($1, l) == 1 { print $3 }')
    [ -n "$path" ] || { echo "gpu_build: $lib not found by ldd" >&2; exit 1; }
    cp -L "$path" "$build/devlibs/$(basename "$path")"
done
# the Kimi nano model (MLA + MoE; 13 MB) for gpu_nano_kimi_k2, where ../shared is at hand
nano=$root/../shared/fixtures/nano/kimi_k2_nano
if [ -d "$nano" ]; then
    mkdir -p "$build/shared_nano"
    cp -r "$nano" "$build/shared_nano/"
fi
touch "$build/.prebuilt"
echo "gpu_build: $(du -sh "$build" | cut -f1) in $build (carry it: build-gpu)"
