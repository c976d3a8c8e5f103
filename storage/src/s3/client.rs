//! A small S3 HTTP client: addressing, signing (through [`super::creds`]), the connection
//! cap, retries and the region fallback, for every request the backend sends.

use super::creds::Auth;
use super::error::{classify, parse_failure, transport, wants_other_region};
use super::{RetryPolicy, S3Options};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The chunks of a [`Body::Stream`]; an `Err` aborts the request (the server then sees a body
/// shorter than announced and stores nothing).
pub(crate) type BodyChunks = tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>;

/// A request body. Every kind but [`Body::Stream`] can be replayed, which is what makes
/// retries safe; a streamed body is sent once.
#[derive(Clone, Default)]
pub(crate) enum Body {
    /// No body.
    #[default]
    Empty,
    /// Bytes in memory.
    Bytes(Bytes),
    /// `len` bytes of a spooled part on disk, sent as a stream of known length.
    File(Arc<std::fs::File>, u64),
    /// Exactly `len` bytes arriving on a channel while the request is sent.
    Stream(Arc<std::sync::Mutex<Option<BodyChunks>>>, u64),
}

/// One S3 request, before addressing and signing.
#[derive(Clone)]
pub(crate) struct Request {
    pub method: Method,
    /// The object key; `None` for bucket-level requests.
    pub key: Option<String>,
    pub query: Vec<(String, String)>,
    /// Lower-case header names; all of them are signed.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Request {
    pub(crate) fn new(method: Method, key: Option<&str>) -> Self {
        Request {
            method,
            key: key.map(str::to_string),
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    pub(crate) fn query(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_string(), v.into()));
        self
    }

    pub(crate) fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.into()));
        self
    }

    pub(crate) fn body(mut self, b: Body) -> Self {
        self.body = b;
        self
    }
}

/// A successful answer. It holds its connection permit until its body is consumed or dropped.
pub(crate) struct Response {
    resp: reqwest::Response,
    permit: Option<OwnedSemaphorePermit>,
}

impl Response {
    pub(crate) fn status(&self) -> StatusCode {
        self.resp.status()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// All `x-amz-meta-*` headers, names without the prefix.
    pub(crate) fn user_metadata(&self) -> Vec<(String, String)> {
        self.resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let name = k.as_str().strip_prefix("x-amz-meta-")?;
                Some((name.to_string(), v.to_str().ok()?.to_string()))
            })
            .collect()
    }

    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.parse().ok()
    }

    /// Reads the whole body (small XML answers only).
    pub(crate) async fn bytes(self) -> Result<Bytes> {
        let Response { resp, permit } = self;
        let b = resp.bytes().await.map_err(transport);
        drop(permit);
        b
    }

    /// The body as a stream; the permit goes with it.
    pub(crate) fn stream(self) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let Response { resp, permit } = self;
        resp.bytes_stream().map(move |r| {
            let _held = &permit;
            r.map_err(transport)
        })
    }
}

/// Where requests go and how they are signed.
pub(crate) struct Client {
    http: reqwest::Client,
    scheme: String,
    /// `host[:port]` of the endpoint, as the Host header carries it.
    host: String,
    bucket: String,
    path_style: bool,
    auth: Auth,
    region: RwLock<String>,
    /// Whether the server has accepted a request signed with `region` (or the remote names its
    /// region). Until then a request with a body whose connection breaks may have been refused
    /// for its region before the body was read (Garage answers at once and closes; a proxy
    /// in between then has only a reset to pass on): the region is asked once before it is
    /// sent again.
    region_confirmed: std::sync::atomic::AtomicBool,
    limit: Option<Arc<Semaphore>>,
    retry: RetryPolicy,
    name: String,
    encryption: super::Encryption,
    storage_class: Option<String>,
}

/// How long an idle S3 connection stays in the pool for the next request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A spooled part is sent in chunks of this size, at most [`SPOOL_CHUNKS_IN_FLIGHT`] of them read
/// and not yet written to the socket. The part went to disk because the memory budget had no
/// room for it, so what its sending holds is outside the budget: with 256 KiB read through
/// tokio's file buffer and hyper queueing up to ~400 KiB of body per connection, 1,024 sessions
/// held about half a GiB beyond `transfers.memory_limit` while their spooled parts went out.
const SPOOL_CHUNK: usize = 64 * 1024;
const SPOOL_CHUNKS_IN_FLIGHT: usize = 2;

