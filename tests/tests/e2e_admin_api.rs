//! The admin REST API (`/api/v1`, docs/admin-api.md) through the real binary: tokens made by
//! `bucketgate admin token create`, curl as the HTTP client, OpenSSH `sftp` as the session
//! whose entry is listed and disconnected, bans earned over the API and lifted through it,
//! surviving a restart, and the OpenAPI document checked against the running router.

use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch_password, ssh_opts};
use bucketgate_tests::gateway::{require, run, Gateway};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The address that earns bans in these tests; the tests' own API calls come from 127.0.0.1.
const OTHER: &str = "127.0.0.2";

/// One API call with curl from `from`: (status, body).
pub(crate) fn api(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    from: &str,
) -> (u16, String) {
    api_body(admin, method, path, token, from, None)
}

/// [`api`] with a JSON request body.
pub(crate) fn api_body(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    from: &str,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("http://{admin}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["--interface", from, "-X", method, "-w", "\n%{http_code}"];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = curl(&args);
    assert_ok("curl", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

pub(crate) fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub(crate) fn token(dir: &Path, scope: &str) -> String {
    let (code, out, err) = run(dir, &["admin", "token", "create", "--scope", scope], None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("shown only this once"), "{err}");
    out.trim().to_string()
}

fn config(dir: &Path) -> String {
    config_ban(dir, 3)
}

/// The test config with a ban after failures scoring `threshold`.
pub(crate) fn config_ban(dir: &Path, threshold: u32) -> String {
    let (code, hash, _) = run(dir, &["hash-password"], Some("alice-Api-Pw-19\n"));
    assert_eq!(code, 0);
    let (_, public) = keygen(dir, "alice_key");
    format!(
        r#"sftp: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
storage: {{ type: local, root: ./files }}
limits:
  ban: {{ threshold: {threshold}, window: 1h, duration: 1h }}
users:
  - username: alice
    password_hash: "{}"
    public_keys: ["{public}"]
    home: /
    permissions: {{ "/": ["*"] }}
"#,
        hash.trim()
    )
}

/// An OpenSSH `sftp` session from `from` that stays connected until its stdin closes.
pub(crate) fn sftp_session(dir: &Path, addr: SocketAddr, from: &str) -> std::process::Child {
    sftp_session_args(dir, addr, from, &[])
}

pub(crate) fn sftp_session_args(
    dir: &Path,
    addr: SocketAddr,
    from: &str,
    extra: &[&str],
) -> std::process::Child {
    require("sftp");
    Command::new("sftp")
        .args(ssh_opts())
        .args(extra)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", &format!("BindAddress={from}"), "-i"])
        .arg(dir.join("alice_key"))
        .args(["-P", &addr.port().to_string(), "-b", "-"])
        .arg(format!("alice@{}", addr.ip()))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A whole `sftp` session from `from` listing the home: true when it logged in.
pub(crate) fn sftp_works(dir: &Path, addr: SocketAddr, from: &str) -> bool {
    let child = sftp_session(dir, addr, from);
    use std::io::Write;
    child.stdin.as_ref().unwrap().write_all(b"ls\n").unwrap();
    let out = child.wait_with_output().unwrap();
    out.status.success()
}

pub(crate) fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sessions: an OpenSSH client shows in the list with its user, protocol and address, and
/// DELETE ends its connection (the client exits) and its entry. Auth: no token and a wrong one
/// get 401, a read-only token reads but cannot change anything (403); repeated failures ban
/// the address, which then cannot log in over SFTP either, even after a restart; lifting the
/// ban through the API lets it in again.
#[test]
fn sessions_bans_tokens_and_a_restart() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let cfg = config(d);
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let rw = token(d, "rw");
    let ro = token(d, "ro");
    assert_ne!(rw, ro);
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let (sftp, admin) = (gw.addr("sftp"), gw.addr("admin"));
    let lo = "127.0.0.1";

    // The live session, as the API shows it.
    let mut client = sftp_session(d, sftp, lo);
    let session = poll("the session in the list", || {
        let (code, body) = api(admin, "GET", "/api/v1/sessions", Some(&ro), lo);
        assert_eq!(code, 200, "{body}");
        json(&body).as_array().unwrap().first().cloned()
    });
    assert_eq!(session["user"], "alice");
    assert_eq!(session["protocol"], "sftp");
    assert_eq!(session["client"], "127.0.0.1");
    let id = session["id"].as_str().unwrap().to_string();

    // A read-only token changes nothing; the session is still up.
    let (code, body) = api(
        admin,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&ro),
        lo,
    );
    assert_eq!(
        (code, json(&body)["error"].as_str().unwrap()),
        (403, "this token is read-only")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.try_wait().unwrap().is_none(), "the session ended");

    // A read-write token disconnects it: the client sees the connection end.
    let (code, body) = api(
        admin,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&rw),
        lo,
    );
    assert_eq!(code, 200, "{body}");
    // It leaves the list when its connection has ended...
    poll("the session to leave the list", || {
        let (_, body) = api(admin, "GET", "/api/v1/sessions", Some(&ro), lo);
        json(&body).as_array().unwrap().is_empty().then_some(())
    });
    // ...and the client finds it closed at its next command (OpenSSH `sftp` reads its batch
    // before it looks at the connection).
    {
        use std::io::Write;
        let mut stdin = client.stdin.take().unwrap();
        let _ = stdin.write_all(b"ls\n");
    }
    let out = client.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "sftp still listed after the disconnect: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, _) = api(
        admin,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&rw),
        lo,
    );
    assert_eq!(code, 404);
    assert!(
        gw.wait_log("audit: token=", Duration::from_secs(5)),
        "{}",
        gw.log_text()
    );

    // No token, a malformed one and a wrong one: 401, each scored; the third bans OTHER.
    let wrong = format!(
        "{}{}",
        &rw[..rw.len() - 1],
        if rw.ends_with('0') { '1' } else { '0' }
    );
    for t in [None, Some("nonsense"), Some(wrong.as_str())] {
        let (code, _) = api(admin, "GET", "/api/v1/bans", t, OTHER);
        assert_eq!(code, 401);
    }
    // Banned: even the right token is refused, and so is an SFTP login from there.
    let (code, body) = api(admin, "GET", "/api/v1/bans", Some(&rw), OTHER);
    assert_eq!(
        (code, json(&body)["error"].as_str().unwrap()),
        (403, "this address is banned")
    );
    assert!(!sftp_works(d, sftp, OTHER), "a banned address logged in");
    assert!(sftp_works(d, sftp, lo));
    let (code, body) = api(admin, "GET", "/api/v1/bans", Some(&ro), lo);
    assert_eq!(code, 200);
    let bans = json(&body);
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans}");
    assert_eq!(bans[0]["ip"], OTHER);

    // The ban survives a restart.
    gw.signal("TERM");
    drop(gw);
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let (sftp, admin) = (gw.addr("sftp"), gw.addr("admin"));
    assert!(gw.wait_log("bans restored: 1", Duration::from_secs(5)));
    assert!(
        !sftp_works(d, sftp, OTHER),
        "the ban did not survive the restart"
    );
    let (code, body) = api(admin, "GET", "/api/v1/bans", Some(&ro), lo);
    assert_eq!((code, json(&body)[0]["ip"].as_str()), (200, Some(OTHER)));

    // Lifting it: read-only may not; read-write may, and the address logs in again.
    let path = format!("/api/v1/bans/{OTHER}");
    assert_eq!(api(admin, "DELETE", &path, Some(&ro), lo).0, 403);
    let (code, body) = api(admin, "DELETE", &path, Some(&rw), lo);
    assert_eq!(code, 200, "{body}");
    assert!(
        sftp_works(d, sftp, OTHER),
        "the lifted ban still refused the address"
    );
    let (_, body) = api(admin, "GET", "/api/v1/bans", Some(&ro), lo);
    assert_eq!(json(&body), serde_json::json!([]));
    assert_eq!(api(admin, "DELETE", &path, Some(&rw), lo).0, 404);
    let log = gw.log_text();
    assert!(
        log.contains(&format!("DELETE /api/v1/bans/{OTHER} -> 200")),
        "{log}"
    );
    // Secrets never reach the log.
    for t in [&rw, &ro] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!log.contains(secret), "a token secret in the log");
    }
}

