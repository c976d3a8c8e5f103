//! Remotes as operators meet them, through the real binary: `bucketgate remote test` against a
//! key that lacks a permission, a healthy remote and a production bucket (`--read-only`), and
//! a mount whose remote is unreachable while the rest of the site keeps working.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{keygen, sftp_batch};
use bucketgate_tests::gateway::{run, run_with_env, Gateway};
use std::path::Path;

fn remote_config(endpoint: &str, bucket: &str, access: &str, secret: &str) -> String {
    format!(
        r#"storage: {{ type: local, root: ./files }}
remotes:
  - name: partner
    endpoint: {endpoint}
    bucket: {bucket}
    access_key_id: "{access}"
    secret_access_key: "{secret}"
    timeouts: {{ connect: 5s, request: 20s }}
"#
    )
}

/// Runs `bucketgate remote test partner ARGS` on `config` in `dir`; (exit code, stdout).
fn remote_test(dir: &Path, config: &str, extra: &[&str]) -> (i32, String) {
    std::fs::write(dir.join("bucketgate.yaml"), config).unwrap();
    let mut args = vec!["remote", "test", "partner", "--config", "bucketgate.yaml"];
    args.extend_from_slice(extra);
    let (code, out, err) = run(dir, &args, None);
    println!("exit {code}\n--- stdout\n{out}--- stderr\n{err}");
    (code, out)
}

/// [`remote_test`] with environment variables for the command.
fn remote_test_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    std::fs::write(dir.join("bucketgate.yaml"), config).unwrap();
    let args = ["remote", "test", "partner", "--config", "bucketgate.yaml"];
    let (code, out, err) = run_with_env(dir, &args, None, env);
    println!("exit {code}\n--- stdout\n{out}--- stderr\n{err}");
    (code, out, err)
}

