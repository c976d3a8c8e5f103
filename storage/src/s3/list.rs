//! Folders over a flat key space: stat, list (one level) and walk (recursive).
//!
//! Both listings stream one page per ListObjectsV2 answer and hold at most that page plus a
//! few files whose fate is still open (see [`Shadow`]).

use super::client::{Request, Response};
use super::time::{parse_http_date, parse_iso8601, parse_mtime};
use super::xml::{self, ListBucketResult, ObjectDoc};
use super::Inner;
use crate::backend::{passed_over, ChildNames, Entry, EntryKind, ListStream, WalkNotes};
use crate::budget::MemoryPermit;
use crate::error::{Error, ErrorKind, Result};
use crate::path::key_is_servable;
use futures::StreamExt;
use reqwest::Method;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// HEADs in flight per listing page when `preserve_mtime` needs each file's metadata, before
/// any latency was measured.
const HEAD_CONCURRENCY: usize = 16;
/// Bounds of the adapted number (see [`head_concurrency`]).
const HEAD_CONCURRENCY_MIN: usize = 4;
const HEAD_CONCURRENCY_MAX: usize = 64;
/// The HEAD rate a listing aims at (per second): by Little's law the HEADs in flight are this
/// rate times the latency, so a server 20 ms away gets 40 at a time and one on loopback (well
/// under a millisecond) the minimum, where more in flight only queue on the server's cores.
const HEAD_TARGET_RATE: f64 = 2000.0;

/// One ListObjectsV2 answer.
pub(crate) struct Page {
    pub objects: Vec<ObjectDoc>,
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// Sends one ListObjectsV2 request.
pub(crate) async fn list_page(
    inner: &Inner,
    prefix: &str,
    delimiter: bool,
    token: Option<&str>,
    max_keys: usize,
) -> Result<Page> {
    let encoded = inner.caps().list_url_encoding;
    list_page_as(inner, prefix, delimiter, token, max_keys, encoded, None).await
}

/// [`list_page`], asking for URL-encoded keys or not (the probe asks whether the server
/// encodes them as it says it does).
pub(crate) async fn list_page_as(
    inner: &Inner,
    prefix: &str,
    delimiter: bool,
    token: Option<&str>,
    max_keys: usize,
    url_encoded: bool,
    start_after: Option<&str>,
) -> Result<Page> {
    let mut req = Request::new(Method::GET, None)
        .query("list-type", "2")
        .query("max-keys", max_keys.to_string());
    if !prefix.is_empty() {
        req = req.query("prefix", prefix);
    }
    if let Some(a) = start_after {
        req = req.query("start-after", a);
    }
    // Never send an empty `delimiter=`: some servers take it as a real delimiter.
    if delimiter {
        req = req.query("delimiter", "/");
    }
    if let Some(t) = token {
        req = req.query("continuation-token", t);
    }
    // Keys URL-encoded, where the probe found the server to encode them as it says: XML 1.0
    // cannot carry control characters, and servers replace them (Go's encoder, in MinIO, with
    // U+FFFD), so the key listed would not be the key stored. botocore asks for this on every
    // listing; but s3s-fs answers that it encoded and sends the keys as they are, which
    // decoded would name other keys (`%41` as `A`), so it is asked for only once found to work.
    if url_encoded {
        req = req.query("encoding-type", "url");
    }
    let body = inner.client.send_xml(&req).await?;
    let mut r: ListBucketResult = xml::parse(&body, "list")?;
    // Decoded only where the server says it encoded (one that ignores the parameter sends
    // the keys as they are).
    if url_encoded
        && r.encoding_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("url"))
    {
        for o in &mut r.contents {
            o.key = url_decoded(&o.key);
        }
        for p in &mut r.common_prefixes {
            p.prefix = url_decoded(&p.prefix);
        }
    }
    let next = match (r.is_truncated, r.next_continuation_token) {
        (false, _) => None,
        (true, Some(t)) if !t.is_empty() && Some(t.as_str()) != token => Some(t),
        (true, _) => {
            return Err(Error::new(
                ErrorKind::Backend,
                "the remote sent a truncated listing without a usable continuation token",
            ))
        }
    };
    Ok(Page {
        objects: r.contents,
        prefixes: r.common_prefixes.into_iter().map(|p| p.prefix).collect(),
        next,
    })
}

