#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pond_fuzz::dataset_index(data));
