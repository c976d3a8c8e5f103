//! The web console (`/console/`, gateway/src/console) in a real browser: Debian's chromium,
//! headless, driven through selenium and chromedriver by tests/browser/console.py, against the
//! real binary. Admin accounts are made with `bucketgate admin account create`; OpenSSH `sftp`
//! is the client whose transfer the console shows and disconnects, and the user the console
//! adds logs in with it; curl earns the ban the console lifts.

use crate::e2e_admin_api::{
    api, config_ban, json, poll, sftp_login_works, sftp_session_args, sftp_works, token,
};
use bucketgate_tests::clients::{assert_ok, curl, sftp_batch_password};
use bucketgate_tests::gateway::{require, run, Gateway};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// The address that earns the ban; the browser and the test's own calls come from 127.0.0.1.
const OTHER: &str = "127.0.0.2";

/// The browser, driven one JSON command at a time (tests/browser/console.py).
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Browser {
    fn start() -> Browser {
        require("python3");
        require("chromium");
        require("chromedriver");
        let probe = Command::new("python3")
            .args(["-c", "import selenium"])
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "python3 cannot import selenium: run scripts/install-test-tools.sh (CI does)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/console.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut b = Browser {
            child,
            stdin,
            stdout,
        };
        let ready = b.read();
        assert_eq!(ready["ready"], true, "{ready}");
        b
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the browser driver exited");
        json(&line)
    }

    /// One command; its answer, which must not be an error.
    fn call(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        let out = self.read();
        assert!(out.get("error").is_none(), "{cmd}: {out}");
        out
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.child.wait();
    }
}

