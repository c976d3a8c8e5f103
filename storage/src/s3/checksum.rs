//! Checksums of the bytes that cross the network, both ways.
//!
//! Uploads: every PutObject and UploadPart carries a checksum of its body for the server to
//! verify (`Content-MD5`, or `x-amz-checksum-crc32c`), so a byte changed on its way is refused
//! and nothing is committed. The server's answer is checked as well: an UploadPart or PutObject
//! ETag is the MD5 of what the server stored (without SSE-KMS or SSE-C), so a server that does
//! not verify the header (s3s-fs's UploadPart) still cannot make a changed part look sent.
//!
//! Downloads: a read that covers a whole object is hashed as it streams, and compared at its
//! end with the object's MD5 (a single-part ETag) or with the full-object CRC32C the server
//! returns. A mismatch ends the stream with an error, never with a clean end of file. A read
//! of part of an object cannot be checked against a whole-object hash.

use super::client::{Body, Request, Response};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine;
use md5::{Digest as _, Md5};

/// Which checksum uploads carry and downloads are checked with (`remotes[].checksum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// [`Checksum::Crc32c`] where the probe found that the server refuses a PutObject and an
    /// UploadPart whose body does not match their CRC32C ([`super::Capabilities::put_crc32c`]),
    /// [`Checksum::Md5`] elsewhere and until a probe has answered. Resolved per request (an
    /// upload keeps what it started with): see `Inner::checksum`.
    #[default]
    Auto,
    /// `Content-MD5`, verified by every S3 server tried; downloads checked against MD5 ETags.
    Md5,
    /// `x-amz-checksum-crc32c` (and CRC32C part checksums at completion); downloads checked
    /// against the server's full-object CRC32C, or an MD5 ETag.
    Crc32c,
    /// Nothing sent, nothing checked.
    Off,
}

/// A finished checksum of one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Digest {
    Md5([u8; 16]),
    Crc32c(u32),
}

impl Digest {
    /// The request header that asks the server to verify this digest.
    fn header(&self) -> (&'static str, String) {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            Digest::Md5(d) => ("content-md5", b64.encode(d)),
            Digest::Crc32c(c) => ("x-amz-checksum-crc32c", b64.encode(c.to_be_bytes())),
        }
    }

    /// The value CompleteMultipartUpload lists for a part (`ChecksumCRC32C`), where the
    /// algorithm needs one.
    pub(crate) fn part_value(&self) -> Option<String> {
        match self {
            Digest::Md5(_) => None,
            Digest::Crc32c(_) => Some(self.header().1),
        }
    }

    fn md5_hex(&self) -> Option<String> {
        match self {
            Digest::Md5(d) => Some(hex::encode(d)),
            Digest::Crc32c(_) => None,
        }
    }
}

/// A running checksum.
pub(crate) enum Hasher {
    Md5(Box<Md5>),
    Crc32c(u32),
}

impl Hasher {
    pub(crate) fn new(mode: Checksum) -> Option<Hasher> {
        match mode {
            // Resolved before hashing (`Inner::checksum`); MD5, as before a probe, if not.
            Checksum::Md5 | Checksum::Auto => Some(Hasher::Md5(Box::default())),
            Checksum::Crc32c => Some(Hasher::Crc32c(0)),
            Checksum::Off => None,
        }
    }

    pub(crate) fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(b),
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, b),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        match self {
            Hasher::Md5(h) => Digest::Md5(h.finalize().into()),
            Hasher::Crc32c(c) => Digest::Crc32c(c),
        }
    }
}

/// The checksum of a request body (off the async threads: a part is megabytes). A streamed
/// body cannot be hashed before it is sent: its uploads do not use one while checksums are on.
pub(crate) async fn of_body(mode: Checksum, body: &Body) -> Result<Option<Digest>> {
    let Some(mut h) = Hasher::new(mode) else {
        return Ok(None);
    };
    match body {
        Body::Empty => Ok(Some(h.finish())),
        Body::Bytes(b) => {
            let b = b.clone();
            let d = tokio::task::spawn_blocking(move || {
                h.update(&b);
                h.finish()
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Backend, "hashing a part failed").with_source(e))?;
            Ok(Some(d))
        }
        Body::File(f, len) => {
            let (f, len) = (f.clone(), *len);
            let d = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
                use std::os::unix::fs::FileExt;
                // Small: many parts may be hashed at once, outside the memory budget (spooled).
                let mut buf = vec![0u8; 64 * 1024];
                let mut at = 0u64;
                while at < len {
                    let want = ((len - at) as usize).min(buf.len());
                    let n = f.read_at(&mut buf[..want], at)?;
                    if n == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "a spooled part is shorter than written",
                        ));
                    }
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                Ok(h.finish())
            })
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "hashing a part failed").with_source(e)
            })??;
            Ok(Some(d))
        }
        Body::Stream(..) => Err(Error::new(
            ErrorKind::Backend,
            "a streamed body cannot carry a checksum",
        )),
    }
}

