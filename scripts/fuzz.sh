#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/fuzz_*.c) with clang-14 and run each one.
#
#   scripts/fuzz.sh                      # every target for 10 s each
#   scripts/fuzz.sh --time 3             # CI smoke: 3 s each (about 20 s in all)
#   scripts/fuzz.sh --runs 1000000 fuzz_config fuzz_safetensors
#   scripts/fuzz.sh --build-only
#
# Needs clang-14 and libclang-rt-14-dev (apt-get install clang-14 libclang-rt-14-dev libomp-14-dev).
# Builds in build-fuzz/ with -DEA_FUZZ=ON, which compiles the whole library with
# -fsanitize=fuzzer-no-link,address,undefined. Seeds come from fuzz/corpus/<target>/ (never
# written); inputs the fuzzer finds go to build-fuzz/corpus/<target>/; a crash is written to
# build-fuzz/crashes/<target>-crash-* and the script exits non-zero. Reproduce one with
#   build-fuzz/<target> build-fuzz/crashes/<file>
# The run is niced; set JOBS (default 2) for the build, FUZZ_ARGS for extra libFuzzer flags
# (e.g. FUZZ_ARGS="-jobs=8 -workers=8"). Each target prints its execution count
# ("stat::number_of_executed_units") at the end; the script summarises them.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=time
AMOUNT=10
BUILD_ONLY=0
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) MODE=time; AMOUNT="$2"; shift 2 ;;
        --runs) MODE=runs; AMOUNT="$2"; shift 2 ;;
        --build-only) BUILD_ONLY=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        fuzz_*) TARGETS+=("$1"); shift ;;
        *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

CC=${FUZZ_CC:-clang-14}
if ! command -v "$CC" >/dev/null; then
    echo "fuzz.sh: $CC not found (apt-get install clang-14 libclang-rt-14-dev libomp-14-dev)" >&2
    exit 2
fi

BUILD=build-fuzz
# Warnings are not errors here: clang warns about things gcc does not, and this build only
# looks for crashes (the gcc build keeps -Werror).
cmake -S . -B "$BUILD" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEA_FUZZ=ON -DEA_WERROR=OFF >/dev/null
if [ ${#TARGETS[@]} -eq 0 ]; then
    for f in fuzz/fuzz_*.c; do TARGETS+=("$(basename "$f" .c)"); done
fi
nice -n 10 cmake --build "$BUILD" -j"${JOBS:-2}" --target "${TARGETS[@]}" >/dev/null
[ "$BUILD_ONLY" = 1 ] && { echo "built: ${TARGETS[*]}"; exit 0; }

mkdir -p "$BUILD/crashes"
# Reports only what matters; leak checking stays on (detect_leaks=1 is the default).
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1
status=0
summary=""
for t in "${TARGETS[@]}"; do
    mkdir -p "$BUILD/corpus/$t"
    seeds="fuzz/corpus/${t}"
    [ -d "$seeds" ] || seeds=""
    dict=""
    [ -f "fuzz/dict/${t}.dict" ] && dict="-dict=fuzz/dict/${t}.dict"
    maxlen="-max_len=16384"
    if [ "$MODE" = time ]; then limit="-max_total_time=$AMOUNT"; else limit="-runs=$AMOUNT"; fi
    log="$BUILD/$t.log"
    echo "== $t ($MODE $AMOUNT)"
    set +e
    # shellcheck disable=SC2086  # FUZZ_ARGS: extra libFuzzer flags, word-split on purpose
    nice -n 10 "$BUILD/$t" $limit $maxlen $dict -print_final_stats=1 -timeout=20 -rss_limit_mb=4096 ${FUZZ_ARGS:-} \
        -artifact_prefix="$BUILD/crashes/$t-" "$BUILD/corpus/$t" $seeds >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    secs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    line="$t: ${execs:-?} executions (${secs:-?}/s), exit $rc"
    echo "   $line"
    summary+="$line"$'\n'
    if [ $rc -ne 0 ]; then
        status=1
        echo "   FAILED, log: $log" >&2
        grep -E 'ERROR|runtime error|invariant|SUMMARY|Test unit written' "$log" | head -20 >&2 || true
    fi
done
echo "---- fuzz summary"
printf '%s' "$summary"
exit $status
