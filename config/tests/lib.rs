//! The config crate's integration tests: one test binary (`cargo test -p bucketgate-config
//! --test integration`), one module per subject. Run one module with a filter:
//! `cargo test -p bucketgate-config --test integration errors::`.

// Helpers shared by the modules below.
mod common;

mod defaults;
mod errors;
mod example;
mod reference_documents_every_key;
mod secrets;
