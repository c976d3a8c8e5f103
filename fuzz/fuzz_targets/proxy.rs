#![no_main]
//! See `bucketgate_fuzz::proxy` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bucketgate_fuzz::proxy(data));
