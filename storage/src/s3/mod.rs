//! The S3 backend: a bucket of an S3-compatible remote (MinIO, Ceph RGW, Garage, Wasabi, AWS...)
//! seen as files and folders.
//!
//! We speak S3 ourselves, over `reqwest`, signing with reqsign's SigV4 signer and credential
//! sources ([`creds`]), rather than through OpenDAL or the AWS SDK: the gateway needs requests OpenDAL does not expose (UploadPartCopy
//! mixed with new parts for appends, CopyObject with `REPLACE` metadata for times,
//! ListMultipartUploads for clean-up), per-remote source address, private CA and timeouts,
//! one retry and error-classification path for every request, and a lighter build.
//!
//! Layout: [`client`] sends signed requests (retries, region fallback, connection cap);
//! [`creds`] loads, caches and refreshes the credentials that sign them;
//! [`error`] classifies answers; `list` reads folders; `read` streams ranges; `write` uploads;
//! `objects` holds the other operations; `probe` finds out what the server enforces; `sse`
//! adds the encryption and storage-class headers to every request that needs them.

mod checksum;
mod client;
mod creds;
mod error;
mod lease;
mod list;
mod live;
mod objects;
mod probe;
mod read;
mod sse;
pub mod time;
mod write;
mod xml;

use crate::backend::{
    Backend, ByteStream, ChildNames, CreateOptions, Entry, HashKind, ListStream, Upload,
};
use crate::budget::MemoryBudget;
use crate::error::{ErrorKind, Result};
use async_trait::async_trait;
use client::Client;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use checksum::Checksum;
pub use creds::{AssumeRole, CredentialOptions, CredentialReport, CredentialSource};
pub use lease::S3LeaseStore;
pub use objects::MultipartUpload;
pub use probe::{Capabilities, CopyCondition, EtagForm};
pub use sse::{Applied, CustomerKey, Encryption};

/// S3 allows at most this many parts in one multipart upload.
pub const MAX_PARTS: u32 = 10_000;
/// The smallest part S3 accepts (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The largest part, and the largest single CopyObject.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// How failed requests are retried: exponential backoff with jitter, capped.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the first retry; doubles for each further one.
    pub base_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// Everything the S3 backend needs to know about one remote.
