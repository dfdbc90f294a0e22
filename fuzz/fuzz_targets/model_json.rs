#![no_main]
// `cargo +nightly fuzz run model_json`: memlayers::fuzz::load("model_json", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("model_json", data));