/// A random SSE-C key, base64.
fn ssec_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_put_permission_fails_the_put_step_and_names_it() {
    // What an IAM policy without s3:PutObject refuses: uploads in one request or in parts,
    // and server-side copies onto a new key.
    let srv = s3_support::s3s_server_denying(&[
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(&srv.endpoint, &srv.bucket, &srv.access, &srv.secret);
    let path = dir.path().to_path_buf();
    let (code, out) = tokio::task::spawn_blocking(move || remote_test(&path, &cfg, &[]))
        .await
        .unwrap();
    assert_eq!(code, 1, "a failed step must fail the command");
    // The steps before the write pass: the key reads the bucket fine.
    assert!(line(&out, "ok    TCP connect").contains("TCP connect"));
    line(&out, "ok    credentials and bucket");
    line(&out, "ok    list");
    let put = line(&out, "FAIL  put ");
    assert!(
        put.contains("s3:PutObject"),
        "the failed put must name the missing permission: {put}"
    );
    assert!(put.contains("access denied"), "{put}");
    let mp = line(&out, "FAIL  multipart upload");
    assert!(mp.contains("s3:PutObject"), "{mp}");
    assert!(!out.contains("all steps passed"));
    // Nothing was left in the bucket.
    let left = s3_support::walk_all(&srv.backend(), "").await;
    assert!(left.is_empty(), "probe left {:?}", s3_support::names(&left));
}

#[test]
fn every_step_passes_against_a_working_remote_and_cleans_up() {
    let moto = Moto::start();
    moto.create_bucket("probe-ok");
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(&moto.endpoint, "probe-ok", ACCESS_KEY, SECRET_KEY);
    let (code, out) = remote_test(dir.path(), &cfg, &[]);
    assert_eq!(code, 0);
    for step in [
        "ok    resolve endpoint",
        "ok    TCP connect",
        "ok    credentials from static",
        "ok    credentials and bucket",
        "ok    list",
        "ok    put ",
        "ok    read back",
        "ok    server-side copy",
        "ok    delete",
        "ok    multipart upload",
        // The capability probe's summary: moto refuses a PUT with If-None-Match: * over an
        // existing object, as S3 does, and ignores the conditions of CompleteMultipartUpload,
        // which `remote test` states as a weaker guarantee.
        "info  server capabilities probed",
        "weak  large uploads (multipart)",
    ] {
        line(&out, step);
    }
    assert!(
        line(&out, "info  server capabilities probed").contains("PUT If-None-Match enforced"),
        "{out}"
    );
    assert!(!out.contains("FAIL"));
    assert!(out.contains("all steps passed"));
    assert_eq!(
        moto.keys("probe-ok"),
        Vec::<String>::new(),
        "probe objects left"
    );
    assert_eq!(moto.pending_uploads("probe-ok"), 0, "multipart upload left");
    assert!(!out.contains(SECRET_KEY), "secret printed");
}

#[test]
fn read_only_probe_writes_nothing() {
    let moto = Moto::start();
    moto.create_bucket("probe-ro");
    moto.put("probe-ro", "existing/report.csv", b"a,b\n");
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(&moto.endpoint, "probe-ro", ACCESS_KEY, SECRET_KEY);
    let (code, out) = remote_test(dir.path(), &cfg, &["--read-only"]);
    assert_eq!(code, 0);
    line(&out, "ok    list");
    assert!(out.contains("skipped the write steps"));
    assert!(!out.contains("put "), "a write step ran:\n{out}");
    assert_eq!(
        moto.keys("probe-ro"),
        vec!["existing/report.csv".to_string()]
    );
    assert_eq!(moto.pending_uploads("probe-ro"), 0);
}

#[test]
fn an_unreachable_remote_fails_the_probe_at_the_connect_step() {
    // A port nobody listens on: bound then released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(&format!("http://127.0.0.1:{port}"), "bucket", "a", "b");
    let (code, out) = remote_test(dir.path(), &cfg, &[]);
    assert_eq!(code, 1);
    line(&out, "ok    resolve endpoint");
    line(&out, "FAIL  TCP connect");
}

/// A listener that accepts connections and never answers: a remote behind a firewall that
/// drops traffic, or a hung server. Connections are held open until the test ends.
fn blackhole() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    (addr, t)
}

#[test]
fn a_mount_on_a_hung_remote_answers_with_an_error_and_the_rest_keeps_working() {
    let (dead, _t) = blackhole();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "alice_key");
    std::fs::create_dir_all(dir.path().join("files/local")).unwrap();
    std::fs::write(dir.path().join("files/local/hello.txt"), b"still here\n").unwrap();
    let cfg = format!(
        r#"sftp:
  listen: "127.0.0.1:0"
storage: {{ type: local, root: ./files }}
remotes:
  - name: hung
    endpoint: http://{dead}
    bucket: gone
    access_key_id: a
    secret_access_key: b
    timeouts: {{ connect: 1s, request: 2s }}
mounts:
  - {{ path: /dead, remote: hung }}
users:
  - username: alice
    public_keys: ["{public}"]
    home: /
    permissions:
      "/": ["*"]
"#
    );
    let gw = Gateway::start(dir.path(), &cfg, &["sftp"]);
    let sftp = gw.addr("sftp");
    // `-` lets the batch go on after a failed command: one session sees both folders.
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "-ls /dead\nls /local\nget /local/hello.txt got.txt\n",
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- stdout\n{stdout}--- stderr\n{stderr}");
    assert!(out.status.success(), "the session must go on");
    // OpenSSH prints the server's refusal of the listing (after connect/request timeouts and
    // retries, not a hang: the session goes on to the next command).
    assert!(
        stderr.contains("Couldn't read directory"),
        "listing the dead mount must report an error: {stderr}"
    );
    assert!(!stdout.contains("dead:"), "no listing of the dead mount");
    assert!(stdout.contains("hello.txt"), "the local folder must list");
    assert_eq!(
        std::fs::read(dir.path().join("got.txt")).unwrap(),
        b"still here\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_the_mounted_prefix_passes_every_step() {
    // The policy of docs/providers.md without the empty prefix: listings only under a prefix.
    let srv = s3_support::s3s_server_prefix_only().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}mounts:\n  - {{ path: /in, remote: partner, prefix: inbound/ }}\n",
        remote_config(&srv.endpoint, &srv.bucket, &srv.access, &srv.secret)
    );
    let path = dir.path().to_path_buf();
    let (code, out) = tokio::task::spawn_blocking(move || remote_test(&path, &cfg, &[]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    line(&out, "ok    credentials and bucket");
    line(&out, "ok    list prefix inbound/");
    line(&out, "ok    put inbound/.bucketgate-probe-");
    assert!(out.contains("all steps passed"));
}

#[test]
fn kms_and_the_storage_class_are_checked_against_the_server() {
    // moto records SSE-KMS, its key, the Bucket Key and the storage class of an object, and
    // shows them in HEAD: the settings step passes and says what it checked.
    let moto = Moto::start();
    moto.create_bucket("probe-kms");
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_config(&moto.endpoint, "probe-kms", ACCESS_KEY, SECRET_KEY)
        + "    encryption: kms\n    kms_key_id: bucketgate-key-1\n    bucket_key: true\n    storage_class: STANDARD_IA\n";
    let (code, out) = remote_test(dir.path(), &cfg, &[]);
    assert_eq!(code, 0, "{out}");
    let step = line(&out, "ok    settings applied");
    assert!(
        step.contains(
            "encryption: kms, kms_key_id: bucketgate-key-1, bucket_key: true, storage_class: STANDARD_IA"
        ),
        "{step}"
    );
    assert!(out.contains("all steps passed"));
    assert_eq!(
        moto.keys("probe-kms"),
        Vec::<String>::new(),
        "probe objects left"
    );
}

#[test]
fn a_server_that_ignores_sse_c_fails_the_settings_step_and_the_key_is_never_printed() {
    // moto 5.2 accepts the SSE-C headers and serves the object without the key: the data is
    // not encrypted with it, and `remote test` must say so.
    let moto = Moto::start();
    moto.create_bucket("probe-ssec");
    let dir = tempfile::tempdir().unwrap();
    let key = ssec_key();
    let cfg = remote_config(&moto.endpoint, "probe-ssec", ACCESS_KEY, SECRET_KEY)
        + "    encryption: customer\n    customer_key_env: PROBE_SSEC_KEY\n";
    let (code, out, err) = remote_test_env(dir.path(), &cfg, &[("PROBE_SSEC_KEY", &key)]);
    assert_eq!(code, 1, "{out}");
    let step = line(&out, "FAIL  settings applied (encryption: customer");
    assert!(
        step.contains("can be read without the SSE-C key: the server ignores SSE-C"),
        "{step}"
    );
    // The other steps ran with the key and passed.
    for s in [
        "ok    put ",
        "ok    read back",
        "ok    server-side copy",
        "ok    multipart upload",
    ] {
        line(&out, s);
    }
    assert!(
        !out.contains(&key) && !err.contains(&key),
        "the key was printed"
    );
    assert_eq!(
        moto.keys("probe-ssec"),
        Vec::<String>::new(),
        "probe objects left"
    );

    // A key of the wrong size is a config error naming the variable, not the value.
    let short = &key[..24];
    let (code, out, err) = remote_test_env(dir.path(), &cfg, &[("PROBE_SSEC_KEY", short)]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("PROBE_SSEC_KEY") && err.contains("32 bytes"),
        "{err}"
    );
    assert!(
        !out.contains(short) && !err.contains(short),
        "the key was printed"
    );
}

/// On the env endpoint (Garage in CI: SSE-C implemented, storage classes ignored): SSE-C
/// passes, and a storage class the server does not record fails the settings step, named.
/// Without the endpoint, s3s-fs stands in: it refuses the class outright, and the failed put
/// names the setting.
#[test]
fn settings_on_env_endpoint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let srv = match s3_support::env_server() {
        Some(s) => s,
        None => {
            println!("NOTE: BUCKETGATE_TEST_S3_ENDPOINT is not set: running on s3s-fs");
            rt.block_on(s3_support::s3s_server(None))
        }
    };
    let garage = std::env::var("BUCKETGATE_TEST_S3_SERVER").as_deref() == Ok("garage");
    let dir = tempfile::tempdir().unwrap();
    let key = ssec_key();
    let mut cfg = remote_config(&srv.endpoint, &srv.bucket, &srv.access, &srv.secret)
        + "    encryption: customer\n    customer_key_env: PROBE_SSEC_KEY\n    storage_class: STANDARD_IA\n";
    if let Some(r) = &srv.region {
        cfg += &format!("    region: {r}\n");
    }
    let (code, out, _) = remote_test_env(dir.path(), &cfg, &[("PROBE_SSEC_KEY", &key)]);
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains(&key), "the key was printed");
    if !garage {
        let put = line(&out, "FAIL  put ");
        // s3s-fs refuses the class; a server that checks SSE-C's transport (an older MinIO
        // run by hand over http://) refuses the key first.
        assert!(
            put.contains("the server does not accept storage_class: STANDARD_IA")
                || put.contains("accept SSE-C only over https"),
            "{put}"
        );
        return;
    }
    let step = line(&out, "FAIL  settings applied");
    assert!(
        step.contains("storage_class — the object was stored as STANDARD, not STANDARD_IA"),
        "{step}"
    );
    // Garage encrypts with the key and refuses to serve the object without it.
    assert!(!step.contains("encryption: customer —"), "{step}");
    line(&out, "ok    read back");
    line(&out, "ok    server-side copy");
    line(&out, "ok    multipart upload");
}

