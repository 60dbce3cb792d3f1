#!/usr/bin/env bash
# The whole test suite: release build with -Werror, the same tests under ASan+UBSan, the codec and
# model tests once per kernel tier of the release binary (EA_ISA=generic, avx2, avx512), fuzz
# smoke, and the main job under valgrind; install tests (scratch prefix, examples, Python package) and pytest.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
jobs=$(nproc)
# Where ../shared exists (CI, the dev machine) every test that would skip for lack of it fails
# instead (tests/testutil.h TEST_SKIP); a fresh clone without it still shows its skips as Skipped.
if [ -d ../shared ]; then export EA_REQUIRE_SHARED=1; fi

echo "== layering check (includes, include loops; its self-test plants violations)" >&2
bash scripts/check_layers.sh /nonexistent
bash scripts/check_layers_selftest.sh

echo "== release build + tests" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
echo "== layering check of calls (symbols of the built objects)" >&2
bash scripts/check_layers.sh build
ctest --test-dir build --output-on-failure

echo "== install tests: scratch prefix, examples via pkg-config and find_package" >&2
bash scripts/test_install.sh build

echo "== Python package: pytest, every function against the CLI" >&2
py=$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )
PYTHONPATH=python EIGENALIGN_CLI=build/eigenalign "$py" -m pytest -q python/tests

echo "== ASan + UBSan build + tests" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEA_SANITIZE=ON -DEA_NATIVE=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build-asan --output-on-failure

# The one portable release binary runs the codec and model tests once per kernel tier it can
# select at run time (EA_ISA): generic (no AVX), avx2 and, where this CPU has it, avx512; the
# release run above used the best tier.
for tier in generic avx2 avx512; do
    if ! EA_ISA=$tier ./build/eigenalign --version >/dev/null 2>&1; then
        echo "== kernel tier $tier: not supported by this CPU, skipped" >&2
        continue
    fi
    echo "== kernel tier $tier (EA_ISA=$tier)" >&2
    EA_ISA=$tier ctest --test-dir build --output-on-failure -R '^(test_kvcodec|test_model|test_llama|test_llama_family)$'
done

echo "== fuzz smoke: every libFuzzer target for 3 s" >&2
bash scripts/fuzz.sh --time 3

echo "== valgrind: the main job, no errors and no leaks" >&2
bash scripts/valgrind.sh