/// A key of a listing sent with `encoding-type=url`, decoded as botocore decodes it: form
/// encoding, so `+` is a space (a `+` of the key comes as `%2B`). Bytes that are not UTF-8
/// become U+FFFD, and such a key is then skipped (see `skip_key`).
fn url_decoded(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn leaf(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).to_string()
}

/// Describes a file from a HEAD answer.
pub(crate) fn entry_from_head(inner: &Inner, name: String, r: &Response) -> Entry {
    let mut mtime = r.header("last-modified").and_then(parse_http_date);
    if inner.opts.preserve_mtime {
        if let Some(t) = r.header("x-amz-meta-mtime").and_then(parse_mtime) {
            mtime = Some(t);
        }
    }
    Entry {
        name,
        kind: EntryKind::File,
        size: r.content_length().unwrap_or(0),
        mtime,
        etag: r.header("etag").map(str::to_string),
    }
}

/// HEADs file `key`.
pub(crate) async fn head(inner: &Inner, key: &str) -> Result<(Entry, Response)> {
    let r = inner
        .client
        .send(&Request::new(Method::HEAD, Some(key)))
        .await?;
    Ok((entry_from_head(inner, leaf(key), &r), r))
}

/// HEADs file `key`, describing it.
pub(crate) async fn head_entry(inner: &Inner, key: &str) -> Result<Entry> {
    head(inner, key).await.map(|(e, _)| e)
}

/// A folder wins over a file of the same name; `""` is the root.
pub(crate) async fn stat(inner: &Inner, key: &str) -> Result<Entry> {
    stat_as(inner, key, None).await.map(|(e, _)| e)
}

/// What a page of 1,000 keys takes while it is read, parsed and held. A listing made only to
/// save round trips is made where the budget is less than half used (transfers need it).
const PAGE_MEMORY: u64 = 512 * 1024;

/// The budget's share for a listing made only to save round trips; None where the budget is
/// more than half used or has no such share free.
fn spare_page_memory(inner: &Inner) -> Option<MemoryPermit> {
    inner
        .budget
        .is_plentiful()
        .then(|| inner.budget.try_acquire(PAGE_MEMORY))
        .flatten()
}

/// [`stat`], and where `key` is a folder, the listing of its children whose first page that
/// same request brought (see [`crate::backend::Backend::stat_listing`]). The folder question
/// is then a one-level listing of a whole page rather than of one key: the same round trip,
/// and on servers that walk the folder for every listing (s3s-fs), the same walk.
pub(crate) async fn stat_listing(
    inner: &Arc<Inner>,
    key: &str,
) -> Result<(Entry, Option<ListStream>)> {
    if key.is_empty() {
        return stat_as(inner, key, None).await;
    }
    stat_as(
        inner,
        key,
        spare_page_memory(inner).map(|m| (inner.clone(), m)),
    )
    .await
}

