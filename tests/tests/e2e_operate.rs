//! Operating the gateway, through the real binary and real clients: exact counts on /metrics,
//! the audit log and the absence of secrets, the PROXY protocol, and two instances sharing one
//! config, one S3 site tree and one host key.

use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{
    assert_ok, curl, keygen, paramiko, sftp_batch, sftp_batch_password,
};
use bucketgate_tests::gateway::{passive_range, require, run, Gateway};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bucketgate_testkit::s3 as s3_support;

const PASSWORD: &str = "alice-Operate-Pw-7c1d";
const WRONG: &str = "wrong-Guess-Pw-55aa";

fn hash(dir: &Path, pw: &str) -> String {
    let (code, out, _) = run(dir, &["hash-password"], Some(&format!("{pw}\n")));
    assert_eq!(code, 0);
    out.trim().to_string()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of one exposed series (0 when absent).
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Scrapes until `series` reaches `want` (a download's audit line is written when the server
/// drops the handle, which can trail the client's exit), then returns the scrape.
fn scrape_until(admin: SocketAddr, series: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = http_get(admin, "/metrics");
        if value(&m, series) >= want || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_exactly_what_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "alice_key");
    let cfg = format!(
        r#"sftp: {{ listen: "127.0.0.1:0" }}
ftp: {{ listen: "127.0.0.1:0", passive_ports: "{passive}" }}
admin: {{ listen: "127.0.0.1:0" }}
storage: {{ type: local, root: ./files }}
users:
  - username: alice
    password_hash: "{hash}"
    public_keys: ["{public}"]
    home: /
    permissions: {{ "/": ["*"] }}
"#,
        passive = passive_range(),
        hash = hash(d, PASSWORD),
    );
    let gw = Gateway::start(d, &cfg, &["sftp", "ftp", "admin"]);
    let (sftp, ftp, admin) = (gw.addr("sftp"), gw.addr("ftp"), gw.addr("admin"));
    std::fs::write(d.join("a.bin"), vec![1u8; 1000]).unwrap();
    std::fs::write(d.join("b.bin"), vec![2u8; 2000]).unwrap();
    std::fs::write(d.join("c.bin"), vec![3u8; 3000]).unwrap();

    // SFTP: one session, two uploads (1000 + 2000 bytes), one download (1000).
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "put a.bin\nput b.bin\nget a.bin a.back\n",
        d,
    );
    assert_ok("sftp", &out);
    // FTP: one upload (3000), one download (2000), one wrong password.
    let url = |p: &str| format!("ftp://alice:{PASSWORD}@{ftp}/{p}");
    assert_ok(
        "ftp upload",
        &curl(&["-T", d.join("c.bin").to_str().unwrap(), &url("c.bin")]),
    );
    let down = curl(&[&url("b.bin")]);
    assert_ok("ftp download", &down);
    assert_eq!(down.stdout.len(), 2000);
    let bad = curl(&[&format!("ftp://alice:{WRONG}@{ftp}/b.bin")]);
    assert!(!bad.status.success());

    let m = scrape_until(
        admin,
        r#"bucketgate_file_operations_total{protocol="ftp",op="open_read",result="ok"}"#,
        1,
    );
    let m = if value(
        &m,
        r#"bucketgate_file_operations_total{protocol="sftp",op="open_read",result="ok"}"#,
    ) < 1
    {
        scrape_until(
            admin,
            r#"bucketgate_file_operations_total{protocol="sftp",op="open_read",result="ok"}"#,
            1,
        )
    } else {
        m
    };
    let expect = [
        (r#"bucketgate_logins_total{protocol="sftp",result="ok"}"#, 1),
        (r#"bucketgate_logins_total{protocol="ftp",result="ok"}"#, 2),
        (
            r#"bucketgate_logins_total{protocol="ftp",result="wrong_password"}"#,
            1,
        ),
        (r#"bucketgate_sessions_total{protocol="sftp"}"#, 1),
        (r#"bucketgate_sessions_total{protocol="ftp"}"#, 3),
        (r#"bucketgate_bytes_received_total{protocol="sftp"}"#, 3000),
        (r#"bucketgate_bytes_received_total{protocol="ftp"}"#, 3000),
        (r#"bucketgate_bytes_sent_total{protocol="sftp"}"#, 1000),
        (r#"bucketgate_bytes_sent_total{protocol="ftp"}"#, 2000),
        (
            r#"bucketgate_file_operations_total{protocol="sftp",op="open_write",result="ok"}"#,
            2,
        ),
        (
            r#"bucketgate_file_operations_total{protocol="sftp",op="open_read",result="ok"}"#,
            1,
        ),
        (
            r#"bucketgate_file_operations_total{protocol="ftp",op="open_write",result="ok"}"#,
            1,
        ),
        (
            r#"bucketgate_file_operations_total{protocol="ftp",op="open_read",result="ok"}"#,
            1,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(value(&m, series), want, "{series}\n{m}");
    }
    assert!(m.contains("# TYPE bucketgate_sessions_active gauge"), "{m}");
    assert!(m.contains("bucketgate_up 1"));
    // The allocator's own figures: some live memory, held in pages that are resident.
    let allocated = value(&m, "bucketgate_heap_allocated_bytes");
    let resident = value(&m, "bucketgate_heap_resident_bytes");
    assert!(allocated > 0, "{m}");
    assert!(
        resident >= allocated,
        "allocated {allocated}, resident {resident}"
    );
    assert!(value(&m, "bucketgate_heap_metadata_bytes") > 0, "{m}");
    // The memory budget: the default limit, and nothing held once every transfer has ended
    // (the last session's handles may close a moment after its client saw the reply).
    assert_eq!(
        value(&m, "bucketgate_memory_budget_limit_bytes"),
        512 * 1024 * 1024,
        "{m}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut used = value(&m, "bucketgate_memory_budget_used_bytes");
    while used != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        used = value(
            &http_get(admin, "/metrics"),
            "bucketgate_memory_budget_used_bytes",
        );
    }
    assert_eq!(
        used, 0,
        "transfer buffers still held after every transfer ended"
    );
}

/// Every secret the run used must be absent from `text`.
fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what} contains a secret");
    }
}

fn secrets_run(json: bool) {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (host_key, _) = keygen(d, "host_key");
    let cfg = format!(
        r#"sftp: {{ listen: "127.0.0.1:0", host_keys: ["./host_key"] }}
ftp: {{ listen: "127.0.0.1:0", passive_ports: "{passive}" }}
admin: {{ listen: "127.0.0.1:0" }}
log: {{ format: {fmt} }}
storage: {{ type: local, root: ./files }}
remotes:
  - name: acme
    endpoint: {endpoint}
    bucket: exchange
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
mounts:
  - {{ path: /acme, remote: acme, prefix: in/ }}
users:
  - username: alice
    password_hash: "{hash}"
    home: /
    permissions: {{ "/": ["*"], "/acme/ro": [list] }}
"#,
        passive = passive_range(),
        fmt = if json { "json" } else { "text" },
        endpoint = moto.endpoint,
        hash = hash(d, PASSWORD),
    );
    let gw = Gateway::start(d, &cfg, &["sftp", "ftp", "admin"]);
    let (sftp, ftp) = (gw.addr("sftp"), gw.addr("ftp"));
    std::fs::write(d.join("f.txt"), b"secret-free payload").unwrap();
    let mut visible = String::new();
    let mut keep = |o: &std::process::Output| {
        visible.push_str(&String::from_utf8_lossy(&o.stdout));
        visible.push_str(&String::from_utf8_lossy(&o.stderr));
    };
    let out = sftp_batch_password(
        sftp,
        "alice",
        PASSWORD,
        "put f.txt /acme/f.txt\nget /acme/f.txt back.txt\nget /acme/missing.txt\nput f.txt /acme/ro/x.txt\n",
        d,
    );
    keep(&out);
    assert_eq!(
        moto.get("exchange", "in/f.txt").unwrap(),
        b"secret-free payload"
    );
    keep(&sftp_batch_password(sftp, "alice", WRONG, "ls\n", d));
    keep(&curl(&[&format!("ftp://alice:{WRONG}@{ftp}/")]));
    keep(&curl(&[
        "-T",
        d.join("f.txt").to_str().unwrap(),
        &format!("ftp://alice:{PASSWORD}@{ftp}/acme/g.txt"),
    ]));
    keep(&curl(&[&format!(
        "ftp://alice:{PASSWORD}@{ftp}/acme/nope.txt"
    )]));
    keep(&curl(&[&format!("ftp://nobody:{PASSWORD}@{ftp}/")]));
    assert_eq!(
        moto.get("exchange", "in/g.txt").unwrap(),
        b"secret-free payload"
    );

    // The private key's base64 body lines: none of them may leak.
    let key_text = std::fs::read_to_string(&host_key).unwrap();
    let mut secrets: Vec<String> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect();
    assert!(!secrets.is_empty());
    secrets.extend([PASSWORD, WRONG, SECRET_KEY].map(str::to_string));
    let log = gw.log_text();
    assert_no_secret("the log", &log, &secrets);
    assert_no_secret("client output", &visible, &secrets);
    let metrics = http_get(gw.addr("admin"), "/metrics");
    assert_no_secret("the metrics", &metrics, &secrets);

    // Audit lines: one per operation, with every field.
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("bucketgate::audit"))
        .collect();
    let upload = audit
        .iter()
        .find(|l| l.contains("open_write") && l.contains("/acme/f.txt"))
        .unwrap_or_else(|| panic!("no audit line for the SFTP upload:\n{log}"));
    let fields: &[&str] = if json {
        &[
            r#""user":"alice""#,
            r#""protocol":"sftp""#,
            r#""client":"127.0.0.1""#,
            r#""operation":"open_write""#,
            r#""bytes":19"#,
            r#""duration_ms":"#,
            r#""result":"ok""#,
            r#""level":"INFO""#,
        ]
    } else {
        &[
            "user=alice",
            "protocol=\"sftp\"",
            "client=127.0.0.1",
            "operation=\"open_write\"",
            "bytes=19",
            "duration_ms=",
            "result=\"ok\"",
            "INFO",
        ]
    };
    for f in fields {
        assert!(upload.contains(f), "audit line lacks {f}: {upload}");
    }
    assert!(
        audit
            .iter()
            .any(|l| l.contains("open_write") && l.contains("/acme/g.txt") && l.contains("ftp")),
        "no FTP audit line:\n{log}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("/acme/ro/x.txt") && l.contains("permission_denied")),
        "no audit line for the refused upload:\n{log}"
    );
}

#[test]
fn no_secret_in_text_logs_and_audit_lines_are_complete() {
    secrets_run(false);
}

#[test]
fn no_secret_in_json_logs_and_audit_lines_are_complete() {
    secrets_run(true);
}

/// A TCP forwarder that starts every connection with a PROXY v1 header naming `client`, as a
/// load balancer does.
fn proxy_front(target: SocketAddr, client: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let Ok(mut up) = TcpStream::connect(target) else {
                return;
            };
            let _ = write!(
                up,
                "PROXY TCP4 {client} 127.0.0.1 40000 {}\r\n",
                target.port()
            );
            let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
            let mut c = c;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut up, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends FTP USER/PASS over `s` (after the greeting) and returns the reply to PASS.
fn ftp_login(s: TcpStream, user: &str, pw: &str) -> String {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"), "greeting: {line}");
    write!(w, "USER {user}\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    write!(w, "PASS {pw}\r\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    line
}

#[test]
fn proxy_protocol_names_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = format!(
        r#"sftp: {{ listen: "127.0.0.1:0", proxy_protocol: ["127.0.0.1"] }}
ftp: {{ listen: "127.0.0.1:0", passive_ports: "{passive}", proxy_protocol: ["127.0.0.1/32"] }}
storage: {{ type: local, root: ./files }}
users:
  - username: bob
    password_hash: "{hash}"
    home: /
    permissions: {{ "/": ["*"] }}
    allowed_ips: ["203.0.113.9/32"]
"#,
        passive = passive_range(),
        hash = hash(d, PASSWORD),
    );
    let gw = Gateway::start(d, &cfg, &["sftp", "ftp"]);
    let (sftp, ftp) = (gw.addr("sftp"), gw.addr("ftp"));

    // Through a front that names 203.0.113.9, bob (allowed only from there) logs in, on FTP...
    let good = proxy_front(ftp, "203.0.113.9");
    let reply = ftp_login(TcpStream::connect(good).unwrap(), "bob", PASSWORD);
    assert!(reply.starts_with("230"), "{reply}");
    // ... and on SFTP.
    let good_ssh = proxy_front(sftp, "203.0.113.9");
    let out = sftp_batch_password(good_ssh, "bob", PASSWORD, "pwd\n", d);
    assert_ok("sftp through the PROXY front", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Remote working directory: /"));

    // A front naming another address: refused, and the log names that address.
    let other = proxy_front(ftp, "198.51.100.7");
    let reply = ftp_login(TcpStream::connect(other).unwrap(), "bob", PASSWORD);
    assert!(reply.starts_with("530"), "{reply}");
    assert!(gw.wait_log(
        "login failed: protocol=ftp ip=198.51.100.7 user=\"bob\" reason=address_denied",
        Duration::from_secs(10)
    ));
    let reply = ftp_login(TcpStream::connect(good).unwrap(), "bob", WRONG);
    assert!(reply.starts_with("530"), "{reply}");
    assert!(gw.wait_log(
        "login failed: protocol=ftp ip=203.0.113.9 user=\"bob\" reason=wrong_password",
        Duration::from_secs(10)
    ));
    assert!(gw.wait_log(
        "login ok: protocol=sftp ip=203.0.113.9",
        Duration::from_secs(10)
    ));

    // Without a header (a client straight to the port) nothing is served: no greeting, closed.
    let mut direct = TcpStream::connect(ftp).unwrap();
    direct.write_all(b"USER bob\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = direct.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    let out = sftp_batch_password(sftp, "bob", PASSWORD, "pwd\n", d);
    assert!(!out.status.success());
    assert!(gw.wait_log("no valid PROXY header", Duration::from_secs(10)));

    // Only the trusted balancer (127.0.0.1) may send a header: a peer at 127.0.0.2 claiming
    // bob's allowed address is closed before anything is read, on both listeners.
    let claim = "PROXY TCP4 203.0.113.9 127.0.0.1 40000 21\r\n";
    let got = send_from("127.0.0.2", ftp, format!("{claim}USER bob\r\n").as_bytes());
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(gw.wait_log(
        "ftp: connection refused: not from a trusted PROXY sender client=127.0.0.2",
        Duration::from_secs(10)
    ));
    let got = send_from(
        "127.0.0.2",
        sftp,
        format!("{claim}SSH-2.0-x\r\n").as_bytes(),
    );
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(gw.wait_log(
        "SFTP connection refused: not from a trusted PROXY sender peer=127.0.0.2",
        Duration::from_secs(10)
    ));
}

/// Connects from the loopback address `src`, sends `bytes` and returns all that came back
/// until the gateway closed the connection.
fn send_from(src: &str, target: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt
        .block_on(bucketgate_testkit::ftp::connect_from(
            src.parse().unwrap(),
            target,
        ))
        .unwrap();
    let mut s = s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

fn keyscan(addr: SocketAddr) -> Vec<String> {
    require("ssh-keyscan");
    let out = std::process::Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &addr.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
        .collect();
    keys.sort();
    keys
}

#[test]
fn two_instances_share_one_config_one_site_tree_and_one_host_key() {
    let moto = Moto::start();
    moto.create_bucket("site");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "alice_key");
    keygen(d, "shared_host_key");
    let cfg = format!(
        r#"sftp:
  listen: "${{SFTP_LISTEN}}"
  host_keys: ["./shared_host_key"]
state_dir: "${{STATE_DIR}}"
storage: {{ type: s3, remote: primary, prefix: site/ }}
remotes:
  - name: primary
    endpoint: {endpoint}
    bucket: site
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
users:
  - username: alice
    public_keys: ["{public}"]
    home: /users/alice
    permissions: {{ "/": ["*"] }}
"#,
        endpoint = moto.endpoint,
    );
    let cfg_path = d.join("bucketgate.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let start = |state: &str| {
        Gateway::spawn(
            d,
            &["serve", "--config", cfg_path.to_str().unwrap()],
            &["sftp"],
            &[("SFTP_LISTEN", "127.0.0.1:0"), ("STATE_DIR", state)],
        )
    };
    let a = start("./state-a");
    let b = start("./state-b");
    let (sa, sb) = (a.addr("sftp"), b.addr("sftp"));
    assert_ne!(sa, sb);

    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.join("shared.bin"), &payload).unwrap();
    assert_ok(
        "upload through A",
        &sftp_batch(sa, "alice", &key, "put shared.bin\n", d),
    );
    let out = sftp_batch(sb, "alice", &key, "ls -l\nget shared.bin from-b.bin\n", d);
    assert_ok("list and download through B", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("shared.bin"));
    assert_eq!(std::fs::read(d.join("from-b.bin")).unwrap(), payload);
    assert_eq!(
        moto.get("site", "site/users/alice/shared.bin").unwrap(),
        payload
    );

    let (ka, kb) = (keyscan(sa), keyscan(sb));
    assert!(!ka.is_empty(), "ssh-keyscan saw no key on A");
    assert_eq!(ka, kb, "the two instances show different host keys");
    let public_host = std::fs::read_to_string(d.join("shared_host_key.pub")).unwrap();
    assert!(public_host.contains(ka[0].split(' ').nth(1).unwrap()));
}

/// /readyz probes each remote where the gateway uses it: a key that may list only under the
/// mount's prefix (an `s3:prefix` policy) is up, not failing for want of a bucket-wide listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_probes_a_remote_under_its_mounted_prefix() {
    // s3s-fs refusing every listing without a prefix, as such a policy does.
    let srv = s3_support::s3s_server_prefix_only().await;
    let dir = tempfile::tempdir().unwrap();
    let remote = |name: &str| {
        format!(
            "  - {{ name: {name}, endpoint: \"{}\", bucket: {}, access_key_id: \"{}\", secret_access_key: \"{}\" }}\n",
            srv.endpoint, srv.bucket, srv.access, srv.secret
        )
    };
    // `idle` is the same key on the same bucket with nothing mounted: it is probed at the
    // bucket root, which this server refuses, so the test also shows the refusal is real.
    let cfg = format!(
        "storage: {{ type: local, root: ./files }}\nsftp:\n  listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nremotes:\n{}{}mounts:\n  - {{ path: /in, remote: partner, prefix: inbound/ }}\n",
        remote("partner"),
        remote("idle"),
    );
    let path = dir.path().to_path_buf();
    let gw = tokio::task::spawn_blocking(move || Gateway::start(&path, &cfg, &["sftp", "admin"]))
        .await
        .unwrap();
    let admin = gw.addr("admin");
    let body = tokio::task::spawn_blocking(move || {
        // The first probe round runs at start; until it has answered, a remote is "unknown".
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = http_get(admin, "/readyz");
            if !r.contains("\"unknown\"") {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the remotes were never probed: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // serde_json writes object keys sorted and compact.
    assert!(body.contains("\"ready\":true"), "{body}");
    assert!(
        body.contains("\"partner\":{\"error\":null,\"state\":\"up\"}"),
        "{body}"
    );
    let idle = &body[body.find("\"idle\":{").expect("idle remote reported")..];
    let state = idle.split("\"state\":\"").nth(1).unwrap_or("");
    assert!(state.starts_with("down"), "{body}");
    drop(gw);
}

/// Reads one FTP reply (all lines of a multi-line one) and returns it.
fn ftp_reply(r: &mut BufReader<TcpStream>) -> String {
    let mut first = String::new();
    r.read_line(&mut first).unwrap();
    let mut all = first.clone();
    if first.as_bytes().get(3) == Some(&b'-') {
        let end = format!("{} ", &first[..3]);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            all.push_str(&line);
            if line.starts_with(&end) {
                break;
            }
        }
    }
    all
}

/// Every refusal a client sees names paths as that user sees them: never the site tree above
/// her home (`/users/alice`), nor a mount's bucket prefix (another tenant's layout).
#[test]
fn refusals_name_only_the_users_own_paths() {
    let moto = Moto::start();
    moto.create_bucket("tenants");
    moto.put("tenants", "secret-tenant-prefix/here.txt", b"here");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = format!(
        r#"sftp:
  listen: "127.0.0.1:0"
ftp:
  listen: "127.0.0.1:0"
  passive_ports: "{passive}"
storage: {{ type: local, root: ./files }}
remotes:
  - {{ name: acme, endpoint: "{endpoint}", bucket: tenants, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY} }}
mounts:
  - {{ path: /users/alice/s3, remote: acme, prefix: secret-tenant-prefix/ }}
users:
  - username: alice
    password_hash: "{hash}"
    home: /users/alice
    permissions: {{ "/": ["*"] }}
"#,
        passive = passive_range(),
        endpoint = moto.endpoint,
        hash = hash(d, PASSWORD),
    );
    let gw = Gateway::start(d, &cfg, &["sftp", "ftp"]);
    let leaks = ["users", "alice/", "secret-tenant-prefix", "files"];

    let cmds = [
        "!stat /nothere",
        "!stat /s3/nothere",
        "!remove /nothere",
        "!remove /s3/nothere",
        "!rmdir /s3/nothere",
        "!rmdir /s3",
        "!rename /s3/nothere /s3/x",
        "!rename /nothere /x",
        "!rename /s3/here.txt /s3/no/where.txt",
        "!mkdir /s3/no/deeper",
        "!mkdir /no/deeper",
        "!get /s3/nothere got.bin",
        "!get /nothere got.bin",
        "!ls /s3/nothere",
        "!ls /nothere",
    ];
    let out = paramiko(
        gw.addr("sftp"),
        "alice",
        &format!("password:{PASSWORD}"),
        &(cmds.join("\n") + "\n"),
        d,
    );
    assert_ok("paramiko", &out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let messages: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("refusal-message "))
        .collect();
    assert_eq!(messages.len(), cmds.len(), "{text}");
    for m in &messages {
        for leak in leaks {
            assert!(!m.contains(leak), "SFTP status names {leak:?}: {m}");
        }
    }
    assert!(
        messages.contains(&"refusal-message stat stat /s3/nothere: no such file or folder"),
        "{text}"
    );
    assert!(
        messages.contains(&"refusal-message stat stat /nothere: no such file or folder"),
        "{text}"
    );

    let s = TcpStream::connect(gw.addr("ftp")).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    assert!(ftp_reply(&mut r).starts_with("220"));
    write!(w, "USER alice\r\n").unwrap();
    ftp_reply(&mut r);
    write!(w, "PASS {PASSWORD}\r\n").unwrap();
    assert!(ftp_reply(&mut r).starts_with("230"));
    for c in [
        "SIZE /s3/nothere",
        "SIZE /nothere",
        "MDTM /s3/nothere",
        "DELE /s3/nothere",
        "DELE /nothere",
        "RMD /s3/nothere",
        "RMD /s3",
        "CWD /s3/nothere",
        "CWD /nothere",
        "MKD /s3/no/deeper",
        "MKD /no/deeper",
        "MLST /s3/nothere",
        "STAT /s3/nothere",
        "MFMT 20200101000000 /s3/nothere",
    ] {
        write!(w, "{c}\r\n").unwrap();
        let reply = ftp_reply(&mut r);
        if !c.starts_with("STAT") {
            assert!(
                reply.starts_with('4') || reply.starts_with('5'),
                "{c}: {reply}"
            );
        }
        for leak in leaks {
            assert!(
                !reply.contains(leak),
                "FTP reply to {c} names {leak:?}: {reply}"
            );
        }
    }
    write!(w, "RNFR /s3/here.txt\r\n").unwrap();
    assert!(ftp_reply(&mut r).starts_with("350"));
    write!(w, "RNTO /s3/no/where.txt\r\n").unwrap();
    let reply = ftp_reply(&mut r);
    for leak in leaks {
        assert!(
            !reply.contains(leak),
            "FTP reply to RNTO names {leak:?}: {reply}"
        );
    }
    drop(gw);
}

/// Multipart uploads pending in `bucket`, by key.
fn pending_keys(moto: &Moto, bucket: &str) -> Vec<String> {
    let out = moto
        .py(&format!(
            "for u in s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', []): print(u['Key'])"
        ))
        .unwrap();
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Waits until the gateway has logged `needle` at least `n` times.
fn wait_log_count(gw: &Gateway, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = gw
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} logged {seen} times, not {n}:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stale-upload clean-up covers the syncs' prefixes as well as the mounts', picks up new
/// prefixes at a reload, and never aborts an upload another instance is still writing (moto
/// reports every upload as started in 2010, so the start time alone would condemn them all).
#[test]
fn stale_upload_cleanup_covers_syncs_and_reloads_and_spares_live_uploads() {
    let moto = Moto::start();
    moto.create_bucket("shared");
    moto.py(
        "for k in ['sy/abandoned.bin', 'mnt/abandoned.bin', 'new/abandoned.bin', 'elsewhere/x.bin']:\n  \
         s3.create_multipart_upload(Bucket='shared', Key=k)\n\
         u = s3.create_multipart_upload(Bucket='shared', Key='mnt/live.bin')\n\
         s3.upload_part(Bucket='shared', Key='mnt/live.bin', UploadId=u['UploadId'], PartNumber=1, Body=b'x' * 1024)",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("files/outbox")).unwrap();
    let cfg = |extra: &str| {
        format!(
            r#"sftp:
  listen: "127.0.0.1:0"
storage: {{ type: local, root: ./files }}
remotes:
  - {{ name: acme, endpoint: "{endpoint}", bucket: shared, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY} }}
mounts:
  - {{ path: /m, remote: acme, prefix: mnt/ }}
{extra}syncs:
  - {{ name: out, path: /outbox, remote: acme, prefix: sy/, direction: push }}
"#,
            endpoint = moto.endpoint,
        )
    };
    let path = d.join("bucketgate.yaml");
    std::fs::write(&path, cfg("")).unwrap();
    let gw = Gateway::spawn(
        d,
        &["serve", "--config", path.to_str().unwrap()],
        &["sftp"],
        &[("RUST_LOG", "info,bucketgate::cmd::serve=debug")],
    );
    let pass = "stale multipart clean-up pass done";
    wait_log_count(&gw, pass, 1);
    assert_eq!(
        pending_keys(&moto, "shared"),
        vec!["elsewhere/x.bin", "mnt/live.bin", "new/abandoned.bin"]
    );
    std::fs::write(&path, cfg("  - { path: /n, remote: acme, prefix: new/ }\n")).unwrap();
    gw.signal("HUP");
    wait_log_count(&gw, "reload: config applied", 1);
    wait_log_count(&gw, pass, 2);
    assert_eq!(
        pending_keys(&moto, "shared"),
        vec!["elsewhere/x.bin", "mnt/live.bin"]
    );
    drop(gw);
}

/// The admin endpoint's routes and refusals, HEAD without a body, and its bound: with every
/// connection slot (32, `gateway/src/admin.rs`) held by a client that sends nothing, a new
/// request is answered only once a slot frees, and a silent client is cut off.
#[test]
fn admin_endpoint_answers_its_routes_and_bounds_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = "storage: { type: local, root: ./files }\nsftp:\n  listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\n";
    let gw = Gateway::start(d, cfg, &["sftp", "admin"]);
    let admin = gw.addr("admin");
    let ask = |request: &str| {
        let mut s = TcpStream::connect(admin).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let health = ask("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    let post = ask("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
    assert!(post.ends_with("GET only\n"), "{post}");
    let missing = ask("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let head = ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head}"
    );
    // A request head over 8 KiB is refused, not buffered.
    let mut big = TcpStream::connect(admin).unwrap();
    let pad = "x".repeat(10_000);
    big.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    // The server may close before reading all of it: a reset is a refusal too.
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );

    // Every slot held by a client that has not sent its request.
    let mut idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    let mut waiting = TcpStream::connect(admin).unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = waiting.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered while every slot was taken: {early:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    // One slot frees: the waiting request is served.
    drop(idle.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // A client that never sends its request head is cut off (after 5 s), not kept.
    let silent = &mut idle[0];
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = Vec::new();
    silent.read_to_end(&mut rest).unwrap();
}
