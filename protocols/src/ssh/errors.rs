//! Storage errors as SFTP status codes: the one place where the mapping lives.

use bucketgate_storage::{Error, ErrorKind};
use russh_sftp::protocol::StatusCode;
use russh_sftp::server::StatusReply;

/// An SFTP failure answer: a status code and a short, client-safe message.
#[derive(Debug)]
pub(crate) struct SftpError {
    code: StatusCode,
    message: String,
}

impl SftpError {
    /// A status with its own message (for failures that are not storage errors).
    pub(crate) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        SftpError {
            code,
            message: message.into(),
        }
    }

    /// Whether this is the end of a file (a READ at or past it).
    pub(crate) fn is_eof(&self) -> bool {
        self.code == StatusCode::Eof
    }

    /// A status whose message is the code's own description.
    pub(crate) fn code(code: StatusCode) -> Self {
        SftpError::new(code, code.to_string())
    }
}

/// The status code of a storage error kind. Anything without a specific SFTP v3 code is a
/// FAILURE whose message tells what happened.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        ErrorKind::Unsupported => StatusCode::OpUnsupported,
        ErrorKind::AlreadyExists
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::DirectoryNotEmpty
        | ErrorKind::LimitReached
        | ErrorKind::InvalidInput
        | ErrorKind::Conflict
        | ErrorKind::ConfigInvalid
        | ErrorKind::Backend => StatusCode::Failure,
    }
}

/// Logs a storage error with its whole chain (server side only) at a level that matches
/// whose fault it is: a client's mistake is routine, a storage failure is the operator's.
pub(crate) fn log_error(user: &str, e: &Error) {
    match e.kind() {
        ErrorKind::Backend | ErrorKind::ConfigInvalid | ErrorKind::Conflict => {
            tracing::warn!(user, error = ?e, "storage operation failed")
        }
        _ => tracing::debug!(user, error = ?e, "request refused"),
    }
}

impl From<Error> for SftpError {
    fn from(e: Error) -> Self {
        // The Display form is "op /user/view/path: message": the user's own path and a short
        // description, never a backend detail (those stay in the source chain).
        SftpError::new(status_of(e.kind()), e.to_string())
    }
}

impl From<SftpError> for StatusReply {
    fn from(e: SftpError) -> Self {
        StatusReply::new(e.code).with_message(e.message)
    }
}
