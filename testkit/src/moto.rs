//! moto (`moto_server`): an S3 server that follows AWS's semantics closely, as a subprocess on a
//! free loopback port. One launcher serves two uses:
//!
//! - [`shared`]: one server for every test of the process that runs at the same time (the S3
//!   backend's tests; each works under its own random prefix of the bucket `bucket`), killed
//!   when the last of them lets go of it;
//! - [`Moto::start`]: a server of the test's own (end-to-end tests that name buckets and list
//!   all their keys), read back with boto3 (installed with moto), an S3 client that is not
//!   ours, so the tests see the bucket as any other program would.
//!
//! A missing `moto_server` fails the test with what to install, like every other tool.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Access key the end-to-end tests give the gateway (moto accepts any).
pub const ACCESS_KEY: &str = "AKIAMOTOTESTKEY00001";
/// Secret key the end-to-end tests use; tests grep logs for it.
pub const SECRET_KEY: &str = "motoSecretKeyThatMustNeverBeLogged0000001";

/// Starts `moto_server` on a free loopback port and waits (at most 60 s) until it answers
/// HTTP. Panics, saying what to install, when it is not installed or does not come up.
///
/// The port is free when chosen and taken only when moto binds it: another server starting
/// beside it (the suite runs tests in parallel) may take it first, and moto then exits at once
/// ("Address already in use", status 1). So an exit at start is tried again on another port, a
/// few times, before it fails the test.
fn launch() -> (Child, SocketAddr) {
    crate::tools::require("moto_server");
    const TRIES: usize = 5;
    for attempt in 1..=TRIES {
        match launch_on(crate::free_port()) {
            Ok(up) => return up,
            Err(status) if attempt < TRIES => {
                eprintln!("moto_server exited at start ({status}); trying another port");
            }
            Err(status) => panic!("moto_server exited at start {TRIES} times, last: {status}"),
        }
    }
    unreachable!("the last try returns or panics")
}

/// Whether process `pid` holds the socket listening on loopback `port` (Linux's `/proc`; true
/// where that cannot be read).
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    // Lines: "sl local_address rem_address st ... uid timeout inode"; LISTEN is state 0A.
    let want = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    })
}

/// One start of `moto_server` on `port`; the exit status when it exits before it answers.
fn launch_on(port: u16) -> Result<(Child, SocketAddr), std::process::ExitStatus> {
    let mut child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Readiness: poll until it answers HTTP (bounded), never a fixed sleep. The answer must
    // come from this child: another moto that took the port first answers too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(addr, "GET", "/moto-api/").is_none_or(|status| status != 200)
        || !listens_on(child.id(), port)
    {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moto_server did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, addr))
}

/// One plain HTTP/1.1 request with an empty body; the status code, `None` when unreachable.
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The moto server shared by the tests of this process that run at the same time.
pub struct Shared {
    child: Mutex<Child>,
    pub addr: SocketAddr,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The shared server (started on first use, or again after the last user let go), with the
/// bucket `bucket` made.
pub fn shared() -> Arc<Shared> {
    static MOTO: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    // Held while starting, so that tests starting together share one server.
    let mut slot = MOTO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = slot.upgrade() {
        return m;
    }
    let (child, addr) = launch();
    let m = Arc::new(Shared {
        child: Mutex::new(child),
        addr,
    });
    // moto checks no signature: a plain request creates the bucket.
    let status = http(addr, "PUT", "/bucket");
    assert_eq!(status, Some(200), "moto: create bucket");
    *slot = Arc::downgrade(&m);
    m
}

/// A moto server of one test's own.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub fn start() -> Moto {
        let (child, addr) = launch();
        Moto {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        }
    }

    /// Runs python with `s3` bound to a boto3 client of this server.
    pub fn py(&self, code: &str) -> Result<String, String> {
        let prog = format!(
            "import boto3, botocore\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1', \
             config=botocore.config.Config(s3={{'addressing_style': 'path'}}))\n{code}\n",
            self.endpoint
        );
        let out = Command::new("python3")
            .args(["-c", &prog])
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("python3");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        self.py(&format!("s3.create_bucket(Bucket='{name}')"))
            .unwrap();
    }

    /// The bytes of an object, or None when it does not exist.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let out = self
            .py(&format!(
                "import sys\ntry:\n  b = s3.get_object(Bucket='{bucket}', Key={key:?})['Body'].read()\n  \
                 sys.stdout.write(b.hex())\nexcept s3.exceptions.NoSuchKey:\n  sys.stdout.write('NONE')"
            ))
            .unwrap();
        if out == "NONE" {
            None
        } else {
            Some(hex_decode(out.trim()))
        }
    }

    /// Writes an object directly (as another program would).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.py(&format!(
            "s3.put_object(Bucket='{bucket}', Key={key:?}, Body=bytes.fromhex('{hex}'))"
        ))
        .unwrap();
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self
            .py(&format!(
                "p = s3.get_paginator('list_objects_v2')\n\
                 for page in p.paginate(Bucket='{bucket}'):\n  \
                 for o in page.get('Contents', []): print(o['Key'])"
            ))
            .unwrap();
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        v
    }

    /// Multipart uploads still pending in the bucket.
    pub fn pending_uploads(&self, bucket: &str) -> usize {
        let out = self
            .py(&format!(
                "print(len(s3.list_multipart_uploads(Bucket='{bucket}').get('Uploads', [])))"
            ))
            .unwrap();
        out.trim().parse().unwrap()
    }

    /// The `mtime` metadata of an object.
    pub fn mtime_meta(&self, bucket: &str, key: &str) -> Option<String> {
        let out = self
            .py(&format!(
                "print(s3.head_object(Bucket='{bucket}', Key={key:?})['Metadata'].get('mtime', ''))"
            ))
            .unwrap();
        let t = out.trim();
        (!t.is_empty()).then(|| t.to_string())
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    /// The check that tells this child's server from another that took the port first.
    #[test]
    fn a_listening_socket_is_found_in_its_own_process_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(super::listens_on(std::process::id(), port));
        // A child of ours (its /proc readable as ours) does not hold it.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!super::listens_on(other.id(), port));
        let _ = other.kill();
        let _ = other.wait();
        drop(l);
        assert!(!super::listens_on(std::process::id(), port));
    }
}
