#![no_main]
// `cargo +nightly fuzz run facts_tsv`: memlayers::fuzz::load("facts_tsv", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("facts_tsv", data));
