//! Host keys: load the configured OpenSSH key files, creating the ed25519 one on first start.

use anyhow::{bail, Context};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Loads every key of `paths` (OpenSSH private key files: ed25519, ecdsa P-256/384/521, rsa).
///
/// When the first path whose name mentions `ed25519` is missing, a new ed25519 key is written
/// there (mode 0600, parent folders created), so a first start needs nothing prepared. Any
/// other missing or unreadable file is an error: silently serving without a key the operator
/// listed would change the server's identity.
pub fn load_or_create_host_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PrivateKey>> {
    if paths.is_empty() {
        bail!("no SSH host key configured (sftp.host_keys is empty)");
    }
    let first_ed25519 = paths.iter().position(|p| is_ed25519_name(p));
    let mut keys = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        if !path.exists() && Some(i) == first_ed25519 {
            keys.push(create_ed25519(path)?);
            continue;
        }
        let key = russh::keys::load_secret_key(path, None)
            .with_context(|| format!("cannot load SSH host key {}", path.display()))?;
        keys.push(key);
    }
    Ok(keys)
}

fn is_ed25519_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("ed25519"))
}

fn create_ed25519(path: &Path) -> anyhow::Result<PrivateKey> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create folder {}", parent.display()))?;
    }
    let seed: [u8; 32] = rand::random();
    let key = PrivateKey::new(
        KeypairData::from(Ed25519Keypair::from_seed(&seed)),
        "bucketgate host key",
    )
    .context("cannot build the ed25519 host key")?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .context("cannot encode the host key")?;
    let mut opts = std::fs::OpenOptions::new();
    // create_new: never overwrite a key another process just wrote (two instances starting).
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create SSH host key {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write SSH host key {}", path.display()))?;
    tracing::info!(path = %path.display(), "created a new ed25519 SSH host key");
    Ok(key)
}
