#!/usr/bin/env python3
"""Small files one after another across a WAN-like link (issue 18 item 3). Loopback only.

  bench/small_rtt.py [--bin BUCKETGATE] [--s3s S3S_SERVER] [--rtt-ms 20] [-n 200] [--reps 3]

An s3s-fs server behind tests/examples/latency_proxy.rs (ONE_WAY = rtt/2 each direction), the gateway
in front with a mount `/s3` (`preserve_mtime: false`). Uploads N files of 4 KiB one after the
other with OpenSSH `sftp` (`put FILE /s3/NAME`: the client STATs the name, then OPEN, WRITE,
CLOSE) and with lftp (`mput`: one STOR each), and prints the time per file (the session's own
login and setup measured apart and subtracted), median of the reps. Any build works; the
figures are round trips to S3, not CPU.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCESS, SECRET, BUCKET = "benchaccess", "benchsecret", "bench"
USER, PASS = "alice", "alice-Bench-Pass-1"
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    t = time.time() + timeout
    while time.time() < t:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def spawn(args, **kw):
    p = subprocess.Popen(args, **kw)
    procs.append(p)
    return p


def timed(args, input=None):
    t0 = time.monotonic()
    r = subprocess.run(args, input=input, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {r.stderr[-500:]}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/bucketgate"))
    ap.add_argument("--s3s", default=os.path.join(ROOT, "target/release/examples/s3s_server"))
    ap.add_argument("--rtt-ms", type=float, default=20)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency", default=os.path.join(ROOT, "target/release/examples/latency_proxy"),
                    help="the latency proxy (cargo build --release -p bucketgate-tests --example latency_proxy)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (gw.log)")
    a = ap.parse_args()
    w = tempfile.mkdtemp(prefix="bgrtt-")
    try:
        os.makedirs(f"{w}/s3/{BUCKET}")
        s3 = spawn([a.s3s, f"{w}/s3", ACCESS, SECRET], stdout=subprocess.PIPE, text=True)
        s3port = int(s3.stdout.readline().split()[-1].rsplit(":", 1)[1])
        pport = free_port()
        lp = spawn([a.latency, str(pport), f"127.0.0.1:{s3port}", str(a.rtt_ms / 2)],
                   stdout=subprocess.PIPE, text=True)
        lp.stdout.readline()
        key = f"{w}/id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        pub = open(key + ".pub").read().strip()
        h = subprocess.run([a.bin, "hash-password"], input=PASS + "\n", capture_output=True,
                           text=True, check=True).stdout.strip()
        sftp_port, ftp_port, pasv = free_port(), free_port(), free_port()
        os.makedirs(f"{w}/gw/files")
        open(f"{w}/gw/bucketgate.yaml", "w").write(f"""sftp: {{ listen: "127.0.0.1:{sftp_port}" }}
ftp: {{ listen: "127.0.0.1:{ftp_port}", passive_ports: "{pasv}-{pasv + 20}" }}
state_dir: ./data
log: {{ level: {"info" if a.keep else "warn"} }}
storage: {{ type: local, root: ./files }}
remotes:
  - {{ name: plain, endpoint: "http://127.0.0.1:{pport}", bucket: {BUCKET}, access_key_id: {ACCESS}, secret_access_key: {SECRET}, preserve_mtime: false }}
mounts:
  - {{ path: /s3, remote: plain, prefix: gw/ }}
users:
  - {{ username: {USER}, password_hash: "{h}", public_keys: ["{pub}"], home: /, permissions: {{ "/": ["*"] }} }}
""")
        spawn([a.bin, "serve", "--config", "bucketgate.yaml"], cwd=f"{w}/gw",
              stderr=open(f"{w}/gw.log", "w"))
        wait_port(sftp_port)
        wait_port(ftp_port)
        os.makedirs(f"{w}/small")
        for i in range(a.n):
            open(f"{w}/small/f{i:04d}", "wb").write(os.urandom(4096))
        sftp = lambda cmds: timed(
            ["sftp", "-q", "-b", "-", "-i", key, "-P", str(sftp_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"{USER}@127.0.0.1"],
            input="\n".join(cmds) + "\n")
        lftp = lambda cmds: timed(
            ["lftp", "-u", f"{USER},{PASS}", "-p", str(ftp_port), "-e",
             "set ftp:passive-mode on; set net:max-retries 1; set xfer:clobber on; " + "; ".join(cmds) + "; bye",
             "127.0.0.1"])
        res = {"sftp": [], "ftp": []}
        for r in range(a.reps):
            base = sftp(["cd /s3"])
            t = sftp([f"put {w}/small/f{i:04d} /s3/r{r}-f{i:04d}" for i in range(a.n)])
            res["sftp"].append((t - base) / a.n)
            # New names in every rep (a STOR onto an existing file is an overwrite, which needs
            # that file's entry: another case).
            os.makedirs(f"{w}/ftp{r}")
            for i in range(a.n):
                os.link(f"{w}/small/f{i:04d}", f"{w}/ftp{r}/g{r}-f{i:04d}")
            base = lftp(["cd /s3"])
            t = lftp([f"mput -O /s3/ {w}/ftp{r}/*"])
            res["ftp"].append((t - base) / a.n)
            print(f"rep {r + 1}: sftp {res['sftp'][-1] * 1000:.1f} ms/file, "
                  f"ftp {res['ftp'][-1] * 1000:.1f} ms/file", flush=True)
        for k, v in res.items():
            print(f"{k}: {statistics.median(v) * 1000:.1f} ms per file at {a.rtt_ms:g} ms round trip "
                  f"(median of {len(v)}; {a.n} files)")
    finally:
        for p in procs:
            p.kill()
        if a.keep:
            print(f"kept {w}")
        else:
            shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
