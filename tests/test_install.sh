#!/usr/bin/env bash
# test_install.sh: `cmake --install` puts the header, the shared library and paraphym.pc in a
# prefix, and the README's example (examples/prompt.c) builds with
# `cc prompt.c $(pkg-config --cflags --libs paraphym)` and runs, and so does the C example in
# README.md (its first ```c block): each must print the embedded model's greedy continuation of
# "def fibonacci(n):\n".
#   test_install.sh BUILD_DIR PROJECT_DIR
set -euo pipefail
build=$1
root=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
pc=$(dirname "$(find "$tmp/prefix" -name paraphym.pc | head -n 1)")
libdir=$(dirname "$(find "$tmp/prefix" -name 'libparaphym.so' | head -n 1)")
test -f "$tmp/prefix/include/paraphym.h"
awk '/^```c$/ {on = 1; next} /^```$/ {if (on) exit} on' "$root/README.md" >"$tmp/readme_example.c"
test -s "$tmp/readme_example.c"
want='    return fibonacci(n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,'
for src in "$root/examples/prompt.c" "$tmp/readme_example.c"; do
    cc -std=c11 -Wall -Wextra -Werror "$src" \
        $(PKG_CONFIG_PATH="$pc" pkg-config --cflags --libs paraphym) -o "$tmp/prompt"
    LD_LIBRARY_PATH="$libdir" "$tmp/prompt" >"$tmp/out.txt" 2>"$tmp/err.txt"
    if [ "$(cat "$tmp/out.txt")" != "$want" ]; then
        echo "FAIL: $src printed '$(cat "$tmp/out.txt")'; stderr: $(cat "$tmp/err.txt")"
        exit 1
    fi
    echo "ok: $(basename "$src") built with pkg-config against the installed library and printed the greedy text"
done
