//! End-to-end tests: one test binary (`cargo test -p bucketgate-tests --test integration`),
//! one module per subject. Run one module with a filter: `cargo test -p bucketgate-tests --test
//! integration e2e_cli::`.

// Helpers shared by the modules below.
mod support;

mod e2e_cli;
mod e2e_clients;
mod e2e_crash;
mod e2e_fleet;
mod e2e_hardening;
mod e2e_legacy_clients;
mod e2e_operate;
mod e2e_remote;
mod e2e_s3_mount;
mod e2e_s3_servers;
mod e2e_scale;
mod e2e_soak;
mod e2e_sync;
mod e2e_sync_lease;
mod vfs_behaviour;
mod vfs_listing_memory;

mod e2e_admin_api;
mod e2e_checksums;
mod e2e_console;
mod e2e_ftp_faults;
mod e2e_request_counts;