/// Every route of the served OpenAPI document answers (neither the router's 404 nor 405)
/// with a read-write token; a route it does not document is the router's 404. (The unit test
/// in gateway/src/api checks the other direction against the router's table.)
#[test]
fn every_documented_route_answers() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let cfg = config(d);
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let rw = token(d, "rw");
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let admin = gw.addr("admin");
    let lo = "127.0.0.1";
    let (code, body) = api(admin, "GET", "/api/v1/openapi.json", None, lo);
    assert_eq!(code, 200);
    let doc = json(&body);
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "none" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let (code, body) = api(admin, &method.to_uppercase(), &concrete, Some(&rw), lo);
            assert!(
                code != 405 && !body.contains("no such route") && code != 401 && code < 500,
                "{method} {concrete}: {code} {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} routes documented");
    let (code, body) = api(admin, "GET", "/api/v1/widgets", Some(&rw), lo);
    assert_eq!(
        (code, json(&body)["error"].as_str().unwrap()),
        (404, "no such route")
    );
    let (code, _) = api(admin, "PUT", "/api/v1/bans", Some(&rw), lo);
    assert_eq!(code, 405);
    // The documented reload ran.
    assert!(
        gw.wait_log("reload: config applied", Duration::from_secs(10)),
        "{}",
        gw.log_text()
    );
}

