#!/usr/bin/env bash
# pairdb beside its references, in one run on one machine (issue P): every reference is started
# and stopped by this script, by PID.
#   - raw tonic ping: grpc.health.v1 Check on the coordinator, measured in every pairdb step;
#   - pairdb multi-process: 3 storage nodes + 1 coordinator, PostgreSQL metadata
#     (scripts/bench-cluster.sh), once per key distribution, plus a write-only run with
#     sync_writes on (etcd fsyncs every entry);
#   - `pairdbctl dev`: everything in one process, SQLite metadata;
#   - a 3-member etcd (Debian's etcd-server, installed here when missing) driven by the same
#     load generator (`pairdbctl bench workload --target etcd`);
#   - redis-benchmark SET/GET against a redis-server of its own: the single-node in-memory
#     ceiling;
#   - memory: the storage nodes' peak RSS under a cache-filling load beside their cache and
#     memtable budget.
# Workloads W (QUORUM writes), A, B, C at each concurrency, uniform and Zipfian, 100-byte
# values. Prints one table (ops/s, p50/p99, CPU µs per operation of every process, from
# /proc) and the issue's target ratios; the raw results stay in the printed directory.
#   scripts/bench-compare.sh                      # the whole run (about 40 minutes)
#   PAIRDB_COMPARE_QUICK=1 scripts/bench-compare.sh   # a smoke run: 2 s steps, c 16/64, zipfian
# Knobs: PAIRDB_COMPARE_SECS (per step, default 5), PAIRDB_COMPARE_CONC (1,16,64,256),
# PAIRDB_COMPARE_DISTS ("zipfian uniform"), PAIRDB_COMPARE_ONLY (e.g. "pairdb etcd").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
B=${PAIRDB_BENCH_BIN:-$CARGO_TARGET_DIR/release}
secs=${PAIRDB_COMPARE_SECS:-5}
conc=${PAIRDB_COMPARE_CONC:-1,16,64,256}
dists=${PAIRDB_COMPARE_DISTS:-zipfian uniform}
only=${PAIRDB_COMPARE_ONLY:-pairdb sync memory dev etcd redis}
if [ "${PAIRDB_COMPARE_QUICK:-0}" = 1 ]; then
  secs=2 conc=16,64 dists=zipfian
fi
OUT=${PAIRDB_COMPARE_OUT:-$(mktemp -d /tmp/pairdb-compare.XXXXXX)}
mkdir -p "$OUT"
work=$(mktemp -d)
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT
wait_port() {
  for _ in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-compare: port $1 never opened" >&2
  return 1
}
args=(--concurrency "$conc" --duration-secs "$secs" --warmup-secs 1 --value-size 100)
want() { [[ " $only " == *" $1 "* ]]; }

if [ -z "${PAIRDB_BENCH_BIN:-}" ]; then
  echo "== release build"
  scripts/cargo build --release --locked -p pairdbctl -p pairdb-storage-node -p pairdb-coordinator --bins --quiet
fi
ctl="$B/pairdbctl"
git rev-parse --short HEAD > "$OUT/commit"
nproc > "$OUT/cores"

if want pairdb; then
  for d in $dists; do
    echo "== pairdb multi-process ($d)"
    PAIRDB_BENCH_BIN="$B" PAIRDB_BENCH_OUT="$OUT/pairdb-$d" PAIRDB_BENCH_WORKLOADS="w a b c" \
      scripts/bench-cluster.sh "${args[@]}" --distribution "$d" > "$OUT/pairdb-$d.log" 2>&1 \
      || { cat "$OUT/pairdb-$d.log"; exit 1; }
    tail -2 "$OUT/pairdb-$d.log"
  done
fi

if want sync; then
  echo "== pairdb multi-process, sync_writes on (zipfian, write-only)"
  PAIRDB_SYNC_WRITES=true PAIRDB_BENCH_BIN="$B" PAIRDB_BENCH_OUT="$OUT/pairdb-sync" PAIRDB_BENCH_WORKLOADS="w" \
    scripts/bench-cluster.sh "${args[@]}" --distribution zipfian > "$OUT/pairdb-sync.log" 2>&1 \
    || { cat "$OUT/pairdb-sync.log"; exit 1; }
fi

