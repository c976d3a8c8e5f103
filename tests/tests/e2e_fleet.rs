//! Two gateway instances (the real binary) on one PostgreSQL state store (issue 19): what the
//! shared store shares. Each instance has its own `state_dir`; both serve the same bucket
//! (moto); PostgreSQL is a private server the test starts (testkit::postgres).

use crate::e2e_admin_api::{
    api, api_body, config_ban, json, poll, sftp_login_works, sftp_session, sftp_works, token,
};
use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_testkit::postgres::Postgres;
use bucketgate_tests::gateway::{require, Gateway};
use std::path::Path;
use std::time::Duration;

/// Instance `name`'s config file: the admin API test's config with its own `state_dir` and
/// the shared store.
fn instance(dir: &Path, base: &str, name: &str, url: &str) -> String {
    let file = format!("{name}.yaml");
    std::fs::write(
        dir.join(&file),
        format!("{base}state_dir: ./state-{name}\nstate:\n  url: \"{url}\"\n"),
    )
    .unwrap();
    file
}

fn start(dir: &Path, file: &str) -> Gateway {
    Gateway::spawn(dir, &["serve", "--config", file], &["sftp", "admin"], &[])
}

/// A token created once (`bucketgate admin token create` on the shared store) is accepted by
/// both instances; a user created through instance A's API logs in over SFTP on instance B
/// (started after), and so does one created on A while B runs; an SFTP session held open on B is
/// listed by A's API with its user; a ban earned on A refuses the address on B; once B is
/// killed, its session leaves A's list when its lease ends. `max_sessions_per_ip: 1` holds
/// across the two: B's session keeps a second one from the address off A. A sync run started
/// through A's API is listed by B's API, from the shared store.
#[test]
fn two_instances_share_tokens_users_bans_and_sessions() {
    require("curl");
    require("sftp");
    let pg = Postgres::start();
    let moto = Moto::start();
    moto.create_bucket("fleet");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Polling for a user B does not know yet fails logins from 127.0.0.1: never banned.
    // One session per address across the fleet. Both serve one bucket, and push its
    // `outbox/` to `partner/` in it.
    let storage = format!(
        "storage: {{ type: s3, remote: primary, prefix: site/ }}
remotes:
  - name: primary
    endpoint: {}
    bucket: fleet
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
syncs:
  - name: outbound
    path: /outbox
    remote: primary
    prefix: partner/
    direction: push
",
        moto.endpoint
    );
    let base = config_ban(d, 3)
        .replace(
            "duration: 1h }",
            "duration: 1h, safelist: [\"127.0.0.1\"] }",
        )
        .replace("limits:\n", "limits:\n  max_sessions_per_ip: 1\n")
        .replace("storage: { type: local, root: ./files }\n", &storage);
    assert!(base.contains("max_sessions_per_ip: 1"));
    assert!(base.contains("safelist"));
    assert!(base.contains("type: s3"));
    let a_cfg = instance(d, &base, "a", &pg.url());
    let b_cfg = instance(d, &base, "b", &pg.url());
    // `admin token create` reads the default config file: instance A's.
    std::fs::copy(d.join(&a_cfg), d.join("bucketgate.yaml")).unwrap();
    let rw = token(d, "rw");

    let a = start(d, &a_cfg);
    let lo = "127.0.0.1";
    let (code, body) = api(a.addr("admin"), "GET", "/api/v1/users", Some(&rw), lo);
    assert_eq!(code, 200, "A refuses the shared token: {body}");
    let pw = "carol-Fleet-Pw-19";
    let spec = format!(r#"{{"password": "{pw}", "home": "/carol", "protocols": ["sftp"]}}"#);
    let (code, body) = api_body(
        a.addr("admin"),
        "PUT",
        "/api/v1/users/carol",
        Some(&rw),
        lo,
        Some(&spec),
    );
    assert_eq!(code, 200, "{body}");

    let b = start(d, &b_cfg);
    assert_ne!(a.addr("sftp"), b.addr("sftp"));
    let (code, body) = api(b.addr("admin"), "GET", "/api/v1/users", Some(&rw), lo);
    assert_eq!(code, 200, "B refuses the token created once: {body}");
    assert_eq!(json(&body)[0]["username"], "carol", "{body}");
    assert!(
        sftp_login_works(d, b.addr("sftp"), "carol", pw),
        "the user created through A does not log in on B"
    );

    // alice (the config's user) holds a session open on B; A lists it.
    let mut held = sftp_session(d, b.addr("sftp"), lo);
    let listed = poll("A to list B's session", || {
        let (code, body) = api(a.addr("admin"), "GET", "/api/v1/sessions", Some(&rw), lo);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["user"] == "alice" && s["protocol"] == "sftp")
            .cloned()
    });
    assert_eq!(listed["client"], "127.0.0.1", "{listed}");
    // A cannot disconnect B's session: it is not its own.
    let id = listed["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/sessions/{id}");
    assert_eq!(api(a.addr("admin"), "DELETE", &path, Some(&rw), lo).0, 404);
    assert_eq!(api(b.addr("admin"), "DELETE", &path, Some(&rw), lo).0, 200);
    let _ = held.wait();

    // A user created on A while B runs: B takes it in from the store.
    let spec = spec.replace("/carol", "/dave");
    let (code, body) = api_body(
        a.addr("admin"),
        "PUT",
        "/api/v1/users/dave",
        Some(&rw),
        lo,
        Some(&spec),
    );
    assert_eq!(code, 200, "{body}");
    poll("B to let dave in", || {
        sftp_login_works(d, b.addr("sftp"), "dave", pw).then_some(())
    });

    // 127.0.0.2 logs in on B, then earns a ban on A (three wrong tokens, threshold 3): B
    // refuses it.
    const OTHER: &str = "127.0.0.2";
    assert!(
        sftp_works(d, b.addr("sftp"), OTHER),
        "B refuses OTHER before any ban"
    );
    for _ in 0..3 {
        let (code, _) = api(
            a.addr("admin"),
            "GET",
            "/api/v1/bans",
            Some("bg_wrong"),
            OTHER,
        );
        assert_eq!(code, 401);
    }
    assert!(!sftp_works(d, a.addr("sftp"), OTHER), "A did not ban OTHER");
    poll("B to refuse the address A banned", || {
        (!sftp_works(d, b.addr("sftp"), OTHER)).then_some(())
    });
    let (_, body) = api(b.addr("admin"), "GET", "/api/v1/bans", Some(&rw), lo);
    assert_eq!(json(&body)[0]["ip"], OTHER, "{body}");

    // A sync run started through A's API is in B's history (the shared store's), with what it
    // copied; the bucket holds the copy.
    moto.put("fleet", "site/outbox/report.csv", b"id,total\n1,42\n");
    let (code, body) = api(
        a.addr("admin"),
        "POST",
        "/api/v1/sync/jobs/outbound/run",
        Some(&rw),
        lo,
    );
    assert_eq!(code, 202, "{body}");
    let run = poll("B to list the run A made", || {
        let (code, body) = api(
            b.addr("admin"),
            "GET",
            "/api/v1/sync/jobs/outbound/runs",
            Some(&rw),
            lo,
        );
        (code == 200).then(|| json(&body)[0].clone())
    });
    assert_eq!(run["result"], "ok", "{run}");
    assert_eq!(run["copied_up"], 1, "{run}");
    assert_eq!(
        moto.get("fleet", "partner/report.csv").as_deref(),
        Some(&b"id,total\n1,42\n"[..])
    );
    let (code, body) = api(b.addr("admin"), "GET", "/api/v1/sync/jobs", Some(&rw), lo);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)[0]["name"], "outbound", "{body}");
    assert_eq!(json(&body)[0]["last_ok"]["copied_up"], 1, "{body}");

    // B is killed (SIGKILL) with a session open: its row leaves A's list once its lease
    // (bucketgate_state::SESSION_LEASE) has run out unrenewed.
    let alice_on_a = || {
        let (code, body) = api(a.addr("admin"), "GET", "/api/v1/sessions", Some(&rw), lo);
        assert_eq!(code, 200, "{body}");
        json(&body)
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["user"] == "alice")
    };
    assert!(
        sftp_login_works(d, a.addr("sftp"), "carol", pw),
        "A refuses carol before any session is held"
    );
    // carol's client has exited, but her session leaves the shared store a moment later:
    // until then it is 127.0.0.1's one session of the fleet, and B would refuse the next.
    poll("carol's ended session to leave the list", || {
        let (code, body) = api(a.addr("admin"), "GET", "/api/v1/sessions", Some(&rw), lo);
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        (!v.as_array().unwrap().iter().any(|s| s["user"] == "carol")).then_some(())
    });
    let mut held = sftp_session(d, b.addr("sftp"), lo);
    poll("A to list the session held on B", || {
        // B counts the other instances' sessions from the shared store, read every few
        // seconds: until it has read that carol's ended, it refuses 127.0.0.1 for the cap,
        // and the refused client exits. Connect again.
        if held.try_wait().unwrap().is_some() {
            held = sftp_session(d, b.addr("sftp"), lo);
        }
        alice_on_a().then_some(())
    });
    // max_sessions_per_ip: 1 counts B's session on A: A refuses the address for the cap.
    poll("A to refuse a second session from 127.0.0.1", || {
        (!sftp_login_works(d, a.addr("sftp"), "carol", pw)).then_some(())
    });
    // The client can see the connection close before the line is logged: wait for it.
    assert!(
        a.wait_log(
            "SFTP connection refused: session limit",
            Duration::from_secs(10)
        ),
        "A refused carol for another reason: {}",
        a.log_text()
    );
    b.signal("KILL");
    let _ = held.wait();
    poll("the killed instance's session to leave the list", || {
        (!alice_on_a()).then_some(())
    });
    poll("A to admit 127.0.0.1 again", || {
        sftp_login_works(d, a.addr("sftp"), "carol", pw).then_some(())
    });
}
