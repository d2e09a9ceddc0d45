#!/usr/bin/env bash
# quickstart.sh: build paraphym and run its main job: stream a completion from the embedded
# Qwen3-Coder nano model (committed under models/, nothing to download). Extra arguments replace
# the default ones and go to `paraphym run`, e.g. scripts/quickstart.sh --prompt 'import os'
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$root/build" -j"$(nproc)" --target paraphym >&2
if [ $# -eq 0 ]; then
    set -- --prompt 'def fibonacci(n):
' --max-tokens 64 --seed 1
fi
exec "$root/build/paraphym" run "$@"
