//! One error type for every storage operation.
//!
//! Backends classify their failures once, into an [`ErrorKind`]; each frontend then maps the kind
//! to its protocol's status code in a single `match`. The message is short and safe to show a
//! client; the source chain (logged on the server) may hold more detail, never a secret.
//!
//! Paths: what a client sees (the `Display` form) names only the path as that user sees it,
//! set by the virtual file tree with [`Error::with_context`]. A backend records the key or file
//! it acted on with [`Error::with_key`]: that is for the operator's log (the `Debug` form) and
//! never reaches a client, since it would show the site layout and other tenants' prefixes.

use std::fmt;

/// What went wrong, in the terms a file client understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The path does not exist (SFTP NO_SUCH_FILE, FTP 550).
    NotFound,
    /// The user's permissions or the tree's rules forbid it (SFTP PERMISSION_DENIED, FTP 550).
    PermissionDenied,
    /// The target exists and the operation does not replace (SFTP FAILURE, FTP 550/553).
    AlreadyExists,
    /// A folder was expected and a file was found.
    NotADirectory,
    /// A file was expected and a folder was found.
    IsADirectory,
    /// A folder still holds entries.
    DirectoryNotEmpty,
    /// The operation has no meaning over object storage (symlinks, chmod, hard links).
    Unsupported,
    /// A configured limit was hit (memory, handles, sizes, reorder window).
    LimitReached,
    /// The request itself is malformed: a bad path, an out-of-order write, a bad offset.
    InvalidInput,
    /// The object changed under us (an append lost the race to another writer).
    Conflict,
    /// The remote is misconfigured (no such bucket, bad credentials, wrong region).
    ConfigInvalid,
    /// The backend failed: network, timeout, 5xx. `retryable` says whether trying later may help.
    Backend,
}

impl ErrorKind {
    /// A short, client-safe description.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "no such file or folder",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::NotADirectory => "not a folder",
            ErrorKind::IsADirectory => "is a folder",
            ErrorKind::DirectoryNotEmpty => "folder not empty",
            ErrorKind::Unsupported => "operation not supported",
            ErrorKind::LimitReached => "limit reached",
            ErrorKind::InvalidInput => "invalid request",
            ErrorKind::Conflict => "file changed during the operation",
            ErrorKind::ConfigInvalid => "storage misconfigured",
            ErrorKind::Backend => "storage failure",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A classified storage error with its operation and path context.
pub struct Error {
    kind: ErrorKind,
    retryable: bool,
    op: &'static str,
    path: String,
    /// The backend's own operation and key (logged, never shown to a client). Boxed: errors
    /// travel in every `Result`, and most never carry one.
    key: Option<Box<(&'static str, String)>>,
    message: String,
    source: Option<Source>,
}

/// Shorthand for storage results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a client-safe message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            retryable: false,
            op: "",
            path: String::new(),
            key: None,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` whose message is the kind's description.
    pub fn of(kind: ErrorKind) -> Self {
        Error::new(kind, kind.describe())
    }

    /// Records the operation and the path it acted on, as the client sees it (the user's view:
    /// never a site-tree path above her home, a mount's bucket prefix or a file on disk). The
    /// first context set is kept: the innermost caller knows the exact path.
    pub fn with_context(mut self, op: &'static str, path: impl Into<String>) -> Self {
        if self.op.is_empty() {
            self.op = op;
            self.path = path.into();
        }
        self
    }

    /// Records the backend's operation and key (or file), for the server log only: a key holds
    /// the mount's prefix and the site layout, which clients must not learn. The first one set
    /// is kept.
    pub fn with_key(mut self, op: &'static str, key: impl Into<String>) -> Self {
        if self.key.is_none() {
            self.key = Some(Box::new((op, key.into())));
        }
        self
    }

    /// The backend's operation and key, when one recorded it (for logs).
    pub fn key(&self) -> Option<(&'static str, &str)> {
        self.key.as_deref().map(|(op, k)| (*op, k.as_str()))
    }

    /// Attaches the underlying cause (logged on the server, never sent to a client).
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks the error as worth retrying later (5xx, timeouts, throttling).
    pub fn set_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The client-safe message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, when known.
    pub fn op(&self) -> &str {
        self.op
    }

    /// The path the operation acted on, when known.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        if let Some((op, key)) = self.key.as_deref() {
            write!(f, " [{op} {key:?}]")?;
        }
        let mut src = self.source.as_deref().map(|s| s as &dyn std::error::Error);
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.op.is_empty() {
            write!(f, "{} {}: ", self.op, self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match e.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::AlreadyExists => ErrorKind::AlreadyExists,
            Io::NotADirectory => ErrorKind::NotADirectory,
            Io::IsADirectory => ErrorKind::IsADirectory,
            Io::DirectoryNotEmpty => ErrorKind::DirectoryNotEmpty,
            Io::InvalidInput | Io::InvalidFilename => ErrorKind::InvalidInput,
            Io::Unsupported => ErrorKind::Unsupported,
            // A limit of the disk rather than of the gateway: say which.
            Io::StorageFull | Io::QuotaExceeded | Io::FileTooLarge => {
                let message = match e.kind() {
                    Io::StorageFull => "no space left on the storage",
                    Io::QuotaExceeded => "disk quota exceeded",
                    _ => "file too large for the storage",
                };
                return Error::new(ErrorKind::LimitReached, message).with_source(e);
            }
            Io::TimedOut | Io::Interrupted | Io::WouldBlock => {
                return Error::of(ErrorKind::Backend)
                    .set_retryable(true)
                    .with_source(e)
            }
            _ => ErrorKind::Backend,
        };
        Error::of(kind).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_named_as_such() {
        use std::io::{Error as IoError, ErrorKind as Io};
        for (io, want) in [
            (Io::StorageFull, "no space left on the storage"),
            (Io::QuotaExceeded, "disk quota exceeded"),
            (Io::FileTooLarge, "file too large for the storage"),
        ] {
            let e = Error::from(IoError::from(io)).with_context("write", "/a.bin");
            assert_eq!(e.kind(), ErrorKind::LimitReached);
            assert_eq!(e.to_string(), format!("write /a.bin: {want}"));
        }
    }
}
