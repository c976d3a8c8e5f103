#![no_main]
//! See `bucketgate_fuzz::ftp_listing` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bucketgate_fuzz::ftp_listing(data));
