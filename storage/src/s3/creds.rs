//! Where a remote's credentials come from, and the signer that uses them.
//!
//! Signing (SigV4) and the AWS credential sources are Apache OpenDAL's `reqsign` crates
//! (`reqsign-aws-v4`, `reqsign-core`): static keys, the environment, a shared
//! config/credentials profile, a web identity token (Kubernetes service accounts), the
//! container endpoint (ECS, EKS Pod Identity), instance metadata (IMDSv2), and STS AssumeRole on
//! top of any of them. What is ours:
//!
//! - the adapters reqsign asks for: HTTP over `reqwest` (bounded timeouts, never a proxy), file
//!   reads, and an environment that a caller can overlay per remote ([`CredentialOptions::env`])
//!   so that two remotes of one process, or two tests, see different values;
//! - the order of `chain`, and a record of which source produced the credentials, or why each
//!   source tried gave none ([`CredentialReport`], shown by `remote test`);
//! - an STS endpoint override (`sts_endpoint`, or `AWS_ENDPOINT_URL_STS`), which reqsign lacks:
//!   AssumeRole requests are addressed, and signed, for it; web identity requests are sent to it.
//!
//! reqsign's `Signer` caches the credentials and loads them again when they are within two
//! minutes of expiry: each request is signed with the credentials current when it is sent, so a
//! transfer continues across a refresh. Credentials never reach a log or an error: reqsign's own
//! types redact them, and our messages name sources, files and endpoints only.

use bytes::Bytes;
use reqsign_aws_v4::{
    AssumeRoleCredentialProvider, AssumeRoleWithWebIdentityCredentialProvider, Credential,
    ECSCredentialProvider, EnvCredentialProvider, IMDSv2CredentialProvider,
    ProfileCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{
    Context, Env, FileRead, HttpSend, ProvideCredential, ProvideCredentialDyn, SignRequest, Signer,
};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a remote's credentials come from (`remotes[].credentials.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// The keys of [`S3Options`](super::S3Options); both empty: anonymous (unsigned) requests.
    #[default]
    Static,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    Env,
    /// A profile of the shared files (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`, else
    /// `~/.aws/credentials` and `~/.aws/config`).
    Profile,
    /// AssumeRoleWithWebIdentity with `AWS_ROLE_ARN` and the token in
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` (Kubernetes service accounts).
    WebIdentity,
    /// The container endpoint: `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`, with
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)` (ECS, EKS Pod Identity).
    Container,
    /// Instance metadata, IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides its address).
    Instance,
    /// AWS's default order: env, profile, web identity, container, instance.
    Chain,
}

impl CredentialSource {
    /// The name the config uses.
    pub fn name(self) -> &'static str {
        match self {
            CredentialSource::Static => "static",
            CredentialSource::Env => "env",
            CredentialSource::Profile => "profile",
            CredentialSource::WebIdentity => "web_identity",
            CredentialSource::Container => "container",
            CredentialSource::Instance => "instance",
            CredentialSource::Chain => "chain",
        }
    }
}

/// STS AssumeRole on top of the source's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// The role to assume.
    pub role_arn: String,
    /// The external id the role's trust policy asks for.
    pub external_id: Option<String>,
    /// The session name (CloudTrail shows it); `None`: `bucketgate`.
    pub session_name: Option<String>,
    /// How long each set of role credentials lasts (STS: 900 to 43200 s); `None`: 1 hour.
    pub duration: Option<Duration>,
}

/// How a remote gets its credentials.
#[derive(Clone, Default)]
pub struct CredentialOptions {
    /// Where from.
    pub source: CredentialSource,
    /// The profile of `source: profile` (and of `chain`'s profile step); `None`: `AWS_PROFILE`,
    /// else `default`.
    pub profile: Option<String>,
    /// A role assumed with the source's credentials.
    pub assume_role: Option<AssumeRole>,
    /// The STS endpoint (`http(s)://host[:port]`) for AssumeRole and web identity; `None`:
    /// `AWS_ENDPOINT_URL_STS`, else AWS's global endpoint.
    pub sts_endpoint: Option<String>,
    /// Variables seen by the credential sources instead of the process's own of the same name
    /// (the rest of the environment shows through; an empty value hides the process's). For
    /// embedding and tests; not a config key.
    pub env: Vec<(String, String)>,
}

