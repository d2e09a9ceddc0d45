#!/usr/bin/env bash
# install-deps.sh: the Debian packages paraphym builds and tests with. Installs only what is
# missing; needs root (or sudo) when something is. The CUDA toolkit is optional and not installed
# here: with nvcc on PATH (or in /usr/local/cuda) the CUDA targets build too.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libjson-c-dev libpcre2-dev libutf8proc-dev
      clang libclang-rt-dev python3)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq "${missing[@]}" >&2
