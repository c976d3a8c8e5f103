//! The one place where S3 answers become [`ErrorKind`]s.
//!
//! Modelled on how OpenDAL's `parse_s3_error_code` reads S3 codes: a missing bucket or bad
//! credentials are configuration errors (an operator must act), not "no such file".

use super::xml::{self, ErrorDoc};
use crate::error::{Error, ErrorKind};

/// What an S3 error answer said, as far as we need it.
#[derive(Debug, Default, Clone)]
pub(crate) struct S3Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// The region the server says it expects (XML `<Region>` or `x-amz-bucket-region`).
    pub region: Option<String>,
    /// `Retry-After` in seconds, when the server asked for a pause.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for S3Failure {}

/// Reads an error body (which may be empty, as for HEAD, or not XML at all).
pub(crate) fn parse_failure(status: u16, body: &[u8], bucket_region: Option<&str>) -> S3Failure {
    let doc: ErrorDoc = xml::parse(body, "error").unwrap_or_default();
    let region = doc
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| bucket_region.map(str::to_string).filter(|r| !r.is_empty()))
        .or_else(|| region_from_message(&doc.message));
    S3Failure {
        status,
        code: doc.code,
        // Server messages are logged (as the source), never sent to clients, and hold no
        // secret: S3 puts the string-to-sign in separate elements that we do not read.
        message: doc.message.chars().take(300).collect(),
        region,
        retry_after: None,
    }
}

/// AWS words a wrong-region answer as "... the region 'us-east-1' is wrong; expecting
/// 'eu-west-1'"; some servers give only this sentence.
fn region_from_message(msg: &str) -> Option<String> {
    let rest = &msg[msg.find("expecting '")? + "expecting '".len()..];
    let region = &rest[..rest.find('\'')?];
    (!region.is_empty() && region.len() < 64).then(|| region.to_string())
}

/// True when the answer means "sign with another region".
pub(crate) fn wants_other_region(f: &S3Failure, current: &str) -> Option<String> {
    let region_error = f.code == "AuthorizationHeaderMalformed"
        || f.code == "PermanentRedirect"
        || f.code == "IllegalLocationConstraintException"
        || f.status == 301
        || f.status == 400;
    match &f.region {
        Some(r) if region_error && r != current => Some(r.clone()),
        _ => None,
    }
}

/// Classifies an S3 error answer. The message names the S3 code (safe for clients); the full
/// answer is attached as the source for the server log.
pub(crate) fn classify(f: S3Failure) -> Error {
    use ErrorKind::*;
    let (kind, retryable, msg): (ErrorKind, bool, String) = match (f.code.as_str(), f.status) {
        ("NoSuchKey", _) | ("NoSuchUpload", _) | ("NoSuchVersion", _) => {
            (NotFound, false, NotFound.describe().into())
        }
        ("NoSuchBucket", _) => (
            ConfigInvalid,
            false,
            "the remote's bucket does not exist".into(),
        ),
        ("InvalidAccessKeyId", _) | ("NotSignedUp", _) => (
            ConfigInvalid,
            false,
            "the remote does not know this access key id".into(),
        ),
        ("SignatureDoesNotMatch", _) => (
            ConfigInvalid,
            false,
            "the remote rejected the signature: check the secret access key".into(),
        ),
        ("AuthorizationHeaderMalformed", _) | ("PermanentRedirect", _) => (
            ConfigInvalid,
            false,
            "the remote expects another region or endpoint: set `region`".into(),
        ),
        ("RequestTimeTooSkewed", _) => (
            ConfigInvalid,
            false,
            "this machine's clock is too far from the remote's".into(),
        ),
        ("AccessDenied", _) | ("AllAccessDisabled", _) | ("AccountProblem", _) => {
            (PermissionDenied, false, "the remote denied access".into())
        }
        // Servers on a file system (MinIO in single-folder mode) refuse a file and a folder of
        // one name: nothing was written.
        ("XMinioParentIsObject", _) | ("XMinioObjectExistsAsDirectory", _) => (
            AlreadyExists,
            false,
            "a file and a folder cannot share a name on this remote".into(),
        ),
        ("PreconditionFailed", _) | (_, 412) => (Conflict, false, Conflict.describe().into()),
        ("EntityTooLarge", _) | ("MaxMessageLengthExceeded", _) => (
            LimitReached,
            false,
            "the file is too large for the remote".into(),
        ),
        ("NotImplemented", _) | (_, 501) => (
            Unsupported,
            false,
            "the remote does not implement this request".into(),
        ),
        // The body did not match the checksum sent with it (S3: BadDigest for Content-MD5,
        // InvalidDigest for a malformed one, XAmzContentChecksumMismatch for x-amz-checksum-*
        // headers and trailers): it changed on its way. Worth sending again, as a transport
        // fault is; the server stored nothing.
        ("BadDigest", _) | ("InvalidDigest", _) | ("XAmzContentChecksumMismatch", _) => (
            Backend,
            true,
            format!(
                "the remote received different bytes than were sent ({})",
                code_or_status(&f)
            ),
        ),
        ("InvalidRange", _) | (_, 416) => (InvalidInput, false, "invalid byte range".into()),
        ("SlowDown", _)
        | ("RequestTimeout", _)
        | ("InternalError", _)
        | ("ServiceUnavailable", _)
        | ("OperationAborted", _)
        | (_, 429)
        | (_, 500..=599) => (
            Backend,
            true,
            format!("the remote is unavailable ({})", code_or_status(&f)),
        ),
        (_, 404) => (NotFound, false, NotFound.describe().into()),
        (_, 403) => (PermissionDenied, false, "the remote denied access".into()),
        _ => (
            Backend,
            false,
            format!("the remote refused the request ({})", code_or_status(&f)),
        ),
    };
    Error::new(kind, msg)
        .set_retryable(retryable)
        .with_source(f)
}

