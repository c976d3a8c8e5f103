//! Bucketgate's protocol frontends: thin adapters over the storage crate's file tree.
//!
//! Both frontends talk only to [`bucketgate_storage::UserFs`]; neither knows S3 exists. Login
//! rules live in [`auth`] so that SFTP and FTP refuse and ban alike.
#![deny(missing_docs)]

pub mod auth;
pub mod ftp;
pub mod limits;
pub mod logging;
pub mod metrics;
pub(crate) mod pattern;
pub mod proxy;
pub mod ssh;