/// `req` with the header that asks the server to verify `digest`.
pub(crate) fn apply(req: Request, digest: Option<&Digest>) -> Request {
    match digest {
        Some(d) => {
            let (k, v) = d.header();
            req.header(k, v)
        }
        None => req,
    }
}

/// The headers CreateMultipartUpload needs so that parts may carry `mode`'s checksum.
pub(crate) fn apply_initiate(req: Request, mode: Checksum) -> Request {
    match mode {
        Checksum::Crc32c => req.header("x-amz-checksum-algorithm", "CRC32C"),
        Checksum::Md5 | Checksum::Auto | Checksum::Off => req,
    }
}

/// The bytes a server stored differ from those sent (its ETag is not their MD5).
pub(crate) fn upload_mismatch() -> Error {
    Error::new(
        ErrorKind::Backend,
        "the remote stored different bytes than were sent (its ETag is not their MD5)",
    )
}

/// A download whose bytes do not match the object's checksum.
pub(crate) fn download_mismatch() -> Error {
    // Not retryable: a reader that resumes on retryable errors would take the end of the
    // stream for the end of the file.
    Error::new(
        ErrorKind::Backend,
        "the downloaded bytes do not match the file's checksum on the remote",
    )
}

/// An ETag that is the plain MD5 of the object's bytes: 32 hex digits (no `-N` of a
/// multipart upload), and no SSE-KMS or SSE-C, whose ETags are not MD5s of the plaintext:
/// neither as the remote is configured (`etag_is_md5` false) nor as the answer says.
pub(crate) fn plain_md5_etag(resp: &Response, etag_is_md5: bool) -> Option<String> {
    let encrypted = !etag_is_md5
        || resp
            .header("x-amz-server-side-encryption")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("aws:kms") || v.contains("kms"))
        || resp
            .header("x-amz-server-side-encryption-customer-algorithm")
            .is_some();
    if encrypted {
        return None;
    }
    let t = resp.header("etag")?.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    (t.len() == 32 && t.bytes().all(|c| c.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

/// After an upload request: the ETag the server answered must be the MD5 of what was sent,
/// where it is a plain MD5 (with SSE-KMS or SSE-C it is not: the server's verification of
/// `Content-MD5` is then the whole check).
pub(crate) fn check_etag(resp: &Response, sent: Option<&Digest>, etag_is_md5: bool) -> Result<()> {
    let Some(want) = sent.and_then(Digest::md5_hex) else {
        return Ok(());
    };
    match plain_md5_etag(resp, etag_is_md5) {
        Some(got) if got != want => Err(upload_mismatch()),
        _ => Ok(()),
    }
}

/// What a whole-object download is compared with at its end.
pub(crate) enum Expected {
    Md5(String),
    Crc32c(u32),
}

impl Expected {
    /// The checksum a whole-object GET answer lets us check, if any: the full-object CRC32C
    /// when the server returned one (not a composite `...-N`), else a plain MD5 ETag.
    pub(crate) fn of(resp: &Response, mode: Checksum, etag_is_md5: bool) -> Option<Expected> {
        if mode == Checksum::Off {
            return None;
        }
        if mode == Checksum::Crc32c {
            let full = resp
                .header("x-amz-checksum-crc32c")
                .filter(|v| !v.contains('-'))
                .filter(|_| {
                    resp.header("x-amz-checksum-type")
                        .is_none_or(|t| t.eq_ignore_ascii_case("FULL_OBJECT"))
                })
                .and_then(|v| {
                    base64::engine::general_purpose::STANDARD
                        .decode(v.trim())
                        .ok()
                })
                .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok());
            if let Some(b) = full {
                return Some(Expected::Crc32c(u32::from_be_bytes(b)));
            }
        }
        plain_md5_etag(resp, etag_is_md5).map(Expected::Md5)
    }

    pub(crate) fn hasher(&self) -> Hasher {
        match self {
            Expected::Md5(_) => Hasher::Md5(Box::default()),
            Expected::Crc32c(_) => Hasher::Crc32c(0),
        }
    }

    pub(crate) fn matches(&self, got: Digest) -> bool {
        match (self, got) {
            (Expected::Md5(want), Digest::Md5(d)) => *want == hex::encode(d),
            (Expected::Crc32c(want), Digest::Crc32c(c)) => *want == c,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_base64_of_the_binary_digest() {
        let mut h = Hasher::new(Checksum::Md5).unwrap();
        h.update(b"hello");
        // base64 of md5("hello") = 5d41402abc4b2a76b9719d911017c592
        assert_eq!(
            h.finish().header(),
            ("content-md5", "XUFAKrxLKna5cZ2REBfFkg==".to_string())
        );
        let mut h = Hasher::new(Checksum::Crc32c).unwrap();
        h.update(b"123456789");
        // The CRC-32C check value is 0xE3069283.
        assert_eq!(
            h.finish().header(),
            ("x-amz-checksum-crc32c", "4waSgw==".to_string())
        );
        assert!(Hasher::new(Checksum::Off).is_none());
    }
}
