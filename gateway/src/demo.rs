//! The embedded default: a first try needs nothing but the binary. And `hash-password`.

use crate::Exit;
use bucketgate_protocols::auth::hash_password;
use rand::distr::{Alphanumeric, SampleString};
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

/// The demo user's name.
pub const DEMO_USER: &str = "demo";
const DEMO_HASH_FILE: &str = "demo-user.argon2";

/// Returns the demo user's password hash, creating it (and printing the password once, on
/// stdout, not through the logger) at the first start.
pub fn demo_password_hash(state_dir: &Path) -> Result<String, Exit> {
    let file = state_dir.join(DEMO_HASH_FILE);
    if let Ok(h) = std::fs::read_to_string(&file) {
        let h = h.trim().to_string();
        if h.starts_with("$argon2") {
            println!(
                "bucketgate: demo user '{DEMO_USER}' (its password was printed at the first start; \
                 delete {} to make a new one)",
                file.display()
            );
            return Ok(h);
        }
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Exit::runtime(format!("cannot create {}: {e}", state_dir.display())))?;
    let password = Alphanumeric.sample_string(&mut rand::rng(), 20);
    let hash = hash_password(&password);
    write_private(&file, hash.as_bytes())
        .map_err(|e| Exit::runtime(format!("cannot write {}: {e}", file.display())))?;
    println!("bucketgate: demo user '{DEMO_USER}' password: {password}");
    println!(
        "bucketgate: this password is shown once; it is kept hashed in {}",
        file.display()
    );
    let _ = std::io::stdout().flush();
    Ok(hash)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `bucketgate hash-password`: reads one password (a prompt on a terminal, else the first
/// line of stdin) and prints its argon2id hash.
pub fn hash_password_command() -> Result<(), Exit> {
    let password = read_new_password()?;
    println!("{}", hash_password(&password));
    Ok(())
}

/// A new password: typed twice at a terminal prompt (not echoed), else the first line of
/// stdin. Never from the command line, where `ps` and the shell history would show it.
pub fn read_new_password() -> Result<String, Exit> {
    let password = if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("Password: ")
            .map_err(|e| Exit::runtime(format!("cannot read the password: {e}")))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| Exit::runtime(format!("cannot read the password: {e}")))?;
        if p != again {
            return Err(Exit::usage("the two passwords differ"));
        }
        p
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Exit::runtime(format!("cannot read stdin: {e}")))?;
        s.lines().next().unwrap_or("").to_string()
    };
    if password.is_empty() {
        return Err(Exit::usage("empty password"));
    }
    Ok(password)
}
