#!/usr/bin/env bash
# The scale benchmark (issue 22): N concurrent sessions over SFTP, FTP and FTPS against the
# release gateway and the s3s-fs example server, every byte compared; prints one table row per
# protocol, N and workload (see tests/examples/scale.rs). Run by hand:
#   bench/scale.sh [--sessions 1,4,16,64,256] [--protocols sftp,ftp,ftps] [--settle 60] ...
# Needs openssl (the FTPS certificate). With BENCH_PREBUILT=DIR it runs the binaries found in
# DIR (bucketgate, s3s_server, scale) instead of building them: for a machine without cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
if [[ -n "${BENCH_PREBUILT:-}" ]]; then
  bin="$BENCH_PREBUILT"
  scale="$bin/scale"
  s3="$bin/s3s_server"
else
  cargo build --release --quiet -p bucketgate --bin bucketgate \
    -p bucketgate-tests --example s3s_server --example scale
  bin="${CARGO_TARGET_DIR:-target}/release"
  scale="$bin/examples/scale"
  s3="$bin/examples/s3s_server"
fi
exec "$scale" --gateway-bin "$bin/bucketgate" --s3-bin "$s3" "$@"
