//! `bucketgate remote test NAME`: probes a remote step by step and names what fails.

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_storage::backend::CreateOptions;
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::s3::{Encryption, S3Backend};
use bucketgate_storage::{Backend, ErrorKind};
use futures::StreamExt;
use std::time::{Duration, Instant};

struct Report {
    failed: bool,
    /// The remote's `storage_class`, to name it when the server refuses it.
    storage_class: Option<String>,
    /// SSE-C over a plain `http://` endpoint, which AWS and MinIO refuse (the key would cross
    /// the network in clear).
    ssec_in_clear: bool,
}

impl Report {
    fn step<T>(
        &mut self,
        name: &str,
        permission: &str,
        started: Instant,
        r: Result<T, bucketgate_storage::Error>,
    ) -> Option<T> {
        let ms = started.elapsed().as_millis();
        match r {
            Ok(v) => {
                println!("ok    {name} ({ms} ms)");
                Some(v)
            }
            Err(e) => {
                self.failed = true;
                let hint = match e.kind() {
                    ErrorKind::PermissionDenied => {
                        format!(" — access denied: the key lacks {permission}")
                    }
                    ErrorKind::ConfigInvalid => " — check endpoint, bucket, region and keys".into(),
                    _ => String::new(),
                };
                // A setting the server refuses outright (rather than ignores).
                let text = e.to_string();
                let hint = match &self.storage_class {
                    Some(c) if text.contains("InvalidStorageClass") => {
                        format!("{hint} — the server does not accept storage_class: {c}")
                    }
                    _ if self.ssec_in_clear
                        && (text.contains("InvalidRequest") || text.contains("HTTP 400")) =>
                    {
                        format!(
                            "{hint} — encryption: customer over http://: servers that check it \
                             (AWS, MinIO) accept SSE-C only over https"
                        )
                    }
                    _ if text.contains("KMS") => format!(
                        "{hint} — check kms_key_id and that the key allows kms:GenerateDataKey and kms:Decrypt"
                    ),
                    _ => hint,
                };
                println!("FAIL  {name} ({ms} ms): {e}{hint}");
                None
            }
        }
    }
}

