//! What a remote's server actually does, found out once by trying it (at start, and in
//! `bucketgate remote test`), rather than assumed from its name.
//!
//! S3-compatible servers differ where it matters for the gateway's guarantees: which
//! conditional requests they enforce (AWS: all; Ceph RGW 16: `If-None-Match` on PutObject, and
//! `If-Match` only unquoted, the copy condition only under a non-standard name, nothing on
//! CompleteMultipartUpload; Garage 2.5: none on writes), whether folder markers list under
//! their own prefix and outlive their folder's files, whether ListMultipartUploads answers by
//! prefix, whether a file and a folder may share a name. The probe writes a few small objects
//! under a random `.bucketgate-probe-*/` folder of the remote's prefix and removes them all
//! again (uploads it started included).
//!
//! Until a probe has answered, [`Capabilities::default`] assumes the least: conditions are
//! sent (harmless where ignored) and also checked by a HEAD just before each commit.

use super::client::{Body, Request, Response};
use super::list::{list_page, list_page_as};
use super::xml::{self, InitiateResult, ListUploadsResult};
use super::{Inner, S3Backend};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine as _;
use bytes::Bytes;
use reqwest::Method;

/// The start of the name of the folder a probe writes in (then 16 hex digits). Listings never
/// show such folders (see `list::in_probe_folder`).
pub(crate) const SCRATCH: &str = ".bucketgate-probe-";

/// How an ETag goes into `If-Match` (on PutObject, CompleteMultipartUpload, GetObject, DELETE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtagForm {
    /// Without quotes: what AWS, MinIO, s3s and moto accept (they compare ignoring quotes),
    /// and the only form Ceph RGW's write path matches (it compares the header with its
    /// stored, unquoted ETag). The default.
    #[default]
    Bare,
    /// With quotes, as the `ETag` header gives it (a server that refuses the bare form).
    Quoted,
    /// The server refused a matching ETag in both forms: `If-Match` is not sent on writes (the
    /// HEAD check before the commit is all there is).
    Omit,
}

/// Which header makes a server-side copy conditional on its source's ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyCondition {
    /// `x-amz-copy-source-if-match`, as S3 documents it. The default.
    #[default]
    Standard,
    /// Only Ceph RGW's own `x-amz-copy-if-match` is honoured (sent beside the standard one).
    Legacy,
    /// Neither is honoured: a copy can take a source that changed a moment before.
    Ignored,
}

/// What one remote's server was found to do. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// True once a probe filled this in (the rest is then measured, not assumed).
    pub probed: bool,
    /// PutObject with `If-None-Match: *` is refused over an existing object.
    pub put_if_none_match: bool,
    /// PutObject with `If-Match` is refused for another ETag and accepted for the current one.
    pub put_if_match: bool,
    /// The form of `If-Match` the server matches.
    pub etag_form: EtagForm,
    /// CompleteMultipartUpload with `If-None-Match: *` is refused over an existing object.
    pub complete_if_none_match: bool,
    /// CompleteMultipartUpload with `If-Match` is refused for another ETag and accepted for
    /// the current one.
    pub complete_if_match: bool,
    /// CompleteMultipartUpload's answer names the new object's ETag (Ceph RGW 16 sends an
    /// empty one).
    pub complete_names_etag: bool,
    /// Which copy condition the server honours.
    pub copy_if_match: CopyCondition,
    /// DELETE with `If-Match` is refused for another ETag.
    pub delete_if_match: bool,
    /// A folder marker `d/` is listed under the prefix `d/` (an older MinIO in single-folder
    /// mode does not list it, though `HEAD d/` finds it).
    pub markers_listed: bool,
    /// `HEAD d/` answers for a folder marker (s3s-fs keeps markers as folders and fails it).
    pub markers_head: bool,
    /// A folder marker `d/` outlives its folder's last file (servers on a file system absorb
    /// the marker into the folder, and the folder goes with its last file).
    pub markers_survive: bool,
    /// ListMultipartUploads finds an upload by a prefix of its key (MinIO needs the exact key).
    pub uploads_by_prefix: bool,
    /// A file `a` and a file `a/b` may both exist (servers on a file system refuse one).
    pub file_and_folder: bool,
    /// A PutObject whose body does not match its `Content-MD5` is refused and the previous
    /// object stays (AWS, Garage); false where the server stores such a body (s3s-fs checks
    /// after it has replaced the object, moto not at all). Where true, a sync copy whose MD5
    /// is known before it starts goes as one streamed PutObject carrying it (see
    /// [`crate::backend::Backend::wants_content_md5`]); elsewhere as a multipart upload whose
    /// parts each carry their own.
    pub put_content_md5: bool,
    /// A PutObject and an UploadPart whose body does not match their `x-amz-checksum-crc32c`
    /// are refused (the old object kept), and matching ones stored (AWS, Garage); false where
    /// the header is ignored (moto, Ceph RGW 16, older MinIO) or checked only after the body
    /// replaced the object (s3s-fs). Where true, `checksum: auto` sends CRC32C, which costs a
    /// fraction of MD5's CPU.
    pub put_crc32c: bool,
    /// A ListObjectsV2 with `encoding-type=url` sends its keys URL-encoded, so that keys with
    /// characters XML cannot carry are listed as they are (AWS, Garage, MinIO); false where the
    /// server ignores the parameter or, as s3s-fs, says it encoded and did not. Listings ask
    /// for it only where true.
    pub list_url_encoding: bool,
}