#[derive(Clone)]
pub struct S3Options {
    /// The remote's name from the config, for logs and errors.
    pub name: String,
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The signing region; blank or `None` means `us-east-1`.
    pub region: Option<String>,
    /// Access key id; both keys empty means anonymous (unsigned) requests.
    pub access_key_id: String,
    /// Secret access key. Never printed (see the `Debug` impl).
    pub secret_access_key: String,
    /// Where the credentials come from: the two keys above (`CredentialSource::Static`, the
    /// default), or another source, with an optional role assumed on top.
    pub credentials: CredentialOptions,
    /// `http://host/bucket/key` when true, `http://bucket.host/key` when false.
    pub path_style: bool,
    /// A PEM file of extra trusted root certificates (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The local address outbound connections bind to.
    pub source_address: Option<IpAddr>,
    /// Cap on requests in flight to this remote; 0 = no cap.
    pub max_connections: usize,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next byte of an answer (not a total).
    pub request_timeout: Duration,
    /// Keep client-set times in `mtime` metadata and show them (listings then HEAD files).
    pub preserve_mtime: bool,
    /// Show a folder's marker `name/` Last-Modified as its time (stat, listings, walks). A
    /// one-level listing does not carry it (the marker is folded into the common prefix), so
    /// this costs one HEAD per folder listed. Off: folders have no time of their own (the tree
    /// shows its start time), and a listing is its ListObjectsV2 pages alone.
    pub folder_marker_times: bool,
    /// The first multipart part size (at least 5 MiB); parts grow for very large streams.
    pub part_size: u64,
    /// Parts in flight per upload.
    pub concurrency: usize,
    /// An upload sends a further part only while its bytes in flight fit in what the remote
    /// stored per second lately times this (`transfers.finish_within`): how long the client
    /// waits after its last byte is bounded by time, not only by `concurrency` parts.
    pub finish_within: Duration,
    /// An upload announced with a size above `part_size` and up to this, whose caller can send
    /// the bytes again ([`CreateOptions::resendable`]), is one streamed PutObject: one request
    /// instead of a multipart upload's two plus one per part, and no incomplete upload left by
    /// a crash. The request cannot be retried mid-stream (the caller sends again). 0 = never.
    ///
    /// [`CreateOptions::resendable`]: crate::backend::CreateOptions::resendable
    pub single_put_max: u64,
    /// Retries of failed requests.
    pub retries: RetryPolicy,
    /// Keys per ListObjectsV2 page (S3's maximum and default is 1000; tests set it small).
    pub list_page_size: usize,
    /// Where parts too large for the memory budget are spooled (`state_dir`); `None` = the
    /// system's temporary folder.
    pub spool_dir: Option<PathBuf>,
    /// Where the multipart uploads in progress are journaled (`<state_dir>/uploads`), so that
    /// the next start aborts those a crash left; `None`: not journaled.
    pub journal_dir: Option<PathBuf>,
    /// The largest range one server-side copy request moves: bigger objects are copied (on
    /// rename, time change and append) as a multipart upload of ranges of at most this size.
    /// S3's limit is 5 GiB ([`MAX_PART_SIZE`], the default). Not a config key: it exists for
    /// tests (which cannot afford 5 GiB objects) and for servers with a lower copy limit.
    /// Kept between 10 MiB and 5 GiB, so that ranges split evenly are each at least 5 MiB
    /// (S3's minimum for every part but the last).
    pub max_copy_range: u64,
    /// The checksum every upload request carries for the server to verify, and with which
    /// whole-object downloads are checked (`remotes[].checksum`).
    pub checksum: Checksum,
    /// Server-side encryption of every object written, and the SSE-C key every read and copy
    /// needs (`remotes[].encryption`).
    pub encryption: Encryption,
    /// The storage class of every object written (`remotes[].storage_class`); `None`: the
    /// server's default.
    pub storage_class: Option<String>,
}

impl S3Options {
    /// Options with the defaults of the config file for `bucket` at `endpoint`; keys empty.
    pub fn new(
        name: impl Into<String>,
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
    ) -> Self {
        S3Options {
            name: name.into(),
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: None,
            access_key_id: String::new(),
            secret_access_key: String::new(),
            credentials: CredentialOptions::default(),
            path_style: true,
            ca_file: None,
            source_address: None,
            max_connections: 0,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            preserve_mtime: false,
            folder_marker_times: false,
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
            finish_within: Duration::from_secs(10),
            single_put_max: 200 * 1024 * 1024,
            retries: RetryPolicy::default(),
            list_page_size: 1000,
            spool_dir: None,
            journal_dir: None,
            max_copy_range: MAX_PART_SIZE,
            checksum: Checksum::default(),
            encryption: Encryption::None,
            storage_class: None,
        }
    }

    /// Sets both keys.
    pub fn with_keys(mut self, access_key_id: &str, secret_access_key: &str) -> Self {
        self.access_key_id = access_key_id.to_string();
        self.secret_access_key = secret_access_key.to_string();
        self
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &if self.secret_access_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("credentials", &self.credentials)
            .field("path_style", &self.path_style)
            .field("ca_file", &self.ca_file)
            .field("source_address", &self.source_address)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("preserve_mtime", &self.preserve_mtime)
            .field("folder_marker_times", &self.folder_marker_times)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("finish_within", &self.finish_within)
            .field("single_put_max", &self.single_put_max)
            .field("retries", &self.retries)
            .field("list_page_size", &self.list_page_size)
            .field("spool_dir", &self.spool_dir)
            .field("journal_dir", &self.journal_dir)
            .field("max_copy_range", &self.max_copy_range)
            .field("checksum", &self.checksum)
            .field("encryption", &self.encryption)
            .field("storage_class", &self.storage_class)
            .finish()
    }
}