/// Runs the probe; exit 0 when every step passed, 1 otherwise.
pub fn run(arg: &ConfigArg, name: &str, read_only: bool) -> Result<(), Exit> {
    let path = match wiring::source(arg)? {
        Source::File(p) => p,
        Source::Embedded => {
            return Err(Exit::usage(
                "no config file: the embedded default has no remotes",
            ))
        }
    };
    let loaded = wiring::load(&path)?;
    let cfg = loaded.config;
    let Some(remote) = cfg.remote(name).cloned() else {
        let names: Vec<&str> = cfg.remotes.iter().map(|r| r.name.as_str()).collect();
        return Err(Exit::usage(format!(
            "no remote named {name:?} (remotes: {})",
            names.join(", ")
        )));
    };
    // Probe inside the first mounted prefix of this remote: keys are often restricted to it.
    let prefix = cfg
        .mounts
        .iter()
        .find(|m| m.remote == remote.name)
        .map(|m| m.prefix.clone())
        .unwrap_or_default();
    let prefix = bucketgate_storage::path::normalize_prefix(&prefix).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    let ok = rt.block_on(async move {
        let mut rep = Report {
            failed: false,
            storage_class: Some(remote.storage_class.trim().to_string()).filter(|c| !c.is_empty()),
            ssec_in_clear: matches!(
                remote.encryption,
                bucketgate_config::EncryptionMode::Customer
            ) && remote
                .endpoint
                .trim()
                .to_ascii_lowercase()
                .starts_with("http://"),
        };
        println!(
            "remote {} — endpoint {} bucket {}{}",
            remote.name,
            remote.endpoint,
            remote.bucket,
            if read_only { " (read-only)" } else { "" }
        );
        // Resolve and connect first: most first-time failures are DNS, firewall or TLS.
        let t = Instant::now();
        let hostport = endpoint_host_port(&remote.endpoint);
        let addrs = match hostport {
            Some(hp) => tokio::net::lookup_host(hp.clone())
                .await
                .map(|a| a.collect::<Vec<_>>())
                .map_err(|e| {
                    bucketgate_storage::Error::new(
                        ErrorKind::ConfigInvalid,
                        format!("cannot resolve {hp}: {e}"),
                    )
                }),
            None => Err(bucketgate_storage::Error::new(
                ErrorKind::ConfigInvalid,
                "endpoint is not an http(s) URL",
            )),
        };
        let Some(addrs) = rep.step("resolve endpoint", "", t, addrs) else {
            return false;
        };
        let t = Instant::now();
        let conn = match addrs.first() {
            Some(a) => tokio::time::timeout(
                remote.timeouts.connect.get(),
                tokio::net::TcpStream::connect(a),
            )
            .await
            .map_err(|_| {
                bucketgate_storage::Error::new(
                    ErrorKind::Backend,
                    format!("connect to {a} timed out"),
                )
            })
            .and_then(|r| {
                r.map(|_| ()).map_err(|e| {
                    bucketgate_storage::Error::new(
                        ErrorKind::Backend,
                        format!("connect to {a}: {e}"),
                    )
                })
            }),
            None => Err(bucketgate_storage::Error::new(
                ErrorKind::ConfigInvalid,
                "no address",
            )),
        };
        if rep.step("TCP connect", "", t, conn).is_none() {
            return false;
        }
        let opts = match wiring::s3_options(&cfg, &remote) {
            Ok(o) => o,
            Err((key, why)) => {
                println!("FAIL  client setup: {key}: {why}");
                return false;
            }
        };
        // The same remote without encryption headers: an SSE-C object must be unreadable
        // through it, or the server ignored the key.
        let mut plain_opts = opts.clone();
        plain_opts.encryption = Encryption::None;
        let (backend, plain) = match (
            S3Backend::new(opts, MemoryBudget::shared(64 * 1024 * 1024)),
            S3Backend::new(plain_opts, MemoryBudget::shared(1024 * 1024)),
        ) {
            (Ok(b), Ok(p)) => (b, p),
            (Err(e), _) | (_, Err(e)) => {
                println!("FAIL  client setup: {e}");
                return false;
            }
        };
        // What each step needs beyond S3's own permission under SSE-KMS: S3 asks KMS for a
        // data key to write and to decrypt to read (and to go on with a multipart upload).
        let kms = matches!(backend.options().encryption, Encryption::Kms { .. });
        let perm = |s3: &str, k: &str| {
            if kms {
                format!("{s3} and {k} on the KMS key")
            } else {
                s3.to_string()
            }
        };
        let t = Instant::now();
        // A key restricted to the mount's prefix may not list the bucket root: probe inside
        // the prefix then. The first signed request loads the credentials.
        let probe = if prefix.is_empty() {
            backend.probe_bucket().await
        } else {
            match backend.list(prefix.trim_end_matches('/')).next().await {
                Some(Err(e)) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        credentials_line(&backend);
        if rep
            .step(
                "credentials and bucket (TLS, signature, region)",
                "s3:ListBucket",
                t,
                probe,
            )
            .is_none()
        {
            return false;
        }
        let t = Instant::now();
        let listed = match backend.list(prefix.trim_end_matches('/')).next().await {
            Some(Ok(p)) => Ok(p.len()),
            Some(Err(e)) => Err(e),
            None => Ok(0),
        };
        rep.step(
            &format!("list {}", show(&prefix)),
            "s3:ListBucket",
            t,
            listed,
        );
        if read_only {
            println!("skipped the write steps (--read-only)");
            return !rep.failed;
        }
        let stamp = format!("{:x}", rand::random::<u64>());
        let key = format!("{prefix}.bucketgate-probe-{stamp}");
        let copy = format!("{key}-copy");
        let big = format!("{key}-multipart");
        let body = bytes::Bytes::from(format!("bucketgate probe {stamp}\n"));
        let t = Instant::now();
        let put = async {
            let mut up = backend.create(&key, CreateOptions::default()).await?;
            up.write(body.clone()).await?;
            up.finish().await
        }
        .await;
        let wrote = rep
            .step(
                &format!("put {key}"),
                &perm("s3:PutObject", "kms:GenerateDataKey"),
                t,
                put,
            )
            .is_some();
        if wrote {
            let t = Instant::now();
            let settings = settings_step(&backend, &plain, &key).await;
            rep.step(
                &format!("settings applied ({})", describe_settings(&backend)),
                "s3:GetObject",
                t,
                settings,
            );
            let t = Instant::now();
            let got = async {
                let mut s = backend.read(&key, 0, None).await?;
                let mut v = Vec::new();
                while let Some(c) = s.next().await {
                    v.extend_from_slice(&c?);
                }
                if v != body {
                    return Err(bucketgate_storage::Error::new(
                        ErrorKind::Backend,
                        "read back different bytes",
                    ));
                }
                Ok(())
            }
            .await;
            rep.step("read back", &perm("s3:GetObject", "kms:Decrypt"), t, got);
            let t = Instant::now();
            let copied = backend.copy_file(&key, &copy).await;
            let copied_ok = rep
                .step(
                    "server-side copy",
                    &perm(
                        "s3:GetObject on the source and s3:PutObject",
                        "kms:Decrypt and kms:GenerateDataKey",
                    ),
                    t,
                    copied,
                )
                .is_some();
            let t = Instant::now();
            let mut del = backend.remove_file(&key).await;
            if copied_ok && del.is_ok() {
                del = backend.remove_file(&copy).await;
            }
            rep.step("delete", "s3:DeleteObject", t, del);
        }
        let t = Instant::now();
        let mp = async {
            let mut up = backend
                .create(
                    &big,
                    CreateOptions {
                        size_hint: Some(6 * 1024 * 1024),
                        ..Default::default()
                    },
                )
                .await?;
            let chunk = bytes::Bytes::from(vec![0x5au8; 1024 * 1024]);
            for _ in 0..6 {
                up.write(chunk.clone()).await?;
            }
            up.finish().await?;
            backend.remove_file(&big).await
        }
        .await;
        rep.step(
            "multipart upload (6 MiB) and delete",
            &perm(
                "s3:PutObject, s3:AbortMultipartUpload and s3:ListMultipartUploadParts",
                "kms:GenerateDataKey and kms:Decrypt",
            ),
            t,
            mp,
        );
        // Not a pass/fail step: what the server enforces, and where a guarantee is weaker on
        // it (docs/providers.md, "What each server enforces").
        let t = Instant::now();
        let caps = backend.probe_capabilities(&prefix).await;
        let ms = t.elapsed().as_millis();
        match caps {
            Ok(c) => {
                println!(
                    "info  server capabilities probed ({ms} ms): {}",
                    summary(&c)
                );
                for line in c.weaker_guarantees() {
                    println!("weak  {line}");
                }
            }
            Err(e) => println!("info  server capabilities not probed ({ms} ms): {e}"),
        }
        !rep.failed
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    if ok {
        println!("all steps passed");
        Ok(())
    } else {
        Err(Exit::runtime("remote test failed"))
    }
}

/// Which source gave the credentials, or each source tried and why it gave none. Never a key.
fn credentials_line(b: &S3Backend) {
    if !b.signs_requests() {
        println!("info  credentials: none (anonymous: requests are not signed)");
        return;
    }
    let (label, report) = b.credential_report();
    match report.source {
        Some(source) => println!("ok    credentials from {source}"),
        None if report.tried.is_empty() => {
            println!("info  credentials: {label} (not loaded)")
        }
        None => {
            println!("FAIL  credentials: no source gave credentials ({label}); tried:");
            for (name, why) in &report.tried {
                println!("        {name}: {why}");
            }
        }
    }
}

/// The remote's encryption and storage class, as the config names them.
fn describe_settings(b: &S3Backend) -> String {
    let o = b.options();
    let mut s = format!("encryption: {}", o.encryption.name());
    if let Encryption::Kms { key_id, bucket_key } = &o.encryption {
        if let Some(k) = key_id {
            s.push_str(&format!(", kms_key_id: {k}"));
        }
        if *bucket_key {
            s.push_str(", bucket_key: true");
        }
    }
    s.push_str(&format!(
        ", storage_class: {}",
        o.storage_class.as_deref().unwrap_or("the server's default")
    ));
    s
}

/// Checks the probe object `key` against the remote's settings: its HEAD shows each one
/// applied, and an SSE-C object cannot be read without the key.
async fn settings_step(
    backend: &S3Backend,
    plain: &S3Backend,
    key: &str,
) -> Result<(), bucketgate_storage::Error> {
    let applied = backend.applied_settings(key).await?;
    let mut problems = backend.settings_problems(&applied);
    if matches!(backend.options().encryption, Encryption::Customer(_))
        && plain.stat_file(key).await.is_ok()
    {
        problems.push(
            "encryption: customer — the object can be read without the SSE-C key: the server ignores SSE-C"
                .into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(bucketgate_storage::Error::new(
            ErrorKind::Unsupported,
            problems.join("; "),
        ))
    }
}

/// What the probe found, in one line.
fn summary(c: &bucketgate_storage::s3::Capabilities) -> String {
    use bucketgate_storage::s3::{CopyCondition, EtagForm};
    let yes = |b: bool| if b { "enforced" } else { "ignored" };
    format!(
        "PUT If-None-Match {}, PUT If-Match {} ({}), Complete If-None-Match {}, Complete If-Match {}, \
         copy condition {}, DELETE If-Match {}, markers {} and {}, uploads listed {}, file and folder of one name {}, \
         PUT Content-MD5 {}, CRC32C {}, listing keys {}",
        yes(c.put_if_none_match),
        yes(c.put_if_match),
        match c.etag_form {
            EtagForm::Bare => "bare ETag",
            EtagForm::Quoted => "quoted ETag",
            EtagForm::Omit => "not sent",
        },
        yes(c.complete_if_none_match),
        yes(c.complete_if_match),
        match c.copy_if_match {
            CopyCondition::Standard => "enforced",
            CopyCondition::Legacy => "enforced as x-amz-copy-if-match",
            CopyCondition::Ignored => "ignored",
        },
        yes(c.delete_if_match),
        if c.markers_listed { "listed" } else { "not listed" },
        if c.markers_survive { "lasting" } else { "dropped with the last file" },
        if c.uploads_by_prefix { "by prefix" } else { "by exact key only" },
        if c.file_and_folder { "allowed" } else { "refused" },
        if c.put_content_md5 {
            "checked before storing"
        } else {
            "not checked before storing"
        },
        if c.put_crc32c {
            "checked before storing"
        } else {
            "not checked before storing"
        },
        if c.list_url_encoding {
            "URL-encoded"
        } else {
            "as XML text"
        },
    )
}

fn show(prefix: &str) -> String {
    if prefix.is_empty() {
        "the bucket root".into()
    } else {
        format!("prefix {prefix}")
    }
}

fn endpoint_host_port(endpoint: &str) -> Option<String> {
    let (scheme, rest) = endpoint.split_once("://")?;
    let hostport = rest.split('/').next()?;
    if hostport.is_empty() {
        return None;
    }
    // Bracketed IPv6 keeps its colons; a port is present when a colon follows the host.
    let has_port = match hostport.rfind(']') {
        Some(i) => hostport[i..].contains(':'),
        None => hostport.contains(':'),
    };
    if has_port {
        Some(hostport.to_string())
    } else {
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        Some(format!("{hostport}:{port}"))
    }
}
