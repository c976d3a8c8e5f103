#!/usr/bin/env bash
# Builds the release binary. The Dockerfile's build stage runs this same script. CI checks that
# the package builds on its own (`cargo check -p bucketgate` in .ci/run) but does not run the
# optimized build: it compiles the same code with the same features, for 9.5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p bucketgate
ls -l "${CARGO_TARGET_DIR:-target}/release/bucketgate"
