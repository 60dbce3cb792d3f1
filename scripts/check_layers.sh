#!/usr/bin/env bash
# Layering check: layers only call downward.
#   core -> io -> tokenizer -> spectral -> attend -> kv -> model -> calib -> compress -> esap -> report -> cli
# (io, tokenizer and spectral, and compress and esap, are peers in the design; they are ordered
# here the way the code uses them, so a new edge between peers is seen too).
# Fails (exit 1, one line per violation) when
#   - a file includes a header of a higher layer (src/<layer>/... or include/ea/<module>.h),
#   - headers include each other in a loop,
#   - src/cli includes anything under src/ other than src/cli, or calls a library function that
#     is not exported (not EA_API), and
#   - an object of the library calls a function defined in an object of a higher layer
#     (from the symbols of a built library: BUILD_DIR, default build/; skipped if not built).
# Usage: scripts/check_layers.sh [BUILD_DIR]. A planted violation is caught by
# scripts/check_layers_selftest.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
SRC_ROOT=${EA_LAYERS_ROOT:-.} BUILD_DIR="$build" python3 - <<'EOF'
import os, re, subprocess, sys

root = os.environ["SRC_ROOT"]
build = os.environ["BUILD_DIR"]
order = ["core", "io", "tokenizer", "spectral", "attend", "kv", "model", "calib", "compress", "esap", "report", "cli"]
level = {name: i for i, name in enumerate(order)}
public = {"core": "core", "io": "io", "tokenizer": "tokenizer", "spectral": "spectral", "kvcodec": "kv",
          "model": "model", "calib": "calib", "compress": "compress", "esap": "esap", "report": "report"}
bad = []

def layer_of(path):
    parts = path.split("/")
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    if parts[0] == "include" and len(parts) == 3 and parts[1] == "ea":
        return public.get(parts[2][:-2])
    if path == "include/eigenalign.h":
        return "cli"  # the umbrella header: only the CLI (and users) take everything
    return None

files = []
for top in ("src", "include"):
    for d, _, names in os.walk(os.path.join(root, top)):
        for n in names:
            if n.endswith((".c", ".h")):
                files.append(os.path.relpath(os.path.join(d, n), root))

inc_re = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
graph = {}
for f in sorted(files):
    text = open(os.path.join(root, f), encoding="utf-8", errors="replace").read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    targets = []
    for inc in inc_re.findall(text):
        for cand in (os.path.join("src", inc), os.path.join("include", inc), os.path.join(os.path.dirname(f), inc)):
            if os.path.exists(os.path.join(root, cand)):
                targets.append(os.path.normpath(cand))
                break
        else:
            bad.append(f"{f}: includes \"{inc}\", which is no file of src/ or include/")
    graph[f] = targets
    lf = layer_of(f)
    if lf is None:
        continue
    for t in targets:
        lt = layer_of(t)
        if lt is None:
            continue
        if level[lt] > level[lf]:
            bad.append(f"{f} ({lf}) includes {t} ({lt}), a higher layer")
        if lf == "cli" and t.startswith("src/") and not t.startswith("src/cli/"):
            bad.append(f"{f}: the CLI includes {t}; it may use public headers (include/) only")

# include loops (a DFS over the header graph)
state = {}
def visit(f, stack):
    state[f] = 1
    stack.append(f)
    for t in graph.get(f, []):
        if state.get(t) == 1:
            bad.append("include loop: " + " -> ".join(stack[stack.index(t):] + [t]))
        elif t not in state:
            visit(t, stack)
    stack.pop()
    state[f] = 2
for f in sorted(graph):
    if f not in state:
        visit(f, [])

# calls, from the symbols of the built objects
objdir = os.path.join(build, "CMakeFiles", "eigenalign.dir", "src")
clidir = os.path.join(build, "CMakeFiles", "eigenalign_cli.dir", "src", "cli")
if os.path.isdir(objdir):
    defined, undefined, exported = {}, {}, set()
    for d, _, names in os.walk(objdir):
        for n in names:
            if not n.endswith(".c.o"):
                continue
            obj = os.path.join(d, n)
            src = "src/" + os.path.relpath(obj, objdir)[:-2]
            if not os.path.exists(os.path.join(root, src)):
                continue  # a stale object of a source that moved
            out = subprocess.run(["readelf", "-sW", obj], capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                p = line.split()
                if len(p) < 8 or p[4] != "GLOBAL":
                    continue
                if p[6] == "UND":
                    undefined.setdefault(src, set()).add(p[7])
                else:
                    defined[p[7]] = src
                    if p[5] == "DEFAULT":
                        exported.add(p[7])
    for src, syms in sorted(undefined.items()):
        for s in sorted(syms):
            owner = defined.get(s)
            if owner and level[layer_of(owner)] > level[layer_of(src)]:
                bad.append(f"{src} ({layer_of(src)}) calls {s} of {owner} ({layer_of(owner)}), a higher layer")
    if os.path.isdir(clidir):
        for n in sorted(os.listdir(clidir)):
            if not n.endswith(".c.o"):
                continue
            out = subprocess.run(["readelf", "-sW", os.path.join(clidir, n)], capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                p = line.split()
                if len(p) >= 8 and p[6] == "UND" and p[7] in defined and p[7] not in exported:
                    bad.append(f"src/cli/{n[:-2]} calls {p[7]}, which is not public API (no EA_API)")
else:
    print(f"check_layers: {objdir} not built: calls not checked (includes were)", file=sys.stderr)

for b in bad:
    print("check_layers: " + b)
if bad:
    sys.exit(1)
print(f"check_layers: {len(files)} files, layers {' -> '.join(order)}: ok", file=sys.stderr)
EOF
