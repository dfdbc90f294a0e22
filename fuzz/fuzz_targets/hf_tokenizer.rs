#![no_main]
// `cargo +nightly fuzz run hf_tokenizer`: memlayers::fuzz::load("hf_tokenizer", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("hf_tokenizer", data));
