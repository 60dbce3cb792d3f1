#!/usr/bin/env bash
# The whole test suite: release build with -Werror, the same tests under ASan+UBSan, the codec and
# model tests built without AVX-512 (generic paths), fuzz smoke, and the main job under valgrind.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
jobs=$(nproc)

echo "== release build + tests" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure

echo "== ASan + UBSan build + tests" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEA_SANITIZE=ON -DEA_NATIVE=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure

echo "== portable build (x86-64-v3, no AVX-512): the generic paths beside the vector kernels" >&2
cmake -S . -B build-portable -DCMAKE_BUILD_TYPE=Release -DEA_NATIVE=OFF -DCMAKE_C_FLAGS="-march=x86-64-v3" >/dev/null
cmake --build build-portable -j"$jobs" --target test_kvcodec test_model
ctest --test-dir build-portable --output-on-failure -R '^(test_kvcodec|test_model)$'

echo "== fuzz smoke: every libFuzzer target for 3 s" >&2
bash scripts/fuzz.sh --time 3

echo "== valgrind: the main job, no errors and no leaks" >&2
bash scripts/valgrind.sh
