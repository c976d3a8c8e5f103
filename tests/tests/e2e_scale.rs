//! Issue 22.2 on every CI run: 48 concurrent sessions (32 SFTP with requests in flight, 12 FTP,
//! 4 explicit FTPS), each from its own loopback address, each uploading two files onto an S3
//! mount (s3s-fs on loopback), then downloading them and comparing every byte. Zero failed
//! transfers, at the default configuration and under a memory budget far too small for the
//! uploads in flight (writers must spill to disk or wait, never fail).
//!
//! The real binary runs here, not the servers in-process: the defaults under test (the memory
//! budget, the spool folder under `state_dir`, the session caps) are the ones `bucketgate
//! serve` wires from a config that does not mention them. The sessions are the testkit's load
//! generator (`bucketgate_testkit::load`), the one the scale benchmark (`bench/scale.sh`) runs
//! with hundreds of sessions.

use crate::support::*;
use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::load::{self, Plan, Target};
use bucketgate_testkit::s3 as s3_support;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// An argon2id hash of [`PASSWORD`] with the smallest parameters (64 KiB, one pass): 48
/// checks at the default parameters take a minute in a debug build, and the logins are not
/// what this test is about.
fn cheap_hash() -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password_with_salt(PASSWORD.as_bytes(), b"scale-test-salt")
        .unwrap()
        .to_string()
}

