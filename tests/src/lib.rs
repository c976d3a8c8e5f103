//! The end-to-end harness: the `bucketgate` binary as a subprocess, the programs people use as
//! clients, and trees over each backend. S3 servers, moto and the raw clients are the
//! testkit's (`bucketgate-testkit`), shared with the other crates' tests.
#![allow(missing_docs)]

pub mod clients;
pub mod fixtures;
pub mod gateway;
