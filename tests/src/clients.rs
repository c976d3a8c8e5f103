//! The programs people use, driven as subprocesses: OpenSSH `sftp`/`scp`, `curl`, `lftp`.

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

fn ssh_opts() -> Vec<String> {
    [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "ConnectTimeout=20",
    ]
    .iter()
    .flat_map(|o| ["-o".to_string(), o.to_string()])
    .collect()
}

/// Runs `sftp -b -` with key authentication and the given batch commands.
pub fn sftp_batch(addr: SocketAddr, user: &str, key: &Path, batch: &str, cwd: &Path) -> Output {
    crate::gateway::require("sftp");
    let mut cmd = Command::new("sftp");
    cmd.args(ssh_opts())
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(key)
        .args(["-P", &addr.port().to_string(), "-b", "-"])
        .arg(format!("{user}@{}", addr.ip()))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut si = child.stdin.take().unwrap();
        si.write_all(batch.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
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
    let mut child = Command::new("setsid")
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
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut si = child.stdin.take().unwrap();
        si.write_all(batch.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
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