impl fmt::Debug for CredentialOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `env` may hold keys: names only.
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CredentialOptions")
            .field("source", &self.source)
            .field("profile", &self.profile)
            .field("assume_role", &self.assume_role)
            .field("sts_endpoint", &self.sts_endpoint)
            .field("env", &env)
            .finish()
    }
}

/// What the last credential load found: the source that gave credentials, or each source
/// tried and why it gave none. Never a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialReport {
    /// The source that produced the credentials in use (`env`, `instance`, `assume_role
    /// arn:... with credentials from profile`...); `None` before the first load or after a
    /// failed one.
    pub source: Option<String>,
    /// When no source gave credentials: each one tried, with why.
    pub tried: Vec<(String, String)>,
    /// How many times credentials were loaded (a refresh is one more).
    pub loads: u64,
}

/// The environment the providers see: the overlay first, then the process's. An empty value,
/// in either, is no value (as AWS's SDKs take it); in the overlay it hides the process's.
#[derive(Debug, Clone)]
struct OverlayEnv(Arc<HashMap<String, String>>);

impl Env for OverlayEnv {
    fn var(&self, key: &str) -> Option<String> {
        match self.0.get(key) {
            Some(v) => Some(v.clone()),
            None => std::env::var(key).ok(),
        }
        .filter(|v| !v.is_empty())
    }

    fn vars(&self) -> HashMap<String, String> {
        let mut all: HashMap<String, String> = std::env::vars().collect();
        all.extend(self.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.retain(|_, v| !v.is_empty());
        all
    }

    fn home_dir(&self) -> Option<PathBuf> {
        self.var("HOME").map(PathBuf::from)
    }
}

#[derive(Debug)]
struct TokioRead;

impl FileRead for TokioRead {
    async fn file_read(&self, path: &str) -> reqsign_core::Result<Vec<u8>> {
        tokio::fs::read(path).await.map_err(|e| {
            reqsign_core::Error::unexpected(format!("cannot read {path}")).with_source(e)
        })
    }
}

/// HTTP for the credential sources: their own client (metadata endpoints are plain HTTP on
/// link-local or loopback addresses, STS is public HTTPS), short timeouts, and STS requests
/// sent to the configured STS endpoint.
#[derive(Debug)]
struct CredHttp {
    client: reqwest::Client,
    sts: Option<reqwest::Url>,
}

/// True for the hosts reqsign addresses STS requests to (`sts.amazonaws.com`,
/// `sts.REGION.amazonaws.com`, and the China partition's).
fn is_aws_sts_host(host: &str) -> bool {
    host.starts_with("sts.")
        && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))
}

