#![no_main]
// `cargo +nightly fuzz run hf_config`: memlayers::fuzz::load("hf_config", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("hf_config", data));