/// What every operation and background task of one backend shares.
pub(crate) struct Inner {
    pub client: Client,
    pub opts: S3Options,
    pub budget: Arc<MemoryBudget>,
    /// Whether parts can be spooled to disk: [`SPOOL_UNKNOWN`], [`SPOOL_OK`] or
    /// [`SPOOL_BROKEN`], as the last attempt found.
    pub spool: std::sync::atomic::AtomicU8,
    /// A running average of HEAD latency in microseconds (0: none measured yet), which sets how
    /// many metadata HEADs a listing keeps in flight (see `list::head_concurrency`).
    pub head_latency_us: std::sync::atomic::AtomicU64,
    /// What the server was found to do ([`S3Backend::probe_capabilities`]); cautious
    /// defaults until a probe answers.
    pub caps: std::sync::RwLock<Capabilities>,
    /// What a sync's copies need to know, as found by a probe of that alone, made when a sync
    /// first needs it before any full probe has answered (see `probe::copy_questions`); it
    /// counts in [`Inner::caps`] until a full probe answers.
    pub copy_probe: tokio::sync::OnceCell<probe::CopyAnswers>,
    /// The server was seen to keep a HEAD of a key waiting while a PUT of it is in progress
    /// (MinIO in single-folder mode locks the key for the whole PUT). Learned by a streamed
    /// PUT's check before its last chunk; from then on copies that need that check go as
    /// multipart uploads, which check before their CompleteMultipartUpload instead.
    pub head_waits_for_put: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// The server's capabilities as known now.
    pub fn caps(&self) -> Capabilities {
        let mut c = self.caps.read().expect("capabilities lock").clone();
        if let (false, Some(a)) = (c.probed, self.copy_probe.get()) {
            c.put_content_md5 = a.put_content_md5;
            c.put_crc32c = a.put_crc32c;
            c.put_if_none_match = a.put_if_none_match;
        }
        c
    }

    /// Whether the server is known to refuse a PutObject whose body does not match its
    /// `Content-MD5` (or its `x-amz-checksum-crc32c`), leaving the previous object (a full
    /// probe's answer, else a probe of those alone; false while neither has answered).
    pub fn verifies(&self, kind: HashKind) -> bool {
        let c = self.caps();
        match kind {
            HashKind::Md5 => c.put_content_md5,
            HashKind::Crc32c => c.put_crc32c,
        }
    }

    /// The checksum a request sent now carries: `remotes[].checksum`, with `auto` resolved by
    /// what the probe found (CRC32C where the server verifies it, MD5 otherwise and before).
    pub fn checksum(&self) -> Checksum {
        match self.opts.checksum {
            Checksum::Auto if self.caps().put_crc32c => Checksum::Crc32c,
            Checksum::Auto => Checksum::Md5,
            other => other,
        }
    }
}

/// [`Inner::spool`]: not tried yet.
pub(crate) const SPOOL_UNKNOWN: u8 = 0;
/// [`Inner::spool`]: the last temp file could be made.
pub(crate) const SPOOL_OK: u8 = 1;
/// [`Inner::spool`]: the last temp file could not be made.
pub(crate) const SPOOL_BROKEN: u8 = 2;

/// A bucket of an S3-compatible remote, as a [`Backend`]. Cheap to clone.
#[derive(Clone)]
pub struct S3Backend {
    inner: Arc<Inner>,
}

