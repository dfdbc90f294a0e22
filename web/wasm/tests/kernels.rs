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

#[wasm_bindgen_test]
async fn q8_weights_give_what_their_unpacked_values_give() {
    // 8-bit weights in the browser: decode-sized (the narrow kernel's 16-byte loads) and
    // prefill-sized products give the bits of the unpacked f32 weights, close to the oracle,
    // with the GPU and the CPU kernel variants.
    let mut g = gpu().await;
    for cpu_tuning in [false, true] {
        if cpu_tuning {
            // The CPU variants (SwiftShader's): the narrow kernel for products of few rows.
            g.set_tuning(memlayers::kernels::Tuning::CPU);
        }
        q8_products(&g).await;
    }
}

async fn q8_products(g: &Gpu) {
    use memlayers::kernels::linear::{pack_q8, unpack_q8, Linear, WeightFormat};
    let mut rng = memlayers::rng::Rng::new(5);
    for (m, n, k) in [(1, 40, 96), (1, 64, 64), (3, 17, 64), (40, 33, 128)] {
        let x = rng.vec_symmetric(m * k, 1.0);
        let w = rng.vec_symmetric(n * k, 2.0);
        let (words, scales_at) = pack_q8(&w).unwrap();
        let unpacked = unpack_q8(&words, scales_at, w.len());
        let xb = g.upload("x", &x);
        let mut outputs = Vec::new();
        for (weights, format) in [
            (g.upload("w q8", &words), WeightFormat::Q8 { scales_at }),
            (g.upload("w", &unpacked), WeightFormat::F32),
        ] {
            let y = g.storage("y", (m * n * 4) as u64);
            let mut enc = g.device.create_command_encoder(&Default::default());
            Linear {
                w_format: format,
                ..Linear::new("linear", &xb, &weights, &y, (m as u32, n as u32, k as u32))
            }
            .record(g, &mut enc)
            .unwrap();
            g.queue.submit([enc.finish()]);
            outputs.push(g.read_f32(&y, m * n).await.unwrap());
        }
        assert!(
            outputs[0]
                .iter()
                .zip(&outputs[1])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{m}x{n}x{k}: q8 differs from its unpacked weights: {:?} vs {:?}",
            &outputs[0][..4.min(m * n)],
            &outputs[1][..4.min(m * n)]
        );
        let want = memlayers::reference::linear(&x, &unpacked, None, m, n, k);
        let worst = want
            .iter()
            .zip(&outputs[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{m}x{n}x{k}: {worst} from the oracle");
    }
}
