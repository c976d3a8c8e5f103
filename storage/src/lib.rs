//! Bucketgate's storage layer.
//!
//! Frontends (SFTP, FTP) talk only to [`vfs::UserFs`]: one user's view of the site tree and its
//! mounts. Below it, a [`backend::Backend`] is either a local folder ([`local`]) or an
//! S3-compatible bucket ([`s3`]). Only this crate talks to S3.
#![deny(missing_docs)]

pub mod backend;
pub mod budget;
pub mod calendar;
pub mod error;
pub(crate) mod known;
pub mod local;
pub mod metrics;
pub mod path;
pub mod perms;
pub mod s3;
pub mod sync;
pub mod transfer;
pub mod vfs;
pub mod writing;

pub use backend::{Backend, Entry, EntryKind};
pub use error::{Error, ErrorKind, Result};
pub use metrics::SessionInfo;
pub use path::VPath;
pub use perms::{Perm, PermSet, Permissions};
pub use transfer::{FileReader, FileWriter, OpenMode};
pub use vfs::{Area, Mount, Tree, UserFs};
