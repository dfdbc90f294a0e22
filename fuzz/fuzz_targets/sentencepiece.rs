#![no_main]
// `cargo +nightly fuzz run sentencepiece`: memlayers::fuzz::load("sentencepiece", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("sentencepiece", data));
