//! Replays every fuzz target's corpus (seeds and every input that ever crashed a loader,
//! `fuzz/corpus/<target>/`) through its loader: errors are fine, panics fail the test. The
//! fuzzing itself runs with `cargo +nightly fuzz run <target>` (fuzz/README.md), not here.

use std::path::Path;

#[test]
fn every_corpus_input_loads_or_fails_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in memlayers::fuzz::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target}: no seeds");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| memlayers::fuzz::load(target, &data));
            assert!(outcome.is_ok(), "{target}: {} panicked", input.display());
        }
    }
}
