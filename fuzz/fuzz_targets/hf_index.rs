#![no_main]
// `cargo +nightly fuzz run hf_index`: memlayers::fuzz::load("hf_index", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("hf_index", data));