/// [`stat`], with the folder's listing asked for as a whole page, and kept as the start of a
/// listing, where `page` gives the budget's share for it.
async fn stat_as(
    inner: &Inner,
    key: &str,
    page: Option<(Arc<Inner>, MemoryPermit)>,
) -> Result<(Entry, Option<ListStream>)> {
    if key.is_empty() {
        return Ok((Entry::dir(""), None));
    }
    let dir_prefix = format!("{key}/");
    // Both questions at once: one round trip instead of two for every stat. Where the server
    // does not list a marker under its own prefix (MinIO in single-folder mode), a HEAD of the
    // marker is the third question, asked at the same time.
    let caps = inner.caps();
    let unlisted_markers = !caps.markers_listed && caps.markers_head;
    let (delimiter, max_keys) = match page {
        Some(_) => (true, inner.opts.list_page_size),
        None => (false, 1),
    };
    let (dir, file, marker) = tokio::join!(
        list_page(inner, &dir_prefix, delimiter, None, max_keys),
        head_entry(inner, key),
        async {
            if unlisted_markers {
                Some(head(inner, &dir_prefix).await)
            } else {
                None
            }
        }
    );
    if let Some(Ok((m, _))) = marker {
        return Ok((
            Entry {
                name: leaf(key),
                kind: EntryKind::Dir,
                size: 0,
                // As for a listed marker: a folder has a time of its own only when asked for.
                mtime: m
                    .mtime
                    .map(whole_seconds)
                    .filter(|_| inner.opts.folder_marker_times),
                etag: None,
            },
            None,
        ));
    }
    match dir {
        // Something below the prefix: a key (the folder's marker included) or, in a one-level
        // listing, a folder of folders.
        Ok(p) if !p.objects.is_empty() || !p.prefixes.is_empty() => {
            if file.is_ok() {
                tracing::warn!(remote = %inner.opts.name, key, "a file and a folder share this name; showing the folder");
            }
            let e = Entry {
                name: leaf(key),
                kind: EntryKind::Dir,
                size: 0,
                mtime: if inner.opts.folder_marker_times {
                    marker_time(&p, &dir_prefix)
                } else {
                    None
                },
                etag: None,
            };
            let listing = page.map(|(inner, memory)| pages_from(inner, dir_prefix, p, memory));
            Ok((e, listing))
        }
        Ok(_) => match file {
            Ok(e) => Ok((e, None)),
            // Under a prefix-restricted policy HEAD answers 403 for a missing key; the listing
            // (which worked) already told us nothing is there.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                Err(Error::of(ErrorKind::NotFound))
            }
            Err(e) => Err(e),
        },
        Err(list_err) => match file {
            Ok(e) => Ok((e, None)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(list_err),
            Err(e) => Err(e),
        },
    }
}

/// Files held back until we know no folder of the same name follows.
///
/// A file `a` is hidden by a folder `a/`; in key order `a` comes first, possibly followed by
/// names like `a-1` or `a.txt` (bytes below `/`) before `a/`, even on later pages. A held file
/// is settled as soon as a key sorts after `a/`. Held files form a stack whose top has the
/// lowest threshold (each later one extends the previous with a byte below `/`), so settling
/// only ever looks at the top.
#[derive(Default)]
struct Shadow {
    held: Vec<Entry>,
}

impl Shadow {
    /// Settles held files against the position `pos` (a key relative to `prefix`, folders
    /// with `/`). A hidden file is logged by its whole key: one name can be hidden in several
    /// folders of one walk.
    fn settle(
        &mut self,
        prefix: &str,
        pos: &str,
        out: &mut Vec<Entry>,
        remote: &str,
        notes: Option<&WalkNotes>,
    ) {
        while let Some(top) = self.held.last() {
            let dir = format!("{}/", top.name);
            if pos.starts_with(&dir) {
                let key = format!("{prefix}{}", top.name);
                tracing::warn!(
                    remote,
                    key,
                    "a file and a folder share this name; hiding the file"
                );
                if let Some(n) = notes {
                    n.note(top.name.clone(), passed_over::HIDDEN_BY_FOLDER);
                }
                self.held.pop();
            } else if pos > dir.as_str() {
                out.push(self.held.pop().expect("checked"));
            } else {
                break;
            }
        }
    }

    fn hold(&mut self, e: Entry) {
        self.held.push(e);
    }

    fn drain(&mut self, out: &mut Vec<Entry>) {
        while let Some(e) = self.held.pop() {
            out.push(e);
        }
    }
}

/// True (after logging, and telling `notes`) when a listed key must not be served: `rel` is
/// its part below the listed folder, which every name shown is made of. Each name must come
/// back to exactly this key when a client sends it (see [`key_is_servable`]).
fn skip_key(remote: &str, key: &str, rel: &str, notes: Option<&WalkNotes>) -> bool {
    let why = if key.contains('\u{FFFD}') {
        tracing::warn!(remote, key, "skipping a key that is not valid UTF-8");
        passed_over::NOT_UTF8
    } else if !key_is_servable(rel) {
        tracing::warn!(remote, key = ?key, "skipping a key that cannot be a path");
        passed_over::NOT_A_PATH
    } else {
        return false;
    };
    if let Some(n) = notes {
        n.note(rel, why);
    }
    true
}

