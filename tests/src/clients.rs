//! The programs people use, driven as subprocesses: OpenSSH `sftp`/`scp`, `curl`, `lftp`,
//! paramiko, and the Java libraries legacy applications embed (JSch, Apache Commons Net).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// An ed25519 key pair made with ssh-keygen: (private key file, public key line).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    crate::gateway::require("ssh-keygen");
    let key = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .unwrap_or_else(|_| std::fs::read_to_string(format!("{}.pub", key.display())).unwrap());
    (key, public.trim().to_string())
}

pub fn ssh_opts() -> Vec<String> {
    [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "ConnectTimeout=20",
        // Env requests before the subsystem or command, as `SendEnv LANG LC_*` sends them
        // wherever those are set: more than russh's per-channel queue holds.
        "SetEnv=LANG=C.UTF-8 LC_ALL=C.UTF-8 LC_CTYPE=C.UTF-8 LC_MESSAGES=C",
    ]
    .iter()
    .flat_map(|o| ["-o".to_string(), o.to_string()])
    .collect()
}

/// Runs `sftp -b -` with key authentication and the given batch commands.
pub fn sftp_batch(addr: SocketAddr, user: &str, key: &Path, batch: &str, cwd: &Path) -> Output {
    crate::gateway::require("sftp");
    output_with_input(
        Command::new("sftp")
            .args(ssh_opts())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(key)
            .args(["-P", &addr.port().to_string(), "-b", "-"])
            .arg(format!("{user}@{}", addr.ip()))
            .current_dir(cwd),
        batch,
    )
}

