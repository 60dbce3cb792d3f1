#!/usr/bin/env bash
# Install the Debian 12 packages the build (and, with --test, the test suite) needs; only what is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas0-openmp liblapacke-dev libpcre2-dev libcjson-dev libutf8proc-dev libcmocka-dev
      python3 python3-cffi python3-numpy)
if [ "${1:-}" = "--test" ]; then pkgs+=(clang-14 libclang-rt-14-dev libomp-14-dev valgrind python3-pytest man-db); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
fi