/// True for a path below a listed folder that lies inside a capability probe's scratch folder
/// (`.bucketgate-probe-` and 16 hex digits, see [`super::probe`]): the probe runs in the
/// background at start and on reload, under each mount's prefix, and its objects are not the
/// user's. Such names are never listed (a user's own file named so would be hidden too: the
/// name is reserved, see docs/objects.md).
fn in_probe_folder(rel: &str) -> bool {
    rel.split('/').any(|seg| {
        seg.strip_prefix(super::probe::SCRATCH)
            .is_some_and(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

fn file_entry(name: String, o: &ObjectDoc) -> Entry {
    Entry {
        name,
        kind: EntryKind::File,
        size: o.size,
        mtime: parse_iso8601(&o.last_modified),
        etag: o.etag.clone(),
    }
}

/// The time of the folder `dir_prefix` (ending in `/`) from a listing of that prefix, with
/// `folder_marker_times`: its marker's Last-Modified when it has one (the marker sorts before
/// every key below it, so it is the first object), else none (a folder implied by deeper keys).
/// In whole seconds, as a HEAD of the marker gives it: listings read folder times that way (see
/// [`with_times`]), so a folder shows one time everywhere.
fn marker_time(page: &Page, dir_prefix: &str) -> Option<std::time::SystemTime> {
    page.objects
        .first()
        .filter(|o| o.key == dir_prefix)
        .and_then(|o| parse_iso8601(&o.last_modified))
        .map(whole_seconds)
}

fn whole_seconds(t: std::time::SystemTime) -> std::time::SystemTime {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// How many metadata HEADs a listing keeps in flight: enough to reach [`HEAD_TARGET_RATE`]
/// at the latency measured so far, within bounds.
fn head_concurrency(inner: &Inner) -> usize {
    let us = inner.head_latency_us.load(Ordering::Relaxed);
    if us == 0 {
        return HEAD_CONCURRENCY;
    }
    let n = (HEAD_TARGET_RATE * us as f64 / 1e6).ceil() as usize;
    n.clamp(HEAD_CONCURRENCY_MIN, HEAD_CONCURRENCY_MAX)
}

/// Folds one HEAD's latency into the running average (weight 1/8).
fn note_head_latency(inner: &Inner, took: std::time::Duration) {
    let us = (took.as_micros().min(u64::MAX as u128) as u64).max(1);
    let _ = inner
        .head_latency_us
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { us } else { old - old / 8 + us / 8 })
        });
}

/// True when [`with_times`] would send a request for this page.
fn needs_heads(inner: &Inner, page: &[Entry], folders: bool) -> bool {
    page.iter().any(|e| {
        if e.is_dir() {
            folders && inner.opts.folder_marker_times
        } else {
            inner.opts.preserve_mtime
        }
    })
}

/// Completes the times of one page of a one-level listing. Files: with `preserve_mtime`, a
/// HEAD each reads the `mtime` metadata (listings do not carry it). Folders, only with
/// `folder_marker_times`: a common prefix carries no time, and the marker `name/` is folded
/// into it, so a HEAD of each folder's marker reads its Last-Modified (none when there is no
/// marker: an implied folder). Without either option nothing is sent: the listing's own
/// Last-Modified is each file's time, and folders have none. The HEADs run at most
/// [`head_concurrency`] at a time; a failure leaves the time as the listing gave it.
async fn with_times(inner: &Inner, prefix: &str, page: Vec<Entry>, folders: bool) -> Vec<Entry> {
    if !needs_heads(inner, &page, folders) {
        return page;
    }
    let marker_times = folders && inner.opts.folder_marker_times;
    futures::stream::iter(page)
        .map(|mut e| async move {
            if e.is_dir() {
                if marker_times {
                    let marker = format!("{prefix}{}/", e.name);
                    let t0 = std::time::Instant::now();
                    match inner.client.send(&Request::new(Method::HEAD, Some(&marker))).await {
                        Ok(r) => {
                            note_head_latency(inner, t0.elapsed());
                            e.mtime = r.header("last-modified").and_then(parse_http_date)
                        }
                        // No marker (an implied folder), or a server that cannot HEAD one.
                        Err(err) => {
                            tracing::debug!(name = %e.name, error = ?err, "no marker time for a folder")
                        }
                    }
                }
            } else if inner.opts.preserve_mtime {
                let t0 = std::time::Instant::now();
                match head_entry(inner, &format!("{prefix}{}", e.name)).await {
                    Ok(h) => {
                        note_head_latency(inner, t0.elapsed());
                        e.mtime = h.mtime.or(e.mtime)
                    }
                    Err(err) => {
                        tracing::debug!(name = %e.name, error = ?err, "HEAD for mtime failed; showing Last-Modified")
                    }
                }
            }
            e
        })
        .buffered(head_concurrency(inner))
        .collect()
        .await
}

struct ListState {
    inner: Arc<Inner>,
    prefix: String,
    recursive: bool,
    token: Option<String>,
    started: bool,
    finished: bool,
    shadow: Shadow,
    /// For walks: the folders (relative, no slash) leading to the last key, already shown.
    open_dirs: Vec<String>,
    /// The next page, fetched while the HEADs of the previous one ran (or, for the first
    /// page, by the stat that found the folder).
    prefetched: Option<Result<Page>>,
    /// The budget's share for a first page fetched by a stat, held until the page is taken.
    held: Option<MemoryPermit>,
    /// Where a walk tells what it passes over (see [`WalkNotes`]).
    notes: Option<Arc<WalkNotes>>,
}

fn dir_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}/")
    }
}

