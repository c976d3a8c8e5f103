//! Server-side encryption and storage class: the headers every request of a remote carries
//! for its `encryption` and `storage_class` settings.
//!
//! They are added in one place, [`headers`], called by the client for every request it builds,
//! so that no request kind can forget them: the SSE-C key must go with every read and write of
//! an object (PUT, CreateMultipartUpload, UploadPart, CompleteMultipartUpload, GET, HEAD) and,
//! as the copy source's key, with every CopyObject and UploadPartCopy (rename, time change,
//! append, in-place resume). CompleteMultipartUpload needs it where the parts carry checksums
//! (AWS documents it so; Garage 2.5 refuses the completion without it: "Object is
//! encrypted").
//! SSE-S3 and SSE-KMS are asked for where an object is created (PUT, CreateMultipartUpload,
//! CopyObject); S3 refuses them on UploadPart and on reads.

use super::client::Request;
use base64::Engine;
use md5::{Digest as _, Md5};
use reqwest::Method;
use std::fmt;

/// How objects are encrypted at rest (`remotes[].encryption`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Encryption {
    /// No header: the bucket's default applies.
    #[default]
    None,
    /// SSE-S3: `x-amz-server-side-encryption: AES256`.
    S3,
    /// SSE-KMS: `aws:kms`, with a key id (the account's default key when `None`) and S3
    /// Bucket Keys on request.
    Kms {
        /// The key id, ARN or alias; `None`: the account's `aws/s3` key.
        key_id: Option<String>,
        /// Ask for an S3 Bucket Key.
        bucket_key: bool,
    },
    /// SSE-C: the server encrypts with our key and keeps only its MD5; every read needs it.
    Customer(CustomerKey),
}

impl Encryption {
    /// True when an object's ETag is the MD5 of its bytes as with no encryption. SSE-KMS and
    /// SSE-C ETags are not (AWS; Garage's SSE-C), so no MD5 check may rely on them.
    pub fn etag_is_md5(&self) -> bool {
        matches!(self, Encryption::None | Encryption::S3)
    }

    /// The setting's name in the config (`none`, `s3`, `kms`, `customer`).
    pub fn name(&self) -> &'static str {
        match self {
            Encryption::None => "none",
            Encryption::S3 => "s3",
            Encryption::Kms { .. } => "kms",
            Encryption::Customer(_) => "customer",
        }
    }
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encryption::None => f.write_str("None"),
            Encryption::S3 => f.write_str("S3"),
            Encryption::Kms { key_id, bucket_key } => f
                .debug_struct("Kms")
                .field("key_id", key_id)
                .field("bucket_key", bucket_key)
                .finish(),
            Encryption::Customer(k) => f.debug_tuple("Customer").field(k).finish(),
        }
    }
}

/// A 256-bit SSE-C key, with the MD5 the server checks it against. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    key_b64: String,
    md5_b64: String,
}