/// `bucketgate admin account create NAME --scope SCOPE`, the password on stdin.
fn account(dir: &Path, name: &str, scope: &str, password: &str) {
    let (code, out, err) = run(
        dir,
        &["admin", "account", "create", name, "--scope", scope],
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// A console login through curl from `from`: (status, body).
fn curl_login(admin: SocketAddr, from: &str, user: &str, password: &str) -> (u16, String) {
    let body = json!({"username": user, "password": password}).to_string();
    let url = format!("http://{admin}/api/v1/login");
    let out = curl(&[
        "--interface",
        from,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    assert_ok("curl", &out);
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// In chromium: a wrong password is refused on the page and logged as a failed admin login; a
/// read-write account sees a remote down and a sync job's failed run with its error, runs the
/// job again, sees an upload in progress grow, disconnects it (the client fails, nothing is
/// stored), lifts the ban that wrong console passwords from another address earned (that
/// address then logs in over SFTP again), adds a user who then logs in over OpenSSH `sftp`,
/// sets her password and disables her; a change without the CSRF token is refused; a
/// read-only account sees the same panels with no change buttons, and the API refuses its
/// changes; `admin account passwd` ends the account's console session; the console never
/// sends a request that scores against its own address; a read-write account deletes the
/// user.
#[test]
fn the_console_in_a_real_browser() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    // A remote nobody listens on, and a sync job to it that has failed once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        r#"{}remotes:
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
"#,
        // The browser and the test's clients come from 127.0.0.1, safelisted: their refusals
        // are logged but never ban it; OTHER earns the ban.
        config_ban(d, 5).replace(
            "duration: 1h }",
            r#"duration: 1h, safelist: ["127.0.0.1"] }"#
        )
    );
    assert!(cfg.contains("safelist"), "{cfg}");
    std::fs::create_dir_all(d.join("files/out")).unwrap();
    std::fs::write(d.join("files/out/a.txt"), b"a").unwrap();
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let (code, _, err) = run(d, &["sync", "run", "outbound"], None);
    assert_eq!(code, 1, "{err}");
    let (ops_pw, viewer_pw) = ("ops-Console-Pw-1", "viewer-Console-Pw-2");
    account(d, "ops", "rw", ops_pw);
    account(d, "viewer", "ro", viewer_pw);
    let (code, _, err) = run(
        d,
        &["admin", "account", "create", "ops", "--scope", "ro"],
        Some("other\n"),
    );
    assert_eq!(code, 2, "a second account of a name: {err}");
    let (code, list, _) = run(d, &["admin", "account", "list"], None);
    assert_eq!(code, 0);
    let names: Vec<(&str, &str)> = list
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[1])
        })
        .collect();
    assert_eq!(names, vec![("ops", "rw"), ("viewer", "ro")], "{list}");
    let ro_token = token(d, "ro");
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let (sftp, admin) = (gw.addr("sftp"), gw.addr("admin"));
    let lo = "127.0.0.1";
    let mut b = Browser::start();
    let url = format!("http://{admin}/console/");
    assert_eq!(b.call(json!({"op": "open", "url": url}))["view"], "login");

    // A wrong password: refused on the page, logged as an admin login failure (127.0.0.1 is
    // safelisted here; the scoring is OTHER's, below).
    let out = b.call(json!({"op": "login", "user": "ops", "password": "not-it"}));
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(out["message"], "wrong account name or password", "{out}");
    assert!(
        gw.wait_log(
            "login failed: protocol=admin ip=127.0.0.1 user=\"ops\" reason=wrong_password",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log_text()
    );
    let out = b.call(json!({"op": "login", "user": "ops", "password": ops_pw}));
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["who"], "ops (read-write)");

    // The remote's health and the sync job's failed run with its error; "Run now" adds one.
    b.call(
        json!({"op": "wait_cell", "body": "remotes-body", "key": "partner",
                  "cls": "state-down", "text": "down"}),
    );
    let runs = b.call(
        json!({"op": "wait_cell", "body": "sync-body", "key": "outbound",
                             "cls": "runs", "text": "failed"}),
    );
    let runs = runs["text"].as_str().unwrap().to_string();
    assert!(runs.contains("error: "), "{runs}");
    let out =
        b.call(json!({"op": "click", "body": "sync-body", "key": "outbound", "button": "run"}));
    assert_eq!(out["notice"], "run outbound: done", "{out}");
    let two = b.call(
        json!({"op": "wait_change", "body": "sync-body", "key": "outbound",
                            "cls": "runs", "text": runs}),
    );
    assert_eq!(
        two["text"].as_str().unwrap().matches("failed").count(),
        2,
        "{two}"
    );
    assert!(!gw.log_text().contains(ops_pw), "a password in the log");

    // An upload in progress shows with its growing byte count; Disconnect ends it.
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("big.bin"), &data).unwrap();
    let mut client = sftp_session_args(d, sftp, lo, &["-l", "800"]);
    client
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"put big.bin up.bin\n")
        .unwrap();
    let id = poll("the session in the API", || {
        let (_, body) = api(admin, "GET", "/api/v1/sessions", Some(&ro_token), lo);
        json(&body)[0]["id"].as_str().map(str::to_string)
    });
    let seen = b.call(
        json!({"op": "wait_cell", "body": "sessions-body", "key": id,
                             "cls": "transfers", "text": "upload /up.bin: "}),
    );
    let first = seen["text"].as_str().unwrap().to_string();
    let later = b.call(
        json!({"op": "wait_change", "body": "sessions-body", "key": id,
                              "cls": "transfers", "text": first}),
    );
    println!("transfer seen: {first:?}, then {:?}", later["text"]);
    let row = b.call(json!({"op": "wait_row", "body": "sessions-body", "key": id}));
    assert_eq!(row["cells"][0], "alice", "{row}");
    assert_eq!(row["cells"][2], "127.0.0.1", "{row}");
    let out =
        b.call(json!({"op": "click", "body": "sessions-body", "key": id, "button": "disconnect"}));
    assert!(out["notice"].as_str().unwrap().ends_with("done"), "{out}");
    drop(client.stdin.take());
    let exit = client.wait_with_output().unwrap();
    assert!(
        !exit.status.success(),
        "the upload succeeded after the disconnect"
    );
    b.call(json!({"op": "wait_no_row", "body": "sessions-body", "key": id}));
    assert!(
        !d.join("files/up.bin").exists(),
        "a partial upload became visible"
    );
    assert!(gw.wait_log(
        &format!("audit: account=\"ops\" ip=127.0.0.1 DELETE /api/v1/sessions/{id} -> 200"),
        Duration::from_secs(5)
    ));

    // Wrong console passwords from OTHER earn it a ban (threshold 5: a wrong password scores 1,
    // an unknown account 2), on every protocol.
    assert_eq!(curl_login(admin, OTHER, "ops", "guess-1").0, 401);
    assert_eq!(curl_login(admin, OTHER, "nobody", "guess-2").0, 401);
    assert_eq!(curl_login(admin, OTHER, "nobody", "guess-3").0, 401);
    let (code, body) = curl_login(admin, OTHER, "ops", ops_pw);
    assert_eq!(
        code, 403,
        "the right password from a banned address: {body}"
    );
    assert!(!sftp_works(d, sftp, OTHER), "a banned address logged in");
    b.call(json!({"op": "wait_row", "body": "bans-body", "key": OTHER}));
    let out = b.call(json!({"op": "click", "body": "bans-body", "key": OTHER, "button": "lift"}));
    assert!(out["notice"].as_str().unwrap().ends_with("done"), "{out}");
    b.call(json!({"op": "wait_no_row", "body": "bans-body", "key": OTHER}));
    assert!(
        sftp_works(d, sftp, OTHER),
        "the lifted ban still refused the address"
    );

    // A user added in the console logs in over SFTP and lands in the home it was given.
    let carol_pw = "carol-Console-Pw-3";
    let out = b.call(
        json!({"op": "add_user", "name": "carol", "password": carol_pw,
                            "home": "/partners/carol", "protocols": ["sftp"]}),
    );
    assert!(out["notice"].as_str().unwrap().ends_with("done"), "{out}");
    b.call(json!({"op": "wait_row", "body": "users-body", "key": "carol"}));
    std::fs::write(d.join("hello.txt"), b"from carol").unwrap();
    let up = sftp_batch_password(sftp, "carol", carol_pw, "put hello.txt\n", d);
    assert_ok("carol uploads", &up);
    assert_eq!(
        std::fs::read(d.join("files/partners/carol/hello.txt")).unwrap(),
        b"from carol"
    );

    // The cookie alone does not make a change: the CSRF token must come with it.
    let out = b.call(
        json!({"op": "fetch", "method": "DELETE", "path": "/api/v1/users/carol", "csrf": false}),
    );
    assert_eq!(out["status"], 403, "{out}");
    assert!(out["body"].as_str().unwrap().contains("CSRF"), "{out}");
    assert!(
        sftp_login_works(d, sftp, "carol", carol_pw),
        "carol was deleted"
    );

    // A new password through "Edit": the new one logs in.
    let new_pw = "carol-Console-Pw-4";
    let out = b.call(json!({"op": "edit_user", "name": "carol", "password": new_pw}));
    assert_eq!(out["notice"], "change carol: done", "{out}");
    assert!(
        sftp_login_works(d, sftp, "carol", new_pw),
        "the new password"
    );
    let carol_pw = new_pw;

    // Disabled from the console: carol can no longer log in.
    let out =
        b.call(json!({"op": "click", "body": "users-body", "key": "carol", "button": "toggle"}));
    assert!(out["notice"].as_str().unwrap().ends_with("done"), "{out}");
    b.call(json!({"op": "wait_cell", "body": "users-body", "key": "carol", "cls": "state", "text": "disabled"}));
    assert!(
        !sftp_login_works(d, sftp, "carol", carol_pw),
        "a disabled user logged in"
    );
    // Logging out while a refresh is under way: what the refresh had left to ask is not sent
    // without the cookie (checked with the log below).
    b.call(json!({"op": "logout_mid_refresh"}));

    // A read-only account: the same panels, no change controls; the API refuses its changes.
    let out = b.call(json!({"op": "login", "user": "viewer", "password": viewer_pw}));
    assert_eq!(out["who"], "viewer (read-only)", "{out}");
    b.call(json!({"op": "wait_cell", "body": "users-body", "key": "carol", "cls": "state", "text": "disabled"}));
    let mut client = sftp_session_args(d, sftp, lo, &[]);
    let alice = || {
        let (_, body) = api(admin, "GET", "/api/v1/sessions", Some(&ro_token), lo);
        json(&body)
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["user"] == "alice")
            .map(|s| s["id"].as_str().unwrap().to_string())
    };
    let id = poll("alice's second session in the API", alice);
    b.call(json!({"op": "wait_row", "body": "sessions-body", "key": id}));
    let controls = b.call(json!({"op": "buttons"}));
    assert_eq!(
        controls,
        json!({"buttons": ["Log out"], "user_form": false}),
        "{controls}"
    );
    let out = b.call(json!({"op": "fetch", "method": "DELETE",
                            "path": format!("/api/v1/sessions/{id}"), "csrf": true}));
    assert_eq!(out["status"], 403, "{out}");
    assert!(
        out["body"]
            .as_str()
            .unwrap()
            .contains("this account is read-only"),
        "{out}"
    );
    assert_eq!(
        alice(),
        Some(id),
        "the read-only account disconnected a session"
    );
    assert!(client.try_wait().unwrap().is_none(), "the session ended");
    drop(client.stdin.take());
    let _ = client.wait();

    // A new password ends the account's console sessions: the page falls back to the login.
    let (code, _, err) = run(
        d,
        &["admin", "account", "passwd", "viewer"],
        Some("new-Viewer-Pw-4\n"),
    );
    assert_eq!(code, 0, "{err}");
    let out = b.call(json!({"op": "wait_login"}));
    assert!(
        out["message"].as_str().unwrap().contains("log in again"),
        "{out}"
    );
    let out = b.call(json!({"op": "login", "user": "viewer", "password": viewer_pw}));
    assert_eq!(out["ok"], false, "the old password still works: {out}");
    let out = b.call(json!({"op": "login", "user": "viewer", "password": "new-Viewer-Pw-4"}));
    assert_eq!(out["ok"], true, "{out}");

    // The console itself never sent a request without its cookie (logging out, a session
    // ending), which would have counted against its user's address.
    let log = gw.log_text();
    for reason in ["no_token", "malformed_session", "wrong_session"] {
        assert!(
            !log.contains(&format!("reason={reason}")),
            "the console scored against itself ({reason}):\n{log}"
        );
    }

    // Delete, from a read-write account.
    b.call(json!({"op": "logout"}));
    let out = b.call(json!({"op": "login", "user": "ops", "password": ops_pw}));
    assert_eq!(out["ok"], true, "{out}");
    let out =
        b.call(json!({"op": "click", "body": "users-body", "key": "carol", "button": "delete"}));
    assert_eq!(out["notice"], "delete carol: done", "{out}");
    b.call(json!({"op": "wait_no_row", "body": "users-body", "key": "carol"}));
    let (_, users) = api(admin, "GET", "/api/v1/users", Some(&ro_token), lo);
    assert_eq!(json(&users), json!([]));
}

