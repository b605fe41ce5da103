#!/usr/bin/env bash
# Builds the previous release's binaries (the commit in tests/upgrade-from) once and caches
# them under $PAIRDB_CACHE/prev/<commit>/bin, for the mixed-version upgrade test
# (tests/tests/upgrade_process.rs). Idempotent: does nothing when that commit is already built.
# The sources come from `git archive` of the commit (the clone must hold it; a shallow clone
# is deepened). They build in their own target dir so this commit's binaries are not touched;
# RocksDB links the cached library when the versions match (scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
commit=$(grep -v '^#' tests/upgrade-from | tr -d '[:space:]')
out="$PAIRDB_CACHE/prev/$commit"
bins=(pairdb-coordinator pairdb-storage-node pairdbctl)
if [ -f "$out/bin/.complete" ]; then
  echo "build-previous: $commit already built in $out/bin"
  exit 0
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "build-previous: fetching history for $commit"
  git fetch -q --unshallow 2>/dev/null || git fetch -q origin "$commit"
fi
rm -rf "$out/src" "$out/bin"
mkdir -p "$out/src" "$out/bin"
git archive "$commit" | tar -x -C "$out/src"
echo "build-previous: building $commit (about 5 minutes with a cached RocksDB)"
(
  cd "$out/src"
  unset ROCKSDB_LIB_DIR ROCKSDB_STATIC
  export CARGO_TARGET_DIR="$PAIRDB_CACHE/prev/target"
  source scripts/env.sh
  export CARGO_TARGET_DIR="$PAIRDB_CACHE/prev/target"
  # Its pairdb_build_info then names the commit (the test checks what runs).
  export PAIRDB_GIT_COMMIT="$commit"
  cargo build --locked --bins -p pairdb-coordinator -p pairdb-storage-node -p pairdbctl
)
for b in "${bins[@]}"; do
  cp "$PAIRDB_CACHE/prev/target/debug/$b" "$out/bin/$b"
done
echo "$commit" > "$out/bin/.complete"
echo "build-previous: $commit built in $out/bin"
