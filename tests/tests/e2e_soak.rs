//! Soak: 50 concurrent in-process clients, half SFTP (russh + russh-sftp) and half FTP
//! (suppaftp), upload, download, list and rename through a mount onto a real S3 server (moto
//! on loopback; s3s-fs answers HEAD of a key that is also a folder on its disk with HTTP 500)
//! for a bounded time (`BUCKETGATE_SOAK_SECS`, default 60). Every byte that ends
//! in the bucket is checked against what was sent, any error fails the test, and the gateway's
//! peak RSS (VmHWM) is reported twice: while the 50 clients log in (argon2 needs 19 MiB per
//! password check) and, after a reset of the peak once all are in, during the transfers.

use crate::support;

use bucketgate_testkit::s3 as s3_support;

use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::moto::{ACCESS_KEY, SECRET_KEY};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncReadExt;

const CLIENTS: usize = 50;
/// CRC-32 (IEEE, as Python's zlib.crc32): the bucket is read back as key, size and CRC, in
/// one boto3 call, instead of one subprocess per object.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Deterministic content for client `c`, round `k`: 1 byte to ~200 KiB.
fn body(c: usize, k: usize) -> Vec<u8> {
    let mut x = (c as u64 * 1_000_003 + k as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let len = (x % 200_000) as usize + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What one client left in the bucket: key (under the mount prefix) -> bytes.
type Expected = BTreeMap<String, Vec<u8>>;

/// Every client logs in, then waits here until all have, so the two peaks are apart.
type Start = std::sync::Arc<tokio::sync::Barrier>;

async fn sftp_client(
    c: usize,
    addr: SocketAddr,
    start: Start,
    secs: u64,
) -> Result<Expected, String> {
    let session = sftp_session(LO, addr, "soak", PASSWORD).await;
    start.wait().await;
    let until = Instant::now() + Duration::from_secs(secs);
    let (_h, s) = session?;
    let dir = format!("/m/c{c}");
    s.create_dir(&dir)
        .await
        .map_err(|e| format!("mkdir: {e}"))?;
    let mut done = Expected::new();
    let mut k = 0;
    while Instant::now() < until {
        let b = body(c, k);
        let f = format!("{dir}/f{k}.bin");
        sftp_put(&s, &f, &b)
            .await
            .map_err(|e| format!("put {f}: {e}"))?;
        let mut h = s.open(&f).await.map_err(|e| format!("open {f}: {e}"))?;
        let mut got = Vec::new();
        h.read_to_end(&mut got)
            .await
            .map_err(|e| format!("get {f}: {e}"))?;
        drop(h);
        if got != b {
            return Err(format!("{f}: downloaded bytes differ"));
        }
        let names: Vec<String> = s
            .read_dir(&dir)
            .await
            .map_err(|e| format!("ls {dir}: {e}"))?
            .map(|e| e.file_name())
            .collect();
        if !names.contains(&format!("f{k}.bin")) {
            return Err(format!("ls {dir} misses f{k}.bin: {names:?}"));
        }
        let g = format!("{dir}/g{k}.bin");
        s.rename(&f, &g)
            .await
            .map_err(|e| format!("rename {f}: {e}"))?;
        done.insert(format!("c{c}/g{k}.bin"), b);
        k += 1;
    }
    Ok(done)
}

async fn ftp_client(
    c: usize,
    addr: SocketAddr,
    start: Start,
    secs: u64,
) -> Result<Expected, String> {
    use suppaftp::tokio::AsyncFtpStream;
    let e = |what: &str| {
        let what = what.to_string();
        move |err: suppaftp::FtpError| format!("{what}: {err}")
    };
    let session = async {
        let mut f = AsyncFtpStream::connect(addr).await.map_err(e("connect"))?;
        f.login("soak", PASSWORD).await.map_err(e("login"))?;
        Ok::<_, String>(f)
    }
    .await;
    start.wait().await;
    let until = Instant::now() + Duration::from_secs(secs);
    let mut f = session?;
    f.transfer_type(suppaftp::types::FileType::Binary)
        .await
        .map_err(e("TYPE I"))?;
    let dir = format!("/m/c{c}");
    f.mkdir(&dir).await.map_err(e("MKD"))?;
    let mut done = Expected::new();
    let mut k = 0;
    while Instant::now() < until {
        let b = body(c, k);
        let name = format!("{dir}/f{k}.bin");
        f.put_file(&name, &mut b.as_slice())
            .await
            .map_err(e("STOR"))?;
        let mut st = f.retr_as_stream(&name).await.map_err(e("RETR"))?;
        let mut got = Vec::new();
        st.read_to_end(&mut got)
            .await
            .map_err(|x| format!("RETR data: {x}"))?;
        st.finish().await.map_err(e("RETR end"))?;
        if got != b {
            return Err(format!("{name}: downloaded bytes differ"));
        }
        let names = f.nlst(Some(&dir)).await.map_err(e("NLST"))?;
        if !names.iter().any(|n| n.ends_with(&format!("f{k}.bin"))) {
            return Err(format!("NLST {dir} misses f{k}.bin: {names:?}"));
        }
        let g = format!("{dir}/g{k}.bin");
        f.rename(&name, &g).await.map_err(e("RNFR/RNTO"))?;
        done.insert(format!("c{c}/g{k}.bin"), b);
        k += 1;
    }
    let _ = f.quit().await;
    Ok(done)
}

const LO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_mixed_clients_every_byte_lands_in_the_bucket() {
    let secs: u64 = std::env::var("BUCKETGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let moto = bucketgate_testkit::moto::Moto::start();
    moto.create_bucket("soak");
    let dir = tempfile::tempdir().unwrap();
    // 25 FTP clients, each with at most one passive port pending at a time.
    let passive = {
        let r = bucketgate_tests::gateway::passive_range();
        let lo: u16 = r.split('-').next().unwrap().parse().unwrap();
        format!("{}-{}", lo - 10_000, lo - 10_000 + 99)
    };
    let cfg = GatewayConfig::new()
        .sftp()
        .ftp(&passive)
        // 50 argon2 logins at once in a debug build on a shared machine take a while.
        .section("limits: { max_sessions_per_ip: 100, login_grace: 10m }")
        .remote("s3", &moto.endpoint, "soak", ACCESS_KEY, SECRET_KEY, "")
        .mount("/m", "s3", "data/")
        .user(User::new("soak", HASH).home("/").allow("/", "\"*\""))
        .yaml();
    let gw = bucketgate_tests::gateway::Gateway::start(dir.path(), &cfg, &["sftp", "ftp"]);
    let pid = gw.pid();
    let rss0 = proc_kib(pid, "VmRSS");
    let start = Start::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (sftp, ftp) = (gw.addr("sftp"), gw.addr("ftp"));
            let start = start.clone();
            tokio::spawn(async move {
                if c % 2 == 0 {
                    sftp_client(c, sftp, start, secs).await
                } else {
                    ftp_client(c, ftp, start, secs).await
                }
            })
        })
        .collect();
    start.wait().await;
    // All logged in: the peak so far is the logins'; reset it (Linux >= 4.0: "5" resets
    // VmHWM to the current RSS) so that the peak at the end is the transfers'.
    let hwm_login = proc_kib(pid, "VmHWM");
    let rss_login = proc_kib(pid, "VmRSS");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the gateway's VmHWM");
    let mut expected = Expected::new();
    let mut errors = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(m) => expected.extend(m),
            Err(e) => errors.push(format!("client {c}: {e}")),
        }
    }
    let hwm = proc_kib(pid, "VmHWM");
    let rss1 = proc_kib(pid, "VmRSS");
    eprintln!(
        "soak: {CLIENTS} clients, {secs}s, {} files verified; gateway RSS {rss0} KiB at start, \
         {rss_login} KiB after the logins (peak {hwm_login} KiB), {rss1} KiB at end, \
         peak (VmHWM) during the transfers {hwm} KiB",
        expected.len()
    );
    assert!(errors.is_empty(), "client errors:\n{}", errors.join("\n"));
    assert!(
        expected.len() >= CLIENTS,
        "every client finished at least one round"
    );
    // The bucket holds exactly the renamed files with exactly the bytes sent (plus the
    // folder markers of the mkdir'ed `cN/`).
    let listing = moto
        .py("import zlib\np = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket='soak'):\n  for o in page.get('Contents', []):\n    \
             b = s3.get_object(Bucket='soak', Key=o['Key'])['Body'].read()\n    \
             print(o['Key'], len(b), zlib.crc32(b))")
        .unwrap();
    let mut stored = BTreeMap::new();
    for l in listing.lines() {
        let mut it = l.rsplitn(3, ' ');
        let (crc, len, key) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        if let Some(k) = key.strip_prefix("data/").filter(|k| !k.ends_with('/')) {
            stored.insert(
                k.to_string(),
                (len.parse::<usize>().unwrap(), crc.parse::<u32>().unwrap()),
            );
        }
    }
    let want: BTreeMap<String, (usize, u32)> = expected
        .iter()
        .map(|(k, b)| (k.clone(), (b.len(), crc32(b))))
        .collect();
    assert_eq!(
        stored, want,
        "the bucket differs from what the clients left"
    );
    let peak = hwm.max(hwm_login);
    assert!(
        peak < 1024 * 1024,
        "peak RSS {peak} KiB: over 1 GiB for {CLIENTS} clients"
    );
}

