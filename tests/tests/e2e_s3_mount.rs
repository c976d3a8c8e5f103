//! A mount onto a real S3 server (moto), driven through the real binary by OpenSSH `sftp` and
//! `curl`, with the bucket read back by boto3: what lands in the bucket is what users sent.

use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch};
use bucketgate_tests::gateway::{passive_range, run, Gateway};

const PASSWORD: &str = "alice-Password-9f3e";

fn config(moto: &Moto, hash: &str, public_key: &str) -> String {
    GatewayConfig::new()
        .sftp()
        .ftp(&passive_range())
        .remote(
            "acme",
            &moto.endpoint,
            "exchange",
            ACCESS_KEY,
            "${ACME_SECRET}",
            "",
        )
        .mount("/partners/acme", "acme", "inbound/")
        .user(
            User::new("alice", hash)
                .key(public_key)
                .home("/")
                .allow("/", "\"*\"")
                .allow("/partners/acme/archive", "list, download"),
        )
        .yaml()
}

#[test]
fn sftp_and_ftp_through_a_mount_land_in_the_bucket() {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    moto.put("exchange", "inbound/archive/report.csv", b"a,b\n1,2\n");
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "alice_key");
    let (_, hash, _) = run(
        dir.path(),
        &["hash-password"],
        Some(&format!("{PASSWORD}\n")),
    );
    let cfg = config(&moto, hash.trim(), &public);
    std::fs::write(dir.path().join("bucketgate.yaml"), &cfg).unwrap();
    let gw = Bucketgate::start(dir.path());
    let sftp = gw.0.addr("sftp");
    let ftp = gw.0.addr("ftp");

    // SFTP: a small file, a multipart-sized file, folders, rename, remove.
    let small = b"hello bucket".to_vec();
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("small.txt"), &small).unwrap();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "cd /partners/acme\nput small.txt\nput big.bin\nmkdir newdir\nput small.txt newdir/copy.txt\nrename small.txt renamed.txt\nls -l\n",
        dir.path(),
    );
    assert_ok("sftp session", &out);
    assert_eq!(moto.get("exchange", "inbound/renamed.txt").unwrap(), small);
    assert_eq!(moto.get("exchange", "inbound/small.txt"), None);
    assert_eq!(moto.get("exchange", "inbound/big.bin").unwrap(), big);
    assert_eq!(
        moto.get("exchange", "inbound/newdir/copy.txt").unwrap(),
        small
    );
    assert!(moto
        .keys("exchange")
        .contains(&"inbound/newdir/".to_string()));
    assert_eq!(moto.pending_uploads("exchange"), 0);

    // A file written into the bucket by another program is served.
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "get /partners/acme/archive/report.csv report.csv\n",
        dir.path(),
    );
    assert_ok("sftp get", &out);
    assert_eq!(
        std::fs::read(dir.path().join("report.csv")).unwrap(),
        b"a,b\n1,2\n"
    );

    // The read-only folder refuses an upload and leaves nothing behind.
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "put small.txt /partners/acme/archive/nope.txt\n",
        dir.path(),
    );
    assert!(!out.status.success());
    assert_eq!(moto.get("exchange", "inbound/archive/nope.txt"), None);

    // FTP: upload, download, delete.
    let up = curl(&[
        "-T",
        dir.path().join("small.txt").to_str().unwrap(),
        &format!("ftp://alice:{PASSWORD}@{ftp}/partners/acme/via-ftp.txt"),
    ]);
    assert_ok("curl ftp upload", &up);
    assert_eq!(moto.get("exchange", "inbound/via-ftp.txt").unwrap(), small);
    let down = curl(&[&format!(
        "ftp://alice:{PASSWORD}@{ftp}/partners/acme/big.bin"
    )]);
    assert_ok("curl ftp download", &down);
    assert!(
        down.stdout == big,
        "download differs ({} bytes)",
        down.stdout.len()
    );
    let del = curl(&[
        "-Q",
        "DELE partners/acme/via-ftp.txt",
        &format!("ftp://alice:{PASSWORD}@{ftp}/"),
    ]);
    assert_ok("curl ftp delete", &del);
    assert_eq!(moto.get("exchange", "inbound/via-ftp.txt"), None);

    // A folder does not move across the mount's edge: 550 with the reason, nothing moved. It
    // was 502 "Command not implemented", which tells a client RNTO does not exist at all.
    std::fs::create_dir_all(dir.path().join("files/site-folder")).unwrap();
    let mv = curl(&[
        "-v",
        "-Q",
        "RNFR site-folder",
        "-Q",
        "RNTO partners/acme/site-folder",
        &format!("ftp://alice:{PASSWORD}@{ftp}/"),
    ]);
    let said = String::from_utf8_lossy(&mv.stderr);
    assert!(!mv.status.success(), "{said}");
    assert!(
        said.contains(
            "< 550 rename /site-folder: folders cannot be moved between the site tree and a"
        ),
        "{said}"
    );
    assert!(dir.path().join("files/site-folder").is_dir());
    assert_eq!(moto.get("exchange", "inbound/site-folder/"), None);

    // No secret in anything the gateway wrote.
    let log = gw.0.log_text();
    for secret in [SECRET_KEY, PASSWORD] {
        assert!(!log.contains(secret), "secret in the log");
    }
}

/// Starts the gateway with the remote's secret given through the environment.
struct Bucketgate(Gateway);

impl Bucketgate {
    fn start(dir: &std::path::Path) -> Bucketgate {
        let cfg = dir.join("bucketgate.yaml");
        Bucketgate(Gateway::spawn(
            dir,
            &["serve", "--config", cfg.to_str().unwrap()],
            &["sftp", "ftp"],
            &[("ACME_SECRET", SECRET_KEY)],
        ))
    }
}
