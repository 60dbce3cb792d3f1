#!/usr/bin/env bash
# Interleaved A/B timing of two builds of one benchmark: runs A, B, A, B, ... ROUNDS times each
# (so load on a shared machine hits both alike) and prints, for every numeric field of the JSON
# lines (matched by their other fields), the median over rounds of A and of B and the ratio B/A;
# also each whole run's CPU seconds (user + system), which a loaded machine inflates less than the
# wall-clock rates.
# usage: scripts/bench_ab.sh ROUNDS BENCH_A BENCH_B [ARGS...]
#   e.g. scripts/bench_ab.sh 5 build-native/bench_engine build/bench_engine models/gpt2-micro
set -euo pipefail
rounds=$1 a=$2 b=$3
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds" >&2
    for side in a b; do
        bin=$a
        [ $side = b ] && bin=$b
        TIMEFORMAT='%3U %3S'
        t=$( { time "$bin" "$@" >"$out/$side.$r.jsonl" 2>/dev/null; } 2>&1 )
        echo "{\"bench\": \"process\", \"cpu_s\": $(echo "$t" | awk '{print $1 + $2}')}" >>"$out/$side.$r.jsonl"
    done
done
python3 - "$out" "$rounds" "$a" "$b" <<'PY'
import json, statistics, sys
out, rounds, a, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
vals = {}
for side in "ab":
    for r in range(1, rounds + 1):
        for line in open(f"{out}/{side}.{r}.jsonl"):
            rec = json.loads(line)
            ident = ("ctx", "decode_tokens", "reps", "bits_per_value")  # numbers that name a line, not a timing
            key = tuple((k, v) for k, v in rec.items() if k != "isa" and (not isinstance(v, (int, float)) or k in ident))
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ident:
                    vals.setdefault((key, k), {}).setdefault(side, []).append(v)
print(json.dumps({"a": a, "b": b, "rounds": rounds}))
for (key, k), d in vals.items():
    ma, mb = statistics.median(d.get("a", [float("nan")])), statistics.median(d.get("b", [float("nan")]))
    rec = dict(key)
    rec.update({"field": k, "median_a": ma, "median_b": mb, "b_over_a": round(mb / ma, 4) if ma else None})
    print(json.dumps(rec))
PY
