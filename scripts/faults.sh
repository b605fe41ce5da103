#!/usr/bin/env bash
# Runs the nemesis scenarios (tests/tests/nemesis_process.rs) and prints each run's verdict.
#   scripts/faults.sh            the fast tier: what scripts/test.sh runs (4 faults, one seed)
#   scripts/faults.sh --long [SEEDS] [STEPS]
#                                the long tier: SEEDS runs (default 5) of STEPS faults each
#                                (default 30, about 3 minutes per run), fresh seeds
#   PAIRDB_NEMESIS_SEED=N scripts/faults.sh   replays one schedule
#   scripts/faults.sh --release [--long ...]
#                                the same with release builds of the servers (availability
#                                as operators would see it; issue G deliverable 5)
#   scripts/faults.sh --sim [--seeds N] [--from S]
#                                the deterministic simulation (tests/tests/simulation.rs) over
#                                N seeds (default 1000) from S (default a fresh base); a failing
#                                seed replays with --seeds 1 --from <seed>
# Record what it prints in TESTING.md. Builds first (the process tests start the binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export RUST_LOG="${RUST_LOG:-warn}"
if [ "${1:-}" = "--sim" ]; then
  shift
  export PAIRDB_SIM_SEEDS=1000 PAIRDB_SIM_SEED=$((RANDOM * 32768 + RANDOM))
  while [ $# -gt 0 ]; do
    case "$1" in
      --seeds) export PAIRDB_SIM_SEEDS="$2"; shift 2 ;;
      --from) export PAIRDB_SIM_SEED="$2"; shift 2 ;;
      *) echo "faults.sh: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  echo "== simulation: $PAIRDB_SIM_SEEDS seeds from $PAIRDB_SIM_SEED"
  CARGO_TARGET_DIR="$PAIRDB_CACHE/target-sim" RUSTFLAGS="--cfg tokio_unstable" \
    exec cargo test -p pairdb-tests --locked --test simulation every_seed -- --nocapture
fi
cargo build --workspace --locked --bins
if [ "${1:-}" = "--release" ]; then
  shift
  cargo build --release --locked -p pairdb-coordinator -p pairdb-storage-node
  export PAIRDB_BIN_DIR="$CARGO_TARGET_DIR/release"
  echo "== servers: release builds in $PAIRDB_BIN_DIR"
fi
runs=1
if [ "${1:-}" = "--long" ]; then
  runs="${2:-5}"
  export PAIRDB_NEMESIS_STEPS="${3:-30}"
fi
status=0
log=$(mktemp)
for i in $(seq 1 "$runs"); do
  echo "== nemesis run $i of $runs (steps ${PAIRDB_NEMESIS_STEPS:-default})"
  if ! cargo test -p pairdb-tests --locked --test nemesis_process -- --nocapture --test-threads=1 > "$log" 2>&1; then
    status=1
  fi
  grep -E 'nemesis seed|\(seed [0-9]+\)|test result|panicked|failed with seed' "$log" || true
done
rm -f "$log"
exit $status
