#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (default 60 s each) and prints what
# each found. cargo-fuzz needs nightly compiler flags (-Zsanitizer); this machine has one stable
# toolchain, so the build runs with RUSTC_BOOTSTRAP=1. Installs cargo-fuzz when missing.
# Not part of scripts/test.sh: the proptests that mirror these targets run there on stable.
#   scripts/fuzz.sh [seconds-per-target] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(context_token record hint_payload stream_batch request)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PAIRDB_CACHE/fuzz-target"
cd fuzz
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 2>&1 \
    | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
done