/// A chunk of a spooled part; its slot among the chunks in flight is free again when hyper
/// drops it, once written.
struct SpoolChunk {
    data: Vec<u8>,
    _slot: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for SpoolChunk {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// The body of a spooled part: its `len` bytes read from the start of `f` (positioned reads,
/// so that a retry or the checksum reading the same file never moves another's position).
fn spooled_body(f: Arc<std::fs::File>, len: u64) -> reqwest::Body {
    let slots = Arc::new(Semaphore::new(SPOOL_CHUNKS_IN_FLIGHT));
    let chunks = futures::stream::try_unfold(0u64, move |at| {
        let (f, slots) = (f.clone(), slots.clone());
        async move {
            if at >= len {
                return Ok(None);
            }
            let slot = slots.acquire_owned().await.map_err(std::io::Error::other)?;
            let want = (len - at).min(SPOOL_CHUNK as u64) as usize;
            let data = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut data = vec![0u8; want];
                f.read_exact_at(&mut data, at).map(|()| data)
            })
            .await
            .map_err(std::io::Error::other)??;
            let chunk = Bytes::from_owner(SpoolChunk { data, _slot: slot });
            Ok::<_, std::io::Error>(Some((chunk, at + want as u64)))
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

/// Builds the per-remote HTTP client: source address, private CA, timeouts, no proxy and no
/// redirects (a redirected S3 request would need signing again, and names a region we handle).
fn http_client(opts: &S3Options) -> Result<reqwest::Client> {
    let cfg = |m: &str| Error::new(ErrorKind::ConfigInvalid, m.to_string());
    let mut b = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        // The longest wait for the next byte, not a total: a 50 GiB download may take hours.
        .read_timeout(opts.request_timeout)
        // An idle pooled connection keeps hyper's read buffer, grown to ~400 KiB by a download:
        // 64 sessions' downloads left 43 MiB of them held after the load (bench/README.md,
        // "Memory after the load"). Dropped after 10 s idle (hyper checks every 10 s), so memory
        // falls back within 20 s; the next request after a pause that long pays one handshake.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    // Names under `localhost` are loopback (RFC 6761), but many resolvers only know
    // `localhost` itself: virtual-host requests to a local server (`bucket.localhost`) would
    // fail to resolve. Point the bucket's name where `localhost` points.
    if !opts.path_style {
        if let Ok(url) = reqwest::Url::parse(&opts.endpoint) {
            if url.host_str() == Some("localhost") {
                let port = url.port_or_known_default().unwrap_or(80);
                let name = format!("{}.localhost", opts.bucket);
                b = b.resolve_to_addrs(
                    &name,
                    &[
                        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                    ],
                );
            }
        }
    }
    if let Some(ip) = opts.source_address {
        b = b.local_address(ip);
    }
    // A plain-http endpoint never shakes hands (redirects are off): loading the system's
    // trust store for it costs ~10 ms of CPU for every remote at every start, e.g. each
    // `sync run`.
    let plain_http = reqwest::Url::parse(&opts.endpoint).is_ok_and(|u| u.scheme() == "http");
    if plain_http && opts.ca_file.is_none() {
        b = b.tls_certs_only(Vec::new());
    }
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| cfg(&format!("cannot read ca_file {}", ca.display())).with_source(e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| cfg("ca_file holds no valid PEM certificate").with_source(e))?;
        if certs.is_empty() {
            return Err(cfg("ca_file holds no PEM certificate"));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| cfg("cannot build the HTTP client").with_source(e))
}

impl Client {
    pub(crate) fn new(opts: &S3Options) -> Result<Self> {
        let url = reqwest::Url::parse(&opts.endpoint).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("remote {}: endpoint is not a URL", opts.name),
            )
            .with_source(e)
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("remote {}: endpoint must be an http(s) URL", opts.name),
            ));
        }
        let mut host = url.host_str().unwrap_or_default().to_string();
        if let Some(p) = url.port() {
            host = format!("{host}:{p}");
        }
        let anonymous = opts.access_key_id.is_empty() && opts.secret_access_key.is_empty();
        let region = match opts.region.as_deref().map(str::trim) {
            Some(r) if !r.is_empty() => r.to_string(),
            _ => "us-east-1".to_string(),
        };
        let keys =
            (!anonymous).then_some((opts.access_key_id.as_str(), opts.secret_access_key.as_str()));
        let auth = Auth::new(&opts.name, &opts.credentials, keys, &region).map_err(|why| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("remote {}: {why}", opts.name),
            )
        })?;
        Ok(Client {
            http: http_client(opts)?,
            scheme: url.scheme().to_string(),
            host,
            bucket: opts.bucket.clone(),
            path_style: opts.path_style,
            auth,
            region: RwLock::new(region),
            region_confirmed: std::sync::atomic::AtomicBool::new(
                opts.region.as_deref().is_some_and(|r| !r.trim().is_empty()),
            ),
            limit: (opts.max_connections > 0)
                .then(|| Arc::new(Semaphore::new(opts.max_connections))),
            retry: opts.retries.clone(),
            name: opts.name.clone(),
            encryption: opts.encryption.clone(),
            storage_class: opts.storage_class.clone(),
        })
    }

    /// The region requests are signed with now.
    pub(crate) fn region(&self) -> String {
        self.region.read().expect("region lock").clone()
    }

    /// Where this remote's credentials came from, or why none could be loaded.
    pub(crate) fn credential_report(&self) -> (String, super::creds::CredentialReport) {
        (self.auth.label.clone(), self.auth.report())
    }

    /// Whether requests are signed (false: anonymous).
    pub(crate) fn signs(&self) -> bool {
        self.auth.signs()
    }

    /// The `x-amz-copy-source` value for `key` of our bucket.
    pub(crate) fn copy_source(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, uri_encode(key, true))
    }

    fn address(&self, key: Option<&str>) -> (String, String) {
        let enc = key.map(|k| uri_encode(k, true));
        if self.path_style {
            let path = match enc {
                Some(k) => format!("/{}/{}", self.bucket, k),
                None => format!("/{}", self.bucket),
            };
            (self.host.clone(), path)
        } else {
            (
                format!("{}.{}", self.bucket, self.host),
                format!("/{}", enc.unwrap_or_default()),
            )
        }
    }

    async fn build(&self, req: &Request, region: &str) -> Result<reqwest::Request> {
        if req.key.as_deref().is_some_and(|k| !key_is_addressable(k)) {
            // Never sent: the URL would reach another key (see `key_is_addressable`).
            return Err(Error::new(
                ErrorKind::Unsupported,
                "an object name with a `.` or `..` part cannot be reached over HTTP",
            ));
        }
        let (host, path) = self.address(req.key.as_deref());
        let query = canonical_query(&req.query);
        let url = if query.is_empty() {
            format!("{}://{host}{path}", self.scheme)
        } else {
            format!("{}://{host}{path}?{query}", self.scheme)
        };
        let mut headers = req.headers.clone();
        // Encryption and storage class, on every request that needs them (see `sse`).
        headers.extend(super::sse::headers(
            &self.encryption,
            self.storage_class.as_deref(),
            req,
        ));
        // The payload hash that is signed: the one a request carries (a real SHA-256), else
        // that of no body, else unsigned (a body streamed once is not read twice).
        if !headers.iter().any(|(k, _)| k == "x-amz-content-sha256") {
            let payload_hash = match req.body {
                Body::Empty => EMPTY_SHA256,
                _ => UNSIGNED_PAYLOAD,
            };
            headers.push(("x-amz-content-sha256".into(), payload_hash.into()));
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Backend, format!("cannot build a request: {e}"))
        };
        let mut head = http::Request::builder()
            .method(req.method.as_str())
            .uri(url.as_str());
        for (k, v) in &headers {
            head = head.header(k.as_str(), v.as_str());
        }
        let (mut parts, ()) = head.body(()).map_err(|e| bad(&e))?.into_parts();
        // Every header above is signed, with `host` and `x-amz-date` (and the session token of
        // temporary credentials), by the credentials current now.
        self.auth.sign(&mut parts, region).await.map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "remote {}: cannot sign the request: {}",
                    self.name,
                    super::creds::failure_text(&e)
                ),
            )
            .set_retryable(e.is_retryable())
        })?;
        let mut rb = self.http.request(req.method.clone(), &url);
        for (k, v) in parts.headers.iter() {
            // reqwest writes the same Host from the URL.
            if k != http::header::HOST {
                rb = rb.header(k, v);
            }
        }
        rb = match &req.body {
            Body::Empty => {
                if req.method == Method::PUT || req.method == Method::POST {
                    rb.header("content-length", "0")
                } else {
                    rb
                }
            }
            Body::Bytes(b) => rb.body(b.clone()),
            Body::File(f, len) => rb
                .header("content-length", len.to_string())
                .body(spooled_body(f.clone(), *len)),
            Body::Stream(chunks, len) => {
                let rx = chunks.lock().expect("body lock").take().ok_or_else(|| {
                    Error::new(ErrorKind::Backend, "a streamed body cannot be sent twice")
                })?;
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                rb.header("content-length", len.to_string())
                    .body(reqwest::Body::wrap_stream(stream))
            }
        };
        rb.build()
            .map_err(|e| Error::new(ErrorKind::Backend, "cannot build a request").with_source(e))
    }

    fn backoff(&self, attempt: u32, retry_after: Option<u64>) -> Duration {
        let base = self.retry.base_delay.as_secs_f64() * 2f64.powi(attempt as i32 - 1);
        let capped = base.min(self.retry.max_delay.as_secs_f64());
        // Full jitter in the upper half, so that many clients do not retry in lockstep.
        let jittered = capped * (0.5 + rand::random::<f64>() * 0.5);
        let mut d = Duration::from_secs_f64(jittered);
        if let Some(s) = retry_after {
            d = d.max(Duration::from_secs(s).min(self.retry.max_delay));
        }
        d
    }

    /// Sends `req`, retrying what is worth retrying; anything but a 2xx is an error,
    /// classified once. `ok_statuses` lists extra statuses to hand back as answers.
    pub(crate) async fn send(&self, req: &Request) -> Result<Response> {
        let max = match req.body {
            // Its bytes are gone once sent: the caller sends them again if it can.
            Body::Stream(..) => 1,
            _ => self.retry.max_attempts.max(1),
        };
        let mut attempt = 0u32;
        let mut region_switched = false;
        loop {
            attempt += 1;
            let region = self.region();
            let permit = match &self.limit {
                Some(s) => Some(s.clone().acquire_owned().await.map_err(|_| {
                    Error::new(ErrorKind::Backend, "the remote's client was closed")
                })?),
                None => None,
            };
            let built = match self.build(req, &region).await {
                Ok(b) => b,
                // Credentials that could not be loaded for now (a metadata endpoint down):
                // waited for like a failed request.
                Err(e) if e.is_retryable() && attempt < max => {
                    drop(permit);
                    let wait = self.backoff(attempt, None);
                    tracing::debug!(remote = %self.name, attempt, ?wait, error = %e, "retrying after a credential failure");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let op = crate::metrics::s3_operation(
                req.method.as_str(),
                &req.query,
                req.headers.iter().any(|(k, _)| k == "x-amz-copy-source"),
            );
            let t0 = std::time::Instant::now();
            let outcome = self.http.execute(built).await;
            let status = outcome.as_ref().map(|r| r.status().as_str().to_string());
            crate::metrics::s3_request(
                &self.name,
                op,
                status.as_deref().unwrap_or("error"),
                t0.elapsed(),
            );
            let err = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    self.region_confirmed.store(true, Relaxed);
                    return Ok(Response { resp, permit });
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bucket_region = resp
                        .headers()
                        .get("x-amz-bucket-region")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let body = resp.bytes().await.unwrap_or_default();
                    drop(permit);
                    let mut failure = parse_failure(status, &body, bucket_region.as_deref());
                    failure.retry_after = retry_after;
                    if !region_switched {
                        let mut other = wants_other_region(&failure, &region);
                        if other.is_none()
                            && status == 400
                            && failure.code.is_empty()
                            && req.method == Method::HEAD
                        {
                            // An answer to HEAD has no body, so a server that refuses our
                            // region cannot name its own there (Garage answers a bare 400):
                            // ask with a request whose refusal carries a body.
                            other = self.region_from_bucket_request(&region).await;
                        }
                        if let Some(r) = other {
                            self.switch_region(&region, &r, req)?;
                            region_switched = true;
                            attempt -= 1;
                            continue;
                        }
                    }
                    (classify(failure), retry_after)
                }
                Err(e) => {
                    drop(permit);
                    if !region_switched
                        && !matches!(req.body, Body::Empty)
                        && !self.region_confirmed.load(Relaxed)
                    {
                        if let Some(r) = self.region_from_bucket_request(&region).await {
                            self.switch_region(&region, &r, req)?;
                            region_switched = true;
                            attempt -= 1;
                            continue;
                        }
                    }
                    (transport(e), None)
                }
            };
            let (err, retry_after) = err;
            if !err.is_retryable() || attempt >= max {
                return Err(err);
            }
            let wait = self.backoff(attempt, retry_after);
            tracing::debug!(remote = %self.name, attempt, ?wait, error = ?err, "retrying an S3 request");
            crate::metrics::s3_retry(&self.name, op);
            tokio::time::sleep(wait).await;
        }
    }

    /// Signs with `to` from now on. A streamed body went with the refused request, so its
    /// caller is told to send it again (a retryable error); any other request is sent again here.
    fn switch_region(&self, from: &str, to: &str, req: &Request) -> Result<()> {
        tracing::warn!(
            remote = %self.name,
            from = %from,
            to = %to,
            "the S3 server expects another region; retrying with it. \
             Set `region: {to}` on this remote to avoid the extra request"
        );
        *self.region.write().expect("region lock") = to.to_string();
        if matches!(req.body, Body::Stream(..)) {
            return Err(Error::new(
                ErrorKind::Backend,
                format!("the S3 server expects region {to}; the upload has to be sent again"),
            )
            .set_retryable(true));
        }
        Ok(())
    }

    /// The region the server names when it refuses a small bucket-level GET signed for
    /// `region` (ListObjectsV2 of at most one key), if it refuses it for that reason.
    async fn region_from_bucket_request(&self, region: &str) -> Option<String> {
        let req = Request::new(Method::GET, None)
            .query("list-type", "2")
            .query("max-keys", "1");
        let _permit = match &self.limit {
            Some(s) => Some(s.clone().acquire_owned().await.ok()?),
            None => None,
        };
        let resp = self
            .http
            .execute(self.build(&req, region).await.ok()?)
            .await
            .ok()?;
        if resp.status().is_success() {
            self.region_confirmed.store(true, Relaxed);
            return None;
        }
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.ok()?;
        wants_other_region(&parse_failure(status, &body, header.as_deref()), region)
    }

    /// Sends `req` and reads its XML answer, turning an `<Error>` inside a 200 into an error
    /// (S3 does that for copies and multipart completions that fail late).
    pub(crate) async fn send_xml(&self, req: &Request) -> Result<Bytes> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = self.send(req).await?.bytes().await?;
            if super::xml::root_name(&body).as_deref() != Some("Error") {
                return Ok(body);
            }
            let err = classify(parse_failure(200, &body, None));
            if !err.is_retryable() || attempt >= max {
                return Err(err);
            }
            tokio::time::sleep(self.backoff(attempt, None)).await;
        }
    }
}

