//! Buckets written by others (issue 15, item 4; docs/objects.md, "Buckets written by others"):
//! random keys of any bytes S3 accepts (separators, `//`, backslashes, `..\b` as one name,
//! control characters, long names, NFC beside NFD, a file `a` beside keys under `a/`, folder
//! markers with content) are written straight into the bucket. Then, through the user's view
//! that both protocols use (paths resolved from the names as a client sends them back):
//!
//! - every name listed round-trips: stat, read, rename and remove act on exactly its own key,
//!   checked in the bucket after each (every key written is read back);
//! - every key not listed is logged as skipped (or as a file hidden by a folder of the same
//!   name), and no key is logged twice in one walk of the tree.
//!
//! Runs on s3s-fs, moto and, with `BUCKETGATE_TEST_S3_*` set, that endpoint (scripts/test.sh
//! runs it against Garage). `FOREIGN_SEEDS=<n>` sets how many random key sets per server;
//! `FOREIGN_SEED=<seed>` replays one.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::{Area, ErrorKind, Permissions, Tree, UserFs, VPath};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use s3_support::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One name segment of a key: plain, colliding, or one that cannot be a path.
fn segment(rng: &mut StdRng) -> String {
    match rng.random_range(0..24) {
        0..=3 => "a".into(),
        4 | 5 => "b".into(),
        6 => "sp ace".into(),
        7 => "\u{e9}".into(),   // é, NFC
        8 => "e\u{301}".into(), // é, NFD
        9 => ".".into(),
        10 => "..".into(),
        11 => String::new(), // `//`
        12 => "back\\slash".into(),
        13 => "..\\b".into(),
        14 => "c\u{1}d".into(),
        15 => "t\tab".into(),
        16 => "cr\rx".into(),
        17 => "del\u{7f}".into(),
        18 => "l".repeat(255),
        19 => "L".repeat(256),
        20 => "ünï".into(),
        21 => "-".into(),
        22 => "%41+".into(),
        _ => "a.b".into(),
    }
}

/// A random set of keys (relative to the set's folder) with their bytes.
fn keys(seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for i in 0..rng.random_range(6..16) {
        let n = rng.random_range(1..=3);
        let mut k: Vec<String> = (0..n).map(|_| segment(&mut rng)).collect();
        // A marker (with content, sometimes), or a file.
        if rng.random_bool(0.2) {
            k.push(String::new());
        }
        let key = k.join("/");
        if key.is_empty() || key == "/" {
            continue;
        }
        let len = rng.random_range(0..12);
        out.insert(key, data(len, seed * 100 + i));
    }
    out
}

/// Warnings of the listing code, captured: (message, key or name field).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(String, String)>>>);

struct Fields {
    message: String,
    key: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        match f.name() {
            "key" | "name" => self.key = Some(v.to_string()),
            "message" => self.message = v.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        match f.name() {
            "message" => self.message = format!("{v:?}"),
            // `key = ?key`: the Debug form of a string, read back.
            "key" | "name" => {
                let s = format!("{v:?}");
                self.key = Some(unescape(&s).unwrap_or(s));
            }
            _ => {}
        }
    }
}

