#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lstore_fuzz::document(data));
