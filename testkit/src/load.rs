//! A load generator of many concurrent sessions (issue 22): SFTP (russh-sftp's raw client, with
//! several requests in flight), FTP and explicit FTPS (suppaftp), each session from its own
//! loopback address (127.0.0.0/8 all routes to lo). Every session logs in, uploads its files,
//! then downloads them and compares every byte with what it sent.
//!
//! The phases are separated by barriers so that they can be timed apart: all sessions log in,
//! then all upload (the put phase), then all download (the get phase). The content of a file
//! is a function of its seed and offset ([`fill`]), so nothing is held in memory to compare
//! with, and a thousand sessions of large files cost the generator only its buffers.
//!
//! Used by the suite's `e2e_scale` test (a few dozen sessions, zero failed transfers) and by
//! the scale benchmark (`tests/examples/scale.rs`, `bench/scale.sh`), which adds CPU and memory
//! figures read from `/proc` ([`cpu_seconds`], [`rss_kib`]).

use crate::ssh::TrustAll;
use futures::stream::{FuturesUnordered, StreamExt};
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use suppaftp::tokio::{ImplAsyncFtpStream, TokioTlsStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

/// The protocol of one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Sftp,
    Ftp,
    /// Explicit FTPS: `AUTH TLS`, `PBSZ 0`, `PROT P` on the FTP listener.
    Ftps,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Sftp => "sftp",
            Proto::Ftp => "ftp",
            Proto::Ftps => "ftps",
        }
    }
}

/// Where the sessions go and as whom.
#[derive(Clone)]
pub struct Target {
    pub sftp: Option<SocketAddr>,
    /// The FTP listener (plain FTP, and explicit FTPS when `tls_cert_der` is set).
    pub ftp: Option<SocketAddr>,
    /// The DER certificate the FTPS sessions trust (the gateway's self-signed one).
    pub tls_cert_der: Option<Vec<u8>>,
    pub user: String,
    pub password: String,
    /// The folder the files go to (it must exist); session `i` writes `s{i}-f{k}.bin` there.
    pub dir: String,
}

/// What the sessions do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One entry per session.
    pub sessions: Vec<Proto>,
    /// The sizes of the files every session uploads then downloads, in this order.
    pub files: Vec<u64>,
    /// `(n, size)`: every `n`-th session (0, n, 2n...) sends its last file at `size` instead,
    /// so that a run of small files still has a few large ones (multipart uploads).
    pub larger_last: Option<(usize, u64)>,
    /// SFTP requests in flight per session (writes while uploading, reads while downloading).
    pub sftp_in_flight: usize,
    /// The length of one SFTP write or read request.
    pub sftp_chunk: usize,
    /// Seeds and names differ per run, so that runs against one bucket do not meet.
    pub run_id: u64,
    /// Session `i` connects from the loopback address `first_source + i` (see [`source`]).
    pub first_source: u32,
    /// Liveness bound for one request or reply (a stuck session fails instead of hanging).
    pub step: Duration,
    /// Processes whose CPU time is read at the phase boundaries ([`Report::cpu_put`]).
    pub watch: Vec<u32>,
}

impl Plan {
    /// `sftp` SFTP sessions, then `ftp` FTP and `ftps` FTPS sessions, each with `files`.
    pub fn mix(sftp: usize, ftp: usize, ftps: usize, files: Vec<u64>) -> Plan {
        let mut sessions = vec![Proto::Sftp; sftp];
        sessions.extend(std::iter::repeat_n(Proto::Ftp, ftp));
        sessions.extend(std::iter::repeat_n(Proto::Ftps, ftps));
        Plan {
            sessions,
            files,
            larger_last: None,
            sftp_in_flight: 16,
            sftp_chunk: 32 * 1024,
            run_id: 0,
            first_source: 0,
            step: Duration::from_secs(120),
            watch: Vec::new(),
        }
    }
}

