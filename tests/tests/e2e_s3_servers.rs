//! The main client flows through the real binary onto a mount on each of the three S3
//! implementations: s3s-fs (in process), moto, and the endpoint named by
//! `BUCKETGATE_TEST_S3_*` (Garage in CI, see scripts/test.sh). OpenSSH `sftp` (with resumed
//! transfers of a file of several parts), legacy `scp -r -p`, lftp and curl's FTP; every
//! result is read back from the bucket with an S3 client of its own, not through the gateway.
//!
//! A test server's known departures are its declared capabilities (storage/tests/s3_support):
//! s3s-fs keeps no empty folders (`markers`) and drops server-side part copies (`part_copy`),
//! so on it resumed uploads start from a part small enough to be sent again, and the folder
//! steps run on folders that hold files. Each such change is printed.

use crate::support;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::ErrorKind;
use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch};
use bucketgate_tests::gateway::{passive_range, require, Gateway};
use s3_support::{data, Server, MIB};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{HASH, PASSWORD};

/// The gateway's multipart part size here (`transfers.part_size`): the 20 MiB files span four or five parts.
const PART: usize = 5 * MIB;

/// One server under test, a gateway mounting it at `/s3`, and an S3 client of the bucket.
/// Fields drop in order: the gateway before the server it talks to, the runtime last.
struct Case {
    gw: Gateway,
    bucket: S3Backend,
    srv: Server,
    dir: tempfile::TempDir,
    key: PathBuf,
    /// Runs the in-process S3 server and the bucket reads, while the test thread drives
    /// blocking client programs.
    rt: tokio::runtime::Runtime,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Case {
    fn start(rt: tokio::runtime::Runtime, srv: Server) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = keygen(dir.path(), "k");
        let region = format!("region: \"{}\"", srv.region.clone().unwrap_or_default());
        let cfg = GatewayConfig::new()
            .sftp()
            .ftp(&passive_range())
            .section("transfers:\n  part_size: 5MiB")
            .remote(
                "under-test",
                &srv.endpoint,
                &srv.bucket,
                &srv.access,
                "${S3_SECRET}",
                &region,
            )
            .mount("/s3", "under-test", &srv.prefix)
            .user(User::new("alice", HASH).key(&public).home("/"))
            .yaml();
        let path = dir.path().join("bucketgate.yaml");
        std::fs::write(&path, cfg).unwrap();
        let gw = Gateway::spawn(
            dir.path(),
            &["serve", "--config", path.to_str().unwrap()],
            &["sftp", "ftp"],
            &[("S3_SECRET", &srv.secret)],
        );
        let bucket = {
            let _rt = rt.enter();
            srv.backend_with(|o| o.preserve_mtime = true)
        };
        Case {
            gw,
            bucket,
            srv,
            dir,
            key,
            rt,
        }
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }

    /// The object at `rel` under the mount's prefix, read with the test's own S3 client.
    fn object(&self, rel: &str) -> Option<Vec<u8>> {
        let k = self.srv.key(rel);
        self.rt.block_on(async {
            match self.bucket.stat(&k).await {
                Ok(_) => Some(s3_support::get(&self.bucket, &k).await),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => panic!("[{}] stat {k}: {e}", self.srv.name),
            }
        })
    }

    /// Asserts the bytes of the object at `rel` (without printing megabytes when they differ).
    fn assert_object(&self, rel: &str, want: &[u8]) {
        match self.object(rel) {
            Some(got) => assert!(
                got == want,
                "[{}] {rel}: {} bytes in the bucket, {} expected{}",
                self.srv.name,
                got.len(),
                want.len(),
                if got.len() == want.len() {
                    " (contents differ)"
                } else {
                    ""
                }
            ),
            None => panic!("[{}] {rel}: no such object in the bucket", self.srv.name),
        }
    }

    fn assert_absent(&self, rel: &str) {
        assert!(
            self.object(rel).is_none(),
            "[{}] {rel} should not be in the bucket",
            self.srv.name
        );
    }

    /// The client-set time the bucket keeps for `rel` (`mtime` metadata).
    fn mtime(&self, rel: &str) -> Option<SystemTime> {
        let k = self.srv.key(rel);
        self.rt
            .block_on(self.bucket.stat(&k))
            .unwrap_or_else(|e| panic!("[{}] stat {k}: {e}", self.srv.name))
            .mtime
    }

