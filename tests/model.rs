//! The transformer's GPU forward against its CPU oracle (composed from the reference ops).

mod common;
use common::{assert_close, gpu};
use memlayers::model::{forward_cpu, LMTransformerArgs, Model, ModelWeights};
use memlayers::reference::ops;
use memlayers::rng::Rng;

fn weights(json: &str) -> ModelWeights {
    let config = LMTransformerArgs::from_json(json).unwrap().resolve().unwrap();
    ModelWeights::init(&config).unwrap()
}

#[test]
fn model_forward_matches_oracle_dense_and_memory() {
    let g = gpu();
    let configs = [
        r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 50, "multiple_of": 16, "max_seqlen": 16}"#,
        r#"{"dim": 24, "n_layers": 3, "n_heads": 3, "vocab_size": 37, "multiple_of": 8, "max_seqlen": 32,
            "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 10, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 8}}"#,
        r#"{"dim": 16, "n_layers": 4, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 8, "seed": 3,
            "productkey_args": {"is_enabled": true, "layers": "0,2", "mem_n_keys": 6, "mem_heads": 1, "mem_knn": 3, "mem_k_dim": 4, "swilu_projection": false}}"#,
    ];
    let mut rng = Rng::new(9);
    for json in configs {
        let w = weights(json);
        let c = &w.config;
        let (batch, seq) = (2, c.max_seqlen.min(9));
        let tokens: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(c.vocab as u64) as u32)
            .collect();
        let targets: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(c.vocab as u64) as u32)
            .collect();
        let model = Model::new(g, &w).unwrap();
        let (logits, loss) =
            pollster::block_on(model.forward(g, &tokens, Some(&targets), batch, seq)).unwrap();
        let want = forward_cpu(&w, &tokens, batch, seq);
        assert_close(&format!("logits of {json}"), &logits, &want);
        let (want_loss, _) = ops::cross_entropy(&want, &targets, c.vocab);
        assert_close("loss", &[loss.unwrap()], &[want_loss]);
    }
}

#[test]
fn bad_tokens_and_lengths_are_errors() {
    let g = gpu();
    let w = weights(
        r#"{"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 10, "multiple_of": 8, "max_seqlen": 4}"#,
    );
    let model = Model::new(g, &w).unwrap();
    let err = pollster::block_on(model.forward(g, &[1, 2, 10, 3], None, 1, 4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokens") && err.contains("10"), "{err}");
    let err = pollster::block_on(model.forward(g, &[1; 10], None, 2, 5))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_seqlen"), "{err}");
}