impl S3Backend {
    /// A backend for `opts`; transfer buffers draw on `budget`. Sends no request (see
    /// [`S3Backend::probe_bucket`]).
    pub fn new(mut opts: S3Options, budget: Arc<MemoryBudget>) -> Result<S3Backend> {
        opts.part_size = opts.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
        opts.concurrency = opts.concurrency.max(1);
        opts.single_put_max = opts.single_put_max.min(MAX_PART_SIZE);
        opts.list_page_size = opts.list_page_size.clamp(1, 1000);
        opts.max_copy_range = opts.max_copy_range.clamp(2 * MIN_PART_SIZE, MAX_PART_SIZE);
        let client = Client::new(&opts)?;
        Ok(S3Backend {
            inner: Arc::new(Inner {
                client,
                opts,
                budget,
                spool: std::sync::atomic::AtomicU8::new(SPOOL_UNKNOWN),
                head_latency_us: std::sync::atomic::AtomicU64::new(0),
                caps: std::sync::RwLock::new(Capabilities::default()),
                copy_probe: tokio::sync::OnceCell::new(),
                head_waits_for_put: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The options this backend was built with.
    pub fn options(&self) -> &S3Options {
        &self.inner.opts
    }

    /// The region requests are signed with now (it changes when the server asks for another).
    pub fn region(&self) -> String {
        self.inner.client.region()
    }

    /// The credential source in words, and what its last load found: which source gave the
    /// credentials, or each source tried and why it gave none. Never a key.
    pub fn credential_report(&self) -> (String, CredentialReport) {
        self.inner.client.credential_report()
    }

    /// Whether requests are signed (false: no credentials configured, anonymous access).
    pub fn signs_requests(&self) -> bool {
        self.inner.client.signs()
    }
}

/// Copies in one sync run from which a probe of what the server checks pays for itself: where
/// the server enforces `If-None-Match`, each new file's copy is then its PutObject alone,
/// without a HEAD before it. The probe is about thirty small requests one after another, run
/// before the copies; a HEAD saved per copy, with the sync's 8 copies at once, makes up for
/// that wait from about 30 × 8 copies on (at 150 ms per request, fewer copies finished later
/// with the probe than without it).
const COPIES_WORTH_A_PROBE: u64 = 256;

impl S3Backend {
    /// Asks the server what a sync's copies need to know ([`probe::copy_questions`]), under
    /// folder `key`, once, unless a full probe has answered.
    async fn ask_copy_questions(&self, key: &str) {
        if self.inner.caps.read().expect("capabilities lock").probed {
            return;
        }
        let key = key.trim_end_matches('/');
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        self.inner
            .copy_probe
            .get_or_init(|| probe::copy_questions(&self.inner, &prefix))
            .await;
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn describe(&self) -> String {
        format!("s3:{}", self.inner.opts.name)
    }

    async fn stat(&self, key: &str) -> Result<Entry> {
        list::stat(&self.inner, key)
            .await
            .map_err(|e| e.with_key("stat", format!("/{key}")))
    }

    async fn stat_listing(&self, key: &str) -> Result<(Entry, Option<ListStream>)> {
        list::stat_listing(&self.inner, key)
            .await
            .map_err(|e| e.with_key("stat", format!("/{key}")))
    }

    async fn stat_file(&self, key: &str) -> Result<Entry> {
        if key.is_empty() {
            return self.stat(key).await;
        }
        match list::head_entry(&self.inner, key).await {
            // Under a prefix-restricted policy HEAD answers 403 for a missing key: the listing
            // of the full stat tells.
            Err(e) if e.kind() == ErrorKind::PermissionDenied => self.stat(key).await,
            r => r.map_err(|e| e.with_key("stat", format!("/{key}"))),
        }
    }

    fn list(&self, key: &str) -> ListStream {
        list::list(self.inner.clone(), key)
    }

    async fn child_names(&self, key: &str, after: &str) -> Result<Option<ChildNames>> {
        list::child_names(&self.inner, key, after).await.map(Some)
    }

    fn walk(&self, key: &str) -> ListStream {
        list::walk(self.inner.clone(), key, None)
    }

    fn walk_noting(&self, key: &str, notes: Arc<crate::backend::WalkNotes>) -> ListStream {
        list::walk(self.inner.clone(), key, Some(notes))
    }

    fn walk_mtime_exact(&self) -> bool {
        // A walk shows Last-Modified: the `mtime` metadata needs a HEAD per file.
        !self.inner.opts.preserve_mtime
    }

    fn etags_are_md5(&self) -> bool {
        self.inner.opts.encryption.etag_is_md5()
    }

    /// Every write path checks its conditions at the commit: the server where the probe found
    /// it enforces them, else a HEAD just before the PutObject, the last chunk of a streamed
    /// one, or the CompleteMultipartUpload (`write::s3::S3Parts::check_unchanged`).
    fn checks_conditions_at_commit(&self) -> bool {
        true
    }

    async fn prepare_copies(&self, key: &str, count: u64) {
        if count >= COPIES_WORTH_A_PROBE {
            self.ask_copy_questions(key).await;
        }
    }

    async fn wants_source_hash(&self, key: &str, size: u64) -> Option<HashKind> {
        let o = &self.inner.opts;
        // Only the streamed PutObject needs it (see `write::create`): smaller uploads are
        // one buffered PutObject, larger ones multipart, and both hash what they send.
        if o.checksum == Checksum::Off || size <= o.part_size || size > o.single_put_max {
            return None;
        }
        self.ask_copy_questions(key.rsplit_once('/').map_or("", |(p, _)| p))
            .await;
        let (md5, crc) = (
            self.inner.verifies(HashKind::Md5),
            self.inner.verifies(HashKind::Crc32c),
        );
        match o.checksum {
            // CRC32C where the server checks it (a fraction of MD5's CPU), else MD5.
            Checksum::Auto if crc => Some(HashKind::Crc32c),
            Checksum::Auto | Checksum::Md5 => md5.then_some(HashKind::Md5),
            Checksum::Crc32c => crc.then_some(HashKind::Crc32c),
            Checksum::Off => None,
        }
    }

    async fn read(&self, key: &str, offset: u64, end: Option<u64>) -> Result<ByteStream> {
        read::read(&self.inner, key, offset, end, None)
            .await
            .map_err(|e| e.with_key("read", format!("/{key}")))
    }

    async fn read_version(
        &self,
        key: &str,
        offset: u64,
        end: Option<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream> {
        read::read(&self.inner, key, offset, end, etag)
            .await
            .map_err(|e| e.with_key("read", format!("/{key}")))
    }

    fn memory_budget(&self) -> Option<Arc<MemoryBudget>> {
        Some(self.inner.budget.clone())
    }

    async fn create(&self, key: &str, opts: CreateOptions) -> Result<Box<dyn Upload>> {
        write::create(self.inner.clone(), key, opts)
            .await
            .map_err(|e| e.with_key("create", format!("/{key}")))
    }

    async fn mkdir(&self, key: &str) -> Result<()> {
        objects::mkdir(&self.inner, key)
            .await
            .map_err(|e| e.with_key("mkdir", format!("/{key}")))
    }

    async fn remove_file(&self, key: &str) -> Result<()> {
        objects::remove_file(&self.inner, key)
            .await
            .map_err(|e| e.with_key("remove", format!("/{key}")))
    }

    async fn remove_dir(&self, key: &str) -> Result<()> {
        objects::remove_dir(&self.inner, key)
            .await
            .map_err(|e| e.with_key("rmdir", format!("/{key}")))
    }

    async fn copy_file(&self, from: &str, to: &str) -> Result<()> {
        objects::copy_file(&self.inner, from, to)
            .await
            .map_err(|e| e.with_key("copy", format!("/{from}")))
    }

    async fn rename_dir(&self, from: &str, to: &str) -> Result<()> {
        objects::rename_dir(&self.inner, from, to)
            .await
            .map_err(|e| e.with_key("rename", format!("/{from}")))
    }

    async fn set_mtime(&self, key: &str, mtime: SystemTime) -> Result<()> {
        objects::set_mtime(&self.inner, key, mtime)
            .await
            .map_err(|e| e.with_key("setstat", format!("/{key}")))
    }
}
