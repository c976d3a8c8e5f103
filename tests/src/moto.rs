//! moto (`moto_server`) as a subprocess on a free loopback port: an S3 server that follows
//! AWS's semantics closely. Objects are read back with boto3 (installed with moto), an S3
//! client that is not ours, so the tests see the bucket as any other program would.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub addr: SocketAddr,
}

/// Access key the tests use (moto accepts any).
pub const ACCESS_KEY: &str = "AKIAMOTOTESTKEY00001";
/// Secret key the tests use; tests grep logs for it.
pub const SECRET_KEY: &str = "motoSecretKeyThatMustNeverBeLogged0000001";

impl Moto {
    /// Starts moto and waits until it answers HTTP.
    pub fn start() -> Moto {
        crate::gateway::require("moto_server");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let m = Moto {
            child,
            endpoint: format!("http://{addr}"),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(addr).is_ok() && m.py("import sys; s3.list_buckets()").is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
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