/// Runs `sftp` with password authentication through SSH_ASKPASS, reading commands from stdin
/// (batch mode `-b` forbids passwords); the exit code is only that of the session.
pub fn sftp_batch_password(
    addr: SocketAddr,
    user: &str,
    password: &str,
    batch: &str,
    cwd: &Path,
) -> Output {
    crate::gateway::require("sftp");
    let askpass = cwd.join(format!("askpass-{}.sh", std::process::id()));
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
    output_with_input(
        Command::new("setsid")
            .arg("-w")
            .arg("sftp")
            .args(ssh_opts())
            .args([
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .args(["-P", &addr.port().to_string()])
            .arg(format!("{user}@{}", addr.ip()))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .current_dir(cwd),
        batch,
    )
}

/// Runs curl with the given arguments (`-sS` added) and returns its output.
pub fn curl(args: &[&str]) -> Output {
    crate::gateway::require("curl");
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap()
}

/// Asserts a command succeeded, showing its output otherwise.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Java client program from `tests/java/NAME.java`, compiled by javac into a temporary folder
/// against Debian's jars (the library versions legacy applications embed).
pub struct JavaProgram {
    classes: tempfile::TempDir,
    classpath: String,
    main: String,
}

/// Compiles `tests/java/{name}.java` against `jars`; a missing JDK or jar fails loudly.
pub fn java_program(name: &str, jars: &[&str]) -> JavaProgram {
    crate::gateway::require("javac");
    crate::gateway::require("java");
    for jar in jars {
        assert!(
            Path::new(jar).exists(),
            "{jar} is missing: run scripts/install-test-tools.sh (CI does)"
        );
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("java")
        .join(format!("{name}.java"));
    let classes = tempfile::tempdir().unwrap();
    let out = Command::new("javac")
        .args([
            "-nowarn",
            "-encoding",
            "UTF-8",
            "-cp",
            &jars.join(":"),
            "-d",
        ])
        .arg(classes.path())
        .arg(&source)
        .output()
        .unwrap();
    assert_ok(&format!("javac {}", source.display()), &out);
    let classpath = format!("{}:{}", jars.join(":"), classes.path().display());
    JavaProgram {
        classes,
        classpath,
        main: name.to_string(),
    }
}

impl JavaProgram {
    /// Runs the program with `args`, feeding `stdin` (its commands), in `cwd`.
    pub fn run(&self, args: &[&str], stdin: &str, cwd: &Path) -> Output {
        assert!(self.classes.path().exists());
        output_with_input(
            Command::new("java")
                // Listings' dates are parsed in the JVM's zone: make it the same everywhere.
                .arg("-Duser.timezone=UTC")
                .args(["-cp", &self.classpath, &self.main])
                .args(args)
                .current_dir(cwd),
            stdin,
        )
    }
}

/// A paramiko SFTP session driven by commands on stdin, one a line (paths without spaces):
/// `put L R`, `get R L`, `ls D` (listdir_attr: `entry NAME SIZE dir|file MTIME`), `stat P`
/// (`stat SIZE dir|file MTIME`), `mkdir P`, `rename A B`, `remove P`, `rmdir P`,
/// `utime P MTIME`, `truncate P SIZE` (SETSTAT), `ftruncate P SIZE [OFFSET DATA]` (FSETSTAT on
/// an 'r+' handle, then a write). A command written `!cmd ...` must be refused: it prints
/// `refused CMD EXCEPTION ERRNO`, then `refusal-message CMD MESSAGE` (the server's text).
/// Prints `ok CMD` after each command; an unexpected result
/// prints `error: ...` and exits 2, a refused login exits 3.
const PARAMIKO: &str = r#"
import os, stat, sys, paramiko
host, port, user, auth = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
kind, _, secret = auth.partition(':')
client = paramiko.SSHClient()
# A test server with a fresh host key: nothing to compare it with.
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
try:
    if kind == 'password':
        client.connect(host, port, user, password=secret, look_for_keys=False, allow_agent=False, timeout=30)
    else:
        key = paramiko.Ed25519Key.from_private_key_file(secret)
        client.connect(host, port, user, pkey=key, look_for_keys=False, allow_agent=False, timeout=30)
except paramiko.AuthenticationException as e:
    print('error: login: AuthenticationException: %s' % e)
    sys.exit(3)
print('connected key=%s' % client.get_transport().get_remote_server_key().get_name())
sftp = client.open_sftp()
def kind_of(a):
    return 'dir' if stat.S_ISDIR(a.st_mode) else 'file'
for line in sys.stdin:
    w = line.split()
    if not w:
        continue
    expect_refusal = w[0].startswith('!')
    cmd = w[0].lstrip('!')
    try:
        if cmd == 'put':
            sftp.put(w[1], w[2])
        elif cmd == 'get':
            sftp.get(w[1], w[2])
        elif cmd == 'ls':
            for a in sorted(sftp.listdir_attr(w[1]), key=lambda a: a.filename):
                print('entry %s %d %s %d' % (a.filename, a.st_size, kind_of(a), a.st_mtime))
        elif cmd == 'stat':
            a = sftp.stat(w[1])
            print('stat %d %s %d' % (a.st_size, kind_of(a), a.st_mtime))
        elif cmd == 'mkdir':
            sftp.mkdir(w[1])
        elif cmd == 'rename':
            sftp.rename(w[1], w[2])
        elif cmd == 'remove':
            sftp.remove(w[1])
        elif cmd == 'rmdir':
            sftp.rmdir(w[1])
        elif cmd == 'utime':
            sftp.utime(w[1], (int(w[2]), int(w[2])))
        elif cmd == 'patch':
            # In place: open without truncation ('r+'), write at an offset, close.
            with sftp.open(w[1], 'r+') as f:
                f.seek(int(w[2]))
                f.write(w[3].encode())
        elif cmd == 'wplus':
            # Python's 'w+' (READ|WRITE|CREAT|TRUNC), sequential writes, close.
            with sftp.open(w[1], 'w+') as f:
                for part in w[2:]:
                    f.write(part.encode())
        elif cmd == 'truncate':
            # SETSTAT of the size on a path (`truncate -s`).
            sftp.truncate(w[1], int(w[2]))
        elif cmd == 'ftruncate':
            # FSETSTAT of the size on a handle opened 'r+', then a write at an offset.
            with sftp.open(w[1], 'r+') as f:
                f.truncate(int(w[2]))
                if len(w) > 3:
                    f.seek(int(w[3]))
                    f.write(w[4].encode())
        elif cmd == 'statopen':
            # A file's attributes between its creation and its close (FUSE mounts do this).
            with sftp.open(w[1], 'w') as f:
                f.write(w[2].encode())
                f.flush()
                a = sftp.lstat(w[1])
                print('statopen %d %s' % (a.st_size, kind_of(a)))
        else:
            raise ValueError('unknown command ' + cmd)
    except (IOError, OSError) as e:
        if expect_refusal:
            print('refused %s %s %s' % (cmd, type(e).__name__, e.errno))
            print('refusal-message %s %s' % (cmd, e.strerror if e.strerror else e))
            continue
        print('error: %s: %s: %s' % (line.strip(), type(e).__name__, e))
        sys.exit(2)
    if expect_refusal:
        print('error: %s: unexpectedly allowed' % line.strip())
        sys.exit(2)
    print('ok ' + cmd)
sftp.close()
client.close()
"#;

/// Runs the paramiko driver above against `addr` as `user`; `auth` is `password:SECRET` or
/// `key:PATH` (an OpenSSH ed25519 private key file).
pub fn paramiko(addr: SocketAddr, user: &str, auth: &str, commands: &str, cwd: &Path) -> Output {
    crate::gateway::require("python3");
    let probe = Command::new("python3")
        .args(["-c", "import paramiko"])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "paramiko is not installed: run scripts/install-test-tools.sh (CI does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    output_with_input(
        Command::new("python3")
            .args(["-c", PARAMIKO])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(user)
            .arg(auth)
            .current_dir(cwd),
        commands,
    )
}

/// Runs `cmd` with `input` on its stdin (then closed) and returns what it printed and its exit.
fn output_with_input(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A self-signed server certificate for 127.0.0.1, made with openssl: (cert, key) PEM paths in
/// `dir`. Not a CA: rustls refuses a CA certificate as the peer's own.
pub fn self_signed_certificate(dir: &std::path::Path) -> (String, String) {
    crate::gateway::require("openssl");
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert_ok("openssl req", &out);
    (cert.display().to_string(), key.display().to_string())
}
