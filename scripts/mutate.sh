#!/usr/bin/env bash
# Mutation check, run on demand (not in CI: it rebuilds and reruns ctest once per mutation).
# Each one-line mutation of scripts/mutations.txt is applied alone to a scratch copy of the tree,
# rebuilt (incrementally) and run through ctest; a mutation is "caught" when some test fails,
# "survived" when the whole suite passes, "not_applied" when its sed script does not change exactly
# one line (the code moved: update the list). One JSON line per mutation on stdout, progress on
# stderr; exits 1 if any mutation survived or failed to apply.
#
#   bash scripts/mutate.sh [-j N] [--list FILE] [--only ID[,ID...]] [--scratch DIR] [--fresh]
#                          [--no-baseline] [--exclude REGEX]
#
# The scratch copy (default ${TMPDIR:-/tmp}/ea-mutate-$UID) persists between runs, so the first
# build is paid once; --fresh wipes it. Tests that need ../shared see it through a symlink, and
# EA_REQUIRE_SHARED=1 is set when it exists so no mutation can hide behind a skip. The tests of a
# mutation's third field run first; only when they pass does the whole suite run, so "survived"
# always means a full ctest passed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=2
list="$root/scripts/mutations.txt"
only=""
scratch="${TMPDIR:-/tmp}/ea-mutate-$(id -u)"
fresh=0
baseline=1
exclude=""
while [ $# -gt 0 ]; do
    case "$1" in
        -j) jobs="$2"; shift 2 ;;
        -j[0-9]*) jobs="${1#-j}"; shift ;;
        --list) list="$2"; shift 2 ;;
        --only) only=",$2,"; shift 2 ;;
        --scratch) scratch="$2"; shift 2 ;;
        --fresh) fresh=1; shift ;;
        --no-baseline) baseline=0; shift ;; # skip the unmutated full ctest (when iterating)
        --exclude) exclude="$2"; shift 2 ;;  # ctest -E for every run (a test known to be flaky)
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "mutate.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ -r "$list" ] || { echo "mutate.sh: cannot read the mutation list $list" >&2; exit 2; }

tree="$scratch/tree" build="$scratch/build"
[ "$fresh" = 1 ] && rm -rf "$scratch"
mkdir -p "$tree" "$build"
# Tracked and untracked-but-not-ignored files, mtimes kept so unchanged files do not rebuild
# (a file deleted from the tree stays in the copy: use --fresh after moves).
(cd "$root" && git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$tree"
if [ -d "$root/../shared" ]; then
    ln -sfn "$(cd "$root/../shared" && pwd)" "$scratch/shared"
    export EA_REQUIRE_SHARED=1
fi
tests=$(cd "$tree/tests" && ls test_*.c | sed 's/\.c$//' | tr '\n' ' ')
echo "mutate.sh: scratch build in $build" >&2
cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
build_all() { cmake --build "$build" -j"$jobs" --target eigenalign_cli $tests >"$scratch/build.log" 2>&1; }
# ctest with a regex (or all); prints the failed test names, returns 0 when all passed.
run_ctest() {
    local args=(--test-dir "$build" -j"$jobs" --timeout 900 --stop-on-failure)
    [ -n "$1" ] && args+=(-R "$1")
    [ -n "$exclude" ] && args+=(-E "$exclude")
    rm -f "$build/Testing/Temporary/LastTestsFailed.log"
    if ctest "${args[@]}" >"$scratch/ctest.log" 2>&1; then return 0; fi
    sed 's/^[0-9]*://' "$build/Testing/Temporary/LastTestsFailed.log" 2>/dev/null | tr '\n' ' '
    return 1
}

echo "mutate.sh: baseline build$([ "$baseline" = 1 ] && echo ' and full ctest (must pass)')" >&2
build_all || { echo "mutate.sh: the unmutated tree does not build, see $scratch/build.log" >&2; exit 2; }
if [ "$baseline" = 1 ] && ! failed=$(run_ctest ""); then
    echo "mutate.sh: the unmutated suite fails ($failed), see $scratch/ctest.log" >&2
    exit 2
fi

bad=0
while read -r id file first script; do
    case "$id" in ''|'#'*) continue ;; esac
    [ -z "$only" ] || [[ "$only" == *",$id,"* ]] || continue
    t0=$(date +%s)
    src="$tree/$file"
    result="" failed=""
    if [ ! -f "$src" ]; then
        result=not_applied
    else
        cp -p "$src" "$scratch/orig"
        sed -e "$script" "$scratch/orig" >"$src"
        changed=$(diff "$scratch/orig" "$src" | grep -c '^[<>]' || true)
        if [ "$changed" != 2 ]; then
            result=not_applied
        else
            echo "mutate.sh: $id ($file)" >&2
            if ! build_all; then
                result=caught failed="(build)"
            elif failed=$(run_ctest "$first"); then
                if failed=$(run_ctest ""); then result=survived; else result=caught; fi
            else
                result=caught
            fi
        fi
        cp -p "$scratch/orig" "$src" && touch "$src" # a new mtime, so the next build recompiles it
    fi
    [ "$result" = caught ] || bad=1
    printf '{"mutation":"%s","file":"%s","result":"%s","failed":"%s","seconds":%d}\n' \
        "$id" "$file" "$result" "$(echo $failed)" $(($(date +%s) - t0))
done <"$list"
build_all || true # leave the scratch build unmutated
exit $bad
