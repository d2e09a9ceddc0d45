#!/usr/bin/env bash
# device_check.sh: the one script a GPU session runs (an H100 or H200, the repository copied
# without ../shared). Uses build-gpu as scripts/gpu_build.sh made it on the development machine
# (carry build-gpu; marked by build-gpu/.prebuilt: its programs run with build-gpu/devlibs on the
# library path, and its recorded source path is linked to this checkout so ctest finds
# everything), or else builds it here (Release, PP_CUDA=ON, sm_90a). Then runs, each under its own
# time limit and all within BUDGET_S seconds (default 470, about 8 minutes):
#   build       cmake configure + build of test_gpu_device, test_ops, test_fixtures, test_batch, test_nano,
#               test_pool, bench_kernels (skipped for a prebuilt build-gpu)
#   nvidia_smi  the device
#   gpu_device  tests/gpu/test_gpu_device.c (a kernel runs)
#   gpu_ops     tests/gpu/test_ops.c: every op of the CUDA backend against the CPU reference
#   gpu_fixtures, gpu_batch, gpu_nano   ctest -L gpu: the end-to-end checks with
#               PP_TEST_BACKEND=cuda (gpu_batch: batched sequences over the paged cache)
#   gpu_pool    test_pool --gpu: the worker pool's GPU workers (VRAM reserved vs in use)
#   gpu_perplexity  ctest -L gpu: the nano models' perplexity on CUDA, f32 and bf16 modes, and
#               after on-load fp8 / int8 / int4 quantization (bf16 mode)
#   bench       bench/bench_kernels: kernel rates beside the copy bandwidth and cuBLAS of the run
#   decode      bench/bench_decode: the nano model's decode steps per second, CUDA graphs off and on
#   memcheck, racecheck      compute-sanitizer on test_ops --small
# Each step's output goes to $OUT/<step>.log (OUT defaults to ./device_out); a table of step,
# status, seconds and the step's key number comes last (also in $OUT/summary.txt). Exits 0 when
# every step passed (or was skipped for want of a device, a fixture or compute-sanitizer), 1
# otherwise.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-./device_out}
build=${BUILD_DIR:-$root/build-gpu}
budget=${BUDGET_S:-470}
jobs=$(nproc 2>/dev/null || echo 4)
mkdir -p "$out"
out=$(cd "$out" && pwd)
t_start=$(date +%s)
summary=()
any_fail=0

# run_step NAME LIMIT_S CMD...: runs CMD (cwd: root) under min(LIMIT_S, time left), log to
# $out/NAME.log; sets step_rc and step_s.
run_step() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - ($(date +%s) - t_start)))
    step_s=0
    if [ "$left" -lt 10 ]; then
        step_rc=200
        echo "not run: the budget of ${budget}s is spent" >"$out/$name.log"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*"
    local t0 t1
    t0=$(date +%s.%N)
    (cd "$root" && timeout --kill-after=10 "$limit" "$@") >"$out/$name.log" 2>&1
    step_rc=$?
    t1=$(date +%s.%N)
    step_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    tail -n 3 "$out/$name.log" | sed 's/^/   /'
}

# record NAME KEY: adds the table row of the step just run (step_rc, step_s).
record() {
    local name=$1 key=$2 status
    case $step_rc in
    0) status=pass ;;
    77) status=skipped ;;
    201) status=no-tool ;;
    124 | 137) status=timeout; any_fail=1 ;;
    200) status=not-run; any_fail=1 ;;
    *) status="FAIL($step_rc)"; any_fail=1 ;;
    esac
    summary+=("$(printf '%-15s %-10s %7s  %s' "$name" "$status" "$step_s" "$key")")
}

# ctest_key LOG: "N passed, M failed, K skipped of T".
ctest_key() {
    local log=$1 total passed failed skipped
    total=$(grep -cE '^ *[0-9]+/[0-9]+ Test' "$log")
    passed=$(grep -cE '^ *[0-9]+/[0-9]+ Test .* Passed' "$log")
    skipped=$(grep -cE '^ *[0-9]+/[0-9]+ Test .*Skipped' "$log")
    failed=$((total - passed - skipped))
    echo "$passed passed, $failed failed, $skipped skipped of $total"
}

# ---- build ------------------------------------------------------------------------------------
recorded=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
if [ -f "$build/.prebuilt" ]; then
    export LD_LIBRARY_PATH="$build/devlibs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    done
    if [ -n "$recorded" ] && [ "$recorded" != "$root" ] && [ ! -e "$recorded" ]; then
        mkdir -p "$(dirname "$recorded")" && ln -s "$root" "$recorded"
    fi
    # tests name ../shared/fixtures/nano beside the recorded source path; '..' resolves physically,
    # so the carried copy is linked beside this checkout too
    for parent in "$(dirname "$root")" ${recorded:+"$(dirname "$recorded")"}; do
        if [ -d "$build/shared_nano" ] && [ ! -e "$parent/shared/fixtures/nano" ]; then
            mkdir -p "$parent/shared/fixtures" && ln -s "$build/shared_nano" "$parent/shared/fixtures/nano"
        fi
    done
    step_rc=0 step_s=0
    echo "prebuilt by scripts/gpu_build.sh for $recorded" >"$out/build.log"
    record build "prebuilt (source path $recorded)"