/// A sync run that failed is in the API's history with its error; a run started through the
/// API (read-write only) joins it.
#[test]
fn sync_history_lists_a_failed_run_with_its_error() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files/out")).unwrap();
    std::fs::write(d.join("files/out/a.txt"), b"a").unwrap();
    // A remote nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        r#"storage: {{ type: local, root: ./files }}
admin: {{ listen: "127.0.0.1:0" }}
remotes:
  - name: partner
    endpoint: http://127.0.0.1:{port}
    bucket: feed
    access_key_id: AKIAEXAMPLE
    secret_access_key: secret-example-key
syncs:
  - name: outbound
    path: /out
    remote: partner
    direction: push
"#
    );
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let (code, _, err) = run(d, &["sync", "run", "outbound"], None);
    assert_eq!(code, 1, "{err}");
    let ro = token(d, "ro");
    let rw = token(d, "rw");
    let gw = Gateway::start(d, &cfg, &["admin"]);
    let admin = gw.addr("admin");
    let (code, body) = api(admin, "GET", "/api/v1/sync/jobs", Some(&ro), "127.0.0.1");
    assert_eq!(code, 200, "{body}");
    let jobs = json(&body);
    assert_eq!(jobs[0]["name"], "outbound", "{jobs}");
    let run0 = &jobs[0]["recent"][0];
    assert_eq!(run0["result"], "failed", "{jobs}");
    assert!(!run0["error"].as_str().unwrap_or("").is_empty(), "{jobs}");
    let (code, body) = api(
        admin,
        "GET",
        "/api/v1/sync/jobs/outbound/runs",
        Some(&ro),
        "127.0.0.1",
    );
    assert_eq!(code, 200);
    assert_eq!(json(&body).as_array().unwrap().len(), 1);
    assert_eq!(
        api(
            admin,
            "GET",
            "/api/v1/sync/jobs/nope/runs",
            Some(&ro),
            "127.0.0.1"
        )
        .0,
        404
    );
    // Run now: not with a read-only token, not a job the config lacks; then a second run.
    let run_now = "/api/v1/sync/jobs/outbound/run";
    assert_eq!(api(admin, "POST", run_now, Some(&ro), "127.0.0.1").0, 403);
    let (code, body) = api(
        admin,
        "POST",
        "/api/v1/sync/jobs/nope/run",
        Some(&rw),
        "127.0.0.1",
    );
    assert_eq!(
        (code, json(&body)["error"].as_str().unwrap()),
        (404, "no sync job of that name")
    );
    let (code, body) = api(admin, "POST", run_now, Some(&rw), "127.0.0.1");
    assert_eq!(code, 202, "{body}");
    let runs = poll("the second run in the history", || {
        let (_, body) = api(
            admin,
            "GET",
            "/api/v1/sync/jobs/outbound/runs",
            Some(&ro),
            "127.0.0.1",
        );
        let v = json(&body);
        (v.as_array().unwrap().len() == 2).then_some(v)
    });
    assert_eq!(runs[1]["result"], "failed", "{runs}");
    assert!(
        !runs[1]["error"].as_str().unwrap_or("").is_empty(),
        "{runs}"
    );
}

