# Shared environment for pairdb scripts (sourced, not run).
# PAIRDB_CACHE holds everything built or installed outside the clone: the cargo target dir
# (RocksDB's C++ build is ~20 minutes cold, so it must survive fresh clones) and the Python
# tool venv (grpcurl, grpcio).
if [ -z "${PAIRDB_CACHE:-}" ]; then
  if mkdir -p /var/cache/pairdb 2>/dev/null && [ -w /var/cache/pairdb ]; then
    PAIRDB_CACHE=/var/cache/pairdb
  else
    PAIRDB_CACHE="$HOME/.cache/pairdb"
  fi
fi
export PAIRDB_CACHE
mkdir -p "$PAIRDB_CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAIRDB_CACHE/target}"
export PAIRDB_VENV="$PAIRDB_CACHE/venv"
export PATH="$PAIRDB_VENV/bin:$HOME/.cargo/bin:$PATH"
export PAIRDB_BIN_DIR="$CARGO_TARGET_DIR/debug"

# Link the cached RocksDB library (see scripts/build-rocksdb.sh) when it exists.
if [ -f Cargo.lock ]; then
  _pairdb_rocks_ver=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
  if [ -n "$_pairdb_rocks_ver" ] && [ -f "$PAIRDB_CACHE/rocksdb/$_pairdb_rocks_ver/librocksdb.a" ]; then
    export ROCKSDB_LIB_DIR="$PAIRDB_CACHE/rocksdb/$_pairdb_rocks_ver"
    export ROCKSDB_STATIC=1
  fi
  unset _pairdb_rocks_ver
fi
