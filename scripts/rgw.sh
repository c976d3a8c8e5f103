#!/usr/bin/env bash
# A one-node Ceph cluster with a RADOS Gateway on loopback for the test suite, in a throw-away
# folder.
#
#   eval "$(scripts/rgw.sh start DIR)"   # starts it; prints `export BUCKETGATE_TEST_S3_*=...`
#   scripts/rgw.sh stop DIR              # stops it (the folder can then be removed)
#
# Ceph's RGW is the most deployed on-premises S3 server; its quirks differ from Garage's (it
# compares If-Match unquoted, honours `x-amz-copy-if-match` rather than the standard copy
# condition, ignores conditions on CompleteMultipartUpload). Everything runs from the Debian
# packages (ceph-mon, ceph-osd, radosgw, ceph-common): one monitor, one OSD on memstore (RAM,
# nothing on disk but the monitor's store), pools of size 1, cephx off (loopback only), the
# beast frontend on a free port, a user with random keys and a bucket. Progress goes to stderr
# so that stdout carries only the export lines.
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

stop_pid() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  # Wait for it to go, bounded, so that the folder can be removed right after.
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

case "$cmd" in
stop)
  # The gateway first, the monitor last (the others talk to it while they stop).
  stop_pid "$dir/rgw.pid"
  stop_pid "$dir/osd.pid"
  stop_pid "$dir/mon.pid"
  exit 0
  ;;
start) ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac

for c in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool curl; do
  command -v "$c" >/dev/null 2>&1 || {
    echo "$c is not installed: run scripts/install-test-tools.sh" >&2
    exit 1
  }
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/mon" "$dir/osd" "$dir/run" "$dir/log" "$dir/rgw"
mon_port=$(free_port)
s3_port=$(free_port)
fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
conf=$dir/ceph.conf
cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
# With auth none the monitor refuses the OSD's boot-time crush update ("wrong fsid"): the OSD
# is placed by hand below. The same race refuses its device-class update at boot ("wrong fsid",
# and the OSD exits: about 1 start in 6 here): memstore has no class to set, so it is skipped.
osd crush update on start = false
osd class update on start = false
[mon.a]
mon data = $dir/mon/a
[osd]
osd data = $dir/osd/\$id
osd objectstore = memstore
memstore device bytes = 2147483648
osd max object name len = 1024
osd max object namespace len = 256
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$s3_port
rgw data = $dir/rgw
rgw dns name = localhost
rgw enable usage log = false
rgw thread pool size = 64
EOF

c() { ceph -c "$conf" --connect-timeout 20 "$@"; }
# A monitor command, retried: with auth none the monitor now and then sees a command before the
# client has its map, and refuses it ("fsid ... != ..."); bounded, 10 tries.
cr() {
  local i
  for i in $(seq 1 10); do
    if c "$@" 2>>"$dir/log/commands.err"; then
      return 0
    fi
    sleep 0.2
  done
  echo "ceph $* failed:" >&2
  tail -n 5 "$dir/log/commands.err" >&2
  return 1
}

monmaptool --create --clobber --fsid "$fsid" --addv a "[v1:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" >"$dir/log/mon-mkfs.out" 2>&1 || {
  cat "$dir/log/mon-mkfs.out" >&2
  exit 1
}
ceph-mon -c "$conf" -i a -f >"$dir/log/mon.out" 2>&1 &
echo $! >"$dir/mon.pid"

# Readiness: the monitor answers `ceph status` (bounded, 30 s), not a fixed sleep.
for i in $(seq 1 300); do
  if c status >/dev/null 2>&1; then
    break
  fi
  if [ "$i" = 300 ] || ! kill -0 "$(cat "$dir/mon.pid")" 2>/dev/null; then
    echo "the Ceph monitor did not start; its log:" >&2
    tail -n 50 "$dir/log/mon.a.log" "$dir/log/mon.out" >&2 || true
    exit 1
  fi
  sleep 0.1