/// An upload in progress shows in its session with its path and growing byte count;
/// disconnecting the session aborts it: the client fails and no file appears.
#[test]
fn a_transfer_in_progress_shows_and_a_disconnect_aborts_it() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let cfg = config(d);
    let rw = token(d, "rw");
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let (sftp, admin) = (gw.addr("sftp"), gw.addr("admin"));
    let lo = "127.0.0.1";
    let body: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("big.bin"), &body).unwrap();
    // `-l 800`: OpenSSH limits the upload to 800 Kbit/s, so that it is still running when
    // the API looks at it.
    let mut client = sftp_session_args(d, sftp, lo, &["-l", "800"]);
    {
        use std::io::Write;
        let stdin = client.stdin.as_mut().unwrap();
        stdin.write_all(b"put big.bin up.bin\n").unwrap();
    }
    let (id, transfer) = poll("the upload in the session list", || {
        let (code, body) = api(admin, "GET", "/api/v1/sessions", Some(&rw), lo);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        let s = v.as_array().unwrap().first()?.clone();
        let t = s["transfers"].as_array()?.first()?.clone();
        (t["bytes"].as_u64()? > 0).then(|| (s["id"].as_str().unwrap().to_string(), t))
    });
    assert_eq!(transfer["direction"], "upload", "{transfer}");
    assert_eq!(transfer["path"], "/up.bin", "{transfer}");
    let (code, body) = api(
        admin,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(&rw),
        lo,
    );
    assert_eq!(code, 200, "{body}");
    drop(client.stdin.take());
    let out = client.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the upload succeeded after the disconnect"
    );
    poll("the session to leave the list", || {
        let (_, body) = api(admin, "GET", "/api/v1/sessions", Some(&rw), lo);
        json(&body).as_array().unwrap().is_empty().then_some(())
    });
    assert!(
        !d.join("files/up.bin").exists(),
        "a partial upload became visible"
    );
}

