#!/usr/bin/env bash
# Same-run before/after of the multi-process cluster benchmark (scripts/bench-cluster.sh):
# builds BASE (a commit, default HEAD~1) in a throwaway worktree with its own target directory
# and the working tree as usual (release builds), then runs workloads A and C against each,
# alternating BASE and HEAD for ROUNDS rounds so machine drift hits both alike, and prints
# ops/s per run and the HEAD/BASE ratio of the medians. Rounds alternate the order (ABBA). Every process it starts is stopped by
# bench-cluster.sh; the worktree is removed at the end.
#   scripts/bench-before-after.sh [BASE] [ROUNDS] [-- extra bench workload args]
# PAIRDB_BENCH_WORKLOADS picks the workloads (default "a b c"; e.g. "w a c").
# PAIRDB_BENCH_REUSE_BASE=1 skips the BASE build and uses the binaries already in
# $PAIRDB_CACHE/target-base/release (built by an earlier run of the same BASE).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
base="${1:-HEAD~1}"
rounds="${2:-2}"
shift $(( $# > 2 ? 2 : $# )) || true
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--concurrency 64 --duration-secs 10)
base_rev=$(git rev-parse --short "$base")
head_rev=$(git rev-parse --short HEAD)
wt=$(mktemp -d)
out=$(mktemp -d)
cleanup() { git worktree remove --force "$wt" >/dev/null 2>&1 || rm -rf "$wt"; }
trap cleanup EXIT
git worktree add --detach "$wt" "$base" >/dev/null
bins=(-p pairdbctl -p pairdb-storage-node -p pairdb-coordinator --bins)
if [ "${PAIRDB_BENCH_REUSE_BASE:-0}" = "1" ] && [ -x "$PAIRDB_CACHE/target-base/release/pairdb-coordinator" ]; then
  echo "== BASE $base_rev: reusing $PAIRDB_CACHE/target-base/release"
else
  echo "== build BASE $base_rev"
  (cd "$wt" && CARGO_TARGET_DIR="$PAIRDB_CACHE/target-base" cargo build --release --locked "${bins[@]}" --quiet)
fi
echo "== build HEAD $head_rev (working tree)"
cargo build --release --locked "${bins[@]}" --quiet
declare -A dir=([base]="$PAIRDB_CACHE/target-base/release" [head]="$CARGO_TARGET_DIR/release")
for r in $(seq "$rounds"); do
  # ABBA order: a drift over the run (caches, a busy neighbour) falls on both sides alike.
  order="base head"
  [ $((r % 2)) -eq 0 ] && order="head base"
  for who in $order; do
    echo "== round $r: $who"
    # One load generator (HEAD's) drives both sides, so only the servers differ.
    PAIRDB_BENCH_BIN="${dir[$who]}" PAIRDB_BENCH_CTL="${dir[head]}/pairdbctl" PAIRDB_BENCH_OUT="$out/$who-$r" \
      scripts/bench-cluster.sh "${extra[@]}" > "$out/$who-$r.log" 2>&1 || { cat "$out/$who-$r.log"; exit 1; }
  done
done
python3 - "$out" "$rounds" "$base_rev" "$head_rev" "${PAIRDB_BENCH_WORKLOADS:-a b c}" <<'PY'
import json, statistics, sys
out, rounds, base, head = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
workloads = sys.argv[5].split()
def total(path):
    j = json.load(open(path))
    out = {}
    for s in j["steps"]:
        errs = sum((s.get(k) or {}).get("errors", 0) for k in ("read", "update"))
        out[s["concurrency"]] = (s["total_ops_per_sec"], errs)
    return out
print(f"| workload | conc | BASE {base} ops/s (runs) | HEAD {head} ops/s (runs) | HEAD/BASE (medians) |")
print("|---|---:|---|---|---:|")
for w in workloads:
    runs = {k: [total(f"{out}/{k}-{r}/cluster-{w}.json") for r in range(1, rounds + 1)] for k in ("base", "head")}
    for c in sorted(runs["base"][0]):
        b = [x[c][0] for x in runs["base"]]
        h = [x[c][0] for x in runs["head"]]
        errs = sum(x[c][1] for k in runs for x in runs[k])
        print(f"| {w.upper()} | {c} | {', '.join(f'{v:,.0f}' for v in b)} | {', '.join(f'{v:,.0f}' for v in h)} | {statistics.median(h)/statistics.median(b):.3f} |" + (f" ({errs} errors)" if errs else ""))
def cpu(path):
    j = json.load(open(path))
    return {s["concurrency"]: s.get("cpu_us_per_op", {}) for s in j["steps"]}
print()
print("CPU µs per operation (medians over the runs; storage nodes summed):")
print(f"| workload | conc | process | BASE {base} | HEAD {head} | HEAD/BASE |")
print("|---|---:|---|---:|---:|---:|")
for w in workloads:
    runs = {k: [cpu(f"{out}/{k}-{r}/cluster-{w}.json") for r in range(1, rounds + 1)] for k in ("base", "head")}
    for c in sorted(runs["base"][0]):
        for proc in ("coordinator", "nodes", "client"):
            def val(m):
                if proc == "nodes":
                    v = [m[c].get(n) for n in ("n1", "n2", "n3")]
                    return sum(v) if all(x is not None for x in v) else None
                return m[c].get(proc)
            b = [v for v in map(val, runs["base"]) if v is not None]
            h = [v for v in map(val, runs["head"]) if v is not None]
            if b and h:
                mb, mh = statistics.median(b), statistics.median(h)
                print(f"| {w.upper()} | {c} | {proc} | {mb:.1f} | {mh:.1f} | {mh/mb:.3f} |")
PY