/// Issue 22.2: with the memory budget far below what the uploads in flight want (48 sessions,
/// 8 MiB for all), every upload still succeeds: writers spill parts to the spool folder
/// (`<state_dir>/spool`, which the gateway must create) or wait, and never fail. Before, the
/// first part that had to spill failed its upload with "no such file".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_eight_sftp_uploads_under_a_tight_memory_limit_all_land() {
    const SESSIONS: usize = 48;
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig::new()
        .sftp()
        .section("limits: { max_sessions_per_ip: 100, login_grace: 10m }")
        .section("transfers: { memory_limit: 8MiB, part_size: 5MiB }")
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
        .user(User::new("up", HASH).home("/").allow("/", "\"*\""))
        .yaml();
    let path = dir.path().to_path_buf();
    let gw = tokio::task::spawn_blocking(move || {
        bucketgate_tests::gateway::Gateway::start(&path, &cfg, &["sftp"])
    })
    .await
    .unwrap();
    let addr = gw.addr("sftp");
    // Most fit one part (their first buffer grows, then spills); every fourth is a multipart
    // upload whose later parts take their whole size at once (or spill).
    let size = |i: usize| match i % 4 {
        0 => 5 * 1024 * 1024 + 1 + i * 97 * 1024,
        _ => 1024 * 1024 + i * 13 * 1024,
    };
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|i| {
            tokio::spawn(async move {
                let (_h, s) = sftp_session(LO, addr, "up", PASSWORD).await?;
                // A close returns once the object is complete in the bucket; with 48 uploads
                // on a busy machine that takes longer than the client's default 10 s.
                s.set_timeout(STEP.as_secs());
                let b = body_of(size(i), i as u64);
                sftp_put(&s, &format!("/m/f{i}.bin"), &b)
                    .await
                    .map_err(|e| format!("put f{i}.bin: {e}"))?;
                Ok::<_, String>(b)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut sent = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(b) => sent.push((i, b)),
            Err(e) => errors.push(format!("session {i}: {e}")),
        }
    }
    let hwm = proc_kib(gw.pid(), "VmHWM");
    eprintln!("{SESSIONS} uploads under an 8 MiB budget: gateway peak RSS {hwm} KiB");
    assert!(
        errors.is_empty(),
        "{} of {SESSIONS} uploads failed:\n{}\n--- gateway log ---\n{}",
        errors.len(),
        errors.join("\n"),
        gw.log_text()
    );
    let b = srv.backend();
    for (i, bytes) in &sent {
        let got = s3_support::get(&b, &srv.key(&format!("f{i}.bin"))).await;
        assert!(got == *bytes, "f{i}.bin: the bucket holds other bytes");
    }
}

