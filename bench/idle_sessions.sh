#!/usr/bin/env bash
# Opens N (default 1000) idle, authenticated SFTP sessions against the real gateway and prints
# its RSS (target: <= 200 MiB for 1,000). Run by hand: bench/idle_sessions.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || true
cargo build --quiet -p bucketgate --bin bucketgate
cargo run --quiet -p bucketgate-tests --example idle_sessions -- "${1:-1000}"