/// One failed transfer (or a session that could not log in): what the client saw.
#[derive(Clone, Debug)]
pub struct Failure {
    pub session: usize,
    pub proto: Proto,
    /// `login`, `put NAME`, `get NAME`.
    pub what: String,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {} ({}) {}: {}",
            self.session,
            self.proto.name(),
            self.what,
            self.error
        )
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Files uploaded whole (the server acknowledged the close or the transfer).
    pub uploaded: usize,
    /// Files downloaded whole with every byte as sent.
    pub verified: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// From the moment every session had logged in to the last upload's end.
    pub put_secs: f64,
    /// From the moment every session had finished uploading to the last download's end.
    pub get_secs: f64,
    pub login_secs: f64,
    pub failures: Vec<Failure>,
    /// CPU-seconds each process of [`Plan::watch`] spent in the put phase (None: unreadable).
    pub cpu_put: Vec<Option<f64>>,
    /// The same for the get phase.
    pub cpu_get: Vec<Option<f64>>,
}

impl Report {
    pub fn put_mb_s(&self) -> f64 {
        self.bytes_up as f64 / 1e6 / self.put_secs.max(1e-9)
    }
    pub fn get_mb_s(&self) -> f64 {
        self.bytes_down as f64 / 1e6 / self.get_secs.max(1e-9)
    }
    pub fn put_files_s(&self) -> f64 {
        self.uploaded as f64 / self.put_secs.max(1e-9)
    }
    pub fn get_files_s(&self) -> f64 {
        self.verified as f64 / self.get_secs.max(1e-9)
    }
}

/// The loopback address of session number `n` (counting from 127.1.0.1).
pub fn source(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + n))
}

/// The bytes of a file with `seed` from `offset`: 8-byte blocks of splitmix64 of their index,
/// so any range can be made (or checked) without the rest.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let block = pos / 8;
        let mut z = seed
            .wrapping_add(block.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        let from = (pos % 8) as usize;
        let n = (8 - from).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[from..from + n]);
        i += n;
        pos += n as u64;
    }
}

/// True when `got` is the content of the file with `seed` at `offset`.
fn matches(seed: u64, offset: u64, got: &[u8], scratch: &mut Vec<u8>) -> bool {
    scratch.resize(got.len(), 0);
    fill(seed, offset, scratch);
    scratch[..] == *got
}

impl Plan {
    /// The sizes of session `i`'s files.
    pub fn sizes(&self, i: usize) -> Vec<u64> {
        let mut v = self.files.clone();
        if let (Some((n, size)), Some(last)) = (self.larger_last, v.last_mut()) {
            if n > 0 && i.is_multiple_of(n) {
                *last = size;
            }
        }
        v
    }

    /// The files of the whole run.
    pub fn file_count(&self) -> usize {
        self.sessions.len() * self.files.len()
    }
}

fn seed_of(plan: &Plan, session: usize, file: usize) -> u64 {
    plan.run_id
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        .wrapping_add((session as u64) << 20)
        .wrapping_add(file as u64)
}

fn name_of(target: &Target, plan: &Plan, session: usize, file: usize) -> String {
    format!(
        "{}/r{}-s{session}-f{file}.bin",
        target.dir.trim_end_matches('/'),
        plan.run_id
    )
}

