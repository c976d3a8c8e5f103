//! How many S3 requests each user operation costs, counted by an HTTP proxy on loopback between
//! the real binary and a real S3 server (moto) 20 ms away (a latency proxy), with real clients (OpenSSH `sftp`, `curl`) and
//! `bucketgate sync run`. Across a WAN every request on the critical path is a round trip the
//! user waits for: the counts are held here so that none can be added unnoticed, and published
//! in bench/README.md ("Requests per operation").

use bucketgate_testkit::http_proxy;

use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch};
use bucketgate_tests::gateway::{passive_range, run, Gateway};
use http_proxy::{forward_all, HttpProxy, Seen};
use std::collections::BTreeMap;
use std::path::Path;

const PASSWORD: &str = "alice-Password-5c1d";
const BUCKET: &str = "counted";

/// The kind of one S3 request, from its method and query.
fn kind(s: &Seen) -> &'static str {
    match s.method.as_str() {
        "GET" if s.has_query("list-type") => "LIST",
        "GET" if s.has_query("uploads") => "LIST-UPLOADS",
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" if s.has_query("partNumber") => "PUT-PART",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// The remote watcher's request (admin: every 30 s, a one-key listing of each remote's prefix,
/// `p/` and `m/` here). No counted operation sends exactly this: a stat of a mount root costs
/// no request.
fn watcher(s: &Seen) -> bool {
    s.method == "GET"
        && [
            "/counted?list-type=2&max-keys=1&prefix=p%2F",
            "/counted?list-type=2&max-keys=1&prefix=m%2F",
        ]
        .contains(&s.target.as_str())
}

/// The requests since `from`, by kind. Left out, as no user operation's: the stale-upload
/// cleanup (a listing of pending multipart uploads, run at start in the background) and the
/// remote watcher, which a slow run (a loaded machine) meets in the middle of an operation.
fn counts(seen: &[Seen], from: usize) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for s in &seen[from..] {
        let k = kind(s);
        if k != "LIST-UPLOADS" && !watcher(s) {
            *m.entry(k).or_insert(0) += 1;
        }
    }
    m
}

