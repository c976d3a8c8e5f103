#!/usr/bin/env bash
# The whole test suite: installs the real clients and S3 servers the tests drive, then runs
# every test of the workspace. This is the command the README and CI use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-tools.sh
# Some machines point S3 clients at a CA bundle, which breaks plain http:// test endpoints.
unset AWS_CA_BUNDLE
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"

# Then against a real Garage (its own region, real signatures): the S3 backend's tests and the
# behaviour suite through BUCKETGATE_TEST_S3_*. Garage is stopped however the run ends.
export PATH="$HOME/.cargo/bin:$PATH"
garage_dir=$(mktemp -d)
trap 'bash scripts/garage.sh stop "$garage_dir"; rm -rf "$garage_dir"' EXIT
eval "$(bash scripts/garage.sh start "$garage_dir")"
# Each crate's tests are one binary (`--test integration`); a former test file is a module,
# picked by a filter. The S3 modules that run against every available server, the env
# endpoint included, and sync with an S3 remote (sync_s3 runs on every server; the
# 10,000-file run on s3s-fs already ran above, here once more with Garage beside it).
s3_modules=$(grep -l 'servers()' storage/tests/s3_*.rs | xargs -n1 basename | sed 's/\.rs$/::/')
# shellcheck disable=SC2086
cargo test -p bucketgate-storage --locked --test integration -- $s3_modules sync_s3:: sync_s3_scale:: \
  --test-threads="${TEST_THREADS:-4}"
cargo test -p bucketgate-tests --locked --test integration -- vfs_behaviour::env_endpoint:: \
  e2e_s3_servers::clients_on_env_endpoint --test-threads="${TEST_THREADS:-4}"