/// curl over HTTPS to the admin listener, trusting `cacert`, with the cookie jar `jar` (read
/// and written).
struct Https<'a> {
    admin: SocketAddr,
    cacert: &'a str,
    jar: std::path::PathBuf,
}

impl Https<'_> {
    /// One request from `from` with extra headers: (status, response headers in lower case,
    /// body).
    fn req(
        &self,
        from: &str,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
    ) -> (u16, String, String) {
        let (admin, cacert) = (self.admin, self.cacert);
        let url = format!("https://{admin}{path}");
        let jar = self.jar.to_str().unwrap();
        let mut args = vec![
            "--cacert",
            cacert,
            "--interface",
            from,
            "-X",
            method,
            "-b",
            jar,
            "-c",
            jar,
            "-D",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        args.push(&url);
        let out = curl(&args);
        assert_ok("curl", &out);
        let text = String::from_utf8(out.stdout).unwrap();
        let (rest, code) = text.rsplit_once('\n').unwrap();
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (code.parse().unwrap(), head.to_lowercase(), body.to_string())
    }
}

/// The console's HTTP side with curl, on an HTTPS admin listener: the page is served with a
/// policy that allows only its own origin; the session cookie is HttpOnly, SameSite=Strict and
/// Secure, and stands for the account's scope; a change with the cookie needs the CSRF token; a
/// login must be JSON; asking `whoami` without credentials scores nothing, a guessed session
/// secret does; PATCH changes a runtime user's password and keeps its key; logout and
/// `admin account delete` end sessions.
#[test]
fn console_sessions_over_https() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("files")).unwrap();
    let (cert, key) = bucketgate_tests::clients::self_signed_certificate(d);
    let cfg = config_ban(d, 3).replace(
        r#"admin: { listen: "127.0.0.1:0" }"#,
        &format!(r#"admin: {{ listen: "127.0.0.1:0", tls: {{ cert: "{cert}", key: "{key}" }} }}"#),
    );
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let pw = "ops-Https-Pw-5";
    account(d, "ops", "rw", pw);
    let gw = Gateway::start(d, &cfg, &["sftp", "admin"]);
    let (sftp, admin) = (gw.addr("sftp"), gw.addr("admin"));
    let jar = d.join("cookies.txt");
    let client = Https {
        admin,
        cacert: &cert,
        jar: jar.clone(),
    };
    // Without the jar: the cookies a test sends by hand.
    let bare = Https {
        admin,
        cacert: &cert,
        jar: d.join("none.txt"),
    };
    let req = |from: &str, method: &str, path: &str, headers: &[&str], body: Option<&str>| {
        client.req(from, method, path, headers, body)
    };
    let lo = "127.0.0.1";
    let json_type = "Content-Type: application/json";

    // The page: no login needed to load it, only its own origin allowed.
    let (code, head, body) = req(lo, "GET", "/console/", &[], None);
    assert_eq!(code, 200);
    assert!(body.contains("<script src=\"app.js\""), "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    let (code, head, body) = req(lo, "GET", "/console/app.js", &[], None);
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(body.contains("/api/v1/login"));
    let (code, head, _) = req(lo, "GET", "/console", &[], None);
    assert_eq!(
        (code, head.contains("location: /console/")),
        (308, true),
        "{head}"
    );

    // Opening the console without a session asks whoami: 401, scored nothing.
    for _ in 0..5 {
        let (code, _, body) = req(OTHER, "GET", "/api/v1/whoami", &[], None);
        assert_eq!((code, body.trim()), (401, r#"{"error":"not logged in"}"#));
    }
    // A login must be JSON (a form posted by another site cannot be).
    let form = "Content-Type: application/x-www-form-urlencoded";
    let login = json!({"username": "ops", "password": pw}).to_string();
    let (code, head, _) = req(OTHER, "POST", "/api/v1/login", &[form], Some(&login));
    assert_eq!(code, 415);
    assert!(!head.contains("set-cookie"), "{head}");
    let (code, head, body) = req(OTHER, "POST", "/api/v1/login", &[json_type], Some(&login));
    assert_eq!(code, 200, "{body}; OTHER was banned by whoami or the 415?");
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie: bg_console="))
        .unwrap_or_else(|| panic!("no cookie: {head}"))
        .to_string();
    for attr in [
        "httponly",
        "samesite=strict",
        "secure",
        "path=/api/",
        "max-age=28800",
    ] {
        assert!(cookie_line.contains(attr), "{attr} missing: {cookie_line}");
    }
    let who = json(&body);
    assert_eq!(
        (who["kind"].as_str(), who["scope"].as_str()),
        (Some("account"), Some("rw"))
    );
    let left = who["expires_in"].as_u64().unwrap();
    assert!((28_700..=28_800).contains(&left), "{who}");
    let csrf = format!("X-CSRF-Token: {}", who["csrf"].as_str().unwrap());

    // The cookie reads; a change needs the CSRF token too.
    let (code, _, body) = req(OTHER, "GET", "/api/v1/sessions", &[], None);
    assert_eq!((code, body.trim()), (200, "[]"));
    let (_, public) = bucketgate_tests::clients::keygen(d, "dave_key");
    let spec =
        json!({"password": "dave-Pw-1", "home": "/dave", "public_keys": [public]}).to_string();
    let (code, _, body) = req(
        OTHER,
        "PUT",
        "/api/v1/users/dave",
        &[json_type],
        Some(&spec),
    );
    assert_eq!(
        (code, json(&body)["error"].as_str()),
        (403, Some("missing or wrong CSRF token"))
    );
    let (code, _, body) = req(
        OTHER,
        "PUT",
        "/api/v1/users/dave",
        &[json_type, &csrf],
        Some(&spec),
    );
    assert_eq!(code, 200, "{body}");
    // PATCH: a new password, the key kept.
    let patch = json!({"password": "dave-Pw-2"}).to_string();
    let (code, _, body) = req(
        OTHER,
        "PATCH",
        "/api/v1/users/dave",
        &[json_type, &csrf],
        Some(&patch),
    );
    assert_eq!(code, 200, "{body}");
    let (_, _, body) = req(OTHER, "GET", "/api/v1/users", &[], None);
    assert_eq!(json(&body)[0]["public_keys"], 1, "{body}");
    assert!(
        sftp_login_works(d, sftp, "dave", "dave-Pw-2"),
        "the new password"
    );
    let key_login =
        bucketgate_tests::clients::sftp_batch(sftp, "dave", &d.join("dave_key"), "ls\n", d);
    assert_ok("dave's key after the PATCH", &key_login);
    assert!(gw
        .log_text()
        .contains("audit: account=\"ops\" ip=127.0.0.2 PATCH /api/v1/users/dave -> 200"));

    // A guessed secret for the live session: refused and scored.
    let jar_text = std::fs::read_to_string(&jar).unwrap();
    let value = jar_text
        .lines()
        .find_map(|l| l.split('\t').nth(6).filter(|_| l.contains("bg_console")))
        .unwrap()
        .to_string();
    let (id, _) = value.split_once('_').unwrap();
    let guess = format!("Cookie: bg_console={id}_{}", "0".repeat(64));
    let (code, _, _) = bare.req(lo, "GET", "/api/v1/sessions", &[&guess], None);
    assert_eq!(code, 401);
    assert!(gw.wait_log(
        &format!("login failed: protocol=admin ip=127.0.0.1 user=\"{id}\" reason=wrong_session"),
        Duration::from_secs(5)
    ));

    // Logout ends the session: the old cookie is refused, without a score.
    let (code, head, _) = req(OTHER, "POST", "/api/v1/logout", &[&csrf], None);
    assert_eq!(code, 200);
    assert!(
        head.contains(
            "set-cookie: bg_console=; path=/api/; httponly; samesite=strict; max-age=0; secure"
        ),
        "{head}"
    );
    let stale = format!("Cookie: bg_console={value}");
    for _ in 0..4 {
        let (code, _, body) = bare.req(OTHER, "GET", "/api/v1/bans", &[&stale], None);
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("the session has ended"), "{body}");
    }
    // Deleting the account ends its sessions at once.
    let (code, _, body) = req(OTHER, "POST", "/api/v1/login", &[json_type], Some(&login));
    assert_eq!(code, 200, "OTHER was banned by the stale cookie: {body}");
    let (code, _, _) = req(OTHER, "GET", "/api/v1/whoami", &[], None);
    assert_eq!(code, 200);
    let (code, _, err) = run(d, &["admin", "account", "delete", "ops"], None);
    assert_eq!(code, 0, "{err}");
    let (code, _, body) = req(OTHER, "GET", "/api/v1/whoami", &[], None);
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = run(d, &["admin", "account", "delete", "ops"], None);
    assert_eq!(code, 2);
    assert!(!gw.log_text().contains(pw), "a password in the log");
}