/// The names of the direct children of folder `key` after `after`, as one ListObjectsV2 page
/// holds them (see [`crate::backend::Backend::child_names`]).
pub(crate) async fn child_names(inner: &Inner, key: &str, after: &str) -> Result<ChildNames> {
    let Some(_memory) = spare_page_memory(inner) else {
        return Err(Error::new(
            ErrorKind::LimitReached,
            "no room in the memory budget for a listing now",
        ));
    };
    let prefix = dir_prefix(key);
    let start = (!after.is_empty()).then(|| format!("{prefix}{after}"));
    let encoded = inner.caps().list_url_encoding;
    let size = inner.opts.list_page_size;
    let page = list_page_as(inner, &prefix, true, None, size, encoded, start.as_deref())
        .await
        .map_err(|e| e.with_key("list", prefix.clone()))?;
    let rel = |k: &str| k.strip_prefix(prefix.as_str()).map(str::to_string);
    // A page that stops short of the folder's end covers names up to its last entry (keys and
    // folder prefixes come in one order). A server that ignored `start-after` listed from the
    // start: the range it covers is then smaller, never wrong.
    let end = match page.next {
        None => None,
        Some(_) => {
            let last = page
                .objects
                .last()
                .map(|o| o.key.as_str())
                .into_iter()
                .chain(page.prefixes.last().map(String::as_str))
                .max();
            Some(last.and_then(rel).unwrap_or_default())
        }
    };
    let names = page
        .objects
        .iter()
        .map(|o| o.key.as_str())
        .chain(page.prefixes.iter().map(String::as_str))
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .map(|n| n.trim_end_matches('/'))
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    Ok(ChildNames {
        names,
        after: after.to_string(),
        end,
    })
}

/// The direct children of folder `key`, one page per answer.
pub(crate) fn list(inner: Arc<Inner>, key: &str) -> ListStream {
    pages(inner, dir_prefix(key), false)
}

/// Everything below `key`, with names relative to it; folders from markers and implied by
/// deeper keys, each shown once. The ListObjectsV2 pages alone: a file's time is its
/// Last-Modified even with `preserve_mtime` (see [`crate::backend::Backend::walk_mtime_exact`]).
pub(crate) fn walk(inner: Arc<Inner>, key: &str, notes: Option<Arc<WalkNotes>>) -> ListStream {
    let mut st = state(inner, dir_prefix(key), true);
    st.notes = notes;
    pages_of(st)
}

