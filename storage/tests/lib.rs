//! The storage crate's integration tests: one test binary (`cargo test -p bucketgate-storage
//! --test integration`), one module per subject, so that a change relinks one binary, not
//! twenty. Run one module with a filter: `cargo test -p bucketgate-storage --test integration
//! s3_ops::`. What the crates' tests share (S3 servers, the fault proxy) is in `testkit/`.

// Counts live heap bytes, for the tests that assert on what uploads hold (s3_memory).
#[global_allocator]
static HEAP: bucketgate_testkit::heap::Counting = bucketgate_testkit::heap::Counting;

// Helpers shared by the modules below.
mod sync_common;

mod s3_client;
mod s3_copy_ranges;
mod s3_credentials;
mod s3_faults;
mod s3_lease;
mod s3_listing;
mod s3_lookups;
mod s3_memory;
mod s3_ops;
mod s3_options;
mod s3_roundtrip;
mod s3_segmented;
mod s3_streamed_put;
mod s3_uploads;
mod sync_crash;
mod sync_crash_s3;
mod sync_engine;
mod sync_memory;
mod sync_s3;
mod sync_s3_scale;
mod sync_scale;

mod s3_checksums;
mod s3_content_md5;
mod s3_foreign;
mod s3_probe;
mod s3_sse;