/// `uri` with its scheme and authority replaced by `endpoint`'s (path and query kept).
fn readdress(uri: &http::Uri, endpoint: &reqwest::Url) -> Option<http::Uri> {
    let mut base = endpoint.as_str().trim_end_matches('/').to_string();
    base.push_str(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    base.parse().ok()
}

impl HttpSend for CredHttp {
    async fn http_send(
        &self,
        req: http::Request<Bytes>,
    ) -> reqsign_core::Result<http::Response<Bytes>> {
        let (mut parts, body) = req.into_parts();
        if let (Some(sts), Some(host)) = (&self.sts, parts.uri.host()) {
            // Web identity requests are unsigned and built for AWS's own STS host.
            if is_aws_sts_host(host) {
                if let Some(u) = readdress(&parts.uri, sts) {
                    parts.uri = u;
                    parts.headers.remove(http::header::HOST);
                }
            }
        }
        let url = parts.uri.to_string();
        let fail = |e: reqwest::Error| {
            reqsign_core::Error::unexpected(format!("request to {} failed", without_query(&url)))
                .with_source(e)
                .set_retryable(true)
        };
        let resp = self
            .client
            .request(parts.method, url.as_str())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(fail)?;
        let mut out = http::Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        let bytes = resp.bytes().await.map_err(fail)?;
        out.body(bytes)
            .map_err(|e| reqsign_core::Error::unexpected("bad response").with_source(e))
    }
}

/// A URL without its query (STS requests carry the role and session names there).
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Signs STS requests for the configured endpoint: the request is addressed to it before it
/// is signed, so that the signature covers the host it goes to.
#[derive(Debug)]
struct StsSigner {
    inner: RequestSigner,
    endpoint: Option<reqwest::Url>,
}

impl SignRequest for StsSigner {
    type Credential = Credential;

    fn required_valid_until(
        &self,
        credential: &Credential,
        expires_in: Option<Duration>,
    ) -> reqsign_core::time::Timestamp {
        self.inner.required_valid_until(credential, expires_in)
    }

    async fn sign_request(
        &self,
        ctx: &Context,
        req: &mut http::request::Parts,
        credential: Option<&Credential>,
        expires_in: Option<Duration>,
    ) -> reqsign_core::Result<()> {
        if let (Some(ep), Some(host)) = (&self.endpoint, req.uri.host()) {
            if is_aws_sts_host(host) {
                if let Some(u) = readdress(&req.uri, ep) {
                    req.uri = u;
                    req.headers.remove(http::header::HOST);
                }
            }
        }
        self.inner
            .sign_request(ctx, req, credential, expires_in)
            .await
    }
}

/// One source of a [`Tracked`] list.
struct Step {
    name: String,
    provider: Box<dyn ProvideCredentialDyn<Credential = Credential>>,
    /// Why the source gives nothing when it is not set up at all.
    unset: &'static str,
}

/// Tries its sources in order and records which one answered ([`CredentialReport`]).
struct Tracked {
    remote: String,
    steps: Vec<Step>,
    report: Arc<Mutex<CredentialReport>>,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Tracked").field("steps", &names).finish()
    }
}

/// An error of reqsign's in one line: its message, context and causes (none holds a key).
fn describe(e: &reqsign_core::Error) -> String {
    let mut s = e.to_string();
    for c in e.context() {
        s.push_str(&format!("; {c}"));
    }
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    s
}

impl ProvideCredential for Tracked {
    type Credential = Credential;

