//! Ranged, streaming reads.

use super::checksum::{self, Checksum, Expected};
use super::client::{Request, Response};
use super::Inner;
use crate::backend::ByteStream;
use crate::budget::MemoryPermit;
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use std::collections::VecDeque;
use std::sync::Arc;

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

/// What a GET answered: its body (an error when it ends before what the answer announced), the
/// checksum a whole-object answer lets us check, and the ETag of the version it carries.
struct Got {
    body: ByteStream,
    /// The bytes the body must carry.
    len: Option<u64>,
    expected: Option<Expected>,
    etag: Option<String>,
}

/// Sends the GET of bytes `offset..end` of `key` (see [`read`]); `None` when there is nothing
/// to read (an empty range, or the end of an object whose size we were not told).
async fn get(
    inner: &Inner,
    key: &str,
    offset: u64,
    end: Option<u64>,
    etag: Option<&str>,
) -> Result<Option<Got>> {
    if let Some(end) = end {
        if offset >= end {
            return Ok(None);
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
    let mode = inner.checksum();
    if offset == 0 && mode == Checksum::Crc32c {
        // Asks for the object's stored checksum (servers without it ignore the header).
        req = req.header("x-amz-checksum-mode", "ENABLED");
    }
    let resp = match inner.client.send(&req).await {
        Ok(r) => r,
        Err(e) if etag.is_some() && e.kind() == ErrorKind::Conflict => {
            return Err(changed().with_source(e));
        }
        // A range inside the pinned version that the server cannot satisfy: the object is now
        // shorter, so it changed. Some servers (s3s-fs) answer 416 before they evaluate
        // If-Match; AWS and moto answer 412.
        Err(e) if etag.is_some() && end.is_some() && e.kind() == ErrorKind::InvalidInput => {
            return Err(changed().with_source(e));
        }
        // Reading from the end of an object whose size we were not told.
        Err(e) if e.kind() == ErrorKind::InvalidInput && end.is_none() => return Ok(None),
        Err(e) => return Err(e),
    };
    let status = resp.status().as_u16();
    if status == 200 && offset > 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "the remote ignored the byte range of a read",
        ));
    }
    let answered = resp.header("etag").map(str::to_string);
    if let (Some(want), Some(got)) = (etag, answered.as_deref()) {
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
    let expected = if offset == 0 && whole_object(&resp) {
        Expected::of(&resp, mode, inner.opts.encryption.etag_is_md5())
    } else {
        None
    };
    Ok(Some(Got {
        body: Box::pin(resp.stream()),
        len: announced.or(end.map(|e| e - offset)),
        expected,
        etag: answered,
    }))
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
///
/// A long read (at least [`SEGMENTED_FROM`] bytes) that proves sequential fetches the bytes
/// ahead of it as ranged GETs in parallel (see [`Segmented`]).
pub(crate) async fn read(
    inner: &Arc<Inner>,
    key: &str,
    offset: u64,
    end: Option<u64>,
    etag: Option<&str>,
) -> Result<ByteStream> {
    let Some(got) = get(inner, key, offset, end, etag).await? else {
        return Ok(Box::pin(futures::stream::empty()));
    };
    let version = etag.map(str::to_string).or_else(|| got.etag.clone());
    match (end, version) {
        (Some(end), Some(version)) if end - offset >= SEGMENTED_FROM => {
            let Got { body, expected, .. } = got;
            let segmented = Segmented {
                inner: inner.clone(),
                key: key.to_string(),
                etag: version,
                pos: offset,
                end,
                delivered: 0,
                current: Some(body),
                ahead: VecDeque::new(),
                pending: VecDeque::new(),
                pending_memory: None,
            };
            let body = futures::stream::unfold(segmented, |mut s| async move {
                let item = s.next().await?;
                Some((item, s))
            });
            Ok(checked(Box::pin(body), Some(end - offset), expected))
        }
        _ => Ok(checked(got.body, got.len, got.expected)),
    }
}

/// `body` counted (and hashed, with `expected`): an error at its end if it carried fewer than
/// `len` bytes or bytes that do not match the object's checksum.
fn checked(body: ByteStream, len: Option<u64>, expected: Option<Expected>) -> ByteStream {
    let check = expected.map(|want| {
        let h = want.hasher();
        (want, h)
    });
    let counted = futures::stream::unfold(
        (body, 0u64, false, check),
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
                None => match len {
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
    Box::pin(counted)
}

/// Bytes of each ranged GET a sequential read fetches ahead.
pub(crate) const SEGMENT: u64 = 8 * 1024 * 1024;
/// Reads shorter than this are one GET.
pub(crate) const SEGMENTED_FROM: u64 = 2 * SEGMENT;
/// Bytes a read must have handed over before it fetches ahead: a client reading here and there
/// moves on before that (the file handle's read-ahead runs 1 MiB ahead of it).
const SEQUENTIAL_AFTER: u64 = 4 * 1024 * 1024;

/// Aborts its task when dropped: a read given up takes its segments in flight with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A segment fetched ahead: bytes `start..end`, kept whole in memory (counted in the budget)
/// until the read reaches them.
struct Ahead {
    start: u64,
    end: u64,
    task: AbortOnDrop<Result<Vec<Bytes>>>,
    memory: MemoryPermit,
}

/// A long read as several ranged GETs in flight (issue 18): what a single connection cannot
/// carry across a long round trip, several can. It starts as one GET of everything; once
/// [`SEQUENTIAL_AFTER`] bytes have been handed over, it fetches the [`SEGMENT`]s ahead of the
/// running GET in parallel, `transfers.concurrency` less one of them, each pinned to the version the read
/// started on. The running GET is dropped where the first segment begins, and from then on the
/// segments follow one another; when the memory budget cannot hold a segment (at most half of it
/// goes to segments), the read goes on as one GET again. Bytes come out in order, so the
/// whole-object checksum is checked as for one GET.
struct Segmented {
    inner: Arc<Inner>,
    key: String,
    etag: String,
    /// The next byte to hand over.
    pos: u64,
    end: u64,
    delivered: u64,
    /// A GET of `pos..end`, until a segment takes over.
    current: Option<ByteStream>,
    ahead: VecDeque<Ahead>,
    /// The segment being handed over, and its memory.
    pending: VecDeque<Bytes>,
    pending_memory: Option<MemoryPermit>,
}

impl Segmented {
    async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                self.pos += c.len() as u64;
                self.delivered += c.len() as u64;
                return Some(Ok(c));
            }
            self.pending_memory = None;
            if self.pos >= self.end {
                return None;
            }
            self.fetch_ahead();
            if self.ahead.front().is_some_and(|a| a.start == self.pos) {
                let mut a = self.ahead.pop_front().expect("checked above");
                // The GET that ran up to here would go on into this segment's bytes.
                self.current = None;
                let chunks = match (&mut a.task.0).await {
                    Ok(Ok(chunks)) => chunks,
                    Ok(Err(e)) => return Some(Err(self.fail(e))),
                    Err(e) => {
                        let e = Error::new(ErrorKind::Backend, "a download segment failed")
                            .with_source(e);
                        return Some(Err(self.fail(e)));
                    }
                };
                let got: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                if got != a.end - a.start {
                    return Some(Err(self.fail(short())));
                }
                self.pending = chunks.into();
                self.pending_memory = Some(a.memory);
                continue;
            }
            if self.current.is_none() {
                match get(
                    &self.inner,
                    &self.key,
                    self.pos,
                    Some(self.end),
                    Some(&self.etag),
                )
                .await
                {
                    Ok(Some(g)) => self.current = Some(g.body),
                    Ok(None) => return Some(Err(self.fail(short()))),
                    Err(e) => return Some(Err(self.fail(e))),
                }
            }
            let limit = self.ahead.front().map_or(self.end, |a| a.start);
            let body = self.current.as_mut().expect("opened above");
            match body.next().await {
                Some(Ok(mut c)) => {
                    let room = limit - self.pos;
                    if c.len() as u64 >= room {
                        c.truncate(room as usize);
                        self.current = None;
                    }
                    if c.is_empty() {
                        continue;
                    }
                    self.pos += c.len() as u64;
                    self.delivered += c.len() as u64;
                    return Some(Ok(c));
                }
                Some(Err(e)) => return Some(Err(self.fail(e))),
                // Ended before `limit`: the caller's count reports it.
                None => return None,
            }
        }
    }

    /// Ends the read: nothing more is fetched.
    fn fail(&mut self, e: Error) -> Error {
        self.current = None;
        self.ahead.clear();
        self.pending.clear();
        self.pos = self.end;
        e
    }

    /// Starts the segments ahead that the read has earned and the budget can hold.
    fn fetch_ahead(&mut self) {
        if self.delivered < SEQUENTIAL_AFTER {
            return;
        }
        // `transfers.concurrency` GETs in flight: the running one and the segments ahead.
        let most = self.inner.opts.concurrency.saturating_sub(1);
        while self.ahead.len() < most {
            let start = match self.ahead.back() {
                Some(a) => a.end,
                // The running GET carries the next segment's worth meanwhile, and the rest
                // too when that leaves less than a whole segment.
                None if self.current.is_some() => match self.pos + SEGMENT {
                    s if s + SEGMENT > self.end => return,
                    s => s,
                },
                None => self.pos,
            };
            if start >= self.end {
                return;
            }
            let end = (start + SEGMENT).min(self.end);
            let budget = &self.inner.budget;
            if budget.available() < budget.total() / 2 + (end - start) {
                return;
            }
            let Some(memory) = budget.try_acquire(end - start) else {
                return;
            };
            let (inner, key, etag) = (self.inner.clone(), self.key.clone(), self.etag.clone());
            let task = tokio::spawn(async move {
                let Some(got) = get(&inner, &key, start, Some(end), Some(&etag)).await? else {
                    return Err(short());
                };
                let mut body = checked(got.body, got.len, None);
                let mut chunks = Vec::new();
                while let Some(c) = body.next().await {
                    chunks.push(c?);
                }
                Ok(chunks)
            });
            self.ahead.push_back(Ahead {
                start,
                end,
                task: AbortOnDrop(task),
                memory,
            });
        }
    }
}