/// Runs the plan: every session logs in, uploads its files, downloads and compares them.
/// Failures are collected, never panicked on, so that a benchmark can count them.
pub async fn run(target: &Target, plan: &Plan) -> Report {
    let n = plan.sessions.len();
    let gates = Arc::new(Gates {
        logged_in: Barrier::new(n + 1),
        uploaded: Barrier::new(n + 1),
        downloaded: Barrier::new(n + 1),
    });
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, &proto) in plan.sessions.iter().enumerate() {
        let (target, plan, gates) = (target.clone(), plan.clone(), gates.clone());
        tasks.push(tokio::spawn(async move {
            session(i, proto, &target, &plan, &gates).await
        }));
    }
    let cpu = || -> Vec<Option<f64>> { plan.watch.iter().map(|&p| cpu_seconds(p)).collect() };
    let diff = |a: &[Option<f64>], b: &[Option<f64>]| -> Vec<Option<f64>> {
        a.iter().zip(b).map(|(a, b)| Some((*b)? - (*a)?)).collect()
    };
    gates.logged_in.wait().await;
    let logged_in = Instant::now();
    let c0 = cpu();
    gates.uploaded.wait().await;
    let uploaded = Instant::now();
    let c1 = cpu();
    gates.downloaded.wait().await;
    let downloaded = Instant::now();
    let c2 = cpu();
    let mut report = Report {
        cpu_put: diff(&c0, &c1),
        cpu_get: diff(&c1, &c2),
        login_secs: (logged_in - start).as_secs_f64(),
        put_secs: (uploaded - logged_in).as_secs_f64(),
        get_secs: (downloaded - uploaded).as_secs_f64(),
        ..Report::default()
    };
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(s) => {
                report.uploaded += s.uploaded;
                report.verified += s.verified;
                report.bytes_up += s.bytes_up;
                report.bytes_down += s.bytes_down;
                report.failures.extend(s.failures);
            }
            Err(e) => report.failures.push(Failure {
                session: i,
                proto: plan.sessions[i],
                what: "task".into(),
                error: e.to_string(),
            }),
        }
    }
    report
}

struct Gates {
    logged_in: Barrier,
    uploaded: Barrier,
    downloaded: Barrier,
}

#[derive(Default)]
struct SessionResult {
    uploaded: usize,
    verified: usize,
    bytes_up: u64,
    bytes_down: u64,
    failures: Vec<Failure>,
}

/// One session. It passes every barrier whatever happens, so that one failure never stalls
/// the others.
async fn session(
    i: usize,
    proto: Proto,
    target: &Target,
    plan: &Plan,
    gates: &Gates,
) -> SessionResult {
    let src = source(plan.first_source + i as u32);
    let mut res = SessionResult::default();
    let fail = |what: String, error: String| Failure {
        session: i,
        proto,
        what,
        error,
    };
    match proto {
        Proto::Sftp => {
            let conn = sftp_connect(src, target, plan).await;
            gates.logged_in.wait().await;
            let (_ssh, raw) = match conn {
                Ok(c) => c,
                Err(e) => {
                    res.failures.push(fail("login".into(), e));
                    gates.uploaded.wait().await;
                    gates.downloaded.wait().await;
                    return res;
                }
            };
            let mut ok = vec![false; plan.files.len()];
            for (k, &size) in plan.sizes(i).iter().enumerate() {
                let name = name_of(target, plan, i, k);
                match sftp_put(&raw, &name, seed_of(plan, i, k), size, plan).await {
                    Ok(()) => {
                        ok[k] = true;
                        res.uploaded += 1;
                        res.bytes_up += size;
                    }
                    Err(e) => res.failures.push(fail(format!("put {name}"), e)),
                }
            }
            gates.uploaded.wait().await;
            for (k, &size) in plan.sizes(i).iter().enumerate() {
                if !ok[k] {
                    continue;
                }
                let name = name_of(target, plan, i, k);
                match sftp_get(&raw, &name, seed_of(plan, i, k), size, plan).await {
                    Ok(()) => {
                        res.verified += 1;
                        res.bytes_down += size;
                    }
                    Err(e) => res.failures.push(fail(format!("get {name}"), e)),
                }
            }
            gates.downloaded.wait().await;
            let _ = raw.close_session();
        }
        Proto::Ftp | Proto::Ftps => {
            // Bounded like the SFTP login: a connection the server never greets (its handshake
            // dropped from a full accept queue) would otherwise hold every session at the gate.
            let conn = tokio::time::timeout(plan.step * 5, ftp_connect(src, target, proto))
                .await
                .unwrap_or_else(|_| Err("no greeting or login reply in time".into()));
            gates.logged_in.wait().await;
            match conn {
                Ok(Ftp::Plain(mut c)) => {
                    ftp_transfers(&mut c, i, target, plan, gates, &mut res).await
                }
                Ok(Ftp::Tls(mut c)) => {
                    ftp_transfers(&mut c, i, target, plan, gates, &mut res).await
                }
                Err(e) => {
                    res.failures.push(fail("login".into(), e));
                    gates.uploaded.wait().await;
                    gates.downloaded.wait().await;
                    return res;
                }
            }
            for f in &mut res.failures {
                f.proto = proto;
            }
        }
    }
    res
}

