#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECS, default 60 each).
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. Targets run without a sanitizer (`-s none`): the code under test is safe Rust, so
# libFuzzer's coverage guidance and Rust's own panics/overflow checks (debug assertions are on)
# find the bugs, and the build is much cheaper than with ASan.
# New inputs go to a scratch folder; the committed seeds in fuzz/corpus/<target>/ stay small.
# A crash leaves its input in fuzz/artifacts/<target>/ and makes this script fail.
#
#   scripts/fuzz.sh                 # all targets, 60 s each
#   FUZZ_SECS=300 scripts/fuzz.sh vpath
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECS:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd fuzz
cargo fuzz build -s none
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "$scratch/$t"
    # The committed seeds, and any crash saved under artifacts/, are run first.
    extra=()
    if [ -d "artifacts/$t" ]; then extra=("artifacts/$t"); fi
    cargo fuzz run -s none "$t" "$scratch/$t" "corpus/$t" "${extra[@]}" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
done
# The seeds (and any saved crash) also run as plain tests on stable, which keeps the targets
# building without cargo-fuzz. CI skips this (FUZZ_SEED_TESTS=0): the runs above have just
# executed every seed and saved crash, and this second build of the whole dependency tree in
# fuzz/target costs minutes on a fresh machine.
if [ "${FUZZ_SEED_TESTS:-1}" != 0 ]; then
    cargo test --quiet
fi
