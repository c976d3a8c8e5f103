#!/usr/bin/env bash
# Builds the release binary. The Dockerfile's build stage runs this same script, and CI runs it
# too, so the image is built the way CI checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bucketgate
ls -l "${CARGO_TARGET_DIR:-target}/release/bucketgate"
