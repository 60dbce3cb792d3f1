#!/usr/bin/env bash
# Run the main job on a small input under valgrind (memcheck): no invalid access, no use of
# uninitialised values, no leak. Exits non-zero on any error.
#
#   scripts/valgrind.sh                 # build build-valgrind, run the default jobs
#   scripts/valgrind.sh -- generate --prompt "Hello" -n 4     # one command of your own
#
# The build is separate (build-valgrind, RelWithDebInfo), portable, and runs the avx2 kernel tier
# (EA_ISA=avx2): valgrind 3.19 does not decode AVX-512, which the run-time choice would pick on
# machines that have it. OpenMP and OpenBLAS run single-threaded: their thread pools keep memory
# for the life of the process, which valgrind would report as "possibly lost" without being a leak
# of ours; definite and indirect leaks are errors.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind.sh: valgrind not found (apt-get install valgrind)" >&2
    exit 2
fi
BUILD=build-valgrind
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEA_NATIVE=OFF >/dev/null
nice -n 10 cmake --build "$BUILD" -j"${JOBS:-2}" --target eigenalign_cli >/dev/null
CLI="$BUILD/eigenalign"

# EA_NO_REEXEC: under valgrind /proc/self/exe is the valgrind tool, so the CLI must not re-exec.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 EA_NO_REEXEC=1 EA_ISA=avx2
VG=(valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --track-origins=yes --quiet)

run() {
    echo "== valgrind: eigenalign $*"
    "${VG[@]}" --error-exitcode=1 "$CLI" "$@" >/dev/null
}

if [ "${1:-}" = "--" ]; then
    shift
    run "$@"
    exit 0
fi

# The main job (the analysis report) and generation on the bundled model, plus a
# failing load so the error paths are checked for leaks too.
run generate --prompt "The quick brown fox" -n 8 --json
run generate --prompt "The quick brown fox" -n 8 --temperature 0.8 --top-k 40 --top-p 0.9 --seed 7 --json
run tokenize --text $'Hello, world! caf\xc3\xa9 \xff' --json
run analyze --max-tokens 64 --json
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '{"n_layer": 2}' >"$tmp/config.json"
echo "== valgrind: eigenalign generate on a broken model (must fail cleanly)"
set +e
"${VG[@]}" --error-exitcode=99 "$CLI" generate --model "$tmp" --prompt hi -n 1 >/dev/null 2>"$tmp/err"
rc=$?
set -e
if [ $rc -ne 1 ] || grep -q '==[0-9]*==' "$tmp/err"; then
    cat "$tmp/err" >&2
    echo "valgrind.sh: the failing load did not fail cleanly (exit $rc)" >&2
    exit 1
fi
echo "valgrind: no errors, no leaks"
