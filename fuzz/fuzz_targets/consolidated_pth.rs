#![no_main]
// `cargo +nightly fuzz run consolidated_pth`: memlayers::fuzz::load("consolidated_pth", ..) must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memlayers::fuzz::load("consolidated_pth", data));
