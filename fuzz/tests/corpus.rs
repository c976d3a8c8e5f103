//! Runs every fuzz property over its committed seed corpus (and any crash file saved under
//! fuzz/artifacts/), so the targets stay compiling and their seeds stay passing on stable Rust
//! without cargo-fuzz.

use std::path::Path;

fn each(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("artifacts").join(target),
    ] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_file() {
                check(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn vpath_seeds() {
    each("vpath", bucketgate_fuzz::vpath);
}

#[test]
fn config_seeds() {
    each("config", bucketgate_fuzz::config);
}

#[test]
fn scp_seeds() {
    each("scp", bucketgate_fuzz::scp);
}

#[test]
fn ftp_listing_seeds() {
    each("ftp_listing", bucketgate_fuzz::ftp_listing);
}

#[test]
fn proxy_seeds() {
    each("proxy", bucketgate_fuzz::proxy);
}
