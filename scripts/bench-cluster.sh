#!/usr/bin/env bash
# Benchmarks a multi-process cluster: 3 storage nodes and 1 coordinator as separate processes,
# metadata in a fresh PostgreSQL database. Runs `pairdbctl bench workload` for workloads A, B
# and C (PAIRDB_BENCH_WORKLOADS, e.g. "w a b c"; the first loads the keys; arguments are passed
# on, e.g. --duration-secs 10) with every server's CPU microseconds per operation
# (`--cpu-pid`), prints every server's peak RSS (also into rss.json), and stops every process
# it started by PID. PAIRDB_SYNC_WRITES=true makes the nodes fsync every write batch. PAIRDB_BENCH_BIN picks the servers' binaries, PAIRDB_BENCH_CTL the load
# generator (default: the pairdbctl beside them). Release binaries:
#   scripts/cargo build --release -p pairdbctl -p pairdb-storage-node -p pairdb-coordinator --bins
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
B=${PAIRDB_BENCH_BIN:-$CARGO_TARGET_DIR/release}
OUT=${PAIRDB_BENCH_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
work=$(mktemp -d)
db="pairdb_bench_$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
export RUST_LOG=warn
for i in 1 2 3; do
  "$B/pairdb-storage-node" --node-id "n$i" --data-dir "$work/n$i" \
    --grpc-addr "127.0.0.1:$((17000 + i))" --admin-addr "127.0.0.1:$((19000 + i))" &
  pids+=($!)
done
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" "$B/pairdb-coordinator" \
  --grpc-addr 127.0.0.1:15051 --admin-addr 127.0.0.1:15052 &
coord=$!
pids+=($coord)
for port in 17001 17002 17003 15051; do
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
rss() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
idle=$(rss "${pids[0]}")
ctl=("${PAIRDB_BENCH_CTL:-$B/pairdbctl}" --coordinator 127.0.0.1:15051)
cpu=(--cpu-pid "coordinator=$coord" --cpu-pid "n1=${pids[0]}" --cpu-pid "n2=${pids[1]}" --cpu-pid "n3=${pids[2]}")
for i in 1 2 3; do
  "${ctl[@]}" node add "n$i" "127.0.0.1:$((17000 + i))" --admin-port $((19000 + i)) --initial-member >/dev/null
done
sleep 1.5
first=1
for w in ${PAIRDB_BENCH_WORKLOADS:-a b c}; do
  load=()
  [ "$first" = 1 ] || load=(--no-load)
  first=0
  "${ctl[@]}" bench workload --workload "$w" --out "$OUT/cluster-$w.json" "${load[@]}" "${cpu[@]}" "$@"
done
hwm() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
echo "coordinator peak RSS: $(hwm "$coord") MiB; storage nodes: $(hwm "${pids[0]}"), $(hwm "${pids[1]}"), $(hwm "${pids[2]}") MiB"
printf '{"coordinator": %s, "n1": %s, "n2": %s, "n3": %s, "n1_idle": %s}\n' "$(hwm "$coord")" "$(hwm "${pids[0]}")" \
  "$(hwm "${pids[1]}")" "$(hwm "${pids[2]}")" "$idle" > "$OUT/rss.json"
echo "results in $OUT"
