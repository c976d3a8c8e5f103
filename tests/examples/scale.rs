//! The scale benchmark (issue 22; run by `bench/scale.sh`): N concurrent sessions over SFTP,
//! FTP and explicit FTPS, each from its own loopback address, against the release gateway in
//! front of the s3s-fs example server (`s3s_server`), with the testkit's load generator
//! (`bucketgate_testkit::load`): every session uploads its files, then downloads them and
//! compares every byte.
//!
//! For each N and protocol, two workloads: `large` (two files per session, 128 MiB / N each,
//! at least 1 MiB) and `small` (eight 64 KiB files per session). Each prints one row: aggregate
//! MB/s and files/s of the put and get phases, failed transfers, CPU-seconds per GiB of the
//! gateway and of the S3 server in each phase (from /proc/PID/stat), and the gateway's RSS
//! peak (VmRSS sampled every 50 ms). After each N, the gateway's RSS is read again once the
//! load has been gone for `--settle` seconds (60 by default).
//!
//! Usage: `scale --gateway-bin PATH --s3-bin PATH [--sessions 1,4,16,64,256]
//!         [--protocols sftp,ftp,ftps] [--workloads large,small] [--settle 60]
//!         [--config-extra YAML]`

use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::load::{self, Plan, Proto, Report, RssSampler, Target};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;
/// The password of the benchmark user and its argon2id hash at the default parameters
/// (`bucketgate hash-password`): logins cost what they cost in production.
const PASSWORD: &str = "alice-Pass-1";
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$IYidtFSQ+PjtRKpPQMrGJg$ByNKWXtsar8EzTJGF1VvlxOsEn685UUeJAg91HS1ub8";

