//! A PostgreSQL server of the test's own: `initdb` into a temporary folder, `pg_ctl start` on
//! 127.0.0.1 and a free port (its unix socket in the same folder), stopped and deleted on drop.
//!
//! Debian's `postgresql` package (scripts/install-test-tools.sh) puts the programs in
//! `/usr/lib/postgresql/<major>/bin`, off `PATH`; both places are searched. A missing server
//! fails the test loudly. PostgreSQL refuses to run as root, so as root the server runs as
//! `nobody` (through `runuser`), in a folder handed to that user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; user `bucketgate` (the bootstrap superuser, trust auth on loopback: no
/// password) and its database `postgres`.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_nobody: bool,
    port: u16,
}

/// The folder holding `initdb` and `pg_ctl`; panics, saying what to install, when none does.
fn bin_dir() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").is_file() && p.join("pg_ctl").is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    debian.sort();
    debian.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL (`initdb`, `pg_ctl`) is not installed: run scripts/install-test-tools.sh (CI does)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Creates and starts a fresh server (a few seconds).
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let as_nobody = is_root();
        let dir = tempfile::Builder::new()
            .prefix("bucketgate-pg")
            .tempdir()
            .expect("temporary folder");
        if as_nobody {
            let ok = Command::new("chown")
                .args(["-R", "nobody"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(ok.success(), "chown of the PostgreSQL folder failed");
        }
        let pg = Postgres {
            dir,
            bin,
            as_nobody,
            port: crate::free_port(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "bucketgate",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            pg.port,
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("server.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{program} failed: {}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://bucketgate@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://bucketgate@127.0.0.1:{}/postgres", self.port)
    }

    /// The folder of the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
