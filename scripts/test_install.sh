#!/usr/bin/env bash
# Install tests: `cmake --install` of an existing build into a scratch prefix, then what a user
# does with it: the man page renders, the shared library exports only ea_* symbols, and the
# examples build against the INSTALLED library through pkg-config and through find_package
# (shared and static) and run on the bundled model; the Python package installed by cmake and by
# pip (offline, --target) imports and runs the README's line. Usage: scripts/test_install.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
src=$PWD
scratch=$(mktemp -d "${TMPDIR:-/tmp}/eigenalign-install.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
prefix=$scratch/prefix
fail() { echo "test_install: FAIL: $*" >&2; exit 1; }
# Output captured before grep: `ldd X | grep -q` can fail under pipefail when grep exits first.
links() { local out; out=$(ldd "$1") || return 2; grep -q -- "$2" <<<"$out"; } # BINARY PATTERN

cmake --build "$build" -j"$(nproc)" --target eigenalign_cli eigenalign_shared eigenalign_man >/dev/null
cmake --install "$build" --prefix "$prefix" >/dev/null
for f in bin/eigenalign lib/libeigenalign.a lib/libeigenalign.so lib/libeigenalign.so.0 include/eigenalign.h \
         include/ea/core.h lib/pkgconfig/eigenalign.pc lib/cmake/eigenalign/eigenalignConfig.cmake \
         share/man/man1/eigenalign.1 share/eigenalign/calib.txt; do
  [ -e "$prefix/$f" ] || fail "$f not installed"
done
soname=$(readelf -d "$prefix/lib/libeigenalign.so")
grep -q 'SONAME.*libeigenalign\.so\.0' <<<"$soname" || fail "soname is not libeigenalign.so.0"
bad=$(nm -D --defined-only "$prefix/lib/libeigenalign.so" | awk '{print $3}' | grep -v '^ea_' || true)
[ -z "$bad" ] || fail "libeigenalign.so exports non-ea_ symbols: $(echo $bad | head -c 300)"
"$prefix/bin/eigenalign" --version >/dev/null || fail "installed tool does not run"
# Only the public API: every exported symbol is declared EA_API in the installed headers.
public=$(grep -ho 'EA_API[^;(]*(' "$prefix"/include/ea/*.h | grep -o 'ea_[a-z0-9_]*($' | tr -d '(' | sort -u)
internal=$(nm -D --defined-only "$prefix/lib/libeigenalign.so" | awk '{print $3}' | sort -u | comm -23 - <(echo "$public"))
[ -z "$internal" ] || fail "libeigenalign.so exports functions the headers do not declare EA_API: $(echo $internal | head -c 300)"
# The BLAS a program linked against the install loads: the library's own build (the OpenMP
# OpenBLAS when it was linked with it), never the one the system's BLAS alternative names.
blas_of() { local out; out=$(ldd "$1") || return 2; awk '/lib(open)?blas|liblapack\./ {print $1, $3}' <<<"$out" | sort; }
want_blas=$(blas_of "$prefix/lib/libeigenalign.so.0")

# The man page: renders without warnings and has a section for every command of `--help`.
warn=$(LC_ALL=C MANWIDTH=100 man -l "$prefix/share/man/man1/eigenalign.1" 2>&1 >"$scratch/man.txt") || fail "man -l failed"
[ -z "$warn" ] || fail "man page warnings: $warn"
for cmd in $("$prefix/bin/eigenalign" --help | awk '/^  [a-z]/ {print $1}'); do
  up=$(echo "$cmd" | tr a-z A-Z)
  grep -q "^$up\$" "$scratch/man.txt" || fail "man page has no section for $cmd"
done

text=$scratch/short.txt
head -c 20000 data/calib.txt >"$text"
run_examples() { # DIR LABEL
  "$1/spectrum" models/gpt2-micro "$text" 2 >"$scratch/out.txt" || fail "$2: spectrum failed"
  grep -q 'Df = ' "$scratch/out.txt" || fail "$2: spectrum printed no Df"
  "$1/compress" models/gpt2-micro "$text" data/eval.txt 1024 >"$scratch/out.txt" || fail "$2: compress failed"
  grep -q 'relative error' "$scratch/out.txt" || fail "$2: compress printed no error"
  for ex in spectrum compress; do
    [ "$(blas_of "$1/$ex")" = "$want_blas" ] ||
      fail "$2: $ex loads $(blas_of "$1/$ex" | tr '\n' ' ')instead of the library's $(echo $want_blas)"
  done
  echo "test_install: examples built and run: $2" >&2
}

# pkg-config, shared and static (the static link uses only what `--static` lists).
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
cc=${CC:-cc}
mkdir -p "$scratch/pc-shared" "$scratch/pc-static"
for ex in spectrum compress; do
  $cc -std=c11 -Wall -Wextra -Werror examples/$ex.c -o "$scratch/pc-shared/$ex" \
      $(pkg-config --cflags --libs eigenalign) -Wl,-rpath,"$prefix/lib"
  $cc -std=c11 -Wall -Wextra -Werror examples/$ex.c -o "$scratch/pc-static/$ex" $(pkg-config --cflags eigenalign) \
      "$prefix/lib/libeigenalign.a" $(pkg-config --static --libs eigenalign | sed 's/-leigenalign\b//')
done
links "$scratch/pc-shared/spectrum" "$prefix/lib/libeigenalign.so.0" || fail "pkg-config shared build does not use the installed .so"
links "$scratch/pc-static/spectrum" libeigenalign && fail "pkg-config static build needs libeigenalign.so"
run_examples "$scratch/pc-shared" "pkg-config, shared"
run_examples "$scratch/pc-static" "pkg-config, static"

# find_package(eigenalign): eigenalign::eigenalign, shared and static.
for static in OFF ON; do
  b=$scratch/cmake-static-$static
  cmake -S examples -B "$b" -DCMAKE_PREFIX_PATH="$prefix" -DEIGENALIGN_STATIC=$static \
        -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >/dev/null || fail "find_package configure (static=$static)"
  cmake --build "$b" >/dev/null || fail "find_package build (static=$static)"
  if [ $static = ON ]; then links "$b/spectrum" libeigenalign && fail "static build needs the .so"
  else links "$b/spectrum" "$prefix/lib/libeigenalign.so.0" || fail "shared build does not use the installed .so"; fi
  run_examples "$b" "find_package, static=$static"
done
# Python: the package cmake installed (it finds the installed library through _paths.py), running
# the README's line; and the package installed offline with pip --target (library via
# EIGENALIGN_LIBRARY).
py=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
site=$("$py" -c "import sys; print('lib/python%d.%d/dist-packages' % sys.version_info[:2])")
[ -f "$prefix/$site/eigenalign/_paths.py" ] || fail "the Python package was not installed into $prefix/$site"
out=$(cd "$src" && PYTHONPATH="$prefix/$site" "$py" -c "
import eigenalign
assert eigenalign.LIBRARY_PATH.startswith('$prefix/'), eigenalign.LIBRARY_PATH
print(eigenalign.analyze(eigenalign.Model.load('models/gpt2-micro'), 'data/calib.txt').summary())") ||
  fail "the README's Python line failed with the installed package"
grep -q '^wte ' <<<"$out" || fail "analyze summary has no wte line: $out"
echo "test_install: the README's Python line works with the installed package" >&2
"$py" -m pip install -q --no-build-isolation --no-index --no-deps --target "$scratch/pytarget" python/ 2>"$scratch/pip.err" ||
  fail "pip install --target failed: $(cat "$scratch/pip.err")"
rm -rf python/build python/eigenalign.egg-info # pip's in-tree build leftovers
PYTHONPATH="$scratch/pytarget" EIGENALIGN_LIBRARY="$prefix/lib/libeigenalign.so.0" "$py" -c "
import eigenalign
assert eigenalign.Model.load('models/gpt2-micro').tokenize('Hello world') == [15496, 995]" ||
  fail "the pip-installed package does not work"
echo "test_install: pip install --target works offline" >&2
echo "test_install: OK" >&2