/// Deterministic bytes of length `len`.
fn body_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Issue 13.9: 8 concurrent 64 MiB uploads (4 SFTP by OpenSSH `sftp`, 4 FTP by `curl`) onto an
/// S3 mount with a 16 MiB budget: every byte lands, and the gateway's peak RSS stays within
/// 64 MiB of its idle RSS (VmHWM reset once idle, Linux >= 4.0). The FTP uploads log in with a
/// password each: before argon2's 19 MiB per check was counted in the budget, four checks at
/// once put the peak at 77-107 MiB above idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_64_mib_uploads_under_a_16_mib_budget() {
    use bucketgate_tests::clients::{assert_ok, keygen, sftp_batch};
    const MIB: usize = 1024 * 1024;
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let passive = bucketgate_tests::gateway::passive_range();
    let cfg = GatewayConfig::new()
        .sftp()
        .ftp(&passive)
        .section("transfers: { memory_limit: 16MiB }")
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
            User::new("up", HASH)
                .key(&public)
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
    let (sftp, ftp) = (gw.addr("sftp"), gw.addr("ftp"));
    let mut sent = Vec::new();
    for i in 0..8 {
        let b = body_of(64 * MIB, 1000 + i as u64);
        std::fs::write(dir.path().join(format!("u{i}.bin")), &b).unwrap();
        sent.push(b);
    }
    // One small upload of each kind first, so that lazily built state (TLS-less FTP relay,
    // SSH session, S3 connection pool) is part of the idle figure.
    std::fs::write(dir.path().join("w.bin"), b"warm").unwrap();
    assert_ok(
        "sftp warm-up",
        &sftp_batch(sftp, "up", &key, "put w.bin /m/w1.bin\n", dir.path()),
    );
    let w = dir.path().join("w.bin");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-T"])
        .arg(&w)
        .arg(format!("ftp://up:{PASSWORD}@{ftp}/m/w2.bin"))
        .output()
        .unwrap();
    assert_ok("curl warm-up", &out);
    let pid = gw.pid();
    let idle = proc_kib(pid, "VmRSS");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the gateway's VmHWM");
    // SOAK_KIND=sftp or ftp runs all eight uploads over one protocol, to tell their shares apart.
    let kind = std::env::var("SOAK_KIND").unwrap_or_default();
    let over_sftp: Vec<bool> = (0..8)
        .map(|i| match kind.as_str() {
            "sftp" => true,
            "ftp" => false,
            _ => i % 2 == 0,
        })
        .collect();
    let uploads: Vec<_> = (0..8)
        .map(|i| {
            let cwd = dir.path().to_path_buf();
            let key = key.clone();
            let sftp_upload = over_sftp[i];
            std::thread::spawn(move || {
                let out = if sftp_upload {
                    sftp_batch(
                        sftp,
                        "up",
                        &key,
                        &format!("put u{i}.bin /m/u{i}.bin\n"),
                        &cwd,
                    )
                } else {
                    std::process::Command::new("curl")
                        .args(["-sS", "-T"])
                        .arg(cwd.join(format!("u{i}.bin")))
                        .arg(format!("ftp://up:{PASSWORD}@{ftp}/m/u{i}.bin"))
                        .output()
                        .unwrap()
                };
                (i, out)
            })
        })
        .collect();
    for u in uploads {
        let (i, out) = u.join().unwrap();
        assert_ok(&format!("upload {i}"), &out);
    }
    let hwm = proc_kib(pid, "VmHWM");
    eprintln!(
        "8 x 64 MiB uploads (4 SFTP, 4 FTP), memory_limit 16 MiB: gateway RSS idle {idle} KiB, \
         peak {hwm} KiB, {} KiB above idle",
        hwm.saturating_sub(idle)
    );
    let b = srv.backend();
    for (i, bytes) in sent.iter().enumerate() {
        let got = s3_support::get(&b, &srv.key(&format!("u{i}.bin"))).await;
        assert!(got == *bytes, "u{i}.bin: the bucket holds other bytes");
    }
    assert!(
        hwm.saturating_sub(idle) <= 64 * 1024,
        "the gateway's peak RSS rose {} KiB above idle, more than 64 MiB over a 16 MiB budget",
        hwm.saturating_sub(idle)
    );
}