/// A user created through the API logs in over SFTP (also after a restart: it is in the state
/// store), lands in its home, can be disabled and deleted; the config's users cannot be
/// touched, a read-only token cannot create one, and a bad spec is refused.
#[test]
fn runtime_users_log_in_and_the_config_wins() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    // Refused logins are part of the test: no ban for them.
    let cfg = config_ban(d, 1000);
    let (rw, ro) = (token(d, "rw"), token(d, "ro"));
    let mut gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let lo = "127.0.0.1";
    let pw = "bob-Runtime-Pw-42";
    let spec = format!(r#"{{"password": "{pw}", "home": "/partners/bob", "protocols": ["sftp"]}}"#);
    let put = |gw: &Gateway, token: &str, name: &str, body: &str| {
        api_body(
            gw.addr("admin"),
            "PUT",
            &format!("/api/v1/users/{name}"),
            Some(token),
            lo,
            Some(body),
        )
    };
    let (code, body) = put(&gw, &rw, "alice", &spec);
    assert_eq!(code, 409, "{body}");
    assert_eq!(put(&gw, &ro, "bob", &spec).0, 403);
    for bad in [
        r#"{"password": "x", "home": "partners"}"#,
        r#"{"password": "x", "home": "/p", "permissions": {"/": ["fly"]}}"#,
        r#"{"password": "x", "home": "/p", "colour": "red"}"#,
        r#"{"home": "/p"}"#,
        "not json",
    ] {
        let (code, body) = put(&gw, &rw, "bob", bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(!body.contains(pw));
    }
    assert!(
        !sftp_login_works(d, gw.addr("sftp"), "bob", pw),
        "bob before he exists"
    );
    let (code, body) = put(&gw, &rw, "bob", &spec);
    assert_eq!(code, 200, "{body}");
    std::fs::write(d.join("hello.txt"), b"from bob").unwrap();
    let out = sftp_batch_password(gw.addr("sftp"), "bob", pw, "put hello.txt\n", d);
    assert_ok("bob uploads", &out);
    assert_eq!(
        std::fs::read(d.join("files/partners/bob/hello.txt")).unwrap(),
        b"from bob"
    );
    let (code, body) = api(gw.addr("admin"), "GET", "/api/v1/users", Some(&ro), lo);
    assert_eq!(code, 200);
    let users = json(&body);
    assert_eq!(users[0]["username"], "bob", "{users}");
    assert_eq!(users[0]["password"], true);
    assert!(!body.contains("argon2"), "a hash in the listing: {body}");

    // Kept over a restart.
    gw.signal("TERM");
    gw.wait(Duration::from_secs(20));
    drop(gw);
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    assert!(
        sftp_login_works(d, gw.addr("sftp"), "bob", pw),
        "bob lost by the restart"
    );

    // Disabled, then deleted.
    let disabled = spec.replace('}', r#", "disabled": true}"#);
    assert_eq!(put(&gw, &rw, "bob", &disabled).0, 200);
    assert!(
        !sftp_login_works(d, gw.addr("sftp"), "bob", pw),
        "a disabled user logged in"
    );
    let path = "/api/v1/users/bob";
    assert_eq!(api(gw.addr("admin"), "DELETE", path, Some(&ro), lo).0, 403);
    assert_eq!(api(gw.addr("admin"), "DELETE", path, Some(&rw), lo).0, 200);
    assert_eq!(api(gw.addr("admin"), "DELETE", path, Some(&rw), lo).0, 404);
    let (_, body) = api(gw.addr("admin"), "GET", "/api/v1/users", Some(&ro), lo);
    assert_eq!(json(&body), serde_json::json!([]));
    assert!(gw.log_text().contains("PUT /api/v1/users/bob -> 200"));
}

/// Whether `user` can log in over SFTP with `password` and list her home.
pub(crate) fn sftp_login_works(dir: &Path, addr: SocketAddr, user: &str, password: &str) -> bool {
    let out = sftp_batch_password(addr, user, password, "ls\n", dir);
    out.status.success()
}

/// One raw HTTP/1.1 request (the admin listener closes after each): the status code and body.
fn raw(admin: SocketAddr, method: &str, target: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (code, body)
}

/// Generated requests against every route and around them (odd methods, odd path segments,
/// percent-encodings, random JSON bodies for users) never get a 5xx, and every answer under
/// `/api/` is JSON: the API's own property run, seeded so that a failure can be replayed.
#[test]
fn generated_requests_never_get_a_server_error() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let cfg = config_ban(d, 1000);
    let rw = token(d, "rw");
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let admin = gw.addr("admin");
    let seed: u64 = std::env::var("API_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(19);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let templates = [
        "/api/v1/sessions",
        "/api/v1/sessions/{}",
        "/api/v1/bans",
        "/api/v1/bans/{}",
        "/api/v1/sync/jobs",
        "/api/v1/sync/jobs/{}/runs",
        "/api/v1/sync/jobs/{}/run",
        "/api/v1/remotes",
        "/api/v1/users",
        "/api/v1/users/{}",
        "/api/v1/{}",
        "/api/v1/users/{}/{}",
        "/api/{}",
        "/api/v1/openapi.json",
    ];
    let segments = [
        "alice",
        "bob",
        "127.0.0.1",
        "::1",
        "%2e%2e",
        "..",
        "%00",
        "%ff%fe",
        "a%2Fb",
        "%",
        "caf%C3%A9",
        "0000000000000000",
        "outbound",
        "x",
        "demo",
        "%20",
        "login",
        "logout",
        "whoami",
    ];
    let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let keys = [
        "password",
        "password_hash",
        "public_keys",
        "home",
        "permissions",
        "protocols",
        "allowed_ips",
        "disabled",
        "username",
        "other",
    ];
    let values = [
        r#""s3cret-Pw""#,
        r#""/p""#,
        r#""relative""#,
        "true",
        "false",
        "null",
        "0",
        "-1",
        "[]",
        r#"["sftp"]"#,
        r#"["*"]"#,
        r#"{"/": ["*"]}"#,
        r#"{"/": ["fly"]}"#,
        r#"["10.0.0.0/8"]"#,
        r#"["nonsense"]"#,
        r#""$argon2id$v=19$bad""#,
        "{}",
        r#""ssh-ed25519 AAAA""#,
        "1e400",
    ];
    for i in 0..300 {
        let t = templates[rng.random_range(0..templates.len())];
        let mut path = String::new();
        for (j, part) in t.split("{}").enumerate() {
            if j > 0 {
                if rng.random_bool(0.2) {
                    // A random long segment of URL-safe characters.
                    let n = rng.random_range(1..300);
                    path.extend((0..n).map(|_| rng.random_range(b'a'..=b'z') as char));
                } else {
                    path.push_str(segments[rng.random_range(0..segments.len())]);
                }
            }
            path.push_str(part);
        }
        let method = methods[rng.random_range(0..methods.len())];
        let body = if rng.random_bool(0.7) {
            let n = rng.random_range(0..5);
            let fields: Vec<String> = (0..n)
                .map(|_| {
                    format!(
                        "\"{}\": {}",
                        keys[rng.random_range(0..keys.len())],
                        values[rng.random_range(0..values.len())]
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(", "))
        } else {
            ["", "[]", "nul", "{\"home\": ", "\u{0}"][rng.random_range(0..5)].to_string()
        };
        let (code, answer) = raw(admin, method, &path, &rw, body.as_bytes());
        assert!(
            code < 500,
            "request {i} (seed {seed}): {method} {path} {body:?} -> {code} {}",
            String::from_utf8_lossy(&answer)
        );
        if method != "HEAD" {
            assert!(
                serde_json::from_slice::<Value>(&answer).is_ok(),
                "request {i} (seed {seed}): {method} {path} -> {code}, not JSON: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
}

/// `admin.tls`: the admin listener speaks HTTPS only. curl trusting the certificate gets the
/// API's answers; plain HTTP to the same port gets no answer at all; a bad certificate path
/// stops the start with a message naming the file.
#[test]
fn the_admin_listener_speaks_https_when_configured() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let (cert, key) = bucketgate_tests::clients::self_signed_certificate(d);
    let cfg = config(d).replace(
        r#"admin: { listen: "127.0.0.1:0" }"#,
        &format!(r#"admin: {{ listen: "127.0.0.1:0", tls: {{ cert: "{cert}", key: "{key}" }} }}"#),
    );
    assert!(cfg.contains("tls:"), "{cfg}");
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let ro = token(d, "ro");
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let admin = gw.addr("admin");
    let https = |path: &str| {
        let url = format!("https://{admin}{path}");
        let auth = format!("Authorization: Bearer {ro}");
        let out = curl(&["--cacert", &cert, "-H", &auth, "-w", "\n%{http_code}", &url]);
        assert_ok("curl https", &out);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    let (code, body) = https("/api/v1/sessions");
    assert_eq!(code, 200, "{body}");
    assert!(json(&body).is_array(), "{body}");
    assert_eq!(https("/healthz"), (200, "ok\n".to_string()));
    // Plain HTTP: the handshake fails, nothing is answered.
    let out = curl(&[
        "-sS",
        "-w",
        "%{http_code}",
        &format!("http://{admin}/healthz"),
    ]);
    assert!(!out.status.success(), "plain HTTP was answered: {out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ok"));
    drop(gw);

    // A key file that is not there: the start fails and says which file.
    let bad = cfg.replace(&key, &format!("{key}.missing"));
    std::fs::write(d.join("bucketgate.yaml"), &bad).unwrap();
    let (code, _, err) = run(d, &["serve", "--config", "bucketgate.yaml"], None);
    assert_ne!(code, 0);
    assert!(
        err.contains("admin") && err.contains("tls-key.pem.missing"),
        "{err}"
    );
}
