#![no_main]
// `cargo +nightly fuzz run tiktoken`: memlayers::fuzz::load("tiktoken", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("tiktoken", data));