async fn tcp_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    crate::ftp::connect_from(src, addr).await
}

async fn sftp_connect(
    src: IpAddr,
    target: &Target,
    plan: &Plan,
) -> Result<(russh::client::Handle<TrustAll>, RawSftpSession), String> {
    let addr = target.sftp.ok_or("no SFTP listener")?;
    let fut = async {
        let stream = tcp_from(src, addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let config = Arc::new(russh::client::Config::default());
        let mut h = russh::client::connect_stream(config, stream, TrustAll)
            .await
            .map_err(|e| format!("ssh handshake: {e}"))?;
        let r = h
            .authenticate_password(target.user.clone(), target.password.clone())
            .await
            .map_err(|e| format!("ssh auth: {e}"))?;
        if !r.success() {
            return Err("password refused".to_string());
        }
        let ch = h
            .channel_open_session()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| format!("subsystem: {e}"))?;
        let raw = RawSftpSession::new(ch.into_stream());
        raw.set_timeout(plan.step.as_secs().max(1));
        raw.init().await.map_err(|e| format!("sftp init: {e}"))?;
        Ok((h, raw))
    };
    // Logins wait for a password-hashing slot: a crowd of them takes a while.
    tokio::time::timeout(plan.step * 5, fut)
        .await
        .unwrap_or_else(|_| Err("login timed out".into()))
}

async fn sftp_put(
    raw: &RawSftpSession,
    path: &str,
    seed: u64,
    size: u64,
    plan: &Plan,
) -> Result<(), String> {
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let handle = raw
        .open(path, flags, FileAttributes::default())
        .await
        .map_err(|e| format!("open: {e}"))?
        .handle;
    let h = handle.as_str();
    let mut inflight = FuturesUnordered::new();
    let mut off = 0u64;
    let mut err = None;
    while err.is_none() && (off < size || !inflight.is_empty()) {
        while off < size && inflight.len() < plan.sftp_in_flight.max(1) {
            let n = (plan.sftp_chunk as u64).min(size - off);
            let mut buf = vec![0u8; n as usize];
            fill(seed, off, &mut buf);
            let at = off;
            inflight.push(async move { (at, raw.write(h, at, buf).await) });
            off += n;
        }
        if let Some((at, Err(e))) = inflight.next().await {
            err = Some(format!("write at {at}: {e}"));
        }
    }
    // Let the requests already sent be answered before the handle is closed.
    while inflight.next().await.is_some() {}
    drop(inflight);
    let closed = raw.close(handle.as_str()).await;
    if let Some(e) = err {
        return Err(e);
    }
    closed.map(|_| ()).map_err(|e| format!("close: {e}"))
}

async fn sftp_get(
    raw: &RawSftpSession,
    path: &str,
    seed: u64,
    size: u64,
    plan: &Plan,
) -> Result<(), String> {
    let handle = raw
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await
        .map_err(|e| format!("open: {e}"))?
        .handle;
    let r = sftp_read_all(raw, &handle, seed, size, plan).await;
    let closed = raw.close(handle.as_str()).await;
    r?;
    closed.map(|_| ()).map_err(|e| format!("close: {e}"))
}

