//! FTP commands whose preparation meets a failing S3 server: refused with an error, and nothing
//! in the bucket changes. Found by the crash matrix (`e2e_crash`, seed 16244170049399206297): an
//! APPE whose size lookup failed while the server was down became a STOR from offset 0 once it
//! was back, so the file was replaced by the appended bytes alone, and the client was told 226.

use bucketgate_testkit::http_proxy::{Action, HttpProxy, Rule, Seen};
use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{assert_ok, curl};
use bucketgate_tests::gateway::{passive_range, run, Gateway};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const PASSWORD: &str = "alice-Password-9e2f";
const BUCKET: &str = "appends";

/// The file's size cannot be read while the append is prepared (the server answers the HEADs of
/// the relay's lookup, four attempts, with 503), and the server is back when the upload begins: `curl --append` must fail, and the file keep its bytes.
#[test]
fn an_append_whose_size_cannot_be_read_is_refused_and_changes_nothing() {
    const FAILED_HEADS: usize = 4;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    let failing = Arc::new(AtomicBool::new(false));
    let heads = Arc::new(AtomicUsize::new(0));
    let (f, h) = (failing.clone(), heads.clone());
    let rule: Rule = Arc::new(move |s: &Seen| {
        let fail = f.load(Ordering::SeqCst)
            && s.method == "HEAD"
            && s.target.contains("log.txt")
            && h.fetch_add(1, Ordering::SeqCst) < FAILED_HEADS;
        if fail {
            Action::Fail {
                status: 503,
                code: "ServiceUnavailable",
                retry_after: None,
            }
        } else {
            Action::Forward
        }
    });
    let proxy = rt.block_on(HttpProxy::start(moto.addr, rule));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, hash, _) = run(d, &["hash-password"], Some(&format!("{PASSWORD}\n")));
    std::fs::create_dir_all(d.join("files")).unwrap();
    let cfg = format!(
        r#"ftp: {{ listen: "127.0.0.1:0", passive_ports: "{passive}" }}
state_dir: ./data
storage: {{ type: local, root: ./files }}
remotes:
  - name: s3
    endpoint: http://{proxy}
    bucket: {BUCKET}
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
mounts:
  - {{ path: /m, remote: s3, prefix: p/ }}
users:
  - username: alice
    password_hash: "{hash}"
    home: /
    permissions: {{ "/": ["*"] }}
"#,
        passive = passive_range(),
        proxy = proxy.addr,
        hash = hash.trim(),
    );
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    let before: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    moto.put(BUCKET, "p/log.txt", &before);
    std::fs::write(d.join("more.txt"), b"appended line\n").unwrap();
    let gw = Gateway::start(d, &cfg, &["ftp"]);
    let url = format!("ftp://alice:{PASSWORD}@{}/m/log.txt", gw.addr("ftp"));

    failing.store(true, Ordering::SeqCst);
    let more = d.join("more.txt");
    let out = curl(&["--append", "-T", more.to_str().unwrap(), &url]);
    failing.store(false, Ordering::SeqCst);
    assert!(
        !out.status.success(),
        "the append was reported done although the file's size could not be read"
    );
    assert!(
        moto.get(BUCKET, "p/log.txt").as_deref() == Some(&before[..]),
        "the file changed: {:?} bytes now",
        moto.get(BUCKET, "p/log.txt").map(|b| b.len())
    );

    // With the server answering again, the same append works.
    let out = curl(&["--append", "-T", more.to_str().unwrap(), &url]);
    assert_ok("curl --append", &out);
    let mut after = before.clone();
    after.extend_from_slice(b"appended line\n");
    assert!(moto.get(BUCKET, "p/log.txt").as_deref() == Some(&after[..]));
}
