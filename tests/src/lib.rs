//! Shared test harness: S3 servers on loopback, trees over each backend, and helpers that read
//! what a user would see.
#![allow(missing_docs)]

pub mod clients;
pub mod fixtures;
pub mod gateway;
pub mod moto;
