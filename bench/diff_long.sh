#!/usr/bin/env bash
# The differential runners' long mode (issue 15): many fresh random sequences against the
# gateway and the reference servers, in parallel batches, on a release build.
#
#   bench/diff_long.sh sftp 100000 [WORKERS]   # OpenSSH sftp-server as the reference
#   bench/diff_long.sh ftp 100000 [WORKERS]    # pyftpdlib as the reference
#
# The S3 server is moto unless BUCKETGATE_TEST_S3_* name another, or DIFF_GARAGE=1 starts a
# fresh Garage (scripts/garage.sh) for every batch: Garage is about ten times faster than moto,
# and a fresh one stays so (one Garage kept for thousands of sequences grew about five times
# slower per request: its own background work on the tables). Each worker runs batches of
# fresh sequences (plus the fixed seeds and regressions, each batch) until its share is done;
# a batch that diverges keeps its log under $OUT (default bench/diff-long-out) with its seeds
# and minimized steps, to replay with DIFF_SEED. At the end it prints how many fresh sequences
# ran, how long it took and how many diverged. DIFF_BIN names a protocols test binary built
# before, to skip the build.
set -euo pipefail

proto=${1:?usage: diff_long.sh sftp|ftp SEQUENCES [WORKERS]}
total=${2:?usage: diff_long.sh sftp|ftp SEQUENCES [WORKERS]}
case "$proto" in
sftp) filter=sftp_differential::gateway_matches_openssh_sftp_server; batch=${DIFF_BATCH:-1000}; default_workers=2 ;;
ftp) filter=ftp_differential::gateway_matches_a_reference_ftp_server; batch=${DIFF_BATCH:-150}; default_workers=8 ;;
*) echo "usage: diff_long.sh sftp|ftp SEQUENCES [WORKERS]" >&2; exit 2 ;;
esac
# FTP sequences mostly wait (cut transfers, timeouts): more workers than cores pay off.
workers=${3:-$default_workers}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/bench/diff-long-out}
mkdir -p "$out"

cd "$root"
# DIFF_BIN: a protocols test binary built before (skips the build).
bin=${DIFF_BIN:-}
[ -n "$bin" ] || bin=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="integration" and "/protocols/" in m["manifest_path"]:
        print(m["executable"])')
[ -x "$bin" ] || { echo "could not build the protocols test binary" >&2; exit 1; }

per=$(( (total + workers - 1) / workers ))
started=$(date +%s)
# Batches start Garage with a copy of scripts/garage.sh taken now: an edit of the script during
# a long run cannot break the batches after it.
garage_sh="$out/garage-$started.sh"
cp "$root/scripts/garage.sh" "$garage_sh"
summary="$out/summary-$proto-$started.txt"
run_worker() {
  local w=$1 left=$per n=0
  while [ "$left" -gt 0 ]; do
    n=$((n + 1))
    local this=$(( left < batch ? left : batch ))
    local log="$out/$proto-$started-w$w-b$n.log"
    local gdir=""
    if [ "${DIFF_GARAGE:-0}" = 1 ]; then
      # A start that fails (a port taken meanwhile) is tried again in a new folder.
      local env=""
      # Why a start failed is kept in $out/garage-failures.log.
      for try in 1 2 3 4 5; do
        gdir=$(mktemp -d "${TMPDIR:-/tmp}/diff-garage.XXXXXX")
        # LMDB metadata and no compression: a quarter less of Garage's CPU per sequence than
        # the suite's settings (SQLite, zstd level 1), on this 2-core machine.
        env=$(GARAGE_DB_ENGINE=lmdb GARAGE_COMPRESSION='"none"' \
          "$garage_sh" start "$gdir" 2>"$gdir/start.err") && break
        { echo "== worker $w batch $n try $try $(date -u +%T)"; cat "$gdir/start.err"; } \
          >>"$out/garage-failures.log"
        "$garage_sh" stop "$gdir"
        rm -rf "$gdir"
        env=""
        sleep 5
      done
      [ -n "$env" ] || { echo "garage did not start (see $out/garage-failures.log)" >&2; exit 1; }
      eval "$env"
    fi
    if (cd "$root/protocols" && DIFF_SEQUENCES=$this "$bin" --exact "$filter" --nocapture >"$log" 2>&1); then
      echo "ok $this" >>"$summary"
      rm -f "$log"
    else
      echo "FAILED $this $log" >>"$summary"
    fi
    if [ -n "$gdir" ]; then
      "$garage_sh" stop "$gdir"
      rm -rf "$gdir"
    fi
    left=$((left - this))
  done
}
for w in $(seq 1 "$workers"); do run_worker "$w" & done
wait
ran=$(awk '{s+=$2} END {print s+0}' "$summary")
failed=$(grep -c '^FAILED' "$summary" || true)
server=${BUCKETGATE_TEST_S3_SERVER:-moto}
[ "${DIFF_GARAGE:-0}" = 1 ] && server="garage (a fresh one per batch of $batch)"
echo "$proto: $ran fresh sequences in $(( $(date +%s) - started )) s on $server, $workers workers; batches that diverged: $failed"
grep '^FAILED' "$summary" || true
[ "$failed" -eq 0 ]
