#!/usr/bin/env bash
# Builds the storage node and coordinator with crash points (the cargo feature `failpoints`,
# common/src/failpoint.rs) for tests/tests/failpoint_process.rs. They go in the simulation's
# target dir, which is built with --cfg tokio_unstable anyway, so the workspace build never
# sees the feature and the two builds share their dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
CARGO_TARGET_DIR="$PAIRDB_CACHE/target-sim" RUSTFLAGS="--cfg tokio_unstable" \
  cargo build --locked -p pairdb-coordinator -p pairdb-storage-node --bins \
  --features pairdb-coordinator/failpoints,pairdb-storage-node/failpoints
echo "build-failpoints: servers with crash points in $PAIRDB_CACHE/target-sim/debug"
