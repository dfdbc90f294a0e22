//! The whole model in the browser: the page's model's forward against the CPU oracle, and its
//! training loss against the oracle's cross-entropy, run by `wasm-bindgen-test` in headless
//! Chromium (the same tolerance rule as natively: tests/common/checks.rs).
#![cfg(target_arch = "wasm32")]

#[path = "../../../tests/common/checks.rs"]
mod checks;

use memlayers::demo::{self, KnowledgeBase};
use memlayers::model::{Model, ModelWeights};
use memlayers::oracle::forward_cpu;
use memlayers::reference::ops::cross_entropy;
use memlayers::rng::Rng;
use memlayers::train::Trainer;
use memlayers::Gpu;
use memlayers_web::PAGE_MODEL;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn page_weights() -> ModelWeights {
    ModelWeights::init(&PAGE_MODEL.args().resolve().unwrap()).unwrap()
}

#[wasm_bindgen_test]
async fn page_model_forward_matches_oracle() {
    let g = Gpu::new().await.expect("WebGPU adapter");
    let w = page_weights();
    let kb = KnowledgeBase::synthetic(6, 1);
    let (tokens, _) = demo::training_batch(&kb.facts, &mut Rng::new(3), 3, PAGE_MODEL.seq);
    let model = Model::new(&g, &w).unwrap();
    let (got, _) = model.forward(&g, &tokens, None, 3, PAGE_MODEL.seq).await.unwrap();
    let want = forward_cpu(&w, &tokens, 3, PAGE_MODEL.seq);
    checks::assert_close("page model logits", &got, &want);
}

#[wasm_bindgen_test]
async fn page_model_trains_with_the_oracles_loss() {
    let g = Gpu::new().await.expect("WebGPU adapter");
    let w = page_weights();
    let kb = KnowledgeBase::synthetic(6, 1);
    let mut trainer = Trainer::new(&g, &w, demo::train_config(20, 1e-2, true)).unwrap();
    let mut rng = Rng::new(5);
    let (batch, seq) = (4, PAGE_MODEL.seq);
    let (x, y) = demo::training_batch(&kb.facts, &mut rng, batch, seq);
    let first = trainer.step(&g, &x, &y, batch, seq).await.unwrap();
    let (want, _) = cross_entropy(&forward_cpu(&w, &x, batch, seq), &y, demo::VOCAB);
    checks::assert_close("first step's loss (before the update)", &[first], &[want]);
    let mut last = first;
    for _ in 0..10 {
        last = trainer.step(&g, &x, &y, batch, seq).await.unwrap();
    }
    assert!(
        last.is_finite() && last < 0.8 * first,
        "loss on one repeated batch: {first} -> {last}"
    );
}