async fn sftp_read_all(
    raw: &RawSftpSession,
    handle: &str,
    seed: u64,
    size: u64,
    plan: &Plan,
) -> Result<(), String> {
    let mut scratch = Vec::new();
    let mut inflight = FuturesUnordered::new();
    // Ranges still to ask for: the next offset, and the rests of short answers.
    let mut next = 0u64;
    let mut rests: Vec<(u64, u32)> = Vec::new();
    loop {
        while inflight.len() < plan.sftp_in_flight.max(1) {
            let (at, len) = if let Some(r) = rests.pop() {
                r
            } else if next < size {
                let len = (plan.sftp_chunk as u64).min(size - next) as u32;
                next += len as u64;
                (next - len as u64, len)
            } else {
                break;
            };
            inflight.push(async move { (at, len, raw.read(handle, at, len).await) });
        }
        let Some((at, len, r)) = inflight.next().await else {
            break;
        };
        match r {
            Ok(d) => {
                let got = d.data.len() as u32;
                if got == 0 || got > len {
                    return Err(format!("read at {at}: {got} bytes for {len}"));
                }
                if !matches(seed, at, &d.data, &mut scratch) {
                    return Err(format!("bytes differ in {at}..{}", at + got as u64));
                }
                if got < len {
                    rests.push((at + got as u64, len - got));
                }
            }
            Err(russh_sftp::client::error::Error::Status(s))
                if s.status_code == StatusCode::Eof =>
            {
                return Err(format!("end of file at {at}, before {size}"));
            }
            Err(e) => return Err(format!("read at {at}: {e}")),
        }
    }
    // The file ends where it should: a read at its size finds the end.
    match raw.read(handle, size, 1).await {
        Err(russh_sftp::client::error::Error::Status(s)) if s.status_code == StatusCode::Eof => {
            Ok(())
        }
        Ok(d) => Err(format!(
            "{} bytes beyond the size sent ({size})",
            d.data.len()
        )),
        Err(e) => Err(format!("read at the end: {e}")),
    }
}

enum Ftp {
    Plain(suppaftp::tokio::AsyncFtpStream),
    Tls(suppaftp::tokio::AsyncRustlsFtpStream),
}

/// The passive data connections come from the session's own address too (a server may
/// insist that they do).
fn bind_data_from<T: TokioTlsStream + Send>(
    c: ImplAsyncFtpStream<T>,
    src: IpAddr,
) -> ImplAsyncFtpStream<T> {
    c.passive_stream_builder(move |addr| {
        Box::pin(async move {
            tcp_from(src, addr)
                .await
                .map_err(suppaftp::FtpError::ConnectionError)
        })
    })
}

async fn ftp_connect(src: IpAddr, target: &Target, proto: Proto) -> Result<Ftp, String> {
    let addr = target.ftp.ok_or("no FTP listener")?;
    let e = |what: &'static str| move |err: suppaftp::FtpError| format!("{what}: {err}");
    let stream = tcp_from(src, addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(match proto {
        Proto::Ftps => {
            let der = target
                .tls_cert_der
                .clone()
                .ok_or("FTPS without a certificate to trust")?;
            let c = suppaftp::tokio::AsyncRustlsFtpStream::connect_with_stream(stream)
                .await
                .map_err(e("greeting"))?;
            let c = bind_data_from(c, src);
            let mut c = c
                .into_secure(tls_connector(der)?, "127.0.0.1")
                .await
                .map_err(e("AUTH TLS"))?;
            c.login(&target.user, &target.password)
                .await
                .map_err(e("login"))?;
            c.transfer_type(suppaftp::types::FileType::Binary)
                .await
                .map_err(e("TYPE I"))?;
            Ftp::Tls(c)
        }
        _ => {
            let c = suppaftp::tokio::AsyncFtpStream::connect_with_stream(stream)
                .await
                .map_err(e("greeting"))?;
            let mut c = bind_data_from(c, src);
            c.login(&target.user, &target.password)
                .await
                .map_err(e("login"))?;
            c.transfer_type(suppaftp::types::FileType::Binary)
                .await
                .map_err(e("TYPE I"))?;
            Ftp::Plain(c)
        }
    })
}

fn tls_connector(der: Vec<u8>) -> Result<suppaftp::tokio::AsyncRustlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(der))
        .map_err(|e| format!("certificate: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(suppaftp::tokio::AsyncRustlsConnector::from(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    ))
}

/// The DER certificate of the first certificate in a PEM file.
pub fn cert_der_from_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .map(|c| c.to_vec())
        .map_err(|e| format!("PEM certificate: {e}"))
}