/// Runs 48 sessions of two files each (`files`) against a gateway whose config adds `extra`
/// (nothing: the defaults), and fails on any failed transfer, showing the gateway's log.
async fn forty_eight_sessions(extra: &[&str], files: Vec<u64>, larger_last: (usize, u64)) {
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = bucketgate_tests::clients::self_signed_certificate(dir.path());
    // 16 FTP sessions, each with one passive port pending at a time, while ports of earlier
    // transfers may still be held: a window of 100, apart from the other tests' windows.
    let passive = {
        let r = bucketgate_tests::gateway::passive_range();
        let lo: u16 = r.split('-').next().unwrap().parse().unwrap();
        format!("{}-{}", lo - 20_000, lo - 20_000 + 99)
    };
    let mut cfg = GatewayConfig::new().sftp().ftp(&passive).section(&format!(
        "  tls: {{ mode: explicit, cert: \"{cert}\", key: \"{key}\" }}"
    ));
    for e in extra {
        cfg = cfg.section(e);
    }
    let cfg = cfg
        // 48 password checks at once in a debug build on a shared machine take a while.
        .section("limits: { login_grace: 10m }")
        .section("state_dir: ./state")
        .remote(
            "s3",
            &srv.endpoint,
            &srv.bucket,
            &srv.access,
            &srv.secret,
            "",
        )
        .mount("/m", "s3", &srv.prefix)
        .user(
            User::new("load", &cheap_hash())
                .home("/")
                .allow("/", "\"*\""),
        )
        .yaml();
    let path = dir.path().to_path_buf();
    let gw = tokio::task::spawn_blocking(move || {
        bucketgate_tests::gateway::Gateway::start(&path, &cfg, &["sftp", "ftp"])
    })
    .await
    .unwrap();
    let target = Target {
        sftp: Some(gw.addr("sftp")),
        ftp: Some(gw.addr("ftp")),
        tls_cert_der: Some(
            load::cert_der_from_pem(&std::fs::read(dir.path().join("tls-cert.pem")).unwrap())
                .unwrap(),
        ),
        user: "load".into(),
        password: PASSWORD.into(),
        dir: "/m".into(),
    };
    let mut plan = Plan::mix(32, 12, 4, files);
    plan.larger_last = Some(larger_last);
    let n = plan.file_count();
    let report = load::run(&target, &plan).await;
    let hwm = proc_kib(gw.pid(), "VmHWM");
    eprintln!(
        "{} sessions, {n} files {extra:?}: {} uploaded, {} verified, {} failed; put {:.1} MB/s, \
         get {:.1} MB/s; gateway peak RSS {hwm} KiB",
        plan.sessions.len(),
        report.uploaded,
        report.verified,
        report.failures.len(),
        report.put_mb_s(),
        report.get_mb_s(),
    );
    let failures: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} transfers failed:\n{}\n--- gateway log ---\n{}",
        failures.len(),
        failures.join("\n"),
        gw.log_text()
    );
    assert_eq!(report.uploaded, n, "every file uploaded");
    assert_eq!(report.verified, n, "every file downloaded as sent");
    // And the bucket holds them, each at its size.
    let b = srv.backend();
    for i in [0, 31, 32, 47] {
        for (k, size) in plan.sizes(i).iter().enumerate() {
            let got = s3_support::get(&b, &srv.key(&format!("r0-s{i}-f{k}.bin"))).await;
            assert_eq!(got.len() as u64, *size, "s{i}-f{k} in the bucket");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_eight_sessions_at_the_default_config_lose_no_transfer() {
    // Small files (one PutObject each), and every eighth session's second file in two parts
    // of the default 8 MiB (a multipart upload).
    forty_eight_sessions(&[], vec![128 * KIB, MIB + 3], (8, 9 * MIB)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_eight_sessions_under_an_8_mib_budget_lose_no_transfer() {
    // 48 uploads of 2 MiB and more at once want over 100 MiB of buffers: their first buffers
    // (64 KiB, doubling) spill once the budget is used up, and so do the parts of every eighth
    // session's 5 MiB + 5 file (a multipart upload, whose later parts take 5 MiB at once).
    forty_eight_sessions(
        &["transfers: { memory_limit: 8MiB, part_size: 5MiB }"],
        vec![256 * KIB, 2 * MIB + 7],
        (8, 5 * MIB + 5),
    )
    .await;
}

/// Issue 22.2: a failed transfer logs one line saying why. An upload refused at open (no
/// `upload` permission) and a download of a name that is not there: each audit line carries
/// the reason as the client was told it, not only the error kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_logs_one_line_saying_why() {
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig::new()
        .sftp()
        .section("state_dir: ./state")
        .remote(
            "s3",
            &srv.endpoint,
            &srv.bucket,
            &srv.access,
            &srv.secret,
            "",
        )
        .mount("/m", "s3", &srv.prefix)
        .user(
            User::new("ro", &cheap_hash())
                .home("/")
                .allow("/", "list, download"),
        )
        .yaml();
    let path = dir.path().to_path_buf();
    let gw = tokio::task::spawn_blocking(move || {
        bucketgate_tests::gateway::Gateway::start(&path, &cfg, &["sftp"])
    })
    .await
    .unwrap();
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let (_h, s) = sftp_session(lo, gw.addr("sftp"), "ro", PASSWORD)
        .await
        .unwrap();
    let put = sftp_put(&s, "/m/refused.bin", b"abc").await;
    assert!(put.is_err(), "an upload without permission succeeded");
    assert!(s.open("/m/absent.bin").await.is_err());
    let audit_line = |name: &str| {
        let want = format!("path=\"/m/{name}\"");
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let lines: Vec<String> = gw
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("bucketgate::audit") && l.contains(&want))
                .cloned()
                .collect();
            if !lines.is_empty() || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    for (name, result, why) in [
        ("refused.bin", "permission_denied", "permission"),
        ("absent.bin", "not_found", "absent.bin"),
    ] {
        let lines = audit_line(name);
        assert_eq!(lines.len(), 1, "one audit line for {name}: {lines:#?}");
        let l = &lines[0];
        assert!(l.contains(&format!("result=\"{result}\"")), "{l}");
        let error = l
            .split(" error=")
            .nth(1)
            .unwrap_or_else(|| panic!("no reason in the audit line: {l}"));
        assert!(
            error.to_lowercase().contains(why),
            "the reason does not say {why:?}: {l}"
        );
        assert!(
            !error.contains(&srv.prefix) || srv.prefix.is_empty(),
            "the bucket key leaks: {l}"
        );
    }
}