impl CustomerKey {
    /// The key from its base64 form; it must decode to exactly 32 bytes. The error never
    /// contains the value.
    pub fn from_base64(b64: &str) -> Result<CustomerKey, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "is not valid base64".to_string())?;
        CustomerKey::from_bytes(&raw)
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<CustomerKey, String> {
        if raw.len() != 32 {
            return Err(format!(
                "decodes to {} bytes; an SSE-C key is 32 bytes (256 bits)",
                raw.len()
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(CustomerKey {
            key_b64: b64.encode(raw),
            md5_b64: b64.encode(Md5::digest(raw)),
        })
    }

    /// The base64 MD5 of the key (what the server records; safe to show).
    pub fn md5_base64(&self) -> &str {
        &self.md5_b64
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a request does, as far as encryption headers go.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// PutObject, CopyObject, CreateMultipartUpload: an object is created here.
    Create { copy: bool },
    /// UploadPart, UploadPartCopy.
    Part { copy: bool },
    /// GET or HEAD of an object.
    Read,
    /// CompleteMultipartUpload.
    Complete,
    /// Anything else (bucket requests, DELETE, ListParts, Abort).
    Other,
}

fn kind(req: &Request) -> Kind {
    if req.key.is_none() {
        return Kind::Other;
    }
    let q = |name: &str| req.query.iter().any(|(k, _)| k == name);
    let copy = req.headers.iter().any(|(k, _)| k == "x-amz-copy-source");
    if req.method == Method::PUT {
        if q("partNumber") {
            Kind::Part { copy }
        } else {
            Kind::Create { copy }
        }
    } else if req.method == Method::POST && q("uploads") {
        Kind::Create { copy: false }
    } else if req.method == Method::POST && q("uploadId") {
        Kind::Complete
    } else if (req.method == Method::GET || req.method == Method::HEAD) && !q("uploadId") {
        Kind::Read
    } else {
        Kind::Other
    }
}

/// The headers `req` needs for `enc` and `storage_class`.
pub(crate) fn headers(
    enc: &Encryption,
    storage_class: Option<&str>,
    req: &Request,
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: &str| h.push((k.to_string(), v.to_string()));
    let kind = kind(req);
    if let Kind::Create { .. } = kind {
        if let Some(class) = storage_class {
            add("x-amz-storage-class", class);
        }
        match enc {
            Encryption::S3 => add("x-amz-server-side-encryption", "AES256"),
            Encryption::Kms { key_id, bucket_key } => {
                add("x-amz-server-side-encryption", "aws:kms");
                if let Some(id) = key_id {
                    add("x-amz-server-side-encryption-aws-kms-key-id", id);
                }
                if *bucket_key {
                    add("x-amz-server-side-encryption-bucket-key-enabled", "true");
                }
            }
            Encryption::None | Encryption::Customer(_) => {}
        }
    }
    if let Encryption::Customer(k) = enc {
        let copy = match kind {
            Kind::Create { copy } | Kind::Part { copy } => Some(copy),
            Kind::Read | Kind::Complete => Some(false),
            Kind::Other => None,
        };
        if let Some(copy) = copy {
            for prefix in ["x-amz-", "x-amz-copy-source-"] {
                if prefix == "x-amz-copy-source-" && !copy {
                    continue;
                }
                add(
                    &format!("{prefix}server-side-encryption-customer-algorithm"),
                    "AES256",
                );
                add(
                    &format!("{prefix}server-side-encryption-customer-key"),
                    &k.key_b64,
                );
                add(
                    &format!("{prefix}server-side-encryption-customer-key-md5"),
                    &k.md5_b64,
                );
            }
        }
    }
    h
}

/// What the server says it applied to an object (its HEAD answer), for `remote test`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// `x-amz-server-side-encryption` (`AES256`, `aws:kms`).
    pub sse: Option<String>,
    /// `x-amz-server-side-encryption-aws-kms-key-id` (AWS answers the key's ARN).
    pub kms_key_id: Option<String>,
    /// `x-amz-server-side-encryption-bucket-key-enabled: true`.
    pub bucket_key: bool,
    /// `x-amz-server-side-encryption-customer-key-md5`: the MD5 of the SSE-C key.
    pub customer_key_md5: Option<String>,
    /// `x-amz-storage-class` (AWS leaves it out for STANDARD).
    pub storage_class: Option<String>,
}

impl super::S3Backend {
    /// HEADs `key` (with the SSE-C key where configured) and returns what the server says it
    /// applied.
    pub async fn applied_settings(&self, key: &str) -> crate::error::Result<Applied> {
        let r = self
            .inner
            .client
            .send(&Request::new(Method::HEAD, Some(key)))
            .await
            .map_err(|e| e.with_key("stat", format!("/{key}")))?;
        let h = |n: &str| r.header(n).map(|v| v.trim().to_string());
        Ok(Applied {
            sse: h("x-amz-server-side-encryption"),
            kms_key_id: h("x-amz-server-side-encryption-aws-kms-key-id"),
            bucket_key: h("x-amz-server-side-encryption-bucket-key-enabled")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            customer_key_md5: h("x-amz-server-side-encryption-customer-key-md5"),
            storage_class: h("x-amz-storage-class"),
        })
    }

    /// The problems with what the server applied to a probe object, compared with this
    /// remote's settings: one line each, saying what the server does not do.
    pub fn settings_problems(&self, a: &Applied) -> Vec<String> {
        let o = &self.inner.opts;
        let mut v = Vec::new();
        match &o.encryption {
            Encryption::None => {}
            Encryption::S3 => {
                if a.sse.as_deref() != Some("AES256") {
                    v.push(format!(
                        "encryption: s3 — the server stored the object with {} instead of AES256: it ignores x-amz-server-side-encryption",
                        a.sse.as_deref().map_or("no server-side encryption".to_string(), |s| format!("`{s}`"))
                    ));
                }
            }
            Encryption::Kms { key_id, bucket_key } => {
                if a.sse.as_deref() != Some("aws:kms") {
                    v.push(format!(
                        "encryption: kms — the server stored the object with {} instead of aws:kms: it does not support SSE-KMS",
                        a.sse.as_deref().map_or("no server-side encryption".to_string(), |s| format!("`{s}`"))
                    ));
                } else if let Some(want) = key_id {
                    // AWS answers the key's ARN: an id or ARN given must be part of it (an
                    // alias cannot be compared).
                    let got = a.kms_key_id.as_deref().unwrap_or("");
                    if !want.starts_with("alias/") && !got.contains(want.as_str()) {
                        v.push(format!(
                            "kms_key_id — the object was encrypted with KMS key `{got}`, not `{want}`"
                        ));
                    }
                }
                if *bucket_key && a.sse.as_deref() == Some("aws:kms") && !a.bucket_key {
                    v.push(
                        "bucket_key — the server did not enable an S3 Bucket Key for the object"
                            .into(),
                    );
                }
            }
            Encryption::Customer(k) => {
                if a.customer_key_md5.as_deref() != Some(k.md5_base64()) {
                    v.push(
                        "encryption: customer — the server's answer does not name our SSE-C key's MD5: it ignores SSE-C".into(),
                    );
                }
            }
        }
        if let Some(want) = &o.storage_class {
            let got = a.storage_class.as_deref().unwrap_or("STANDARD");
            if !got.eq_ignore_ascii_case(want) {
                v.push(format!(
                    "storage_class — the object was stored as {got}, not {want}: the server ignores x-amz-storage-class"
                ));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &[(String, String)]) -> Vec<&str> {
        h.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn each_request_kind_gets_its_headers() {
        let key = CustomerKey::from_bytes(&[7u8; 32]).unwrap();
        let c = Encryption::Customer(key.clone());
        let put = Request::new(Method::PUT, Some("a"));
        let copy = Request::new(Method::PUT, Some("a")).header("x-amz-copy-source", "/b/c");
        let part = Request::new(Method::PUT, Some("a"))
            .query("partNumber", "1")
            .query("uploadId", "u");
        let part_copy = part.clone().header("x-amz-copy-source", "/b/c");
        let cmu = Request::new(Method::POST, Some("a")).query("uploads", "");
        let complete = Request::new(Method::POST, Some("a")).query("uploadId", "u");
        let get = Request::new(Method::GET, Some("a"));
        let list = Request::new(Method::GET, None).query("list-type", "2");
        let del = Request::new(Method::DELETE, Some("a"));

        let ssec = [
            "x-amz-server-side-encryption-customer-algorithm",
            "x-amz-server-side-encryption-customer-key",
            "x-amz-server-side-encryption-customer-key-md5",
        ];
        for r in [&put, &part, &cmu, &complete, &get] {
            assert_eq!(names(&headers(&c, None, r)), ssec);
        }
        for r in [&copy, &part_copy] {
            let h = headers(&c, None, r);
            assert_eq!(h.len(), 6);
            assert!(names(&h).contains(&"x-amz-copy-source-server-side-encryption-customer-key"));
        }
        for r in [&list, &del] {
            assert!(headers(&c, Some("STANDARD_IA"), r).is_empty());
        }
        assert!(headers(&Encryption::S3, Some("STANDARD_IA"), &complete).is_empty());
        // The key's MD5 is the base64 of the MD5 of the 32 raw bytes.
        let h = headers(&c, None, &get);
        assert_eq!(h[2].1, key.md5_base64());

        let kms = Encryption::Kms {
            key_id: Some("k1".into()),
            bucket_key: true,
        };
        assert_eq!(
            headers(&kms, Some("STANDARD_IA"), &cmu),
            vec![
                ("x-amz-storage-class".into(), "STANDARD_IA".into()),
                ("x-amz-server-side-encryption".into(), "aws:kms".into()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id".into(),
                    "k1".into()
                ),
                (
                    "x-amz-server-side-encryption-bucket-key-enabled".into(),
                    "true".into()
                ),
            ]
        );
        // Not on parts nor reads: S3 refuses SSE-KMS headers there.
        assert!(headers(&kms, Some("X"), &part).is_empty());
        assert!(headers(&kms, Some("X"), &get).is_empty());
        assert_eq!(
            names(&headers(&Encryption::S3, None, &copy)),
            ["x-amz-server-side-encryption"]
        );
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert!(CustomerKey::from_base64("not base64!").is_err());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let e = CustomerKey::from_base64(&short).unwrap_err();
        assert!(e.contains("16 bytes"), "{e}");
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let k = CustomerKey::from_base64(&b64).unwrap();
        let shown = format!("{:?}", Encryption::Customer(k));
        assert!(!shown.contains(&b64), "{shown}");
    }
}