struct Args {
    gateway_bin: PathBuf,
    s3_bin: PathBuf,
    sessions: Vec<usize>,
    protocols: Vec<Proto>,
    workloads: Vec<String>,
    settle: u64,
    extra: Vec<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        gateway_bin: PathBuf::new(),
        s3_bin: PathBuf::new(),
        sessions: vec![1, 4, 16, 64, 256],
        protocols: vec![Proto::Sftp, Proto::Ftp, Proto::Ftps],
        workloads: vec!["large".into(), "small".into()],
        settle: 60,
        extra: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--gateway-bin" => a.gateway_bin = v.into(),
            "--s3-bin" => a.s3_bin = v.into(),
            "--sessions" => {
                a.sessions = v
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--protocols" => {
                a.protocols = v
                    .split(',')
                    .map(|s| match s.trim() {
                        "sftp" => Ok(Proto::Sftp),
                        "ftp" => Ok(Proto::Ftp),
                        "ftps" => Ok(Proto::Ftps),
                        o => Err(anyhow::anyhow!("unknown protocol {o}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--workloads" => a.workloads = v.split(',').map(|s| s.trim().to_string()).collect(),
            "--settle" => a.settle = v.parse()?,
            "--config-extra" => a.extra.push(v),
            o => anyhow::bail!("unknown option {o} (see the head of tests/examples/scale.rs)"),
        }
    }
    anyhow::ensure!(
        a.gateway_bin.is_file() && a.s3_bin.is_file(),
        "--gateway-bin and --s3-bin must name the built binaries"
    );
    // The gateway runs in a folder of its own.
    a.gateway_bin = std::fs::canonicalize(&a.gateway_bin)?;
    a.s3_bin = std::fs::canonicalize(&a.s3_bin)?;
    Ok(a)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the s3s-fs server on `root` and returns it with its endpoint.
fn start_s3(bin: &Path, root: &Path) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(bin)
        .arg(root)
        .args(["bench-access", "bench-secret-key"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let endpoint = line
        .trim()
        .strip_prefix("listening: ")
        .ok_or_else(|| anyhow::anyhow!("s3s_server said {line:?}"))?
        .to_string();
    Ok((Proc(child), endpoint))
}

/// A self-signed server certificate for 127.0.0.1 (openssl), for FTPS.
fn certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

/// What a process's RSS is made of: memory (`RssAnon`) or the pages of its binary and
/// libraries (`RssFile`), from `/proc/PID/status`, and its thread count.
fn rss_parts(pid: u32) -> String {
    let mib = |f: &str| load::rss_kib(pid, f).unwrap_or(0) as f64 / 1024.0;
    format!(
        "anonymous {:.1} MiB, file-backed {:.1} MiB, {} threads",
        mib("RssAnon"),
        mib("RssFile"),
        load::rss_kib(pid, "Threads").unwrap_or(0)
    )
}

fn gib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let max_n = a.sessions.iter().copied().max().unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let s3_root = dir.path().join("s3");
    std::fs::create_dir_all(s3_root.join("bench"))?;
    let (s3, endpoint) = start_s3(&a.s3_bin, &s3_root)?;
    let s3_pid = s3.0.id();
    let (cert, key) = certificate(dir.path())?;
    let mut cfg = GatewayConfig::new()
        .sftp()
        .ftp("20000-21999")
        .section(&format!(
            "  tls: {{ mode: explicit, cert: \"{}\", key: \"{}\" }}",
            cert.display(),
            key.display()
        ))
        .section(&format!(
            "limits: {{ max_sessions: {}, login_grace: 10m }}",
            max_n + 16
        ))
        .section("state_dir: ./state");
    for e in &a.extra {
        cfg = cfg.section(e);
    }
    let cfg = cfg
        .remote(
            "s3",
            &endpoint,
            "bench",
            "bench-access",
            "bench-secret-key",
            "",
        )
        .mount("/m", "s3", "")
        .user(User::new("bench", HASH).home("/").allow("/", "\"*\""))
        .yaml();
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir_all(&gw_dir)?;
    std::env::set_var("BUCKETGATE_BIN", &a.gateway_bin);
    let cfg_path = gw_dir.join("bucketgate.yaml");
    std::fs::write(&cfg_path, cfg)?;
    // Warnings only (no audit line per file), but the listening lines the harness waits for.
    let mut gw = bucketgate_tests::gateway::Gateway::spawn(
        &gw_dir,
        &["serve", "--config", cfg_path.to_str().unwrap()],
        &["sftp", "ftp"],
        &[("RUST_LOG", "warn,bucketgate::cmd::serve=info")],
    );
    let pid = gw.pid();
    let target = Target {
        sftp: Some(gw.addr("sftp")),
        ftp: Some(gw.addr("ftp")),
        tls_cert_der: Some(
            load::cert_der_from_pem(&std::fs::read(&cert)?).map_err(anyhow::Error::msg)?,
        ),
        user: "bench".into(),
        password: PASSWORD.into(),
        dir: "/m".into(),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "scale: {cores} cores, load average {} at start; gateway {}; extra config {:?}",
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        a.gateway_bin.display(),
        a.extra
    );
    let idle = load::rss_kib(pid, "VmRSS").unwrap_or(0);
    println!("gateway RSS idle: {} MiB ({})", idle / 1024, rss_parts(pid));
    println!(
        "\n| proto | N | workload | files | put MB/s | get MB/s | put files/s | get files/s | failed | gw CPU-s/GiB put / get | s3 CPU-s/GiB put / get | gw RSS peak MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut run_id = 1u64;
    let mut failed_total = 0usize;
    for &n in &a.sessions {
        let sampler_all = RssSampler::start(pid, Duration::from_millis(50));
        for &proto in &a.protocols {
            for w in &a.workloads {
                let (files, label) = match w.as_str() {
                    "large" => {
                        let size = (128 * MIB / n as u64).max(MIB);
                        (vec![size, size + 1], format!("2 × {} MiB", size / MIB))
                    }
                    "small" => (vec![64 * KIB; 8], "8 × 64 KiB".to_string()),
                    o => anyhow::bail!("unknown workload {o}"),
                };
                let mut plan = match proto {
                    Proto::Sftp => Plan::mix(n, 0, 0, files),
                    Proto::Ftp => Plan::mix(0, n, 0, files),
                    Proto::Ftps => Plan::mix(0, 0, n, files),
                };
                plan.run_id = run_id;
                run_id += 1;
                // Sessions of each run come from addresses of their own.
                plan.first_source = (run_id as u32) * 2048;
                plan.watch = vec![pid, s3_pid];
                let sampler = RssSampler::start(pid, Duration::from_millis(50));
                let r: Report = load::run(&target, &plan).await;
                // CPU-seconds per GiB moved, put and get phases apart (logins left out).
                let per = |cpu: &[Option<f64>], bytes: u64, i: usize| match cpu[i] {
                    Some(c) if bytes > 0 => format!("{:.1}", c / gib(bytes)),
                    _ => "?".into(),
                };
                failed_total += r.failures.len();
                println!(
                    "| {} | {n} | {label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} / {} | {} / {} | {} |",
                    proto.name(),
                    plan.file_count(),
                    r.put_mb_s(),
                    r.get_mb_s(),
                    r.put_files_s(),
                    r.get_files_s(),
                    r.failures.len(),
                    per(&r.cpu_put, r.bytes_up, 0),
                    per(&r.cpu_get, r.bytes_down, 0),
                    per(&r.cpu_put, r.bytes_up, 1),
                    per(&r.cpu_get, r.bytes_down, 1),
                    sampler.peak_kib() / 1024,
                );
                for f in r.failures.iter().take(5) {
                    eprintln!("  failed: {f}");
                }
                // Leave the bucket as it was, so that later runs do not list or store more.
                remove_run(&s3_root.join("bench"), run_id - 1);
            }
        }
        let peak = sampler_all.peak_kib();
        drop(sampler_all);
        tokio::time::sleep(Duration::from_secs(a.settle)).await;
        let after = load::rss_kib(pid, "VmRSS").unwrap_or(0);
        println!(
            "|  | N = {n}: gateway RSS peak {} MiB, {} s after the load {} MiB (idle {} MiB) | | | | | | | | | | |",
            peak / 1024,
            a.settle,
            after / 1024,
            idle / 1024
        );
        println!(
            "|  | N = {n}, after: {}; after / idle {:.2}× | | | | | | | | | | |",
            rss_parts(pid),
            after as f64 / idle.max(1) as f64
        );
    }
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at the end: {}; failed transfers in all: {failed_total}",
        load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // A graceful stop, so that what the gateway prints at exit (jemalloc's statistics with
    // `_RJEM_MALLOC_CONF=stats_print:true`) is seen.
    gw.signal("TERM");
    let _ = gw.wait(Duration::from_secs(60));
    drop(gw);
    drop(s3);
    anyhow::ensure!(failed_total == 0, "{failed_total} transfers failed");
    Ok(())
}

/// Deletes the objects of run `id` from the s3s-fs folder of the bucket (on disk).
fn remove_run(bucket: &Path, id: u64) {
    let prefix = format!("r{id}-");
    if let Ok(rd) = std::fs::read_dir(bucket) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
