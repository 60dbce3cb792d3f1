#!/usr/bin/env python3
"""Compare two JSON outputs (one document or JSON lines) number by number.

usage: scripts/json_diff.py A B [--rtol X] [--ignore REGEX]

Walks both documents in parallel; strings, keys and structure must match exactly, numbers within
a relative tolerance (default 0: identical). Keys matching --ignore (default: timings and memory
measured at run time) are skipped. Prints the largest relative difference and every mismatch;
exits 1 if any. Used to check that a build or refactor reproduces the README's figures."""
import argparse
import json
import math
import re
import sys

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
ap.add_argument("--rtol", type=float, default=0.0)
ap.add_argument("--ignore", default=r"tok_s|per_s|_sec|seconds|_ms$|time|timing|elapsed|rss|isa$|threads")
args = ap.parse_args()
ignore = re.compile(args.ignore)


def load(path):
    text = open(path, encoding="utf-8", errors="surrogateescape").read()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith(("{", "["))]


worst = [0.0, ""]
bad = []


def walk(x, y, where):
    if isinstance(x, dict) and isinstance(y, dict):
        kx, ky = [k for k in x if not ignore.search(k)], [k for k in y if not ignore.search(k)]
        if kx != ky:
            bad.append(f"{where}: keys differ: {sorted(set(kx) ^ set(ky))}")
        for k in kx:
            if k in y:
                walk(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            bad.append(f"{where}: lengths {len(x)} != {len(y)}")
        for i, (u, v) in enumerate(zip(x, y)):
            walk(u, v, f"{where}[{i}]")
    elif isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        if x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return
        rel = abs(x - y) / max(abs(x), abs(y))
        if rel > worst[0]:
            worst[:] = [rel, where]
        if rel > args.rtol:
            bad.append(f"{where}: {x!r} vs {y!r} (relative {rel:.3g})")
    elif x != y:
        bad.append(f"{where}: {x!r} vs {y!r}")


da, db = load(args.a), load(args.b)
if len(da) != len(db):
    bad.append(f"documents: {len(da)} != {len(db)}")
for i, (x, y) in enumerate(zip(da, db)):
    walk(x, y, f"[{i}]")
print(f"{args.a} vs {args.b}: largest relative difference {worst[0]:.3g} at {worst[1] or '-'}; "
      f"{len(bad)} beyond rtol {args.rtol:g}")
for m in bad[:20]:
    print("  " + m)
sys.exit(1 if bad else 0)
