//! Ranged, streaming reads.

use super::checksum::{self, Checksum, Expected};
use super::client::{Request, Response};
use super::Inner;
use crate::backend::ByteStream;
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;

fn short() -> Error {
    Error::new(
        ErrorKind::Backend,
        "the download ended before the end of the requested range",
    )
    .set_retryable(true)
}

/// The error of a read pinned to a version that is no longer there.
fn changed() -> Error {
    Error::new(ErrorKind::Conflict, "the file changed since it was opened")
}

/// An ETag without its quotes or weak marker: servers differ in quoting (Ceph RGW compares
/// unquoted), and a listing's ETag and a GET's must compare equal for the same version.
fn bare(etag: &str) -> &str {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"')
}

/// Whether an answer to a read from offset 0 carries the whole object: a 200, or a 206 whose
/// range ends at the object's end (`Content-Range: bytes 0-N/N+1`).
fn whole_object(resp: &Response) -> bool {
    match resp.status().as_u16() {
        200 => true,
        206 => resp
            .header("content-range")
            .and_then(|v| {
                let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
                let (first, last) = range.split_once('-')?;
                let (first, last, total) = (
                    first.parse::<u64>().ok()?,
                    last.parse::<u64>().ok()?,
                    total.parse::<u64>().ok()?,
                );
                Some(first == 0 && last + 1 == total)
            })
            .unwrap_or(false),
        _ => false,
    }
}

/// Streams bytes `offset..end` of `key` (to the end of the object when `end` is `None`).
/// A body that ends before what the answer announced is an error, never a silent end of file.
///
/// A read of the whole object is checked against the object's checksum where the answer has
/// one (see [`checksum`]): a mismatch ends the stream with an error after its last bytes.
///
/// With `etag`, only that version is read: the GET carries `If-Match` (the ETag without quotes),
/// a 412 becomes `Conflict`, and an answer whose own ETag differs is refused too (for servers
/// that ignore the condition on GET).
pub(crate) async fn read(
    inner: &Inner,
    key: &str,
    offset: u64,
    end: Option<u64>,
    etag: Option<&str>,
) -> Result<ByteStream> {
    if let Some(end) = end {
        if offset >= end {
            return Ok(Box::pin(futures::stream::empty()));
        }
    }
    let range = match end {
        Some(end) => Some(format!("bytes={offset}-{}", end - 1)),
        // A whole object: no range, since `bytes=0-` is refused for an empty one.
        None if offset == 0 => None,
        None => Some(format!("bytes={offset}-")),
    };
    let mut req = Request::new(Method::GET, Some(key));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    if let Some(t) = etag {
        // Bare where the server matches that form (see `probe::if_match_value`).
        let form = inner.caps().etag_form;
        req = req.header("if-match", super::probe::if_match_value(t, form));
    }
    let mode = inner.opts.checksum;
    if offset == 0 && mode == Checksum::Crc32c {
        // Asks for the object's stored checksum (servers without it ignore the header).
        req = req.header("x-amz-checksum-mode", "ENABLED");
    }
    let resp = match inner.client.send(&req).await {
        Ok(r) => r,
        Err(e) if etag.is_some() && e.kind() == ErrorKind::Conflict => {
            return Err(changed().with_source(e));
        }
        // Reading from the end of an object whose size we were not told.
        Err(e) if e.kind() == ErrorKind::InvalidInput && end.is_none() => {
            return Ok(Box::pin(futures::stream::empty()));
        }
        Err(e) => return Err(e),
    };
    let status = resp.status().as_u16();
    if status == 200 && offset > 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "the remote ignored the byte range of a read",
        ));
    }
    if let (Some(want), Some(got)) = (etag, resp.header("etag")) {
        if bare(want) != bare(got) {
            return Err(changed());
        }
    }
    let announced = resp.content_length();
    if let (Some(end), Some(len)) = (end, announced) {
        if len < end - offset {
            // The object is shorter than the caller knows it to be: it changed since.
            return Err(Error::new(
                ErrorKind::Conflict,
                "the file is shorter than expected: it changed during the read",
            ));
        }
    }
    let expected = announced.or(end.map(|e| e - offset));
    let sum = if offset == 0 && whole_object(&resp) {
        Expected::of(&resp, mode, inner.opts.encryption.etag_is_md5())
    } else {
        None
    };
    let check = sum.map(|want| {
        let h = want.hasher();
        (want, h)
    });
    let body = resp.stream();
    // Count (and hash) what arrives; fail at the end if the body was cut short or its bytes
    // do not match the object's checksum.
    let counted = futures::stream::unfold(
        (Box::pin(body), 0u64, false, check),
        move |(mut body, mut got, done, mut check)| async move {
            if done {
                return None;
            }
            match body.next().await {
                Some(Ok(b)) => {
                    got += b.len() as u64;
                    if let Some((_, h)) = &mut check {
                        h.update(&b);
                    }
                    Some((Ok::<Bytes, Error>(b), (body, got, false, check)))
                }
                Some(Err(e)) => Some((Err(e), (body, got, true, None))),
                None => match expected {
                    Some(n) if got < n => Some((Err(short()), (body, got, true, None))),
                    _ => match check {
                        Some((want, h)) => {
                            if want.matches(h.finish()) {
                                None
                            } else {
                                let e = checksum::download_mismatch();
                                Some((Err(e), (body, got, true, None)))
                            }
                        }
                        None => None,
                    },
                },
            }
        },
    );
    Ok(Box::pin(counted))
}