    /// No multipart upload left pending under the prefix (where the server can list them).
    fn no_pending_uploads(&self) {
        if self
            .srv
            .skip(!self.srv.caps.list_uploads, "pending multipart uploads")
        {
            return;
        }
        let pending = self
            .rt
            .block_on(self.bucket.list_multipart_uploads(&self.srv.prefix))
            .unwrap();
        assert!(
            pending.is_empty(),
            "[{}] uploads left pending: {pending:?}",
            self.srv.name
        );
    }

    fn sftp(&self, what: &str, batch: &str) -> Output {
        let out = sftp_batch(
            self.gw.addr("sftp"),
            "alice",
            &self.key,
            &format!("lcd {}\n{batch}", self.work().display()),
            self.work(),
        );
        assert_ok(&format!("[{}] sftp: {what}", self.srv.name), &out);
        out
    }

    fn ssh_opts(&self) -> Vec<String> {
        [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "ConnectTimeout=20",
        ]
        .iter()
        .flat_map(|o| ["-o".to_string(), o.to_string()])
        .chain([
            "-i".to_string(),
            self.key.display().to_string(),
            "-P".to_string(),
            self.gw.addr("sftp").port().to_string(),
        ])
        .collect()
    }

    /// Legacy-protocol scp (`-O`), recursive, keeping times.
    fn scp(&self, from: &str, to: &str) {
        require("scp");
        let out = Command::new("scp")
            .args(self.ssh_opts())
            .args(["-O", "-r", "-p", from, to])
            .output()
            .unwrap();
        assert_ok(
            &format!("[{}] scp -O -r -p {from} {to}", self.srv.name),
            &out,
        );
    }