    async fn provide_credential(&self, ctx: &Context) -> reqsign_core::Result<Option<Credential>> {
        let mut tried = Vec::new();
        let mut retryable = false;
        for step in &self.steps {
            let why = match step.provider.provide_credential_dyn(ctx).await {
                Ok(Some(c)) => {
                    let mut r = self.report.lock().expect("credential report lock");
                    r.loads += 1;
                    r.tried.clear();
                    if r.source.as_deref() != Some(step.name.as_str()) {
                        tracing::info!(remote = %self.remote, source = %step.name, "credentials loaded");
                    } else {
                        tracing::debug!(remote = %self.remote, source = %step.name, "credentials refreshed");
                    }
                    r.source = Some(step.name.clone());
                    return Ok(Some(c));
                }
                Ok(None) => step.unset.to_string(),
                Err(e) => {
                    retryable |= e.is_retryable();
                    describe(&e)
                }
            };
            tried.push((step.name.clone(), why));
        }
        let summary = tried
            .iter()
            .map(|(n, w)| format!("{n}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        tracing::warn!(remote = %self.remote, tried = %summary, "no credentials");
        {
            let mut r = self.report.lock().expect("credential report lock");
            r.source = None;
            r.tried = tried;
        }
        // Retryable when a source failed for now (an endpoint down), not when none is set up.
        Err(
            reqsign_core::Error::credential_invalid(format!("no credentials ({summary})"))
                .set_retryable(retryable),
        )
    }
}

fn step(
    name: impl Into<String>,
    unset: &'static str,
    p: impl ProvideCredential<Credential = Credential>,
) -> Step {
    Step {
        name: name.into(),
        provider: Box::new(p),
        unset,
    }
}

const ENV_UNSET: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set";
const PROFILE_UNSET: &str = "no such profile with keys in the shared credentials or config file";
const WEB_UNSET: &str = "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE are not both set";
const CONTAINER_UNSET: &str =
    "AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_CREDENTIALS_RELATIVE_URI are not set";
const INSTANCE_UNSET: &str = "AWS_EC2_METADATA_DISABLED is true";

/// The steps of `source` (one, or chain's five).
fn steps(opts: &CredentialOptions, keys: Option<(&str, &str)>, ctx: &Context) -> Vec<Step> {
    let web = |region: Option<&str>| {
        let mut p = AssumeRoleWithWebIdentityCredentialProvider::new();
        if let Some(r) = region {
            p = p.with_region(r.to_string());
        }
        p
    };
    let profile = || match &opts.profile {
        Some(p) => ProfileCredentialProvider::new().with_profile(p.clone()),
        None => ProfileCredentialProvider::new(),
    };
    let region = ctx.env_var("AWS_REGION");
    match opts.source {
        CredentialSource::Static => match keys {
            Some((ak, sk)) => vec![step(
                "static",
                "no keys",
                StaticCredentialProvider::new(ak, sk),
            )],
            None => Vec::new(),
        },
        CredentialSource::Env => vec![step("env", ENV_UNSET, EnvCredentialProvider::new())],
        CredentialSource::Profile => vec![step("profile", PROFILE_UNSET, profile())],
        CredentialSource::WebIdentity => {
            vec![step("web_identity", WEB_UNSET, web(region.as_deref()))]
        }
        CredentialSource::Container => {
            vec![step(
                "container",
                CONTAINER_UNSET,
                ECSCredentialProvider::new(),
            )]
        }
        CredentialSource::Instance => {
            vec![step(
                "instance",
                INSTANCE_UNSET,
                IMDSv2CredentialProvider::new(),
            )]
        }
        CredentialSource::Chain => vec![
            step("env", ENV_UNSET, EnvCredentialProvider::new()),
            step("profile", PROFILE_UNSET, profile()),
            step("web_identity", WEB_UNSET, web(region.as_deref())),
            step("container", CONTAINER_UNSET, ECSCredentialProvider::new()),
            step("instance", INSTANCE_UNSET, IMDSv2CredentialProvider::new()),
        ],
    }
}

/// The signer of one remote: credentials from its source, cached and refreshed, and the
/// record of where they came from.
#[derive(Clone)]
pub(crate) struct Auth {
    /// `None`: anonymous, requests go unsigned.
    signer: Option<Signer<Credential>>,
    report: Arc<Mutex<CredentialReport>>,
    /// What the source is, in words (for reports when nothing was loaded yet).
    pub(crate) label: String,
}

impl Auth {
    /// Builds the signer; loads nothing yet. `keys` are the static keys, if any.
    pub(crate) fn new(
        remote: &str,
        opts: &CredentialOptions,
        keys: Option<(&str, &str)>,
        region: &str,
    ) -> Result<Auth, String> {
        let report = Arc::new(Mutex::new(CredentialReport::default()));
        let env = OverlayEnv(Arc::new(opts.env.iter().cloned().collect()));
        let sts = match opts
            .sts_endpoint
            .clone()
            .or_else(|| env.var("AWS_ENDPOINT_URL_STS"))
            .filter(|s| !s.trim().is_empty())
        {
            Some(s) => Some(
                reqwest::Url::parse(s.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| format!("sts_endpoint {s:?} is not an http(s) URL"))?,
            ),
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the credential HTTP client: {e}"))?;
        let ctx = Context::new()
            .with_env(env)
            .with_file_read(TokioRead)
            .with_http_send(CredHttp {
                client,
                sts: sts.clone(),
            });
        let base = steps(opts, keys, &ctx);
        if base.is_empty() && opts.assume_role.is_none() {
            return Ok(Auth {
                signer: None,
                report,
                label: "anonymous (no keys: requests are not signed)".into(),
            });
        }
        let mut label = opts.source.name().to_string();
        if opts.source == CredentialSource::Profile {
            if let Some(p) = &opts.profile {
                label = format!("profile {p}");
            }
        }
        let s3 = RequestSigner::new("s3", region);
        let provider = match &opts.assume_role {
            None => Tracked {
                remote: remote.to_string(),
                steps: base,
                report: report.clone(),
            },
            Some(ar) => {
                // The source's own record is kept apart: the report names the role and the
                // source under it.
                let inner = Tracked {
                    remote: remote.to_string(),
                    steps: base,
                    report: Arc::new(Mutex::new(CredentialReport::default())),
                };
                let sts_region = region_for_sts(region);
                let sts_signer = Signer::new(
                    ctx.clone(),
                    inner,
                    StsSigner {
                        inner: RequestSigner::new("sts", &sts_region),
                        endpoint: sts.clone(),
                    },
                );
                let mut p = AssumeRoleCredentialProvider::new(ar.role_arn.clone(), sts_signer)
                    .with_role_session_name(
                        ar.session_name
                            .clone()
                            .unwrap_or_else(|| "bucketgate".into()),
                    );
                if let Some(id) = &ar.external_id {
                    p = p.with_external_id(id.clone());
                }
                if let Some(d) = ar.duration {
                    p = p.with_duration_seconds(d.as_secs().min(u32::MAX as u64) as u32);
                }
                let name = format!("assume_role {} with credentials from {label}", ar.role_arn);
                label = name.clone();
                Tracked {
                    remote: remote.to_string(),
                    steps: vec![step(name, "no credentials", p)],
                    report: report.clone(),
                }
            }
        };
        Ok(Auth {
            signer: Some(Signer::new(ctx, provider, s3)),
            report,
            label,
        })
    }

    /// Whether requests are signed.
    pub(crate) fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// What the last load found.
    pub(crate) fn report(&self) -> CredentialReport {
        self.report.lock().expect("credential report lock").clone()
    }

    /// Signs `parts` for `region` with the current credentials (loading them first when there
    /// are none yet or they expire soon). Adds `host`, `x-amz-date`, `authorization` and, for
    /// temporary credentials, `x-amz-security-token`.
    pub(crate) async fn sign(
        &self,
        parts: &mut http::request::Parts,
        region: &str,
    ) -> reqsign_core::Result<()> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        // Same credential cache, the region of this request (it changes when the server
        // names another).
        signer
            .clone()
            .with_request_signer(RequestSigner::new("s3", region))
            .sign(parts, None)
            .await
    }
}

/// The region STS requests are signed for: the remote's when it is an AWS region name, else
/// AWS's global STS region.
fn region_for_sts(region: &str) -> String {
    let r = region.trim();
    let aws_like =
        r.split('-').count() >= 3 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if aws_like {
        r.to_string()
    } else {
        "us-east-1".to_string()
    }
}

/// A one-line description of a credential failure for errors: the sources tried and why.
pub(crate) fn failure_text(e: &reqsign_core::Error) -> String {
    describe(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_hosts() {
        assert!(is_aws_sts_host("sts.amazonaws.com"));
        assert!(is_aws_sts_host("sts.eu-west-1.amazonaws.com"));
        assert!(is_aws_sts_host("sts.cn-north-1.amazonaws.com.cn"));
        assert!(!is_aws_sts_host("s3.amazonaws.com"));
        assert!(!is_aws_sts_host("sts.example.com"));
        let u: http::Uri = "https://sts.amazonaws.com/?Action=AssumeRole&RoleArn=x"
            .parse()
            .unwrap();
        let ep = reqwest::Url::parse("http://127.0.0.1:4566").unwrap();
        assert_eq!(
            readdress(&u, &ep).unwrap().to_string(),
            "http://127.0.0.1:4566/?Action=AssumeRole&RoleArn=x"
        );
    }

    #[test]
    fn overlay_env_wins_and_debug_hides_values() {
        let o = CredentialOptions {
            env: vec![("AWS_SECRET_ACCESS_KEY".into(), "very-secret".into())],
            ..Default::default()
        };
        let env = OverlayEnv(Arc::new(o.env.iter().cloned().collect()));
        assert_eq!(
            env.var("AWS_SECRET_ACCESS_KEY").as_deref(),
            Some("very-secret")
        );
        assert!(!format!("{o:?}").contains("very-secret"));
    }
}
