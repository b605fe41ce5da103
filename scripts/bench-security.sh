#!/usr/bin/env bash
# What TLS + mTLS + bearer tokens cost: workload A (50% QUORUM reads, 50% QUORUM writes) at
# concurrency 16 and 64 on a multi-process cluster (3 storage nodes, 1 coordinator,
# PostgreSQL), plaintext beside secured, in one run, in the order plain, secure, secure, plain
# (ABBA) so drift cancels. Secured: TLS on every port, mTLS between coordinator and nodes,
# auth = required with a tenant token. Prints each run and the secure/plain ratios (medians).
# Every process it starts is stopped by PID. Release binaries:
#   scripts/cargo build --release -p pairdbctl -p pairdb-storage-node -p pairdb-coordinator --bins
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
B=${PAIRDB_BENCH_BIN:-$CARGO_TARGET_DIR/release}
DUR=${PAIRDB_BENCH_SECS:-10}
OUT=${PAIRDB_BENCH_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
dbs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${dbs[@]}"; do
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
export RUST_LOG=warn
"$B/pairdbctl" certs cluster --out "$work/tls" --nodes n1,n2,n3 --coordinators coordinator >/dev/null
admin=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

run() { # run <label> <secure 0|1>
  local label=$1 secure=$2
  local db="pairdb_secbench_$$_$label" run_pids=() tls_node=() tls_coord=() ctl_tls=()
  dbs+=("$db")
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
  rm -rf "$work/data"
  for i in 1 2 3; do
    if [ "$secure" = 1 ]; then
      tls_node=(--tls-cert "$work/tls/n$i.crt" --tls-key "$work/tls/n$i.key" --tls-ca "$work/tls/ca.crt" --admin-token "$admin")
    fi
    "$B/pairdb-storage-node" --node-id "n$i" --data-dir "$work/data/n$i" \
      --grpc-addr "127.0.0.1:$((17100 + i))" --admin-addr "127.0.0.1:$((19100 + i))" "${tls_node[@]}" &
    run_pids+=($!)
  done
  if [ "$secure" = 1 ]; then
    tls_coord=(--tls-cert "$work/tls/coordinator.crt" --tls-key "$work/tls/coordinator.key" --tls-ca "$work/tls/ca.crt" --auth required --admin-token "$admin")
    ctl_tls=(--tls-ca "$work/tls/ca.crt" --token "$admin")
  fi
  DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" "$B/pairdb-coordinator" \
    --grpc-addr 127.0.0.1:15151 --admin-addr 127.0.0.1:15152 "${tls_coord[@]}" &
  run_pids+=($!)
  pids+=("${run_pids[@]}")
  for port in 17101 17102 17103 15151; do
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  done
  local ctl=("$B/pairdbctl" --coordinator 127.0.0.1:15151 "${ctl_tls[@]}")
  for i in 1 2 3; do
    "${ctl[@]}" node add "n$i" "127.0.0.1:$((17100 + i))" --admin-port $((19100 + i)) --initial-member >/dev/null
  done
  sleep 1.5
  if [ "$secure" = 1 ]; then
    # The load runs with a tenant-scoped token, as an application would.
    "${ctl[@]}" tenant create bench --replication-factor 3 --conflict-policy lww >/dev/null
    tok=$("${ctl[@]}" --json token create --role tenant --tenant bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    ctl=("$B/pairdbctl" --coordinator 127.0.0.1:15151 --tls-ca "$work/tls/ca.crt" --token "$tok")
  fi
  "${ctl[@]}" bench workload --workload a --concurrency 16,64 --duration-secs "$DUR" \
    --out "$OUT/$label.json" >/dev/null
  for p in "${run_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

run plain1 0
run secure1 1
run secure2 1
run plain2 0
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def steps(label):
    return {s["concurrency"]: s for s in json.load(open(f"{out}/{label}.json"))["steps"]}
runs = {l: steps(l) for l in ["plain1", "secure1", "secure2", "plain2"]}
print(f"{'concurrency':>11} {'run':>8} {'ops/s':>9} {'read p99 µs':>12} {'write p99 µs':>13}")
for c in (16, 64):
    for l, r in runs.items():
        s = r[c]
        print(f"{c:>11} {l:>8} {s['total_ops_per_sec']:>9.0f} {s['read']['p99_us']:>12} {s['update']['p99_us']:>13}")
    plain = statistics.median([runs["plain1"][c]["total_ops_per_sec"], runs["plain2"][c]["total_ops_per_sec"]])
    sec = statistics.median([runs["secure1"][c]["total_ops_per_sec"], runs["secure2"][c]["total_ops_per_sec"]])
    print(f"{c:>11} secure/plain throughput ratio: {sec / plain:.2f}")
PY
echo "results in $OUT"