fn show(seen: &[Seen], from: usize) -> String {
    seen[from..]
        .iter()
        .map(|s| format!("  {} {}", s.method, s.target))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Counter {
    proxy: HttpProxy,
    mark: usize,
    table: Vec<(String, BTreeMap<&'static str, usize>)>,
    /// Operations whose count differs from the expected one.
    wrong: Vec<String>,
}

impl Counter {
    /// Waits until the gateway's own start-up requests (probes, the stale-upload cleanup) are
    /// over: nothing new for a second.
    fn settle(&self) {
        let mut n = self.proxy.seen().len();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let now = self.proxy.seen().len();
            if now == n {
                return;
            }
            n = now;
        }
    }

    fn start(&mut self) {
        self.mark = self.proxy.seen().len();
    }

    /// Records the requests of the operation `what` since [`Counter::start`] and checks them.
    fn expect(&mut self, what: &str, want: &[(&'static str, usize)]) {
        // A request still on its way back from the server was counted on arrival already.
        let seen = self.proxy.seen();
        let got = counts(&seen, self.mark);
        let want: BTreeMap<&'static str, usize> = want.iter().copied().collect();
        println!("{what}: {got:?}\n{}", show(&seen, self.mark));
        self.table.push((what.to_string(), got.clone()));
        if got != want {
            self.wrong.push(format!(
                "`{what}`: {got:?}, expected {want:?}; all of them:\n{}",
                show(&seen, self.mark)
            ));
        }
    }
}

fn config(endpoint: &str, hash: &str, public_key: &str) -> String {
    let remote = |name: &str, pm: bool, extra: &str| {
        format!(
            "  - name: {name}\n    endpoint: {endpoint}\n    bucket: {BUCKET}\n    \
             access_key_id: {ACCESS_KEY}\n    secret_access_key: {SECRET_KEY}\n    \
             preserve_mtime: {pm}\n{extra}"
        )
    };
    format!(
        r#"sftp:
  listen: "127.0.0.1:0"
ftp:
  listen: "127.0.0.1:0"
  passive_ports: "{passive}"
state_dir: ./data
storage: {{ type: local, root: ./files }}
remotes:
{plain}{mtime}{marker}mounts:
  - {{ path: /plain, remote: plain, prefix: p/ }}
  - {{ path: /marker, remote: marker, prefix: p/ }}
  - {{ path: /mtime, remote: mtime, prefix: m/ }}
users:
  - username: alice
    password_hash: "{hash}"
    public_keys: ["{public_key}"]
    home: /
    permissions:
      "/": ["*"]
syncs:
  - {{ name: quiet, path: /sync/quiet, remote: mtime, prefix: s/, direction: push }}
"#,
        passive = passive_range(),
        plain = remote("plain", false, ""),
        mtime = remote("mtime", true, ""),
        marker = remote("marker", false, "    folder_times: marker\n"),
    )
}

/// Seeds `files` small objects and `folders` folders (a marker and one file each) under
/// `prefix`, in one boto3 session.
fn seed(moto: &Moto, prefix: &str, files: usize, folders: usize) {
    moto.py(&format!(
        "for i in range({files}):\n  s3.put_object(Bucket='{BUCKET}', Key='{prefix}f%03d' % i, Body=b'x')\n\
         for i in range({folders}):\n  s3.put_object(Bucket='{BUCKET}', Key='{prefix}d%02d/' % i, Body=b'')\n  \
         s3.put_object(Bucket='{BUCKET}', Key='{prefix}d%02d/in' % i, Body=b'y')"
    ))
    .unwrap();
}

fn sftp(gw: &Gateway, key: &Path, dir: &Path, batch: &str) {
    let out = sftp_batch(gw.addr("sftp"), "alice", key, batch, dir);
    assert_ok(batch, &out);
}

#[test]
fn s3_requests_per_operation() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    moto.create_bucket(BUCKET);
    // Across a WAN: 20 ms to moto and back (each lookup then costs a round trip worth
    // sparing; on loopback no listing is made for lookups, and the counts are those of a
    // session that makes none).
    let wan = rt
        .block_on(bucketgate_testkit::latency::LatencyProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            moto.addr,
            std::time::Duration::from_millis(10),
        ))
        .expect("latency proxy");
    let proxy = rt.block_on(HttpProxy::start(wan.addr, forward_all()));
    let endpoint = format!("http://{}", proxy.addr);
    let mut c = Counter {
        proxy,
        mark: 0,
        table: Vec::new(),
        wrong: Vec::new(),
    };

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "alice_key");
    let (_, hash, _) = run(d, &["hash-password"], Some(&format!("{PASSWORD}\n")));
    std::fs::create_dir_all(d.join("files/sync/quiet")).unwrap();
    for i in 0..20 {
        std::fs::write(d.join(format!("files/sync/quiet/q{i:02}")), b"quiet").unwrap();
    }
    let cfg = config(&endpoint, hash.trim(), &public);
    std::fs::write(d.join("bucketgate.yaml"), &cfg).unwrap();
    std::fs::write(d.join("small.txt"), b"a small file").unwrap();
    let gw = Gateway::start(d, &cfg, &["sftp", "ftp"]);
    let ftp = gw.addr("ftp");
    c.settle();

    // 1. OpenSSH `sftp put FILE DEST` of a new small file: the client STATs DEST (is it a
    //    folder?), then OPEN(WRITE|CREAT|TRUNC), WRITE, CLOSE.
    //    Mount root: the STAT (a listing and a HEAD at once), then the PutObject alone.
    c.start();
    sftp(&gw, &key, d, "put small.txt /plain/new1.txt\n");
    c.expect(
        "sftp put, mount root",
        &[("HEAD", 1), ("LIST", 1), ("PUT", 1)],
    );
    assert_eq!(
        moto.get(BUCKET, "p/new1.txt").as_deref(),
        Some(&b"a small file"[..])
    );
    //    Without a destination the client sends no STAT: the OPEN's own check and the PUT
    //    (a `cd` into a mount point costs nothing).
    c.start();
    sftp(&gw, &key, d, "cd /plain\nput small.txt\n");
    c.expect(
        "sftp put, no destination",
        &[("HEAD", 1), ("LIST", 1), ("PUT", 1)],
    );

    // 2. Into a folder made in the same session, four files one after the other: the mkdir
    //    (its stat, the backend's HEAD for a file of that name, the marker's PUT); per file
    //    the client's STAT and the PutObject, the new folder needing no check. The third
    //    STAT, after two names found missing in that folder, lists the folder beside its
    //    check; the fourth is answered from that listing, with no request.
    c.start();
    sftp(
        &gw,
        &key,
        d,
        "mkdir /plain/dir\nput small.txt /plain/dir/a.txt\nput small.txt /plain/dir/b.txt\n\
         put small.txt /plain/dir/c.txt\nput small.txt /plain/dir/d.txt\n",
    );
    c.expect(
        "sftp mkdir + 4 puts into it",
        &[("HEAD", 5), ("LIST", 5), ("PUT", 5)],
    );
    assert!(moto.get(BUCKET, "p/dir/d.txt").is_some());

    // 3. FTP STOR of a new small file (curl: CWD, then STOR).
    c.start();
    let up = curl(&[
        "-T",
        d.join("small.txt").to_str().unwrap(),
        &format!("ftp://alice:{PASSWORD}@{ftp}/plain/via-ftp.txt"),
    ]);
    assert_ok("curl ftp upload", &up);
    c.expect(
        "ftp STOR, mount root",
        &[("HEAD", 1), ("LIST", 1), ("PUT", 1)],
    );
    assert!(moto.get(BUCKET, "p/via-ftp.txt").is_some());

    //    lftp `mput` of 4 files (per file a STOR, then an MFMT with the local file's time):
    //    per file the open's check and the PutObject, the third check with the folder's
    //    listing beside it, which answers the fourth's; the MFMT of a file the session has just
    //    written sends nothing (`preserve_mtime: false` ignores the time).
    std::fs::create_dir_all(d.join("two")).unwrap();
    for f in ["one.txt", "two.txt", "three.txt", "four.txt"] {
        std::fs::write(d.join("two").join(f), b"lftp").unwrap();
    }
    c.start();
    let out = std::process::Command::new("lftp")
        .env("HOME", d)
        .current_dir(d.join("two"))
        .arg("-c")
        .arg(format!(
            "set net:max-retries 1; set cmd:fail-exit yes; set ftp:ssl-allow no; \
             open -u alice,'{PASSWORD}' -p {} 127.0.0.1; mput -O /plain/ one.txt two.txt three.txt four.txt",
            ftp.port()
        ))
        .output()
        .expect("lftp (scripts/install-test-tools.sh installs it)");
    assert_ok("lftp mput", &out);
    c.expect(
        "ftp lftp mput of 4 files (STOR + MFMT each)",
        &[("HEAD", 3), ("LIST", 4), ("PUT", 4)],
    );
    assert!(moto.get(BUCKET, "p/four.txt").is_some());

    // 4. `ls -l DIR` of 30 files and 5 folders: the client STATs DIR (a listing and a HEAD),
    //    and that listing request's page is the listing's first: one round trip in all; with
    //    `preserve_mtime` one HEAD per file, none per folder.
    seed(&moto, "p/list/", 30, 5);
    seed(&moto, "m/list/", 30, 5);
    c.start();
    sftp(&gw, &key, d, "ls -l /plain/list\n");
    c.expect("ls -l 30 files + 5 folders", &[("HEAD", 1), ("LIST", 1)]);
    //    With `folder_times: marker`, one HEAD per folder more (its marker's time).
    c.start();
    sftp(&gw, &key, d, "ls -l /marker/list\n");
    c.expect(
        "ls -l 30 files + 5 folders, folder_times: marker",
        &[("HEAD", 6), ("LIST", 1)],
    );
    c.start();
    sftp(&gw, &key, d, "ls -l /mtime/list\n");
    c.expect(
        "ls -l 30 files + 5 folders, preserve_mtime",
        &[("HEAD", 31), ("LIST", 1)],
    );

    // 5. A sync run with nothing to do (preserve_mtime on): the listing pages alone.
    let sync = |what: &str| {
        let (code, out, err) = run(
            d,
            &["sync", "run", "quiet", "--config", "bucketgate.yaml"],
            None,
        );
        assert_eq!(code, 0, "{what}: {out}\n{err}");
    };
    sync("first sync run");
    assert!(moto.get(BUCKET, "s/q19").is_some());
    c.start();
    sync("quiet sync run");
    c.expect("quiet sync run, 20 files", &[("LIST", 1)]);
    //    One file changed: its HEAD for the metadata time, and the copy.
    std::fs::write(d.join("files/sync/quiet/q07"), b"changed").unwrap();
    c.start();
    sync("sync run, one change");
    let seen = c.proxy.seen();
    println!("sync run, one changed file:\n{}", show(&seen, c.mark));
    let objects: Vec<&Seen> = seen[c.mark..]
        .iter()
        .filter(|s| !s.target.contains(".bucketgate-sync"))
        .collect();
    // No HEAD of an unchanged object; the changed one is checked and written once.
    let heads_of_others = objects
        .iter()
        .filter(|s| s.method == "HEAD" && !s.target.ends_with("/s/q07"))
        .count();
    assert_eq!(heads_of_others, 0, "{}", show(&seen, c.mark));
    let puts = objects.iter().filter(|s| s.method == "PUT").count();
    assert_eq!(puts, 1, "{}", show(&seen, c.mark));
    // One copy is not worth the probe of what the server enforces: a HEAD checks the target
    // just before the PUT, whose answer's ETag is recorded (no HEAD after it).
    let heads = objects.iter().filter(|s| s.method == "HEAD").count();
    assert_eq!(heads, 1, "{}", show(&seen, c.mark));
    assert_eq!(moto.get(BUCKET, "s/q07").as_deref(), Some(&b"changed"[..]));

    println!("\nS3 requests per operation:");
    for (what, m) in &c.table {
        println!("  {what:48} {m:?}");
    }
    assert!(
        c.wrong.is_empty(),
        "S3 requests per operation changed:\n{}",
        c.wrong.join("\n")
    );
}