done

osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
osd_id=$(cr osd new "$osd_uuid")
mkdir -p "$dir/osd/$osd_id"
ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >"$dir/log/osd-mkfs.out" 2>&1 || {
  cat "$dir/log/osd-mkfs.out" >&2
  exit 1
}
{
  cr osd crush add-bucket localhost host
  cr osd crush move localhost root=default
  cr osd crush add "osd.$osd_id" 1.0 host=localhost
} >/dev/null
start_osd() {
  ceph-osd -c "$conf" -i "$osd_id" -f >>"$dir/log/osd.out" 2>&1 &
  echo $! >"$dir/osd.pid"
}
start_osd

# Readiness: the OSD is up (bounded, 60 s). An OSD that exits at boot (a monitor command refused
# in the race above) is started again, at most 3 times in all, before the start is given up.
osd_starts=1
for i in $(seq 1 600); do
  if [ "$(c osd stat -f json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("num_up_osds", 0))' 2>/dev/null)" = 1 ]; then
    break
  fi
  if ! kill -0 "$(cat "$dir/osd.pid")" 2>/dev/null && [ "$osd_starts" -lt 3 ]; then
    echo "the Ceph OSD exited at boot; starting it again" >&2
    osd_starts=$((osd_starts + 1))
    start_osd
  elif [ "$i" = 600 ] || ! kill -0 "$(cat "$dir/osd.pid")" 2>/dev/null; then
    echo "the Ceph OSD did not come up; its log:" >&2
    tail -n 50 "$dir/log/osd.$osd_id.log" "$dir/log/osd.out" >&2 || true
    exit 1
  fi
  sleep 0.1
done

radosgw -c "$conf" -n client.rgw -f >"$dir/log/rgw.out" 2>&1 &
echo $! >"$dir/rgw.pid"

# Readiness: the frontend answers HTTP (bounded, 60 s; RGW creates its pools first).
for i in $(seq 1 600); do
  if curl -s -o /dev/null "http://127.0.0.1:$s3_port/"; then
    break
  fi
  if [ "$i" = 600 ] || ! kill -0 "$(cat "$dir/rgw.pid")" 2>/dev/null; then
    echo "radosgw did not answer; its log:" >&2
    tail -n 50 "$dir/log/client.rgw.log" "$dir/log/rgw.out" >&2 || true
    exit 1
  fi
  sleep 0.1
done

access=$(openssl rand -hex 10 | tr a-f A-F)
secret=$(openssl rand -hex 20)
# The keys go only to the variables below, never to the log.
radosgw-admin -c "$conf" user create --uid=bucketgate-test \
  --display-name=bucketgate-test --access-key="$access" --secret-key="$secret" >/dev/null

bucket=bucketgate-test
# RGW wants x-amz-content-sha256 set explicitly (curl's SigV4 does not add it): the hash of
# the empty body.
empty_sha=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
code=$(curl -s -o "$dir/bucket-create.out" -w '%{http_code}' -X PUT \
  --aws-sigv4 "aws:amz:default:s3" --user "$access:$secret" \
  -H "x-amz-content-sha256: $empty_sha" "http://127.0.0.1:$s3_port/$bucket")
if [ "$code" != 200 ]; then
  echo "creating the bucket failed with HTTP $code:" >&2
  cat "$dir/bucket-create.out" >&2
  exit 1
fi

echo "export BUCKETGATE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
echo "export BUCKETGATE_TEST_S3_BUCKET=$bucket"
echo "export BUCKETGATE_TEST_S3_ACCESS_KEY=$access"
echo "export BUCKETGATE_TEST_S3_SECRET_KEY=$secret"
# Which server this is: storage/tests/s3_probe.rs holds the probe's answers to what RGW does.
echo "export BUCKETGATE_TEST_S3_SERVER=rgw"
# No BUCKETGATE_TEST_S3_REGION: RGW accepts any region in a signature (it reports `default`).
