#!/usr/bin/env bash
# A single-node Garage on loopback for the test suite, in a throw-away folder.
#
#   eval "$(scripts/garage.sh start DIR)"   # starts it; prints `export BUCKETGATE_TEST_S3_*=...`
#   scripts/garage.sh stop DIR              # stops it (the folder can then be removed)
#
# Garage is a real S3 server with its own region ("garage"), real signatures, multipart and
# copies: the S3 tests and the behaviour suite run against it through BUCKETGATE_TEST_S3_*.
# Everything it needs is created here: config (sqlite metadata, replication factor 1, random
# rpc_secret), layout, a key, a bucket and the key's rights on it. Progress goes to stderr so
# that stdout carries only the export lines. GARAGE_DB_ENGINE (sqlite, lmdb) and
# GARAGE_COMPRESSION (a zstd level, or '"none"') change those two settings; the long
# differential runs (bench/diff_long.sh) use lmdb and "none", which cost Garage less CPU.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
stop)
  if [ -f "$dir/garage.pid" ]; then
    pid=$(cat "$dir/garage.pid")
    kill "$pid" 2>/dev/null || true
    # Wait for it to go, bounded, so that the folder can be removed right after.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$dir/garage.pid"
  fi
  exit 0
  ;;
start) ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac

command -v garage >/dev/null 2>&1 || {
  echo "garage is not installed: run scripts/install-test-tools.sh" >&2
  exit 1
}

mkdir -p "$dir/meta" "$dir/data"
dir=$(cd "$dir" && pwd)
rpc_port=$(free_port)
s3_port=$(free_port)
admin_port=$(free_port)
cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "${GARAGE_DB_ENGINE:-sqlite}"
replication_factor = 1
compression_level = ${GARAGE_COMPRESSION:-1}
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
chmod 600 "$dir/garage.toml"

g() { garage -c "$dir/garage.toml" "$@"; }

garage -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
echo $! >"$dir/garage.pid"

# Readiness: poll `garage status` until the node answers (bounded, 30 s), not a fixed sleep.
node=""
for _ in $(seq 1 300); do
  if ! kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
    echo "garage exited; its log:" >&2
    cat "$dir/garage.log" >&2
    exit 1
  fi
  # `status` goes through the RPC port: when it answers, the node is up.
  if g status >/dev/null 2>&1; then
    node=$(g node id -q 2>/dev/null | cut -d@ -f1 || true)
    [ -n "$node" ] && break
  fi
  sleep 0.1
done
if [ -z "$node" ]; then
  echo "garage did not answer within 30 s; its log:" >&2
  cat "$dir/garage.log" >&2
  exit 1
fi

# The S3 port too: its port was free when picked, but another process may have taken it
# before garage bound it (then only the RPC side is up).
for i in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
  [ "$i" = 100 ] && {
    echo "garage's S3 port $s3_port does not answer; its log:" >&2
    cat "$dir/garage.log" >&2
    exit 1
  }
  sleep 0.1
done

{
  g layout assign -z dc1 -c 1G "$node"
  g layout apply --version 1
} >&2

# The layout takes a moment to be applied; bucket creation fails until it is.
# Bounded by time, not tries: on a loaded machine each try is slow.
bucket=bucketgate-test
deadline=$((SECONDS + 60))
until g bucket create "$bucket" >&2 2>"$dir/bucket-create.err"; do
  [ "$SECONDS" -ge "$deadline" ] && {
    echo "garage did not take the bucket within 60 s:" >&2
    cat "$dir/bucket-create.err" >&2
    exit 1
  }
  sleep 0.1
done
# `key create` prints the new secret: kept out of the CI log (the secret goes only to the
# variables below).
g key create bucketgate-test-key >/dev/null
g bucket allow --read --write --owner "$bucket" --key bucketgate-test-key >&2
info=$(g key info bucketgate-test-key --show-secret)
access=$(printf '%s\n' "$info" | sed -n 's/^Key ID:[[:space:]]*//p' | head -n1)
secret=$(printf '%s\n' "$info" | sed -n 's/^Secret key:[[:space:]]*//p' | head -n1)
if [ -z "$access" ] || [ -z "$secret" ]; then
  echo "cannot read the key from \`garage key info\` (output withheld: it holds the secret)" >&2
  exit 1
fi

echo "export BUCKETGATE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
echo "export BUCKETGATE_TEST_S3_BUCKET=$bucket"
echo "export BUCKETGATE_TEST_S3_ACCESS_KEY=$access"
echo "export BUCKETGATE_TEST_S3_SECRET_KEY=$secret"
# Which server this is: storage/tests/s3_probe.rs holds the probe's answers to what Garage does.
echo "export BUCKETGATE_TEST_S3_SERVER=garage"
# No BUCKETGATE_TEST_S3_REGION on purpose: the blank region (sent as us-east-1) must be
# corrected by the backend's one retry with the region Garage names ("garage").