/// A remote whose credentials come from `credentials` (no keys in the file).
fn sourced_config(endpoint: &str, bucket: &str, credentials: &str) -> String {
    format!(
        r#"storage: {{ type: local, root: ./files }}
log: {{ level: debug }}
remotes:
  - name: partner
    endpoint: {endpoint}
    bucket: {bucket}
    credentials: {credentials}
    timeouts: {{ connect: 5s, request: 20s }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_test_names_the_credential_source_and_never_shows_the_secret() {
    // s3s-fs checks every signature: the keys read from the environment must be exact.
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = sourced_config(&srv.endpoint, &srv.bucket, "{ source: env }");
    let path = dir.path().to_path_buf();
    let (access, secret) = (srv.access.clone(), srv.secret.clone());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        remote_test_env(
            &path,
            &cfg,
            &[
                ("AWS_ACCESS_KEY_ID", access.as_str()),
                ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
                ("RUST_LOG", "debug"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    line(&out, "ok    credentials from env");
    line(&out, "ok    multipart upload");
    assert!(
        !out.contains(&srv.secret) && !err.contains(&srv.secret),
        "the secret never shows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_test_says_why_each_source_of_the_chain_gave_nothing() {
    let srv = s3_support::s3s_server(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = sourced_config(&srv.endpoint, &srv.bucket, "{ source: chain }");
    let path = dir.path().to_path_buf();
    let home = dir.path().to_string_lossy().into_owned();
    // Nothing set up anywhere; instance metadata at a closed loopback port.
    let imds = format!("http://127.0.0.1:{}", bucketgate_testkit::free_port());
    let (code, out, _) = tokio::task::spawn_blocking(move || {
        remote_test_env(
            &path,
            &cfg,
            &[
                ("HOME", home.as_str()),
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("AWS_PROFILE", ""),
                ("AWS_SHARED_CREDENTIALS_FILE", ""),
                ("AWS_CONFIG_FILE", ""),
                ("AWS_ROLE_ARN", ""),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", ""),
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", ""),
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", ""),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.as_str()),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{out}");
    line(
        &out,
        "FAIL  credentials: no source gave credentials (chain); tried:",
    );
    for (source, why) in [
        (
            "env",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set",
        ),
        ("profile", "no such profile"),
        (
            "web_identity",
            "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE are not both set",
        ),
        ("container", "AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ("instance", "/latest/api/token"),
    ] {
        let l = line(&out, &format!("        {source}: "));
        assert!(l.contains(why), "{l}");
    }
    line(&out, "FAIL  credentials and bucket");
}
