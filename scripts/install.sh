#!/usr/bin/env bash
# Install what is missing, build the release tool into build/ and install it (see the end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
# Install the tool, the libraries, headers, pkg-config and CMake files, the man page and the Python
# package (into the prefix's dist-packages, on Debian python3's path for /usr/local). PREFIX
# overrides /usr/local; skipped with a hint when the prefix is not writable.
prefix=${PREFIX:-/usr/local}
if [ -w "$prefix" ] || { [ ! -e "$prefix" ] && [ -w "$(dirname "$prefix")" ]; }; then
  cmake --install build --prefix "$prefix" >/dev/null
  if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi
  echo "installed into $prefix (eigenalign, libeigenalign, eigenalign.pc, man eigenalign, python3 -c 'import eigenalign')" >&2
else
  echo "not installing: $prefix is not writable (sudo cmake --install build, or PREFIX=DIR bash scripts/install.sh)" >&2
fi
