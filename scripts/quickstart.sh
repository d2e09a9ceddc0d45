#!/usr/bin/env bash
# quickstart.sh: build paraphym and run its main job on the committed Qwen3-Coder nano model:
# the logits of "def fibonacci(n):\n" (token ids from the model's tokenizer) as JSON on stdout.
# Extra arguments replace the default ones, e.g. scripts/quickstart.sh --model DIR --ids 1,2,3
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$root/build" -j"$(nproc)" --target paraphym >&2
if [ $# -eq 0 ]; then
    set -- --model "$root/models/qwen3_coder_nano" --ids 305,283,544,264,5367,72,715,358
fi
exec "$root/build/paraphym" logits "$@"
