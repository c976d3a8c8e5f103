#!/usr/bin/env bash
# Installs the programs the test suite drives as real clients and servers. Idempotent: what is
# already there is not installed again, so a second run costs seconds.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO="sudo"
fi

# Debian packages: OpenSSH clients (sftp, scp, ssh-keygen), lftp, curl with sftp support,
# rclone, openssl for test certificates, a JDK (javac) for the Java client programs, and a
# one-node Ceph with its S3 gateway for scripts/rgw.sh (about 40 s to install), make (jemalloc
# is built from source by tikv-jemalloc-sys), and the browser of the web console's test
# (tests/tests/e2e_console.rs): Debian's chromium with its matching chromedriver, and iproute2's
# ss (a listener's accept queue, tests/tests/e2e_hardening.rs).
need=()
for pair in sftp:openssh-client scp:openssh-client ssh-keygen:openssh-client lftp:lftp \
            curl:curl rclone:rclone openssl:openssl javac:default-jdk-headless \
            java:default-jdk-headless ceph-mon:ceph-mon ceph-osd:ceph-osd radosgw:radosgw \
            radosgw-admin:radosgw ceph:ceph-common monmaptool:ceph-common make:make \
            chromium:chromium chromedriver:chromium-driver ss:iproute2; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# The Java libraries legacy applications embed: JSch (SFTP) and Apache Commons Net (FTP/FTPS);
# and OpenSSH's sftp-server, the SFTP differential runner's reference (a fresh Debian has the
# client without it).
for pair in /usr/share/java/jsch.jar:libjsch-java /usr/share/java/commons-net.jar:libcommons-net-java \
            /usr/lib/openssh/sftp-server:openssh-sftp-server; do
  file=${pair%%:*}; pkg=${pair#*:}
  [ -e "$file" ] || need+=("$pkg")
done
# PostgreSQL: the shared state store's tests start their own server (testkit/src/postgres.rs)
# with initdb and pg_ctl, which Debian keeps in /usr/lib/postgresql/<major>/bin, off PATH.
pg_bin() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
pg_bin || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
pg_bin || { echo "PostgreSQL's initdb is still missing after installing postgresql" >&2; exit 1; }

# moto: an S3 server that follows AWS semantics closely (markers are objects, multipart, copy).
if ! command -v moto_server >/dev/null 2>&1; then
  echo "installing moto[server]"
  python3 -m pip install --quiet 'moto[server]'
  hash -r
fi

# paramiko: the SFTP library of Python automation, for the same python3 that runs moto.
if ! python3 -c 'import paramiko' >/dev/null 2>&1; then
  echo "installing paramiko"
  python3 -m pip install --quiet paramiko
fi

# pyftpdlib: the reference FTP server on a local folder of the FTP differential runner
# (protocols/tests/ftp_differential.rs), for the same python3.
if ! python3 -c 'import pyftpdlib' >/dev/null 2>&1; then
  echo "installing pyftpdlib"
  python3 -m pip install --quiet pyftpdlib
fi

# Garage: a real S3 server with its own region, for scripts/garage.sh. Built from source once
# (about 11 minutes on 2 cores) and kept in ~/.cargo/bin across runs.
if ! command -v garage >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v garage >/dev/null 2>&1 || {
    echo "installing garage (cargo install garage --locked)"
    # opt-level 1: the tests need a working server, not a fast one; this cuts the build
    # (about 11 minutes on 2 cores at the default opt-level 3).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install garage --locked
  }
fi

# selenium: drives chromium through Debian's chromedriver for the web console's test (the
# test names that driver, so selenium never downloads one).
if ! python3 -c 'import selenium' >/dev/null 2>&1; then
  echo "installing selenium"
  python3 -m pip install --quiet selenium
fi

for cmd in sftp scp ssh-keygen lftp curl rclone openssl moto_server python3 garage javac java \
           ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool chromium chromedriver ss; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "missing after install: $cmd" >&2; exit 1; }
done
for file in /usr/share/java/jsch.jar /usr/share/java/commons-net.jar; do
  [ -e "$file" ] || { echo "missing after install: $file" >&2; exit 1; }
done
python3 -c 'import paramiko' || { echo "missing after install: paramiko" >&2; exit 1; }
python3 -c 'import pyftpdlib' || { echo "missing after install: pyftpdlib" >&2; exit 1; }
python3 -c 'import selenium' || { echo "missing after install: selenium" >&2; exit 1; }
