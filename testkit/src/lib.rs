//! What the integration tests of every crate share, so that each is written once: real S3
//! servers on loopback ([`s3`], [`moto`]), an HTTP proxy that injects faults and latency
//! between the S3 client and its server ([`http_proxy`]), a raw FTP control connection
//! ([`ftp`]), the SSH client handler for the tests' own servers ([`ssh`]), the external programs
//! the tests need ([`tools`]: a missing one fails the test) and a gateway config builder
//! ([`gateway_config`]), and a load generator of many concurrent sessions ([`load`]).
//!
//! Each crate's tests are one test binary (`tests/lib.rs`, one module per former test file),
//! so a change relinks one binary per crate. A test that measures the whole process (peak RSS)
//! runs in a process of its own through [`alone`].

pub mod creds;
pub mod ftp;
pub mod gateway_config;
pub mod heap;
pub mod http_proxy;
pub mod latency;
pub mod load;
pub mod moto;
pub mod postgres;
pub mod s3;
pub mod s3s_atomic;
pub mod ssh;
pub mod tools;

/// A loopback port free at the time of the call (for servers that must be told a port).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Runs the calling test in a process of its own, for what is measured on the whole process
/// (peak RSS) and would be disturbed by the tests running beside it in the one test binary.
///
/// Call it first thing as `if !alone(module_path!(), "test_fn_name") { return; }`: in the
/// test binary it runs that one test again in a child process of the same binary, shows its
/// output and fails when the child fails, and returns false; in the child it returns true and
/// the test goes on.
pub fn alone(module: &str, test: &str) -> bool {
    const ENV: &str = "BUCKETGATE_TEST_ALONE";
    // `module_path!()` starts with the test binary's crate name; libtest's names do not.
    let name = match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{test}"),
        None => test.to_string(),
    };
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, &name)
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{name} failed in its own process ({})",
        out.status
    );
    // The child must have run exactly this test: a filter that matched nothing passes too.
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process"
    );
    false
}