async fn fetch_page(st: &ListState, token: Option<&str>) -> Result<Page> {
    list_page(
        &st.inner,
        &st.prefix,
        !st.recursive,
        token,
        st.inner.opts.list_page_size,
    )
    .await
    .map_err(|e| e.with_key("list", st.prefix.clone()))
}

fn pages(inner: Arc<Inner>, prefix: String, recursive: bool) -> ListStream {
    pages_of(state(inner, prefix, recursive))
}

fn state(inner: Arc<Inner>, prefix: String, recursive: bool) -> ListState {
    ListState {
        inner,
        prefix,
        recursive,
        token: None,
        started: false,
        finished: false,
        shadow: Shadow::default(),
        open_dirs: Vec::new(),
        prefetched: None,
        held: None,
        notes: None,
    }
}

/// A one-level listing of `prefix` whose first page, `first`, was fetched already (from the
/// start of the prefix, with the delimiter and the usual page size); `memory` is held until
/// that page is taken.
fn pages_from(inner: Arc<Inner>, prefix: String, first: Page, memory: MemoryPermit) -> ListStream {
    pages_of(ListState {
        inner,
        prefix,
        recursive: false,
        token: None,
        started: false,
        finished: false,
        shadow: Shadow::default(),
        open_dirs: Vec::new(),
        prefetched: Some(Ok(first)),
        held: Some(memory),
        notes: None,
    })
}

fn pages_of(st: ListState) -> ListStream {
    Box::pin(futures::stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        if st.started && st.token.is_none() {
            st.finished = true;
            let mut out = Vec::new();
            st.shadow.drain(&mut out);
            out.reverse();
            if out.is_empty() {
                return None;
            }
            if !st.recursive {
                out = with_times(&st.inner, &st.prefix, out, true).await;
            }
            return Some((Ok(out), st));
        }
        st.started = true;
        let page = match st.prefetched.take() {
            Some(p) => p,
            None => fetch_page(&st, st.token.as_deref()).await,
        };
        st.held = None;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                st.finished = true;
                return Some((Err(e), st));
            }
        };
        st.token = page.next.clone();
        if st.recursive {
            let out = walk_page(&mut st, page);
            return Some((Ok(out), st));
        }
        let out = list_page_entries(&mut st, page);
        if !needs_heads(&st.inner, &out, true) {
            return Some((Ok(out), st));
        }
        // The next page is asked for while this page's HEADs run: a long listing costs its
        // HEADs, not its HEADs plus every page's round trip.
        let (out, next) = match st.token.clone() {
            Some(t) => {
                let (out, next) = tokio::join!(
                    with_times(&st.inner, &st.prefix, out, true),
                    fetch_page(&st, Some(&t))
                );
                (out, Some(next))
            }
            None => (with_times(&st.inner, &st.prefix, out, true).await, None),
        };
        st.prefetched = next;
        Some((Ok(out), st))
    }))
}