impl Default for Capabilities {
    /// Before any probe: nothing is known to be enforced, markers are assumed to behave as on
    /// S3 (listed, lasting), and copies use the standard condition.
    fn default() -> Self {
        Capabilities {
            probed: false,
            put_if_none_match: false,
            put_if_match: false,
            etag_form: EtagForm::Bare,
            complete_if_none_match: false,
            complete_if_match: false,
            complete_names_etag: true,
            copy_if_match: CopyCondition::Standard,
            delete_if_match: false,
            markers_listed: true,
            markers_head: true,
            markers_survive: true,
            uploads_by_prefix: true,
            file_and_folder: true,
            put_content_md5: false,
            put_crc32c: false,
            list_url_encoding: false,
        }
    }
}

impl Capabilities {
    /// The names of the features this server lacks, for the probe's one log line
    /// (`bucketgate remote test` explains each).
    pub fn lacking(&self) -> Vec<&'static str> {
        let flags = [
            (self.put_if_none_match, "put_if_none_match"),
            (self.put_if_match, "put_if_match"),
            (self.complete_if_none_match, "complete_if_none_match"),
            (self.complete_if_match, "complete_if_match"),
            (self.complete_names_etag, "complete_names_etag"),
            (
                self.copy_if_match != CopyCondition::Ignored,
                "copy_if_match",
            ),
            (self.delete_if_match, "delete_if_match"),
            (self.markers_listed, "markers_listed"),
            (self.markers_head, "markers_head"),
            (self.markers_survive, "markers_survive"),
            (self.uploads_by_prefix, "uploads_by_prefix"),
            (self.file_and_folder, "file_and_folder"),
            (self.put_content_md5, "put_content_md5"),
            (self.put_crc32c, "put_crc32c"),
            (self.list_url_encoding, "list_url_encoding"),
        ];
        flags
            .into_iter()
            .filter(|(has, _)| !has)
            .map(|(_, name)| name)
            .collect()
    }

    /// One line per guarantee that does not hold on this server, as `remote test` prints them
    /// (docs/providers.md explains each window).
    pub fn weaker_guarantees(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.put_if_none_match {
            out.push(
                "no-overwrite uploads: the server ignores If-None-Match on PutObject; a HEAD just \
                 before the commit checks instead (a race within one round trip can overwrite)",
            );
        }
        if !self.put_if_match {
            out.push(
                "appends and sync updates: the server does not enforce If-Match on PutObject; a \
                 HEAD just before the commit checks instead (a race within one round trip is lost)",
            );
        }
        if !self.complete_if_none_match || !self.complete_if_match {
            out.push(
                "large uploads (multipart): the server ignores conditions on \
                 CompleteMultipartUpload; a HEAD just before the commit checks instead",
            );
        }
        match self.copy_if_match {
            CopyCondition::Standard => {}
            CopyCondition::Legacy => {}
            CopyCondition::Ignored => out.push(
                "copies and renames: the server ignores the copy condition; a source replaced \
                 during the copy is copied in its new version",
            ),
        }
        if !self.delete_if_match {
            out.push(
                "sync lease release: the server ignores If-Match on DELETE; the lease is read \
                 just before it is deleted",
            );
        }
        if !self.markers_survive && self.markers_head {
            out.push(
                "empty folders: the server drops a folder's marker with its last file; the \
                 gateway writes the marker again after removing or moving that file",
            );
        } else if !self.markers_survive || (!self.markers_listed && !self.markers_head) {
            out.push(
                "empty folders: the server shows an empty folder's marker neither in a listing \
                 nor to HEAD; an empty folder is not seen",
            );
        }
        if !self.uploads_by_prefix {
            out.push(
                "stale multipart uploads: the server does not list uploads by prefix; this \
                 instance's own leftovers of a crash are aborted at its next start (from its \
                 journal), but uploads left by another instance or a lost state folder are not \
                 found and stay until the bucket's lifecycle rules remove them",
            );
        }
        if !self.list_url_encoding {
            out.push(
                "unusual names: the server does not URL-encode the keys of a listing; a key with \
                 a control character (which XML cannot carry) is listed altered, and skipped",
            );
        }
        if !self.put_content_md5 {
            out.push(
                "large sync copies: the server stores a PutObject whose body does not match its \
                 Content-MD5 (or refuses it only after replacing the object); a sync copy above \
                 the part size goes as a multipart upload, each part checked, which is slower",
            );
        }
        if !self.file_and_folder {
            out.push(
                "names: the server refuses a file and a folder of the same name (the client gets \
                 an error; nothing is changed)",
            );
        }
        out
    }
}

