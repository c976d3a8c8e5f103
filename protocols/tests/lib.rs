//! The protocol frontends' integration tests: one test binary (`cargo test -p
//! bucketgate-protocols --test integration`), one module per subject. Run one module with a
//! filter: `cargo test -p bucketgate-protocols --test integration ftp_errors::`.

// Helpers shared by the modules below.
mod ftp_harness;
mod sftp_common;

mod ftp_clients;
mod ftp_commands;
mod ftp_errors;
mod ftp_tls;
mod sftp_auth;
mod sftp_differential;
mod sftp_openssh;
mod sftp_ops;
mod sftp_server;

mod ftp_differential;
mod ftp_logs;
