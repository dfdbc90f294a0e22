//! Shared test helpers: one GPU per test binary (native), and the checks in `checks.rs` that
//! the browser tests (web/wasm/tests) run too.
#![allow(dead_code)]

pub mod checks;
#[allow(unused_imports)]
pub use checks::*;

use memlayers::Gpu;
use std::sync::OnceLock;

/// The adapter every GPU test runs on. No adapter is a failure with install instructions,
/// never a skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new_blocking() {
        Ok(g) => {
            eprintln!("GPU tests on {}", g.adapter_name());
            g
        }
        Err(e) => panic!("GPU tests need a wgpu adapter: {e}"),
    })
}

/// A device of its own on the same adapter, its kernel variants (`kernels::Tuning`) changed by
/// `change`: for tests that run one kernel in each of its variants.
pub fn gpu_with(change: impl FnOnce(&mut memlayers::kernels::Tuning)) -> Gpu {
    let mut g = Gpu::new_blocking().unwrap();
    let mut tuning = g.tuning();
    change(&mut tuning);
    g.set_tuning(tuning);
    g
}

/// A JSON array of token ids (a fixture's `expected.json`).
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// The Hugging Face fixture folders (`tests/fixtures/hf`, made by `scripts/hf_fixtures.py`).
pub const HF_FOLDERS: [&str; 4] = [
    "llama_tied_bf16_shards",
    "qwen2_bias_f32",
    "qwen3_qknorm_f16",
    "mistral_f32",
];

/// The path of Hugging Face fixture `name`.
pub fn hf_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}