const IO_CHUNK: usize = 256 * 1024;

async fn ftp_transfers<T: TokioTlsStream + Send>(
    c: &mut ImplAsyncFtpStream<T>,
    i: usize,
    target: &Target,
    plan: &Plan,
    gates: &Gates,
    res: &mut SessionResult,
) {
    let fail = |what: String, error: String| Failure {
        session: i,
        proto: Proto::Ftp,
        what,
        error,
    };
    let mut ok = vec![false; plan.files.len()];
    for (k, &size) in plan.sizes(i).iter().enumerate() {
        let name = name_of(target, plan, i, k);
        let r = tokio::time::timeout(plan.step * 10, ftp_put(c, &name, seed_of(plan, i, k), size))
            .await;
        match r.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(()) => {
                ok[k] = true;
                res.uploaded += 1;
                res.bytes_up += size;
            }
            Err(e) => res.failures.push(fail(format!("put {name}"), e)),
        }
    }
    gates.uploaded.wait().await;
    for (k, &size) in plan.sizes(i).iter().enumerate() {
        if !ok[k] {
            continue;
        }
        let name = name_of(target, plan, i, k);
        let r = tokio::time::timeout(plan.step * 10, ftp_get(c, &name, seed_of(plan, i, k), size))
            .await;
        match r.unwrap_or_else(|_| Err("timed out".into())) {
            Ok(()) => {
                res.verified += 1;
                res.bytes_down += size;
            }
            Err(e) => res.failures.push(fail(format!("get {name}"), e)),
        }
    }
    gates.downloaded.wait().await;
    let _ = tokio::time::timeout(plan.step, c.quit()).await;
}

async fn ftp_put<T: TokioTlsStream + Send>(
    c: &mut ImplAsyncFtpStream<T>,
    name: &str,
    seed: u64,
    size: u64,
) -> Result<(), String> {
    let mut s = c
        .put_with_stream(name)
        .await
        .map_err(|e| format!("STOR: {e}"))?;
    let mut buf = vec![0u8; IO_CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (IO_CHUNK as u64).min(size - off) as usize;
        fill(seed, off, &mut buf[..n]);
        s.write_all(&buf[..n])
            .await
            .map_err(|e| format!("data at {off}: {e}"))?;
        off += n as u64;
    }
    s.finish().await.map_err(|e| format!("STOR end: {e}"))
}

async fn ftp_get<T: TokioTlsStream + Send>(
    c: &mut ImplAsyncFtpStream<T>,
    name: &str,
    seed: u64,
    size: u64,
) -> Result<(), String> {
    let mut s = c
        .retr_as_stream(name)
        .await
        .map_err(|e| format!("RETR: {e}"))?;
    let mut buf = vec![0u8; IO_CHUNK];
    let mut scratch = Vec::new();
    let mut off = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| format!("data at {off}: {e}"))?;
        if n == 0 {
            break;
        }
        if off + n as u64 > size {
            return Err(format!("more bytes than the {size} sent"));
        }
        if !matches(seed, off, &buf[..n], &mut scratch) {
            return Err(format!("bytes differ in {off}..{}", off + n as u64));
        }
        off += n as u64;
    }
    s.finish().await.map_err(|e| format!("RETR end: {e}"))?;
    if off != size {
        return Err(format!("{off} bytes of {size}"));
    }
    Ok(())
}

/// CPU-seconds (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    // _SC_CLK_TCK is 100 on every Linux architecture this runs on; `getconf` confirms it.
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's VmRSS every `every` until dropped; [`RssSampler::peak_kib`] is the
/// highest sample (VmHWM cannot be reset on every kernel, and sampling also sees a process
/// that is not ours to reset).
pub struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        use std::sync::atomic::Ordering;
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = rss_kib(pid, "VmRSS") {
                    p.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        RssSampler { peak, stop }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
