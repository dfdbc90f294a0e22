//! The memory layer's kernels in the browser (WebGPU), against the CPU oracle: the same
//! checks and shapes as the native tests (tests/common/checks.rs is shared), run by
//! `wasm-bindgen-test` in headless Chromium. `web/run-wasm-tests.sh` runs them.
#![cfg(target_arch = "wasm32")]

#[path = "../../../tests/common/checks.rs"]
mod checks;

use checks::{check_memory_layer, memory_layer_cases, Case};
use memlayers::memory::{MemoryConfig, ValueDtype};
use memlayers::Gpu;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn gpu() -> Gpu {
    match Gpu::new().await {
        Ok(g) => {
            web_sys_log(&format!("GPU tests on {}", g.adapter_name()));
            g
        }
        Err(e) => panic!("browser GPU tests need WebGPU (headless Chromium: --enable-unsafe-webgpu): {e}"),
    }
}

fn web_sys_log(s: &str) {
    wasm_bindgen_test::console_log!("{s}");
}

#[wasm_bindgen_test]
async fn memory_layer_matches_oracle_over_configs() {
    let g = gpu().await;
    let cases = memory_layer_cases();
    assert!(cases.len() >= 20);
    for (seed, case) in &cases {
        check_memory_layer(&g, case, *seed).await;
    }
}

#[wasm_bindgen_test]
async fn memory_layer_reference_shape() {
    // The reference's defaults at a small width: heads 4, knn 32, n_keys 1024, k_dim 512.
    let g = gpu().await;
    let config = MemoryConfig {
        v_dim: 16,
        ..MemoryConfig::memory_plus(16)
    };
    check_memory_layer(
        &g,
        &Case {
            config,
            rows: 6,
            dtype: ValueDtype::F16,
        },
        99,
    )
    .await;
}

#[wasm_bindgen_test]
async fn many_rows_in_one_forward() {
    // 3,000 tokens x 2 heads: several workgroup rows of every kernel.
    let g = gpu().await;
    let config = checks::config(12, 2, 20, 4, 6, 12, true);
    check_memory_layer(
        &g,
        &Case {
            config,
            rows: 3000,
            dtype: ValueDtype::F32,
        },
        7,
    )
    .await;
}