/// The payload hash S3 accepts when the body is not hashed: lets us stream bodies and retry
/// them without reading them twice.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// SHA-256 of the empty string, the payload hash of body-less requests.
pub(crate) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What SigV4 leaves unencoded: `A-Z a-z 0-9 - . _ ~`.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` as S3 and SigV4 want: every byte but the unreserved ones becomes `%XX`
/// (upper-case hex); `/` is kept when `keep_slash` (object paths) and encoded otherwise (query
/// parameters). The signer encodes the same way, so what is sent is what is signed.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    if keep_slash {
        s.split('/')
            .map(|seg| percent_encoding::utf8_percent_encode(seg, UNRESERVED).to_string())
            .collect::<Vec<_>>()
            .join("/")
    } else {
        percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
    }
}

/// False for a key with a `.` or `..` segment (`a/../b`). Such a key cannot be sent: URL
/// parsers (reqwest's, and most servers') fold those segments, so the request would reach
/// another key (`b`), or fail its signature where the server checks the path as signed. S3
/// accepts such keys from other programs; the gateway lists them as skipped and never sends
/// a request naming one. Encoding the dots does not help: `%2E` counts as a dot too.
pub(crate) fn key_is_addressable(key: &str) -> bool {
    !key.split('/').any(|seg| seg == "." || seg == "..")
}

/// The query string: parameters encoded, then sorted by name and value (SigV4's canonical
/// order, so the URL is its own canonical form).
pub(crate) fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(uri_encode("a b/c", false), "a%20b%2Fc");
        assert_eq!(uri_encode("é+*", true), "%C3%A9%2B%2A");
        assert_eq!(
            canonical_query(&[("uploads".into(), String::new())]),
            "uploads="
        );
        assert_eq!(
            canonical_query(&[
                ("prefix".into(), "a b/".into()),
                ("delimiter".into(), "/".into())
            ]),
            "delimiter=%2F&prefix=a%20b%2F"
        );
    }
}