    fn lftp(&self, script: &str) -> String {
        require("lftp");
        let ftp = self.gw.addr("ftp");
        // No ~/.lftprc or bookmarks: the test decides everything.
        let out = Command::new("lftp")
            .env("HOME", self.work())
            .arg("-c")
            .arg(format!(
                "set net:max-retries 1; set net:timeout 30; set cmd:fail-exit yes; \
                 set ftp:ssl-allow no; open -u alice,'{PASSWORD}' -p {} 127.0.0.1; {script}",
                ftp.port()
            ))
            .output()
            .unwrap();
        assert_ok(&format!("[{}] lftp", self.srv.name), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ftp_url(&self, path: &str) -> String {
        format!("ftp://alice:{PASSWORD}@{}/s3/{path}", self.gw.addr("ftp"))
    }

    fn curl(&self, what: &str, args: &[&str]) {
        let out = curl(args);
        assert_ok(&format!("[{}] curl {what}", self.srv.name), &out);
    }

    /// The size of the part already in the bucket when an upload is resumed: above S3's 5 MiB
    /// part minimum, so that the server copies it, where the server can (s3s-fs cannot).
    fn resumed_from(&self, big: usize, small: usize) -> usize {
        if self.srv.skip(
            !self.srv.caps.part_copy,
            "resuming from a part copied server-side (resumed from a small part instead)",
        ) {
            small
        } else {
            big
        }
    }

    fn run_all(&self) {
        self.sftp_flows();
        self.scp_flows();
        self.lftp_flows();
        self.curl_flows();
        self.no_pending_uploads();
        let log = self.gw.log_text();
        assert!(
            !log.contains(&self.srv.secret) && !log.contains(PASSWORD),
            "[{}] a secret is in the gateway's log",
            self.srv.name
        );
    }

    /// Where the server keeps no empty folders (s3s-fs), the folders a step creates are made
    /// to exist beforehand by a file in the deepest one, as another program would have put
    /// there; the step's own mkdir then finds them. True when that was done.
    fn pre_folders(&self, deepest: &str) -> bool {
        if self.srv.skip(
            !self.srv.caps.markers,
            "empty folders (made to exist by a file put beforehand)",
        ) {
            let k = self.srv.key(&format!("{deepest}/.keep"));
            self.rt.block_on(s3_support::put(&self.bucket, &k, b"", 1));
            return true;
        }
        false
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        let p = self.work().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.work().join(name)).unwrap()
    }

    // ------------------------------------------------------------ OpenSSH sftp

    fn sftp_flows(&self) {
        let small = b"a small file through sftp\n".to_vec();
        let big = data(20 * MIB + 11, 1);
        self.write("small.txt", &small);
        self.write("big.bin", &big);
        let seeded = self.pre_folders("sdir");
        let mkdir = if seeded { "" } else { "mkdir sdir\n" };
        let out = self.sftp(
            "put, mkdir, rename, ls, get",
            &format!(
                "cd /s3\nput small.txt\nput big.bin\n{mkdir}put small.txt sdir/inner.txt\n\
                 rename small.txt renamed.txt\nls -l\nget big.bin big.back\n"
            ),
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("renamed.txt") && listing.contains(&big.len().to_string()),
            "[{}] ls -l:\n{listing}",
            self.srv.name
        );
        self.assert_object("renamed.txt", &small);
        self.assert_absent("small.txt");
        self.assert_object("big.bin", &big);
        self.assert_object("sdir/inner.txt", &small);
        assert!(self.read("big.back") == big, "[{}] sftp get", self.srv.name);

        // An overwrite of the big file with other bytes replaces it whole.
        let big2 = data(20 * MIB - 3, 2);
        self.write("big2.bin", &big2);
        self.sftp("overwrite", "put big2.bin /s3/big.bin\n");
        self.assert_object("big.bin", &big2);

        let rmdir = if seeded {
            "rm sdir/.keep\n"
        } else {
            "rmdir sdir\n"
        };
        self.sftp(
            "rm, rmdir",
            &format!("cd /s3\nrm renamed.txt\nrm sdir/inner.txt\n{rmdir}"),
        );
        self.assert_absent("renamed.txt");
        self.assert_absent("sdir/inner.txt");
        if !seeded {
            let k = self.srv.key("sdir");
            let gone = self.rt.block_on(self.bucket.stat(&k));
            assert_eq!(
                gone.map(|e| e.name).unwrap_err().kind(),
                ErrorKind::NotFound,
                "[{}] rmdir",
                self.srv.name
            );
        }

        // reput: an interrupted upload (its first part, kept as a file) resumed to the end.
        let full = data(20 * MIB + 5, 3);
        let done = self.resumed_from(12 * MIB + 1, 3 * MIB);
        self.write("full.bin", &full);
        self.write("partial.bin", &full[..done]);
        self.sftp("put the partial file", "put partial.bin /s3/resumed.bin\n");
        self.assert_object("resumed.bin", &full[..done]);
        self.sftp("reput", "reput full.bin /s3/resumed.bin\n");
        self.assert_object("resumed.bin", &full);

        // reget: a download resumed from a local partial file.
        self.write("down.bin", &full[..7 * MIB + 3]);
        self.sftp("reget", "reget /s3/resumed.bin down.bin\n");
        assert!(
            self.read("down.bin") == full,
            "[{}] reget result differs",
            self.srv.name
        );
    }

    // ------------------------------------------------------------ legacy scp

    fn scp_flows(&self) {
        let tree = self.work().join("tree");
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("top.txt", b"top".to_vec()),
            ("sub/a.bin", data(PART + MIB + 17, 4)),
            ("sub/deeper/b.txt", b"deep".to_vec()),
            ("sub/empty.txt", Vec::new()),
        ];
        for (p, d) in &files {
            self.write(&format!("tree/{p}"), d);
        }
        // An old time, to see -p carry it both ways.
        let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        std::fs::File::options()
            .write(true)
            .open(tree.join("top.txt"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        self.pre_folders("tree/sub/deeper");
        self.scp(tree.to_str().unwrap(), "alice@127.0.0.1:/s3/");
        for (p, d) in &files {
            self.assert_object(&format!("tree/{p}"), d);
        }
        assert_eq!(
            self.mtime("tree/top.txt"),
            Some(t),
            "[{}] scp -p time in the bucket",
            self.srv.name
        );

        let back = self.work().join("back");
        std::fs::create_dir_all(&back).unwrap();
        self.scp("alice@127.0.0.1:/s3/tree", back.to_str().unwrap());
        for (p, d) in &files {
            assert!(
                std::fs::read(back.join("tree").join(p)).unwrap() == *d,
                "[{}] scp download of {p}",
                self.srv.name
            );
        }
        let got = std::fs::metadata(back.join("tree/top.txt"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(got, t, "[{}] scp -p time downloaded", self.srv.name);
    }

    // ------------------------------------------------------------ lftp

    fn lftp_flows(&self) {
        let w = self.work().join("lftp");
        let two = data(PART + 3 * MIB, 5);
        self.write("lftp/single.txt", b"single");
        self.write("lftp/tree/one.txt", b"one");
        self.write("lftp/tree/sub/two.bin", &two);
        let w = w.display();
        self.pre_folders("ltree/sub");
        let out = self.lftp(&format!(
            "cd /s3; \
             put {w}/single.txt -o single.txt; \
             get single.txt -o {w}/back.txt; \
             mirror -R {w}/tree ltree; \
             mv single.txt lrenamed.txt; \
             rm ltree/one.txt; \
             mirror ltree {w}/mirrored; \
             cls -1"
        ));
        assert!(out.contains("lrenamed.txt"), "[{}] {out}", self.srv.name);
        assert_eq!(self.read("lftp/back.txt"), b"single");
        self.assert_object("lrenamed.txt", b"single");
        self.assert_absent("single.txt");
        self.assert_absent("ltree/one.txt");
        self.assert_object("ltree/sub/two.bin", &two);
        assert!(
            self.read("lftp/mirrored/sub/two.bin") == two,
            "[{}] lftp mirror down",
            self.srv.name
        );
        assert!(
            !self.work().join("lftp/mirrored/one.txt").exists(),
            "[{}] the removed file came back",
            self.srv.name
        );
    }

    // ------------------------------------------------------------ curl over FTP

    fn curl_flows(&self) {
        let full = data(2 * PART + 5, 6);
        let done = self.resumed_from(6 * MIB, MIB);
        self.write("c-full.bin", &full);
        self.write("c-part.bin", &full[..done]);
        let path = |n: &str| self.work().join(n).display().to_string();

        // A resumed upload: curl asks SIZE and sends the rest with APPE.
        self.curl(
            "upload of the first part",
            &["-T", &path("c-part.bin"), &self.ftp_url("c-resume.bin")],
        );
        self.assert_object("c-resume.bin", &full[..done]);
        self.curl(
            "-C - upload",
            &[
                "-C",
                "-",
                "-T",
                &path("c-full.bin"),
                &self.ftp_url("c-resume.bin"),
            ],
        );
        self.assert_object("c-resume.bin", &full);

        // A resumed download: REST and RETR from the local size.
        self.write("c-down.bin", &full[..1000]);
        self.curl(
            "-C - download",
            &[
                "-C",
                "-",
                "-o",
                &path("c-down.bin"),
                &self.ftp_url("c-resume.bin"),
            ],
        );
        assert!(
            self.read("c-down.bin") == full,
            "[{}] curl resumed download",
            self.srv.name
        );

        // --append (APPE) to a small file, and to the big one where the server copies parts.
        self.write("c-first.txt", b"first");
        self.write("c-tail.txt", b" and more");
        self.curl(
            "upload",
            &["-T", &path("c-first.txt"), &self.ftp_url("c-log.txt")],
        );
        self.curl(
            "--append",
            &[
                "--append",
                "-T",
                &path("c-tail.txt"),
                &self.ftp_url("c-log.txt"),
            ],
        );
        self.assert_object("c-log.txt", b"first and more");
        if !self
            .srv
            .skip(!self.srv.caps.part_copy, "--append to a 10 MiB object")
        {
            self.curl(
                "--append to the big file",
                &[
                    "--append",
                    "-T",
                    &path("c-tail.txt"),
                    &self.ftp_url("c-resume.bin"),
                ],
            );
            let mut want = full.clone();
            want.extend_from_slice(b" and more");
            self.assert_object("c-resume.bin", &want);
        }
    }
}

#[test]
fn clients_on_s3s_fs() {
    let rt = runtime();
    let srv = rt.block_on(s3_support::s3s_server(None));
    Case::start(rt, srv).run_all();
}

#[test]
fn clients_on_moto() {
    let rt = runtime();
    let srv = rt.block_on(s3_support::moto_server());
    Case::start(rt, srv).run_all();
}

/// `BUCKETGATE_TEST_S3_ENDPOINT` (and _BUCKET, _ACCESS_KEY, _SECRET_KEY, _REGION) name any
/// other S3 server: Garage in CI. Unset, the case still runs, on s3s-fs answering like a
/// server with its own region (as Garage and AWS do) while the remote's region is left blank,
/// so that the flows also pass through the one region retry; it says so.
#[test]
fn clients_on_env_endpoint() {
    let rt = runtime();
    let srv = match s3_support::env_server() {
        Some(srv) => srv,
        None => {
            println!(
                "NOTE: BUCKETGATE_TEST_S3_ENDPOINT is not set: the env endpoint case runs on \
                 s3s-fs with a required region 'garage' and a blank region in the config"
            );
            let mut srv = rt.block_on(s3_support::s3s_server(Some("garage")));
            srv.region = None;
            srv
        }
    };
    Case::start(rt, srv).run_all();
}