/// The string whose Rust Debug form is `s` (quoted, escaped), when it is one.
fn unescape(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            '\\' => out.push('\\'),
            '"' => out.push('"'),
            '\'' => out.push('\''),
            'u' => {
                let hex: String = it.by_ref().skip(1).take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields {
            message: String::new(),
            key: None,
        };
        e.record(&mut f);
        if let Some(k) = f.key {
            self.0.lock().unwrap().push((f.message, k));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Captured {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The object at `key`, straight from the bucket; None when there is none.
async fn try_raw(b: &S3Backend, key: &str) -> Result<Option<Vec<u8>>, String> {
    let mut s = match b.read(key, 0, None).await {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("GET {key:?}: {e}")),
    };
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.map_err(|e| format!("GET {key:?}: {e}"))?);
    }
    Ok(Some(out))
}

async fn raw(b: &S3Backend, key: &str) -> Option<Vec<u8>> {
    try_raw(b, key).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Every key the set holds now must hold its bytes, and nothing else may be at the keys it
/// removed (`gone`).
async fn check_bucket(
    srv: &Server,
    b: &S3Backend,
    base: &str,
    want: &BTreeMap<String, Vec<u8>>,
    gone: &[String],
    after: &str,
) {
    for (k, bytes) in want {
        // s3s-fs keeps markers as directories: their content cannot be read back there.
        let got = raw(b, &format!("{base}{k}")).await;
        assert_eq!(
            got.as_ref(),
            Some(bytes),
            "[{}] after {after}: key {k:?} changed",
            srv.name
        );
    }
    for k in gone {
        assert_eq!(
            raw(b, &format!("{base}{k}")).await,
            None,
            "[{}] after {after}: key {k:?} is still there",
            srv.name
        );
    }
}

/// Walks the user's view from `dir` (one listing per folder): (path, folder?, size).
async fn walk(fs: &UserFs, dir: &str) -> Vec<(String, bool, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        let mut pages = fs.list(&VPath::parse(&d).unwrap()).await.unwrap();
        while let Some(p) = pages.next().await {
            for e in p.unwrap() {
                // The name as a client sends it back, resolved the way the protocols do.
                let path = fs
                    .resolve(&VPath::parse(&d).unwrap(), &e.name)
                    .unwrap_or_else(|err| {
                        panic!("listed name {:?} does not resolve: {err}", e.name)
                    })
                    .to_string();
                assert_eq!(
                    path,
                    format!("{d}/{}", e.name),
                    "the listed name {:?} resolves elsewhere",
                    e.name
                );
                if e.is_dir() {
                    todo.push(path.clone());
                }
                out.push((path, e.is_dir(), e.size));
            }
        }
    }
    out.sort();
    out
}

async fn one_set(srv: &Server, cap: &Captured, seed: u64) {
    let b = srv.backend();
    let set = format!("f{seed}");
    let base = srv.key(&format!("{set}/"));
    // Written straight into the bucket; a key this server refuses is left out.
    let mut want = BTreeMap::new();
    for (k, bytes) in keys(seed) {
        // s3s-fs keeps markers as hidden directories, and stores a key as a file (plus a
        // temporary file with a longer name): leave out what it cannot hold verbatim.
        // (`a//b` and `a/./b` reach the file of `a/b` there.)
        let long = k.split('/').any(|seg| seg.len() > 200);
        let folded = k.starts_with('/')
            || k.contains("//")
            || k.split('/').any(|seg| seg == "." || seg == "..");
        // Our S3 client sends `.` and `..` segments as they are (SigV4 leaves them unencoded)
        // and moto folds them in the URL path, so such a key would be written as another one:
        // they are left out everywhere (the listing's own rule for them is unit-tested in
        // storage/src/path.rs).
        let dots = k.split('/').any(|seg| seg == "." || seg == "..");
        if dots
            || (k.ends_with('/') && !srv.caps.markers)
            || ((long || folded) && !srv.caps.raw_keys)
        {
            continue;
        }
        let r = put_with(
            &b,
            &format!("{base}{k}"),
            &bytes,
            1 << 20,
            Default::default(),
        )
        .await;
        match r {
            Ok(_) => {
                want.insert(k, bytes);
            }
            Err(e) => {
                println!("[{}] the server refused the key {k:?}: {e}", srv.name);
                // s3s-fs may leave a file behind a failed PUT: whatever is there counts.
                if let Ok(Some(left)) = try_raw(&b, &format!("{base}{k}")).await {
                    want.insert(k, left);
                }
            }
        }
    }
    // Keep only what the server holds verbatim (s3s-fs maps keys to files: `a` beside `a/b`,
    // `.` and `..` do not survive there).
    let mut kept = BTreeMap::new();
    for (k, bytes) in want {
        if k.ends_with('/') && !srv.caps.markers {
            println!(
                "[{}] markers are hidden directories here: {k:?} left out",
                srv.name
            );
            continue;
        }
        match try_raw(&b, &format!("{base}{k}")).await {
            Ok(Some(got)) if got == bytes => {
                kept.insert(k, bytes);
            }
            _ => println!(
                "[{}] the server did not keep the key {k:?} as written",
                srv.name
            ),
        }
    }
    let mut want = kept;
    let site = Area {
        backend: Arc::new(srv.backend()),
        prefix: srv.prefix.clone(),
    };
    let fs = UserFs::new(
        Arc::new(Tree::new(site, Vec::new())),
        "alice",
        VPath::root(),
        Permissions::all(),
    );
    let root = format!("/{set}");
    if want.is_empty() {
        // Every key of the set was left out or refused here. Where nothing of it is left in
        // the bucket there is no folder to walk, and the view must say so.
        if let Err(e) = fs.stat(&VPath::parse(&root).unwrap()).await {
            assert_eq!(
                e.kind(),
                ErrorKind::NotFound,
                "[{}] stat {root}: {e}",
                srv.name
            );
            println!("[{}] seed {seed}: no key of the set is held here", srv.name);
            return;
        }
    }
    cap.take();
    let listed = walk(&fs, &root).await;
    let logged = cap.take();
    // Logged once: no key twice in one walk.
    let mut seen = BTreeMap::new();
    for (msg, k) in &logged {
        *seen.entry((msg.clone(), k.clone())).or_insert(0) += 1;
    }
    for ((msg, k), n) in &seen {
        assert_eq!(*n, 1, "[{}] {msg:?} logged {n} times for {k:?}", srv.name);
    }
    // Every key is listed (a file, or a folder on the way to it) or logged.
    let listed_rel: Vec<(String, bool)> = listed
        .iter()
        .map(|(p, d, _)| (p[root.len() + 1..].to_string(), *d))
        .collect();
    let mut skipped = 0;
    for k in want.keys() {
        let (path, marker) = match k.strip_suffix('/') {
            Some(p) => (p, true),
            None => (k.as_str(), false),
        };
        if listed_rel.iter().any(|(p, d)| p == path && *d == marker) {
            continue;
        }
        // Where the server does not URL-encode listed keys (the probe's `list_url_encoding`),
        // the listing is plain XML, which reads a carriage return as a line feed: a key holding
        // one is logged under that form (it is skipped either way, as a control character).
        let exact = format!("{base}{k}");
        let full = if srv.probed.as_ref().is_some_and(|c| c.list_url_encoding) {
            exact
        } else {
            exact.replace("\r\n", "\n").replace('\r', "\n")
        };
        let logged_it = logged.iter().any(|(msg, lk)| {
            // A skipped key, or the folder prefix it lies under; or a file hidden by a folder.
            (msg.contains("skipping") && (full == *lk || full.starts_with(lk.as_str())))
                || (msg.contains("hiding the file") && *lk == format!("{base}{path}"))
        });
        assert!(
            logged_it,
            "[{}] key {k:?} is neither listed nor logged as skipped:\n  listed {listed_rel:?}\n  logged {logged:?}",
            srv.name
        );
        skipped += 1;
    }
    // Every listed file round-trips on exactly its key.
    let mut moved = 0;
    for (path, is_dir, size) in &listed {
        let rel = &path[root.len() + 1..];
        let p = VPath::parse(path).unwrap();
        let st = fs
            .stat(&p)
            .await
            .unwrap_or_else(|e| panic!("stat {path:?}: {e}"));
        assert_eq!(st.is_dir(), *is_dir, "[{}] stat {path:?}", srv.name);
        if *is_dir {
            continue;
        }
        let bytes = want
            .get(rel)
            .unwrap_or_else(|| panic!("[{}] listed {rel:?}, never written", srv.name))
            .clone();
        assert_eq!((st.size, *size), (bytes.len() as u64, bytes.len() as u64));
        let mut r = fs.open_read(&p).await.unwrap();
        let got = r.read_at(0, 1 << 20).await.unwrap();
        assert_eq!(got.as_ref(), &bytes[..], "[{}] read {path:?}", srv.name);
        let to = format!("{}/moved{moved}", &path[..path.rfind('/').unwrap()]);
        fs.rename(&p, &VPath::parse(&to).unwrap(), false)
            .await
            .unwrap_or_else(|e| panic!("rename {path:?}: {e}"));
        want.remove(rel);
        let to_rel = to[root.len() + 1..].to_string();
        want.insert(to_rel.clone(), bytes);
        check_bucket(
            srv,
            &b,
            &base,
            &want,
            &[rel.to_string()],
            &format!("rename of {rel:?}"),
        )
        .await;
        fs.remove(&VPath::parse(&to).unwrap())
            .await
            .unwrap_or_else(|e| panic!("remove {to:?}: {e}"));
        want.remove(&to_rel);
        check_bucket(
            srv,
            &b,
            &base,
            &want,
            std::slice::from_ref(&to_rel),
            &format!("remove of {to_rel:?}"),
        )
        .await;
        moved += 1;
    }
    println!(
        "[{}] seed {seed}: {} keys, {} listed entries, {moved} files moved and removed, {skipped} skipped",
        srv.name,
        want.len() + moved,
        listed.len()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn every_listed_name_round_trips_and_the_rest_is_logged() {
    // In a process of its own: the warnings are caught by a subscriber of this thread, and in
    // the one test binary other tests' subscribers and callsites came first (a fixed seed that
    // passes alone once missed a warning there).
    if !bucketgate_testkit::alone(
        module_path!(),
        "every_listed_name_round_trips_and_the_rest_is_logged",
    ) {
        return;
    }
    // The listing code's warnings, for this thread (the runtime has no other).
    let cap = Captured::default();
    let _g = tracing::subscriber::set_default(cap.clone());
    let fresh: u64 = std::env::var("FOREIGN_SEEDS")
        .ok()
        .map(|v| v.parse().expect("FOREIGN_SEEDS"))
        .unwrap_or(4);
    // `FOREIGN_SEED=<seed>` replays one set (a seed printed by a failed run).
    let mut seeds: Vec<u64> = match std::env::var("FOREIGN_SEED") {
        Ok(v) => vec![v.parse().expect("FOREIGN_SEED")],
        Err(_) => (1..=8).collect(),
    };
    if seeds.len() > 1 {
        seeds.extend((0..fresh).map(|_| rand::random::<u32>() as u64));
    }
    println!("seeds: {seeds:?}");
    for srv in servers().await {
        for &seed in &seeds {
            one_set(&srv, &cap, seed).await;
        }
    }
}