fn code_or_status(f: &S3Failure) -> String {
    if f.code.is_empty() {
        format!("HTTP {}", f.status)
    } else {
        f.code.clone()
    }
}

/// Classifies a transport failure: connection refused, TLS, timeouts, a body cut short.
/// All are worth retrying; the message never carries the URL's query or a header.
pub(crate) fn transport(e: reqwest::Error) -> Error {
    if let Some(detail) = tls_certificate_problem(&e) {
        // Not transient: retrying an untrusted certificate only delays the real message.
        return Error::new(
            ErrorKind::ConfigInvalid,
            format!(
                "TLS handshake with the remote failed: its certificate is not trusted \
                 ({detail}); for a private CA set `ca_file` on the remote"
            ),
        )
        .with_source(e.without_url());
    }
    let what = if e.is_timeout() {
        "the remote did not answer in time"
    } else if e.is_connect() {
        "could not connect to the remote"
    } else if e.is_body() || e.is_decode() {
        "the connection to the remote broke during a transfer"
    } else {
        "the request to the remote failed"
    };
    Error::new(ErrorKind::Backend, what)
        .set_retryable(true)
        .with_source(e.without_url())
}

/// The certificate complaint of a failed TLS handshake, found in the error's causes (reqwest
/// only says "error sending request"; rustls names the reason, e.g. UnknownIssuer).
fn tls_certificate_problem(e: &reqwest::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if text.contains("invalid peer certificate") || text.contains("certificate verify") {
            return Some(text);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(status: u16, code: &str) -> S3Failure {
        S3Failure {
            status,
            code: code.into(),
            ..Default::default()
        }
    }

    #[test]
    fn kinds() {
        let k = |s, c| classify(f(s, c)).kind();
        assert_eq!(k(404, "NoSuchKey"), ErrorKind::NotFound);
        assert_eq!(k(404, ""), ErrorKind::NotFound);
        assert_eq!(k(403, "AccessDenied"), ErrorKind::PermissionDenied);
        assert_eq!(k(403, ""), ErrorKind::PermissionDenied);
        assert_eq!(k(404, "NoSuchBucket"), ErrorKind::ConfigInvalid);
        assert_eq!(k(403, "InvalidAccessKeyId"), ErrorKind::ConfigInvalid);
        assert_eq!(k(403, "SignatureDoesNotMatch"), ErrorKind::ConfigInvalid);
        assert_eq!(k(412, "PreconditionFailed"), ErrorKind::Conflict);
        assert_eq!(k(412, ""), ErrorKind::Conflict);
        assert_eq!(k(400, "EntityTooLarge"), ErrorKind::LimitReached);
        assert_eq!(k(501, "NotImplemented"), ErrorKind::Unsupported);
        assert_eq!(k(400, "InvalidArgument"), ErrorKind::Backend);
        let e = classify(f(503, "SlowDown"));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(e.is_retryable());
        assert!(classify(f(500, "")).is_retryable());
        assert!(classify(f(400, "RequestTimeout")).is_retryable());
        assert!(!classify(f(404, "NoSuchKey")).is_retryable());
        assert!(classify(f(403, "SignatureDoesNotMatch"))
            .message()
            .contains("secret"));
        assert!(classify(f(404, "NoSuchBucket"))
            .message()
            .contains("bucket"));
    }

    #[test]
    fn region_hints() {
        let body = b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization \
            header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message>\
            </Error>";
        let fl = parse_failure(400, body, None);
        assert_eq!(fl.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            wants_other_region(&fl, "us-east-1").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(wants_other_region(&fl, "eu-west-1"), None);

        let body = b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>x</Message>\
            <Region>garage</Region></Error>";
        let fl = parse_failure(400, body, None);
        assert_eq!(
            wants_other_region(&fl, "us-east-1").as_deref(),
            Some("garage")
        );

        let fl = parse_failure(301, b"", Some("ap-south-1"));
        assert_eq!(
            wants_other_region(&fl, "us-east-1").as_deref(),
            Some("ap-south-1")
        );
        let fl = parse_failure(404, b"", Some("ap-south-1"));
        assert_eq!(wants_other_region(&fl, "us-east-1"), None);
    }
}
