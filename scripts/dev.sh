#!/usr/bin/env bash
# Starts the development cluster (`pairdbctl dev`) after doing any set-up a fresh machine needs.
# Extra arguments go to `pairdbctl dev` (see `pairdbctl dev --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh
source scripts/env.sh   # setup may have just cached the RocksDB library: pick it up
cargo build --workspace --all-targets --locked
exec "$CARGO_TARGET_DIR/debug/pairdbctl" dev "$@"
