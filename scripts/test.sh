#!/usr/bin/env bash
# The whole test suite: release build with -Werror, the same tests under ASan+UBSan, the codec and
# model tests built for x86-64-v3 (AVX2 kernels) and x86-64-v2 (generic paths), fuzz smoke, and
# the main job under valgrind.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
jobs=$(nproc)
# Where ../shared exists (CI, the dev machine) every test that would skip for lack of it fails
# instead (tests/testutil.h TEST_SKIP); a fresh clone without it still shows its skips as Skipped.
if [ -d ../shared ]; then export EA_REQUIRE_SHARED=1; fi

echo "== release build + tests" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure

echo "== ASan + UBSan build + tests" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEA_SANITIZE=ON -DEA_NATIVE=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure

# Each tier runs the codec and model tests on the kernels it selects: x86-64-v3 the AVX2 ones,
# x86-64-v2 (no AVX) the generic paths; the native build above has whatever this CPU has.
for level in v3 v2; do
    echo "== portable build (x86-64-$level): $([ $level = v3 ] && echo 'AVX2 kernels' || echo 'generic paths, no AVX')" >&2
    cmake -S . -B build-portable-$level -DCMAKE_BUILD_TYPE=Release -DEA_NATIVE=OFF -DCMAKE_C_FLAGS="-march=x86-64-$level" >/dev/null
    cmake --build build-portable-$level -j"$jobs" --target test_kvcodec test_model
    ctest --test-dir build-portable-$level --output-on-failure -R '^(test_kvcodec|test_model)$'
done

echo "== fuzz smoke: every libFuzzer target for 3 s" >&2
bash scripts/fuzz.sh --time 3

echo "== valgrind: the main job, no errors and no leaks" >&2
bash scripts/valgrind.sh
