#!/usr/bin/env bash
# Builds RocksDB's C++ static library once per librocksdb-sys version and caches it in
# $PAIRDB_CACHE/rocksdb/<version>/librocksdb.a. scripts/env.sh then points librocksdb-sys at it
# (ROCKSDB_LIB_DIR + ROCKSDB_STATIC), so workspace builds never compile RocksDB's C++ again:
# a cold build drops from ~20 minutes to a few, and no dependency or feature change can
# trigger the 20-minute rebuild. The library is built with -O2 and no debug info, with lz4 and
# zstd (the only compressions pairdb enables), in a throwaway cargo project outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

ver=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
[ -n "$ver" ] || { echo "build-rocksdb: librocksdb-sys not found in Cargo.lock" >&2; exit 1; }
dest="$PAIRDB_CACHE/rocksdb/$ver"
if [ -f "$dest/librocksdb.a" ]; then
  exit 0
fi

work="$PAIRDB_CACHE/rocksdb-build"
mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "pairdb-rocksdb-lib"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
librocksdb-sys = { version = "=$ver", default-features = false, features = ["static", "lz4", "zstd", "bindgen-runtime"] }

[profile.dev]
debug = false

[profile.dev.package.librocksdb-sys]
opt-level = 2

[workspace]
TOML
echo 'fn main() {}' > "$work/src/main.rs"
echo "build-rocksdb: compiling RocksDB $ver once (about 20 minutes on 2 cores); cached in $dest"
(
  cd "$work"
  env -u ROCKSDB_LIB_DIR -u ROCKSDB_STATIC CARGO_TARGET_DIR="$work/target" CARGO_INCREMENTAL=0 \
    cargo build --quiet
)
lib=$(find "$work/target/debug/build" -path '*/librocksdb-sys-*/out/librocksdb.a' | head -n 1)
[ -n "$lib" ] || { echo "build-rocksdb: librocksdb.a not produced" >&2; exit 1; }
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp "$lib" "$dest.tmp/librocksdb.a"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
rm -rf "$work/target"
echo "build-rocksdb: cached $(du -h "$dest/librocksdb.a" | cut -f1) at $dest"
