//! Credential sources for real: instance metadata (IMDSv2) and the container endpoint served
//! by the test kit's credential servers, with credentials that expire during a long upload;
//! moto's STS for AssumeRole (on top of static keys) and AssumeRoleWithWebIdentity (a token
//! file); a shared credentials file; the environment; and `chain` when no source has any.
//!
//! Values a source would read from the environment are given per backend
//! (`CredentialOptions::env`), never set on this process: the tests run side by side.
//! Which keys signed each S3 request is read at a proxy in front of the server. moto checks no
//! signature, so the proxy refuses, as AWS would, a request signed with a key the credential
//! server did not issue or that had expired; s3s-fs checks signatures itself.

use bucketgate_storage::backend::Backend;
use bucketgate_storage::s3::{AssumeRole, CredentialSource, S3Backend, S3Options};
use bucketgate_storage::ErrorKind;
use bucketgate_testkit::creds::{CredServer, Kind};
use bucketgate_testkit::http_proxy::{forward_all, Action, HttpProxy, Seen};
use bucketgate_testkit::s3::*;
use futures::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The access key id of a signed request.
fn key_of(s: &Seen) -> Option<String> {
    let auth = s.header("authorization")?;
    Some(
        auth.split("Credential=")
            .nth(1)?
            .split('/')
            .next()?
            .to_string(),
    )
}

/// A backend of `srv` reached through `proxy`, without keys, set up by `f`.
fn via(srv: &Server, proxy: &HttpProxy, f: impl FnOnce(&mut S3Options)) -> S3Backend {
    let endpoint = format!("http://{}", proxy.addr);
    srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.access_key_id.clear();
        o.secret_access_key.clear();
        o.concurrency = 1;
        f(o)
    })
}

async fn names(b: &S3Backend, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = b.list(dir);
    while let Some(page) = s.next().await {
        out.extend(page.expect("list").into_iter().map(|e| e.name));
    }
    out
}

/// Uploads 4 parts of 5 MiB and a last one of 1 MiB, waiting `gap` between writes of 5 MiB:
/// the upload lasts longer than one set of credentials. (The upload starts with the second
/// write: a part is sent once the writer knows it is not the last.)
async fn slow_upload(b: &S3Backend, key: &str, gap: Duration) -> Vec<u8> {
    let body = data(21 * MIB, 7);
    let mut up = b
        .create(
            key,
            bucketgate_storage::backend::CreateOptions {
                size_hint: Some(body.len() as u64),
                ..Default::default()
            },
        )
        .await
        .expect("create");
    for (i, chunk) in body.chunks(5 * MIB).enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        up.write(bytes::Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    up.finish()
        .await
        .expect("the upload completes across credential refreshes");
    body
}

/// A proxy in front of moto that lets through only requests signed with a live key of
/// `creds` (with its session token), and records why it refused the others.
async fn checking_proxy(
    srv: &Server,
    creds: Arc<CredServer>,
) -> (HttpProxy, Arc<Mutex<Vec<String>>>) {
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let r = refused.clone();
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new(move |s: &Seen| match creds.check(&s.headers, s.at) {
            Ok(()) => Action::Forward,
            Err(why) => {
                r.lock()
                    .unwrap()
                    .push(format!("{} {}: {why}", s.method, s.target));
                Action::Fail {
                    status: 403,
                    code: "ExpiredToken",
                    retry_after: None,
                }
            }
        }),
    )
    .await;
    (proxy, refused)
}

/// Credentials that last `LIFETIME`: reqsign takes a set within two minutes of its expiry as
/// due for refresh, so each request loads a fresh set; the upload outlasts the first one.
const LIFETIME: Duration = Duration::from_secs(13);
const GAP: Duration = Duration::from_secs(6);