fn list_page_entries(st: &mut ListState, page: Page) -> Vec<Entry> {
    let remote = st.inner.opts.name.clone();
    // Objects and prefixes come in two lists; merged in key order they settle held files.
    let mut items: Vec<(String, Option<ObjectDoc>)> = page
        .objects
        .into_iter()
        .map(|o| (o.key.clone(), Some(o)))
        .chain(page.prefixes.into_iter().map(|p| (p, None)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (key, obj) in items {
        let Some(rel) = key.strip_prefix(st.prefix.as_str()) else {
            continue;
        };
        // The folder's own marker, or (impossible with a delimiter) another marker.
        if rel.is_empty() || (obj.is_some() && rel.ends_with('/')) {
            continue;
        }
        if in_probe_folder(rel) || skip_key(&remote, &key, rel, None) {
            continue;
        }
        st.shadow.settle(&st.prefix, rel, &mut out, &remote, None);
        match obj {
            Some(o) => st.shadow.hold(file_entry(rel.to_string(), &o)),
            None => {
                let name = rel.trim_end_matches('/');
                if name.is_empty() || name.contains('/') {
                    continue;
                }
                out.push(Entry::dir(name));
            }
        }
    }
    out
}

fn walk_page(st: &mut ListState, mut page: Page) -> Vec<Entry> {
    let remote = st.inner.opts.name.clone();
    page.objects.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    for o in page.objects {
        let Some(rel) = o.key.strip_prefix(st.prefix.as_str()) else {
            continue;
        };
        let notes = st.notes.as_deref();
        if rel.is_empty() || in_probe_folder(rel) || skip_key(&remote, &o.key, rel, notes) {
            continue;
        }
        st.shadow.settle(&st.prefix, rel, &mut out, &remote, notes);
        let is_marker = rel.ends_with('/');
        let path = rel.trim_end_matches('/');
        // Keys sharing a prefix are contiguous in key order, so a folder left behind never
        // comes back: keeping the chain of open folders is enough to show each one once.
        while let Some(top) = st.open_dirs.last() {
            let inside =
                path.starts_with(top.as_str()) && path.as_bytes().get(top.len()) == Some(&b'/');
            if inside || (is_marker && path == top) {
                break;
            }
            st.open_dirs.pop();
        }
        let mut dirs: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        if is_marker {
            dirs.push(path);
        }
        for d in dirs {
            if st.open_dirs.iter().any(|x| x == d) {
                continue;
            }
            let mut e = Entry::dir(d);
            if is_marker && d == path && st.inner.opts.folder_marker_times {
                e.mtime = parse_iso8601(&o.last_modified).map(whole_seconds);
            }
            st.open_dirs.push(d.to_string());
            out.push(e);
        }
        if !is_marker {
            st.shadow.hold(file_entry(rel.to_string(), &o));
        }
    }
    out
}

impl super::S3Backend {
    /// Every key under `prefix` (`""` = the whole bucket), as the server lists them: nothing
    /// skipped or hidden, no folders made up. For checks that must see what a listing of the
    /// tree would not show (what a probe or an aborted upload left behind).
    pub async fn raw_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = list_page(
                &self.inner,
                prefix,
                false,
                token.as_deref(),
                self.inner.opts.list_page_size,
            )
            .await?;
            keys.extend(page.objects.into_iter().map(|o| o.key));
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(keys),
            }
        }
    }

    /// Checks that keys under `prefix` (`""` = the whole bucket) can be listed with these
    /// credentials: one ListObjectsV2 with that prefix and `max-keys=1`. A key whose policy
    /// only allows listing under a prefix passes here and fails [`super::S3Backend::probe_bucket`].
    pub async fn probe_prefix(&self, prefix: &str) -> Result<()> {
        list_page(&self.inner, prefix, false, None, 1)
            .await
            .map(|_| ())
            .map_err(|e| e.with_context("probe", format!("s3:{}/{prefix}", self.inner.opts.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::{in_probe_folder, url_decoded};

    #[test]
    fn listed_keys_are_decoded_as_botocore_decodes_them() {
        // `%41+` as AWS and MinIO send it; a space as `+` (form encoding) or `%20`.
        assert_eq!(url_decoded("%2541%2B"), "%41+");
        assert_eq!(url_decoded("sp+ace%20x"), "sp ace x");
        assert_eq!(url_decoded("zz%2Fc%01d%2F"), "zz/c\u{1}d/");
        assert_eq!(url_decoded("%C3%BCn%C3%AF"), "ünï");
        // Not UTF-8: marked, so the key is skipped rather than acted on as another.
        assert!(url_decoded("a%FFb").contains('\u{FFFD}'));
    }

    #[test]
    fn only_probe_scratch_folders_are_hidden() {
        assert!(in_probe_folder(".bucketgate-probe-0123456789abcdef/"));
        assert!(in_probe_folder("a/.bucketgate-probe-0123456789ABCDEF/c"));
        assert!(!in_probe_folder(".bucketgate-probe-0123456789abcde/"));
        assert!(!in_probe_folder(".bucketgate-probe-0123456789abcdeg/c"));
        assert!(!in_probe_folder("x.bucketgate-probe-0123456789abcdef/c"));
        assert!(!in_probe_folder(".bucketgate-probe-/c"));
    }
}
