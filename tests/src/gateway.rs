//! The real `bucketgate` binary as a subprocess, with a generated config, on loopback ports
//! chosen by the OS (`127.0.0.1:0`), read back from its log.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The path of the `bucketgate` binary, built once per test process; `BUCKETGATE_BIN` names
/// another one (the benchmarks run the release build).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BUCKETGATE_BIN") {
            return PathBuf::from(p);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        // `cargo test -p bucketgate-tests` alone does not build other packages' binaries.
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "bucketgate",
                "--bin",
                "bucketgate",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building bucketgate failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("bucketgate")
    })
    .clone()
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    /// Where the config, state and site tree live.
    pub dir: PathBuf,
    /// Every line the gateway wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Everything written to stdout.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Listener addresses by protocol (`sftp`, `ftp`, `ftps-implicit`, `admin`).
    pub addrs: std::collections::HashMap<String, SocketAddr>,
    /// The readers of stderr and stdout, joined once the process has exited so that its
    /// last lines are in `log` and `stdout` when `wait` returns.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Writes `config` to `dir/bucketgate.yaml` and starts `bucketgate serve` on it, waiting
    /// until every configured listener has logged its address.
    pub fn start(dir: &Path, config: &str, expect: &[&str]) -> Gateway {
        let cfg = dir.join("bucketgate.yaml");
        std::fs::write(&cfg, config).unwrap();
        Self::spawn(
            dir,
            &["serve", "--config", cfg.to_str().unwrap()],
            expect,
            &[],
        )
    }

    /// Starts the binary with `args` in `dir` and waits for the listeners in `expect`.
    pub fn spawn(dir: &Path, args: &[&str], expect: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .current_dir(dir)
            .env_remove("BUCKETGATE_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start bucketgate");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        let err = child.stderr.take().unwrap();
        let log2 = log.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening: protocol=") {
                    let rest = &line[i + "listening: protocol=".len()..];
                    let mut it = rest.split_whitespace();
                    let proto = it.next().unwrap_or("").to_string();
                    if let Some(addr) = it.next().and_then(|a| a.strip_prefix("addr=")) {
                        // Text logs end the address with a space, JSON logs with a quote.
                        if let Ok(a) = addr.split('"').next().unwrap_or("").parse() {
                            let _ = tx.send((proto, a));
                        }
                    }
                }
                eprintln!("[gateway] {line}");
                log2.lock().unwrap().push(line);
            }
        });
        let out = child.stdout.take().unwrap();
        let stdout2 = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                stdout2.lock().unwrap().push(line);
            }
        });
        let mut addrs = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while expect.iter().any(|p| !addrs.contains_key(*p)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((p, a)) => {
                    addrs.insert(p, a);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "gateway did not report its listeners {expect:?}; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Gateway {
            child,
            dir: dir.to_path_buf(),
            log,
            stdout,
            addrs,
            readers: vec![err_reader, out_reader],
        }
    }

    /// The address of a listener.
    pub fn addr(&self, proto: &str) -> SocketAddr {
        self.addrs[proto]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Both pipes reach end of file with the process (it starts no children).
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bucketgate ARGS` to completion and returns (exit code, stdout, stderr).
pub fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    run_with_env(dir, args, stdin, &[])
}

/// [`run`] with extra environment variables for the child.
pub fn run_with_env(
    dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("BUCKETGATE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bucketgate");
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            si.write_all(s.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Requires a program on PATH; a missing client is a failure, never a skip.
pub use bucketgate_testkit::tools::require;

/// A window of passive FTP ports for one test, so that parallel gateways do not compete.
pub fn passive_range() -> String {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = 30000 + (std::process::id() as u16 % 200) * 100 + slot * 20;
    format!("{}-{}", base, base + 19)
}