async fn refresh_during_a_long_upload(
    kind: Kind,
    env: impl Fn(&CredServer) -> Vec<(String, String)>,
) {
    let srv = moto_server().await;
    let source = match kind {
        Kind::Instance => CredentialSource::Instance,
        Kind::Container { .. } => CredentialSource::Container,
    };
    let creds = Arc::new(CredServer::start(kind, LIFETIME).await);
    let (proxy, refused) = checking_proxy(&srv, creds.clone()).await;
    let overlay = env(&creds);
    let b = via(&srv, &proxy, |o| {
        o.credentials.source = source;
        o.credentials.env = overlay;
    });
    let key = srv.key("long.bin");
    let body = slow_upload(&b, &key, GAP).await;
    assert_eq!(
        get(&srv.backend(), &key).await,
        body,
        "the object is complete"
    );
    assert_eq!(names(&b, &srv.dir()).await, vec!["long.bin".to_string()]);
    assert!(
        refused.lock().unwrap().is_empty(),
        "no request with a stale or unknown key: {:?}",
        refused.lock().unwrap()
    );

    // The upload outlived the first credentials, and was signed by several sets.
    let seen = proxy.seen();
    let issued = creds.issued();
    let last = seen.last().expect("requests").at;
    assert!(
        last > issued[0].expires,
        "the transfer went on past the expiry of the first credentials: first issued {:?} before \
         the last request, lifetime {LIFETIME:?}",
        last - issued[0].issued
    );
    let keys: std::collections::BTreeSet<String> = seen.iter().filter_map(key_of).collect();
    assert!(
        keys.len() > 1,
        "requests signed by more than one set: {keys:?}"
    );
    assert!(creds.fetches() > 1, "log: {:?}", creds.log());
    let (_, report) = b.credential_report();
    assert_eq!(report.source.as_deref(), Some(source.name()));
    assert!(report.loads > 1);
    println!("credential server log: {:?}", creds.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_metadata_credentials_are_refreshed_during_a_long_upload() {
    refresh_during_a_long_upload(Kind::Instance, |c| {
        vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), c.url())]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_refuses_a_get_without_its_token() {
    // The test server behaves as IMDSv2 does: what the source above went through.
    let creds = CredServer::start(Kind::Instance, LIFETIME).await;
    let url = format!("{}/latest/meta-data/iam/security-credentials/", creds.url());
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(creds.fetches(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_credentials_are_refreshed_during_a_long_upload() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "bg-container-token\n").unwrap();
    let token_file = token_file.to_string_lossy().into_owned();
    refresh_during_a_long_upload(
        Kind::Container {
            token: "bg-container-token".into(),
        },
        move |c| {
            vec![
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                    format!("{}/v2/credentials/bg", c.url()),
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
                    token_file.clone(),
                ),
            ]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_endpoint_without_the_token_gives_no_credentials() {
    let srv = moto_server().await;
    let creds = Arc::new(
        CredServer::start(
            Kind::Container {
                token: "right".into(),
            },
            LIFETIME,
        )
        .await,
    );
    let (proxy, _) = checking_proxy(&srv, creds.clone()).await;
    let b = via(&srv, &proxy, |o| {
        o.credentials.source = CredentialSource::Container;
        o.credentials.env = vec![
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), creds.url()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), "wrong".into()),
        ];
        o.retries.max_attempts = 1;
    });
    let err = b.stat(&srv.key("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err:?}");
    let (_, report) = b.credential_report();
    assert_eq!(report.source, None);
    assert_eq!(report.tried.len(), 1, "{report:?}");
    assert_eq!(report.tried[0].0, "container");
    assert!(report.tried[0].1.contains("not authorized"), "{report:?}");
    assert!(proxy.seen().is_empty(), "nothing unsigned was sent");
    let log = creds.log();
    assert!(
        !log.is_empty()
            && log
                .iter()
                .all(|l| l == "refused: no or wrong Authorization token"),
        "{log:?}"
    );
}

const ROLE: &str = "arn:aws:iam::123456789012:role/bg-role";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_through_moto_sts() {
    let srv = moto_server().await;
    // One proxy for STS and S3 (moto serves both on one port): it records who signed what.
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let sts = format!("http://{}", proxy.addr);
    let (access, secret) = (srv.access.clone(), srv.secret.clone());
    let b = via(&srv, &proxy, |o| {
        o.access_key_id = access;
        o.secret_access_key = secret;
        o.credentials.source = CredentialSource::Static;
        o.credentials.sts_endpoint = Some(sts);
        o.credentials.assume_role = Some(AssumeRole {
            role_arn: ROLE.into(),
            external_id: Some("bg-external".into()),
            session_name: Some("bg-test".into()),
            duration: Some(Duration::from_secs(900)),
        });
    });
    let body = data(6 * MIB + 3, 3);
    put(&b, &srv.key("role/a.bin"), &body, MIB).await;
    assert_eq!(names(&b, &srv.key("role")).await, vec!["a.bin".to_string()]);
    assert_eq!(get(&srv.backend(), &srv.key("role/a.bin")).await, body);

    let seen = proxy.seen();
    let (sts_calls, s3_calls): (Vec<&Seen>, Vec<&Seen>) = seen
        .iter()
        .partition(|s| s.target.contains("Action=AssumeRole"));
    assert_eq!(sts_calls.len(), 1, "one AssumeRole, its credentials cached");
    let call = sts_calls[0];
    for part in [
        "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbg-role",
        "ExternalId=bg-external",
        "RoleSessionName=bg-test",
        "DurationSeconds=900",
    ] {
        assert!(call.target.contains(part), "{part} in {}", call.target);
    }
    // AssumeRole is signed with the source's keys, for STS.
    assert_eq!(key_of(call).as_deref(), Some(srv.access.as_str()));
    assert!(call
        .header("authorization")
        .unwrap()
        .contains("/sts/aws4_request"));
    // Every S3 request is signed with the role's temporary keys and carries their token.
    assert!(s3_calls.len() >= 4, "create, parts, complete, list");
    for s in &s3_calls {
        let k = key_of(s).expect("signed");
        assert!(
            k.starts_with("ASIA") && k != srv.access,
            "{k} on {}",
            s.target
        );
        assert!(s.header("x-amz-security-token").is_some(), "{}", s.target);
    }
    let (_, report) = b.credential_report();
    assert_eq!(
        report.source.as_deref(),
        Some(format!("assume_role {ROLE} with credentials from static").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_through_moto_sts() {
    let srv = moto_server().await;
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZyJ9.c2ln\n").unwrap();
    let env = vec![
        ("AWS_ROLE_ARN".to_string(), ROLE.to_string()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".to_string(),
            token.to_string_lossy().into_owned(),
        ),
        (
            "AWS_ENDPOINT_URL_STS".to_string(),
            format!("http://{}", proxy.addr),
        ),
    ];
    let b = via(&srv, &proxy, |o| {
        o.credentials.source = CredentialSource::WebIdentity;
        o.credentials.env = env;
    });
    let body = data(100_000, 4);
    put(&b, &srv.key("web/a.bin"), &body, 8192).await;
    assert_eq!(names(&b, &srv.key("web")).await, vec!["a.bin".to_string()]);
    assert_eq!(get(&srv.backend(), &srv.key("web/a.bin")).await, body);

    let seen = proxy.seen();
    // The unsigned AssumeRoleWithWebIdentity POST, then S3 requests with the role's keys.
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/");
    assert!(seen[0].header("authorization").is_none());
    let s3: Vec<&Seen> = seen[1..].iter().collect();
    assert!(s3.len() >= 2);
    for s in s3 {
        let k = key_of(s).expect("signed");
        assert!(k.starts_with("ASIA"), "{k} on {}", s.target);
        assert!(s.header("x-amz-security-token").is_some());
    }
    let (_, report) = b.credential_report();
    assert_eq!(report.source.as_deref(), Some("web_identity"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_and_environment_keys_sign_for_a_server_that_checks() {
    // s3s-fs verifies every signature: the keys must have been read exactly.
    let srv = s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = AKIAWRONGDEFAULT0000\naws_secret_access_key = wrong\n\n\
             [bg-profile]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            srv.access, srv.secret
        ),
    )
    .unwrap();
    let files = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            file.to_string_lossy().into_owned(),
        ),
        (
            "AWS_CONFIG_FILE".to_string(),
            dir.path().join("none").to_string_lossy().into_owned(),
        ),
    ];
    let endpoint = srv.endpoint.clone();
    let keyless = |f: &dyn Fn(&mut S3Options)| {
        srv.backend_with(|o| {
            o.endpoint = endpoint.clone();
            o.access_key_id.clear();
            o.secret_access_key.clear();
            o.retries.max_attempts = 1;
            f(o)
        })
    };

    let profile = keyless(&|o| {
        o.credentials.source = CredentialSource::Profile;
        o.credentials.profile = Some("bg-profile".into());
        o.credentials.env = files.clone();
    });
    let body = data(70_000, 5);
    put(&profile, &srv.key("p.bin"), &body, 8192).await;
    assert_eq!(get(&srv.backend(), &srv.key("p.bin")).await, body);
    assert_eq!(
        profile.credential_report().1.source.as_deref(),
        Some("profile")
    );

    // The file's default profile has a wrong secret: the server refuses its signatures.
    let default = keyless(&|o| {
        o.credentials.source = CredentialSource::Profile;
        o.credentials.env = files.clone();
    });
    let err = default.stat(&srv.key("p.bin")).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConfigInvalid | ErrorKind::PermissionDenied
        ),
        "{err:?}"
    );

    let env = keyless(&|o| {
        o.credentials.source = CredentialSource::Env;
        o.credentials.env = vec![
            ("AWS_ACCESS_KEY_ID".into(), srv.access.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), srv.secret.clone()),
        ];
    });
    assert_eq!(get(&env, &srv.key("p.bin")).await, body);
    assert_eq!(env.credential_report().1.source.as_deref(), Some("env"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_takes_the_first_source_with_credentials_and_says_why_others_gave_none() {
    let srv = moto_server().await;
    // A closed port: instance metadata "unreachable", fast.
    let closed = format!("http://127.0.0.1:{}", bucketgate_testkit::free_port());
    let none = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), String::new()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), String::new()),
        ("AWS_PROFILE".to_string(), String::new()),
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_string(),
            "/nonexistent/credentials".to_string(),
        ),
        (
            "AWS_CONFIG_FILE".to_string(),
            "/nonexistent/config".to_string(),
        ),
        ("AWS_ROLE_ARN".to_string(), String::new()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE".to_string(), String::new()),
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
            String::new(),
        ),
        (
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".to_string(),
            String::new(),
        ),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(), closed),
    ];
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let b = via(&srv, &proxy, |o| {
        o.credentials.source = CredentialSource::Chain;
        o.credentials.env = none.clone();
        o.retries.max_attempts = 1;
    });
    let err = b.stat(&srv.key("x")).await.unwrap_err();
    let text = format!("{err} {err:?}");
    let (label, report) = b.credential_report();
    assert_eq!(label, "chain");
    let tried: Vec<&str> = report.tried.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        tried,
        ["env", "profile", "web_identity", "container", "instance"]
    );
    assert!(
        report.tried[0].1.contains("AWS_ACCESS_KEY_ID"),
        "{report:?}"
    );
    assert!(
        report.tried[4].1.contains("/latest/api/token"),
        "{report:?}"
    );
    assert!(text.contains("no credentials"), "{text}");
    assert!(proxy.seen().is_empty(), "nothing was sent unsigned");

    // The same chain with the container endpoint set: the container gives them.
    let creds = CredServer::start(
        Kind::Container { token: "t".into() },
        Duration::from_secs(3600),
    )
    .await;
    let mut env = none;
    env.push(("AWS_CONTAINER_CREDENTIALS_FULL_URI".into(), creds.url()));
    env.push(("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), "t".into()));
    let b = via(&srv, &proxy, |o| {
        o.credentials.source = CredentialSource::Chain;
        o.credentials.env = env;
    });
    put(&b, &srv.key("c.bin"), b"chained", 8192).await;
    put(&b, &srv.key("d.bin"), b"chained", 8192).await;
    assert_eq!(b.credential_report().1.source.as_deref(), Some("container"));
    assert_eq!(
        creds.fetches(),
        1,
        "credentials lasting an hour are loaded once"
    );
}
