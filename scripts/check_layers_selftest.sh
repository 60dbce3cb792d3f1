#!/usr/bin/env bash
# Proves scripts/check_layers.sh fails on planted violations: on a copy of src/ and include/, each
# of an upward include, a CLI include of src/, and an include loop must make it exit 1, and the
# untouched copy must pass. (Upward calls are checked from built objects; see check_layers.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fresh() { rm -rf "$tmp/t"; mkdir -p "$tmp/t"; cp -r src include "$tmp/t/"; }
check() { EA_LAYERS_ROOT="$tmp/t" bash scripts/check_layers.sh "$tmp/no-build" >"$tmp/out" 2>&1; }
fresh
check || { cat "$tmp/out"; echo "check_layers_selftest: the untouched tree fails" >&2; exit 1; }
plant() { # name, file, line to prepend
    fresh
    printf '%s\n' "$3" | cat - "$tmp/t/$2" >"$tmp/x" && mv "$tmp/x" "$tmp/t/$2"
    if check; then echo "check_layers_selftest: planted $1 not caught" >&2; exit 1; fi
    grep -q . "$tmp/out"
    echo "check_layers_selftest: caught $1: $(grep -v "not built" "$tmp/out" | head -1)" >&2
}
plant "upward include" src/kv/kv_f32.c '#include "model/internal.h"'
plant "attention kernels including a codec header" src/attend/attention_ref.c '#include "kv/kv_codec.h"'
plant "upward public include" src/core/rng.c '#include "ea/calib.h"'
plant "CLI including src/" src/cli/main.c '#include "kv/kv_internal.h"'
fresh
printf '#include "kv/kv_rows.h"\n' | cat - "$tmp/t/src/kv/kv_quant.h" >"$tmp/x" && mv "$tmp/x" "$tmp/t/src/kv/kv_quant.h"
printf '#include "kv/kv_quant.h"\n' | cat - "$tmp/t/src/kv/kv_rows.h" >"$tmp/x" && mv "$tmp/x" "$tmp/t/src/kv/kv_rows.h"
if check; then echo "check_layers_selftest: planted include loop not caught" >&2; exit 1; fi
echo "check_layers_selftest: caught include loop: $(grep loop "$tmp/out" | head -1)" >&2
echo "check_layers_selftest: ok" >&2