/// The ETag as `If-Match` carries it: bare (quotes and weak marker removed) when that leaves a
/// plain token, quoted otherwise (a bare value with other characters is not a valid header
/// token for some servers).
pub(crate) fn if_match_value(etag: &str, form: EtagForm) -> String {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let bare = t.trim_matches('"');
    let token = !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    match form {
        EtagForm::Bare | EtagForm::Omit if token => bare.to_string(),
        _ => format!("\"{bare}\""),
    }
}

/// Adds the condition that a copy's source still has `etag`, in the header(s) the server honours.
pub(crate) fn copy_if_match(req: Request, etag: &str, caps: &Capabilities) -> Request {
    let v = if_match_value(etag, caps.etag_form);
    match caps.copy_if_match {
        CopyCondition::Legacy => req
            .header("x-amz-copy-source-if-match", v.clone())
            .header("x-amz-copy-if-match", v),
        _ => req.header("x-amz-copy-source-if-match", v),
    }
}

/// The probe's key for the listing encoding question: a `+`, a `%` and a space.
const URL_KEY: &str = "u+%41 b";

/// An ETag no object has (the MD5 of nothing in particular), to see a condition refused.
const WRONG_ETAG: &str = "0123456789abcdef0123456789abcdef";

fn refused(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Conflict | ErrorKind::AlreadyExists)
}

struct Probe<'a> {
    inner: &'a Inner,
    base: String,
    uploads: Vec<(String, String)>,
}

