#![no_main]
// `cargo +nightly fuzz run safetensors`: memlayers::fuzz::load("safetensors", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("safetensors", data));