else
    if [ -n "$recorded" ] && [ "$recorded" != "$root" ]; then
        echo "== $build was configured for another checkout: starting it afresh"
        rm -rf "$build"
    fi
    run_step build 240 bash -c "cmake -S '$root' -B '$build' -DCMAKE_BUILD_TYPE=Release -DPP_CUDA=ON \
        -DPP_CUDA_ARCHITECTURES=90a && cmake --build '$build' -j$jobs --target test_gpu_device test_ops \
        test_fixtures test_batch test_nano test_perplexity test_pool paraphym bench_kernels bench_decode"
    record build "$(grep -ciE 'warning' "$out/build.log") warning lines"
fi
built=$step_rc

# ---- device -------------------------------------------------------------------------------------
run_step nvidia_smi 20 bash -c "nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader"
record nvidia_smi "$(tail -n 1 "$out/nvidia_smi.log")"

if [ "$built" -ne 0 ]; then
    echo "== the build failed; the test steps are not run (see $out/build.log)"
else
    run_step gpu_device 30 "$build/tests/test_gpu_device"
    record gpu_device "$(grep -m1 '^device 0' "$out/gpu_device.log" || tail -n 1 "$out/gpu_device.log")"

    run_step gpu_ops 200 "$build/tests/test_ops"
    record gpu_ops "$( (grep -m1 '^test_ops: [0-9]* cases' "$out/gpu_ops.log" || tail -n 1 "$out/gpu_ops.log") |
        sed 's/^test_ops: //')"

    run_step gpu_fixtures 120 bash -c "cd '$build' && ctest -L gpu -R '^gpu_fixtures_' -j4 --output-on-failure"
    record gpu_fixtures "$(ctest_key "$out/gpu_fixtures.log")"

    run_step gpu_batch 60 bash -c "cd '$build' && ctest -L gpu -R '^gpu_batch_' -j4 --output-on-failure"
    record gpu_batch "$(ctest_key "$out/gpu_batch.log")"

    run_step gpu_pool 60 bash -c "cd '$build' && ctest -L gpu -R '^gpu_pool$' --output-on-failure -V"
    record gpu_pool "$(ctest_key "$out/gpu_pool.log"); $(grep -m1 -o 'device [0-9]*: [0-9]* MB reserved.* MB in use' "$out/gpu_pool.log")"

    run_step gpu_nano 90 bash -c "cd '$build' && ctest -L gpu -R '^gpu_nano_' -j2 --output-on-failure"
    record gpu_nano "$(ctest_key "$out/gpu_nano.log")"

    run_step gpu_perplexity 120 bash -c "cd '$build' && ctest -L gpu -R '^gpu_(quant_)?perplexity_' -j2 \
        --output-on-failure -V"
    record gpu_perplexity "$(ctest_key "$out/gpu_perplexity.log")"

    run_step bench 150 "$build/bench/bench_kernels" --budget 120
    record bench "$(grep -c '^{' "$out/bench.log") measurements"

    run_step decode 60 bash -c "'$build/bench/bench_decode' --model models/qwen3_coder_nano --backend cuda \
        --dtype bf16 --batch 1,16,64 && '$build/bench/bench_decode' --model models/qwen3_coder_nano --backend cuda \
        --dtype f32 --batch 1,16"
    record decode "$(grep -m1 '"graphs": "off", "batch": 1,' "$out/decode.log" | grep -o '"tokens_per_s": [0-9.]*') graphs off, $(grep -m1 '"graphs": "on", "batch": 1,' "$out/decode.log" | grep -o '"tokens_per_s": [0-9.]*') on (bf16, batch 1)"

    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer \
        /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
    if [ -z "$sanitizer" ]; then
        for name in memcheck racecheck; do
            step_rc=201 step_s=0
            echo "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)" >"$out/$name.log"
            record $name "compute-sanitizer not found"
        done
    else
        run_step memcheck 120 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 99 \
            "$build/tests/test_ops" --small
        record memcheck "$(grep -m1 'ERROR SUMMARY' "$out/memcheck.log" | sed 's/^========= //')"

        run_step racecheck 120 "$sanitizer" --tool racecheck --error-exitcode 99 "$build/tests/test_ops" --small
        record racecheck "$(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$out/racecheck.log" | sed 's/^========= //')"
    fi
fi

{
    echo
    printf '%-15s %-10s %7s  %s\n' step status seconds "key number"
    for row in "${summary[@]}"; do
        echo "$row"
    done
    echo "total $(($(date +%s) - t_start)) s of a ${budget} s budget; logs in $out"
} | tee "$out/summary.txt"
exit $any_fail