if want memory; then
  # The storage nodes' memory under a cache-filling load: a 16 MiB block cache and 3 × 8 MiB
  # memtables, 300k records (≈ 60 MiB of records with keys and framing), uniform reads.
  echo "== memory: 16 MiB block cache, 3 × 8 MiB memtables, 300k records, uniform QUORUM reads"
  PAIRDB_BLOCK_CACHE_MB=16 PAIRDB_MEMTABLE_MB=8 PAIRDB_BENCH_BIN="$B" PAIRDB_BENCH_OUT="$OUT/memory" \
    PAIRDB_BENCH_WORKLOADS="c" scripts/bench-cluster.sh --records 300000 --concurrency 64 \
    --duration-secs $((secs * 4)) --warmup-secs 1 --distribution uniform > "$OUT/memory.log" 2>&1 \
    || { cat "$OUT/memory.log"; exit 1; }
  echo '{"block_cache_mb": 16, "memtable_mb": 8, "max_memtables": 3}' > "$OUT/memory/budget.json"
  tail -2 "$OUT/memory.log"
fi

if want dev; then
  echo "== pairdbctl dev"
  RUST_LOG=warn "$ctl" dev --data-dir "$work/dev" --port 25051 --admin-port 25100 \
    --storage-base-port 27001 --admin-base-port 25101 > "$OUT/dev-server.log" 2>&1 &
  dev=$!
  pids+=("$dev")
  wait_port 25051
  sleep 2
  mkdir -p "$OUT/dev-zipfian"
  first=(--records 10000)
  for w in w a c; do
    "$ctl" --coordinator 127.0.0.1:25051 bench workload --workload "$w" --distribution zipfian \
      "${args[@]}" "${first[@]}" --cpu-pid "dev=$dev" --out "$OUT/dev-zipfian/cluster-$w.json" > /dev/null
    first=(--no-load)
  done
  awk '/VmHWM/ {printf "{\"dev\": %.0f}\n", $2/1024}' "/proc/$dev/status" > "$OUT/dev-zipfian/rss.json"
  stop_all
fi

if want etcd; then
  if ! command -v etcd >/dev/null; then
    echo "== installing Debian's etcd-server (its service kept from starting)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
      $SUDO chmod 755 /usr/sbin/policy-rc.d
      made_policy=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    [ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
  fi
  etcd --version | head -1 > "$OUT/etcd-version"
  cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for d in $dists; do
    echo "== etcd, 3 members ($(cat "$OUT/etcd-version")) ($d)"
    rm -rf "$work/etcd"
    cpu=()
    for i in 1 2 3; do
      etcd --name "e$i" --data-dir "$work/etcd/e$i" --log-level error --logger zap \
        --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
        > "$OUT/etcd-$i.log" 2>&1 &
      pids+=($!)
      cpu+=(--cpu-pid "e$i=$!")
    done
    for i in 1 2 3; do wait_port "2379$i"; done
    sleep 2
    mkdir -p "$OUT/etcd-$d"
    first=()
    for w in w a b c; do
      "$ctl" bench workload --target etcd --etcd-endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
        --workload "$w" --distribution "$d" "${args[@]}" "${first[@]}" "${cpu[@]}" \
        --out "$OUT/etcd-$d/cluster-$w.json" > /dev/null
      first=(--no-load)
    done
    printf '{"e1": %s, "e2": %s, "e3": %s}\n' \
      "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${pids[0]}/status")" \
      "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${pids[1]}/status")" \
      "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${pids[2]}/status")" > "$OUT/etcd-$d/rss.json"
    stop_all
  done
fi

if want redis; then
  echo "== redis-benchmark (its own redis-server, no persistence)"
  command -v redis-server >/dev/null || {
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  }
  redis-server --port 26379 --bind 127.0.0.1 --save '' --appendonly no --daemonize no > "$OUT/redis.log" 2>&1 &
  rpid=$!
  pids+=("$rpid")
  wait_port 26379
  redis-server --version | head -1 > "$OUT/redis-version"
  mkdir -p "$OUT/redis"
  for c in ${conc//,/ }; do
    for t in set get; do
      before=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
      start=$(date +%s.%N)
      redis-benchmark -p 26379 -t "$t" -c "$c" -d 100 -r 10000 -n $((c < 16 ? 50000 : 300000)) --csv \
        > "$OUT/redis/$t-$c.csv"
      end=$(date +%s.%N)
      after=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
      echo "$before $after $(getconf CLK_TCK) $start $end" > "$OUT/redis/$t-$c.cpu"
    done
  done
  stop_all
fi

python3 scripts/bench_compare_report.py "$OUT" | tee "$OUT/report.md"
echo "results in $OUT"