impl Probe<'_> {
    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.base)
    }

    async fn put(&self, rel: &str, body: &'static [u8], h: &[(&str, String)]) -> Result<Response> {
        let body = if body.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(Bytes::from_static(body))
        };
        let mut req = Request::new(Method::PUT, Some(&self.key(rel))).body(body);
        for (k, v) in h {
            req = req.header(k, v.clone());
        }
        self.inner.client.send(&req).await
    }

    async fn body(&self, rel: &str) -> Result<Bytes> {
        self.inner
            .client
            .send(&Request::new(Method::GET, Some(&self.key(rel))))
            .await?
            .bytes()
            .await
    }

    /// Whether a PutObject whose body does not match its `Content-MD5` is refused with the old
    /// object left as it was, and one that matches is stored ([`Capabilities::put_content_md5`]).
    async fn content_md5(&self) -> Result<bool> {
        let md5 = |b: &[u8]| {
            use md5::Digest as _;
            let d: [u8; 16] = md5::Md5::digest(b).into();
            base64::engine::general_purpose::STANDARD.encode(d)
        };
        self.refuses_mismatch("h", "content-md5", md5).await
    }

    /// Whether a PutObject of `rel` whose body does not match the digest in `header` (as
    /// `digest` writes it) is refused with the object before left as it was, and one that
    /// matches is stored.
    async fn refuses_mismatch(
        &self,
        rel: &str,
        header: &str,
        digest: impl Fn(&[u8]) -> String,
    ) -> Result<bool> {
        self.put(rel, b"one", &[]).await?;
        // The digest of other bytes of the same length: a byte changed on the way.
        let req = Request::new(Method::PUT, Some(&self.key(rel))).header(header, digest(b"owt"));
        let wrong = self.send_once(req, b"two").await;
        let kept = &self.body(rel).await?[..] == b"one";
        let right = self
            .put(rel, b"three", &[(header, digest(b"three"))])
            .await
            .is_ok()
            && &self.body(rel).await?[..] == b"three";
        Ok(wrong.is_err() && kept && right)
    }

    /// Whether a PutObject and an UploadPart whose body does not match its
    /// `x-amz-checksum-crc32c` are refused, the old object left as it was, and matching ones
    /// accepted ([`Capabilities::put_crc32c`]).
    async fn crc32c(&mut self) -> Result<bool> {
        let crc = |b: &[u8]| {
            base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(b).to_be_bytes())
        };
        if !self
            .refuses_mismatch("k", "x-amz-checksum-crc32c", crc)
            .await?
        {
            return Ok(false);
        }
        // The same for a part of an upload that declared the algorithm, as uploads do.
        let (key, id) = self
            .initiate("kp", &[("x-amz-checksum-algorithm", "CRC32C")])
            .await?;
        let part = |sum: String| {
            Request::new(Method::PUT, Some(&key))
                .query("partNumber", "1")
                .query("uploadId", id.clone())
                .header("x-amz-checksum-crc32c", sum)
        };
        let wrong = self.send_once(part(crc(b"owt")), b"two").await;
        let right = self.send_once(part(crc(b"two")), b"two").await;
        Ok(wrong.is_err() && right.is_ok())
    }

    /// Sends `req` with `body` as a streamed body, as the sync's copies are, which the client
    /// does not send again: a refusal (retryable elsewhere) is the answer, not a reason to wait
    /// and retry.
    async fn send_once(&self, req: Request, body: &'static [u8]) -> Result<Response> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(Bytes::from_static(body)))
            .await
            .map_err(|_| Error::new(ErrorKind::Backend, "cannot fill a probe body"))?;
        drop(tx);
        let req = req.body(Body::Stream(
            std::sync::Arc::new(std::sync::Mutex::new(Some(rx))),
            body.len() as u64,
        ));
        self.inner.client.send(&req).await
    }

    async fn etag(&self, rel: &str) -> Result<String> {
        let r = self
            .inner
            .client
            .send(&Request::new(Method::HEAD, Some(&self.key(rel))))
            .await?;
        r.header("etag")
            .map(str::to_string)
            .ok_or_else(|| Error::new(ErrorKind::Backend, "the remote sent no ETag"))
    }

    async fn exists(&self, rel: &str) -> Result<bool> {
        match self
            .inner
            .client
            .send(&Request::new(Method::HEAD, Some(&self.key(rel))))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether folder `rel` (ending in `/`) shows in any way: its marker answers HEAD, or a
    /// delimited listing of the probe's folder names it.
    async fn folder_visible(&self, rel: &str) -> Result<bool> {
        if self.exists(rel).await.unwrap_or(false) {
            return Ok(true);
        }
        let page = list_page(self.inner, &self.base, true, None, 100).await?;
        let key = self.key(rel);
        Ok(page.prefixes.contains(&key) || page.objects.iter().any(|o| o.key == key))
    }

    async fn delete(&self, rel: &str, h: &[(&str, String)]) -> Result<()> {
        let mut req = Request::new(Method::DELETE, Some(&self.key(rel)));
        for (k, v) in h {
            req = req.header(k, v.clone());
        }
        self.inner.client.send(&req).await.map(|_| ())
    }

    /// CreateMultipartUpload of `rel` with headers `h`, remembered for the clean-up; returns
    /// the key and the upload id.
    async fn initiate(&mut self, rel: &str, h: &[(&str, &str)]) -> Result<(String, String)> {
        let key = self.key(rel);
        let mut req = Request::new(Method::POST, Some(&key)).query("uploads", "");
        for (k, v) in h {
            req = req.header(k, *v);
        }
        let body = self.inner.client.send_xml(&req).await?;
        let id = xml::parse::<InitiateResult>(&body, "create multipart upload")?.upload_id;
        self.uploads.push((key.clone(), id.clone()));
        Ok((key, id))
    }

    /// A multipart upload of `rel` with one small part; returns its id and the part's ETag.
    async fn start_upload(&mut self, rel: &str) -> Result<(String, String)> {
        let (key, id) = self.initiate(rel, &[]).await?;
        let r = self
            .inner
            .client
            .send(
                &Request::new(Method::PUT, Some(&key))
                    .query("partNumber", "1")
                    .query("uploadId", id.clone())
                    .body(Body::Bytes(Bytes::from_static(b"multipart probe"))),
            )
            .await?;
        let etag = r
            .header("etag")
            .map(str::to_string)
            .ok_or_else(|| Error::new(ErrorKind::Backend, "the remote sent no ETag for a part"))?;
        Ok((id, etag))
    }

    async fn complete(
        &self,
        rel: &str,
        id: &str,
        part: &str,
        h: &[(&str, String)],
    ) -> Result<Bytes> {
        let mut req = Request::new(Method::POST, Some(&self.key(rel)))
            .query("uploadId", id.to_string())
            .header("content-type", "application/xml")
            .body(Body::Bytes(Bytes::from(xml::complete_body(&[(
                1,
                part.to_string(),
            )]))));
        for (k, v) in h {
            req = req.header(k, v.clone());
        }
        self.inner.client.send_xml(&req).await
    }

    /// Copies `c` to `c2` under the condition `header` with a wrong ETag.
    async fn copy_wrong(&self, header: &str) -> Result<()> {
        let req = Request::new(Method::PUT, Some(&self.key("c2")))
            .header(
                "x-amz-copy-source",
                self.inner.client.copy_source(&self.key("c")),
            )
            .header(header, WRONG_ETAG);
        self.inner.client.send_xml(&req).await.map(|_| ())
    }

    /// Whether a PutObject with `If-None-Match: *` is refused where the key exists
    /// ([`Capabilities::put_if_none_match`]); leaves `c` holding "one".
    async fn put_if_none_match(&self) -> Result<bool> {
        self.put("c", b"one", &[]).await?;
        match self
            .put("c", b"one", &[("if-none-match", "*".into())])
            .await
        {
            Ok(_) => Ok(false),
            Err(e) if refused(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    async fn run(&mut self, caps: &mut Capabilities) -> Result<()> {
        // Conditions on PutObject.
        caps.put_if_none_match = self.put_if_none_match().await?;
        let wrong_refused = match self
            .put("c", b"two", &[("if-match", WRONG_ETAG.into())])
            .await
        {
            Ok(_) => false,
            Err(e) if refused(&e) => true,
            Err(e) => return Err(e),
        };
        let now = self.etag("c").await?;
        caps.etag_form = EtagForm::Omit;
        for form in [EtagForm::Bare, EtagForm::Quoted] {
            match self
                .put("c", b"three", &[("if-match", if_match_value(&now, form))])
                .await
            {
                Ok(_) => {
                    caps.etag_form = form;
                    break;
                }
                Err(e) if refused(&e) => {}
                Err(e) => return Err(e),
            }
        }
        caps.put_if_match = wrong_refused && caps.etag_form != EtagForm::Omit;

        // Copies.
        caps.copy_if_match = match self.copy_wrong("x-amz-copy-source-if-match").await {
            Err(e) if refused(&e) => CopyCondition::Standard,
            Err(e) => return Err(e),
            Ok(()) => match self.copy_wrong("x-amz-copy-if-match").await {
                Err(e) if refused(&e) => CopyCondition::Legacy,
                Err(e) => return Err(e),
                Ok(()) => CopyCondition::Ignored,
            },
        };

        // Multipart: listing by prefix, then conditions on the commit. The key exists before
        // the upload starts (Garage drops the uploads of a key when an object lands on it), so
        // `If-None-Match: *` must refuse the commit.
        self.put("m/c", b"one", &[]).await?;
        let (id, part) = self.start_upload("m/c").await?;
        let listed = self
            .inner
            .client
            .send_xml(
                &Request::new(Method::GET, None)
                    .query("uploads", "")
                    .query("prefix", self.base.clone()),
            )
            .await
            .and_then(|b| xml::parse::<ListUploadsResult>(&b, "list multipart uploads"));
        caps.uploads_by_prefix =
            matches!(&listed, Ok(r) if r.upload.iter().any(|u| u.upload_id == id));
        caps.complete_if_none_match = match self
            .complete("m/c", &id, &part, &[("if-none-match", "*".into())])
            .await
        {
            Ok(_) => false,
            Err(e) if refused(&e) => true,
            Err(e) => return Err(e),
        };
        let (id, part) = if caps.complete_if_none_match {
            (id, part)
        } else {
            self.start_upload("m/c").await?
        };
        let wrong_refused = match self
            .complete("m/c", &id, &part, &[("if-match", WRONG_ETAG.into())])
            .await
        {
            Ok(_) => false,
            Err(e) if refused(&e) => true,
            Err(e) => return Err(e),
        };
        let (id, part) = if wrong_refused {
            (id, part)
        } else {
            self.start_upload("m/c").await?
        };
        let now = self.etag("m/c").await?;
        let mut h = Vec::new();
        if caps.etag_form != EtagForm::Omit {
            h.push(("if-match", if_match_value(&now, caps.etag_form)));
        }
        match self.complete("m/c", &id, &part, &h).await {
            Ok(body) => {
                caps.complete_if_match = wrong_refused && caps.etag_form != EtagForm::Omit;
                let etag = xml::parse::<xml::EtagResult>(&body, "complete multipart upload")
                    .ok()
                    .and_then(|r| r.etag);
                caps.complete_names_etag = etag.is_some_and(|t| !t.trim_matches('"').is_empty());
            }
            Err(e) if refused(&e) => caps.complete_if_match = false,
            Err(e) => return Err(e),
        }

        // DELETE with a wrong If-Match.
        caps.delete_if_match = match self.delete("c", &[("if-match", WRONG_ETAG.into())]).await {
            Ok(_) => false,
            Err(e) if refused(&e) => true,
            Err(e) => return Err(e),
        };

        // Folder markers: listed under their own prefix, and outliving their last file.
        self.put("d/", b"", &[]).await?;
        let page = list_page(self.inner, &self.key("d/"), false, None, 10).await?;
        caps.markers_listed = page.objects.iter().any(|o| o.key == self.key("d/"));
        caps.markers_head = self.exists("d/").await.unwrap_or(false);
        self.put("d/f", b"x", &[]).await?;
        self.delete("d/f", &[]).await?;
        caps.markers_survive = self.folder_visible("d/").await?;

        // A file and a folder of one name.
        self.put("e", b"x", &[]).await?;
        // Refused in whatever way the server has (MinIO: XMinioParentIsObject; s3s-fs: a 500
        // from the file system).
        caps.file_and_folder = self.put("e/f", b"x", &[]).await.is_ok();
        caps.put_content_md5 = self.content_md5().await?;
        caps.put_crc32c = self.crc32c().await?;

        // Listings with URL-encoded keys: a key with `+`, `%` and a space must come back as it
        // is (a server that says it encoded and did not would decode `%41` as `A`).
        self.put(URL_KEY, b"x", &[]).await?;
        let page = list_page_as(self.inner, &self.key("u"), false, None, 10, true, None).await?;
        caps.list_url_encoding =
            page.objects.len() == 1 && page.objects[0].key == self.key(URL_KEY);
        caps.probed = true;
        Ok(())
    }

    /// Removes everything the probe wrote, whatever state it stopped in.
    async fn clean(&self) -> Result<()> {
        // Completed uploads are refused (NoSuchUpload, or AccessDenied on s3s-fs): only the
        // ones still open matter, and none may remain.
        for (key, id) in &self.uploads {
            let req = Request::new(Method::DELETE, Some(key)).query("uploadId", id.clone());
            let _ = self.inner.client.send(&req).await;
        }
        // Deepest first, so that servers on a file system can remove the folders. A key the
        // probe never managed to write may fail to delete (`e/f` under a file): what is left
        // is listed and deleted after.
        for rel in [URL_KEY, "k", "h", "e/f", "e", "d/f", "d/", "m/c", "c2", "c"] {
            let _ = self.delete(rel, &[]).await;
        }
        let left = list_page(self.inner, &self.base, false, None, 10).await?;
        for o in &left.objects {
            let req = Request::new(Method::DELETE, Some(&o.key));
            self.inner.client.send(&req).await?;
        }
        if !list_page(self.inner, &self.base, false, None, 1)
            .await?
            .objects
            .is_empty()
        {
            return Err(Error::new(
                ErrorKind::Backend,
                "objects remain after their deletion",
            ));
        }
        Ok(())
    }
}

/// What a sync's copies need to know of the server, found by [`copy_questions`] where no full
/// probe has answered: each field as in [`Capabilities`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyAnswers {
    pub put_content_md5: bool,
    pub put_crc32c: bool,
    pub put_if_none_match: bool,
}

/// Finds out [`CopyAnswers`] alone, in a scratch folder under `prefix` (`""` or ending in
/// `/`), and removes what it wrote: for a process that has not probed the server in full
/// (`bucketgate sync run` does not, to keep quiet runs at their listing), asked before the
/// first copy that could use them. About thirty small requests. A server that cannot be asked
/// (a key that may not write there) counts as enforcing and verifying nothing.
pub(crate) async fn copy_questions(inner: &Inner, prefix: &str) -> CopyAnswers {
    let base = format!("{prefix}{SCRATCH}{:016x}/", rand::random::<u64>());
    let mut p = Probe {
        inner,
        base,
        uploads: Vec::new(),
    };
    let ran = async {
        Ok::<_, Error>(CopyAnswers {
            put_content_md5: p.content_md5().await?,
            put_crc32c: p.crc32c().await?,
            put_if_none_match: p.put_if_none_match().await?,
        })
    }
    .await;
    let cleaned = p.clean().await;
    let name = &inner.opts.name;
    match (ran, cleaned) {
        (Ok(a), Ok(())) => {
            tracing::debug!(remote = %name, answers = ?a, "probed what the remote checks of a copy");
            a
        }
        (Ok(a), Err(e)) => {
            tracing::warn!(remote = %name, error = ?e,
                "the copy probe could not remove its objects under /{}", p.base);
            a
        }
        (Err(e), _) => {
            tracing::warn!(remote = %name, error = ?e,
                "could not probe what the remote checks of a copy; each copy checks its target with a HEAD and large ones go as multipart uploads");
            CopyAnswers::default()
        }
    }
}

impl S3Backend {
    /// Finds out what this server does (see [`Capabilities`]) by writing and removing a few
    /// objects under `prefix` (`""` or ending in `/`), and from then on picks the safest
    /// mechanism it supports. Leaves nothing in the bucket. One line is logged with the answer.
    pub async fn probe_capabilities(&self, prefix: &str) -> Result<Capabilities> {
        let base = format!("{prefix}{SCRATCH}{:016x}/", rand::random::<u64>());
        let mut p = Probe {
            inner: &self.inner,
            base,
            uploads: Vec::new(),
        };
        let mut caps = Capabilities::default();
        let ran = p.run(&mut caps).await;
        let cleaned = p.clean().await;
        let name = &self.inner.opts.name;
        match (ran, cleaned) {
            (Ok(()), Ok(())) => {
                // One short line; the whole set at debug level.
                tracing::info!(
                    remote = %name,
                    lacks = %caps.lacking().join(","),
                    "probed the remote's server (`bucketgate remote test` explains what it lacks)"
                );
                tracing::debug!(remote = %name, capabilities = ?caps, "probed capabilities");
                *self.inner.caps.write().expect("capabilities lock") = caps.clone();
                Ok(caps)
            }
            (Err(e), _) => Err(Error::new(e.kind(), "probing the server failed")
                .set_retryable(e.is_retryable())
                .with_source(e)
                .with_context("probe", format!("s3:{name}"))),
            (Ok(()), Err(e)) => {
                // What was learnt holds; only the clean-up failed.
                *self.inner.caps.write().expect("capabilities lock") = caps;
                Err(Error::new(
                    e.kind(),
                    format!("the probe could not remove its objects under /{}", p.base),
                )
                .with_source(e)
                .with_context("probe", format!("s3:{name}")))
            }
        }
    }

    /// What the last probe found, or the cautious defaults before one.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps()
    }

    /// Whether this server was seen to hold a HEAD of a key while a PUT of it is in progress
    /// (see `Inner::head_waits_for_put`): copies that need a check before their commit then
    /// go as multipart uploads.
    pub fn head_waits_for_put(&self) -> bool {
        self.inner
            .head_waits_for_put
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes `caps` as what this server does, without probing it (a probe of the same server
    /// made by another backend: the test kit probes each test server once).
    pub fn assume_capabilities(&self, caps: Capabilities) {
        *self.inner.caps.write().expect("capabilities lock") = caps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_go_bare_when_they_are_tokens() {
        assert_eq!(if_match_value("\"abc-2\"", EtagForm::Bare), "abc-2");
        assert_eq!(if_match_value("W/\"abc\"", EtagForm::Bare), "abc");
        assert_eq!(if_match_value("abc", EtagForm::Quoted), "\"abc\"");
        assert_eq!(if_match_value("\"a b\"", EtagForm::Bare), "\"a b\"");
    }

    #[test]
    fn the_probe_log_line_names_what_is_lacking() {
        let everything = Capabilities {
            probed: true,
            put_if_none_match: true,
            put_if_match: true,
            complete_if_none_match: true,
            complete_if_match: true,
            delete_if_match: true,
            put_content_md5: true,
            put_crc32c: true,
            list_url_encoding: true,
            ..Capabilities::default()
        };
        let caps = Capabilities {
            put_if_match: false,
            copy_if_match: CopyCondition::Ignored,
            list_url_encoding: false,
            ..everything.clone()
        };
        assert_eq!(
            caps.lacking(),
            ["put_if_match", "copy_if_match", "list_url_encoding"]
        );
        assert!(everything.lacking().is_empty());
    }
}
