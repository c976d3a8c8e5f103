#![no_main]
//! See `bucketgate_fuzz::vpath` for what is checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bucketgate_fuzz::vpath(data));
