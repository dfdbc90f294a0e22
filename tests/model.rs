//! The transformer's GPU forward against its CPU oracle (composed from the reference ops).

mod common;
use common::{assert_close, gpu};
use memlayers::model::{LMTransformerArgs, Model, ModelWeights};
use memlayers::oracle::forward_cpu;
use memlayers::reference::ops;
use memlayers::rng::Rng;

fn weights(json: &str) -> ModelWeights {
    let config = LMTransformerArgs::from_json(json).unwrap().resolve().unwrap();
    ModelWeights::init(&config).unwrap()
}

/// `json`'s model with its memory layers beside the feed-forward blocks (a retrofit's
/// placement) instead of in their place.
fn parallel_weights(json: &str) -> ModelWeights {
    let mut args = LMTransformerArgs::from_json(json).unwrap();
    let memory = std::mem::take(&mut args.productkey_args);
    let config = args
        .resolve()
        .unwrap()
        .with_memory(&memory, memlayers::model::MemoryPlacement::Parallel)
        .unwrap();
    ModelWeights::init(&config).unwrap()
}

#[test]
fn model_forward_matches_oracle_dense_memory_and_moe() {
    let g = gpu();
    let configs = [
        r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 50, "multiple_of": 16, "max_seqlen": 16}"#,
        r#"{"dim": 24, "n_layers": 3, "n_heads": 3, "vocab_size": 37, "multiple_of": 8, "max_seqlen": 32,
            "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 10, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 8}}"#,
        r#"{"dim": 16, "n_layers": 4, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 8, "seed": 3,
            "productkey_args": {"is_enabled": true, "layers": "0,2", "mem_n_keys": 6, "mem_heads": 1, "mem_knn": 3, "mem_k_dim": 4, "swilu_projection": false}}"#,
        r#"{"dim": 24, "n_layers": 3, "n_heads": 3, "vocab_size": 37, "multiple_of": 8, "max_seqlen": 32, "seed": 4,
            "moe_args": {"layers": "0,2", "n_experts": 5, "top_k": 2, "hidden_dim": 12}}"#,
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 8, "seed": 7,
            "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 6, "mem_heads": 1, "mem_knn": 3, "mem_k_dim": 4},
            "moe_args": {"layers": "0", "n_experts": 3, "top_k": 1, "hidden_dim": 9}}"#,
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

fn param_mut<'a>(w: &'a mut ModelWeights, name: &str) -> &'a mut Vec<f32> {
    w.tensor_mut(name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
}

#[test]
fn weights_round_trip_through_safetensors_and_reject_mismatches() {
    let w = weights(
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 11, "multiple_of": 8, "max_seqlen": 8,
        "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 6, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#,
    );
    let bytes = w.to_tensors().to_bytes().unwrap();
    let file = memlayers::io::TensorFile::from_bytes(&bytes, "test").unwrap();
    assert!(file.tensors.contains_key("layers.1.feed_forward.values.weight"));
    let back = ModelWeights::from_tensors(&w.config, &file).unwrap();
    assert_eq!(back.to_tensors().tensors, w.to_tensors().tensors);
    let mut missing = file.clone();
    missing.tensors.remove("layers.0.attention.wq.weight");
    let err = ModelWeights::from_tensors(&w.config, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers.0.attention.wq.weight"), "{err}");
    let mut extra = file.clone();
    extra.insert(
        "layers.9.ffn_norm.weight",
        memlayers::io::HostTensor::f32(vec![16], vec![1.0; 16]),
    );
    let err = ModelWeights::from_tensors(&w.config, &extra)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layers.9.ffn_norm.weight"), "{err}");
}

#[test]
fn model_backward_matches_finite_differences() {
    use memlayers::kernels::ops::CrossEntropy;
    use memlayers::oracle::forward_cpu_with_selections;
    let g = gpu();
    let configs = [
        r#"{"dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 13, "multiple_of": 8, "max_seqlen": 8, "seed": 5}"#,
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 11, "multiple_of": 8, "max_seqlen": 8, "seed": 6,
            "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 6, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#,
        // The loss here is the cross-entropy alone: no load-balancing term (its gradient is
        // checked against the reference in tests/moe.rs).
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 11, "multiple_of": 8, "max_seqlen": 8, "seed": 8,
            "moe_args": {"layers": "1", "n_experts": 4, "top_k": 2, "hidden_dim": 8, "aux_loss_coef": 0.0}}"#,
    ];
    // The memory-layer model again with its memory beside the dense block.
    let parallel = parallel_weights(configs[1]);
    for (i, json) in configs.iter().chain(&configs[1..2]).enumerate() {
        let mut w = match i {
            3 => parallel.clone(),
            _ => weights(json),
        };
        let c = w.config.clone();
        let (batch, seq) = (2, 5);
        let mut rng = Rng::new(21);
        let tokens: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(c.vocab as u64) as u32)
            .collect();
        let targets: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(c.vocab as u64) as u32)
            .collect();
        // Loss = sum over rows of cross-entropy (scale 1, so gradients are not tiny).
        let loss = |w: &ModelWeights| -> (f64, Vec<u32>) {
            let (logits, sel) = forward_cpu_with_selections(w, &tokens, batch, seq);
            let (mean, _) = ops::cross_entropy(&logits, &targets, c.vocab);
            (mean as f64 * (batch * seq) as f64, sel)
        };
        let model = Model::new(g, &w).unwrap();
        let (tb, target_buf) = (g.upload("tokens", &tokens), g.upload("targets", &targets));
        let rows = (batch * seq) as u32;
        let mut enc = g.device.create_command_encoder(&Default::default());
        let fwd = model
            .record_forward(g, &mut enc, &tb, batch as u32, seq as u32)
            .unwrap();
        let (loss_rows, d_logits) = (
            g.storage("loss", rows as u64 * 4),
            g.storage("dlogits", (rows as usize * c.vocab * 4) as u64),
        );
        CrossEntropy {
            rows,
            vocab: c.vocab as u32,
            scale: 1.0,
            logits: &fwd.logits,
            targets: &target_buf,
            loss: &loss_rows,
            grad: &d_logits,
        }
        .record(g, &mut enc)
        .unwrap();
        let grads = model.record_backward(g, &mut enc, &fwd, &d_logits).unwrap();
        g.queue.submit([enc.finish()]);
        let names: Vec<String> = w.named_tensors().iter().map(|(n, _, _)| n.clone()).collect();
        let grad_names: Vec<String> = grads.named.iter().map(|(n, _, _)| n.clone()).collect();
        assert_eq!(grad_names, names, "gradients named and ordered as the parameters");
        let (_, base_sel) = loss(&w);
        let mut checked = 0;
        for (name, buffer, len) in &grads.named {
            let analytic = g.read_f32_blocking(buffer, *len).unwrap();
            for _ in 0..6 {
                let i = rng.below(*len as u64) as usize;
                let eps = 1e-2f32;
                let old = param_mut(&mut w, name)[i];
                param_mut(&mut w, name)[i] = old + eps;
                let (plus, s1) = loss(&w);
                param_mut(&mut w, name)[i] = old - eps;
                let (minus, s2) = loss(&w);
                param_mut(&mut w, name)[i] = old;
                if s1 != base_sel || s2 != base_sel {
                    continue; // a memory top-k or an expert choice changed: not differentiable there
                }
                let fd = ((plus - minus) / (2.0 * eps as f64)) as f32;
                let a = analytic[i];
                assert!(
                    (fd - a).abs() <= 3e-3 + 3e-2 * a.abs(),
                    "{name}[{i}] of {json}: gpu gradient {a} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 4 * names.len(), "only {checked} coordinates checked");
    }
}

/// A model with grouped-query attention and a memory layer, for the KV cache tests.
const DECODING_MODEL: &str = r#"{"dim": 24, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 29, "multiple_of": 8, "max_seqlen": 12,
    "productkey_args": {"is_enabled": true, "layers": "0", "mem_n_keys": 7, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#;

#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    let g = gpu();
    let w = weights(DECODING_MODEL);
    let model = Model::new(g, &w).unwrap();
    let tokens: Vec<u32> = vec![3, 17, 4, 28, 0, 9, 9, 12, 5, 21, 1, 7];
    let v = w.config.vocab;
    let (full, _) = pollster::block_on(model.forward(g, &tokens, None, 1, tokens.len())).unwrap();
    let mut cache = model.new_cache(g);
    let prefill = pollster::block_on(model.forward_with_cache(g, &tokens[..5], &mut cache)).unwrap();
    assert_close("prefill logits", &prefill, &full[..5 * v]);
    for (i, &t) in tokens.iter().enumerate().skip(5) {
        let step = pollster::block_on(model.forward_with_cache(g, &[t], &mut cache)).unwrap();
        assert_close(&format!("decoded position {i}"), &step, &full[i * v..(i + 1) * v]);
    }
    assert_eq!(cache.len, 12);
    assert!(
        pollster::block_on(model.forward_with_cache(g, &[1], &mut cache)).is_err(),
        "cache full"
    );
}

/// A KV cache of f16 decodes what the f32 cache decodes, up to the keys' and values'
/// rounding to f16: a relative error of at most 2^-11 each, which moves these logits (of
/// order 1) by well under 1e-2.
#[test]
fn f16_kv_cache_decodes_close_to_the_f32_cache() {
    let g = gpu();
    let w = weights(DECODING_MODEL);
    let model = Model::new(g, &w).unwrap();
    let tokens: Vec<u32> = vec![3, 17, 4, 28, 0, 9, 9, 12, 5, 21, 1, 7];
    let (mut exact, mut half) = (model.new_cache(g), model.new_cache_f16(g));
    assert!(half.f16 && !exact.f16);
    let mut largest = 0.0f32;
    let mut differs = false;
    // The prompt's first five tokens at once, then one at a time.
    let steps = std::iter::once(&tokens[..5]).chain(tokens[5..].chunks(1));
    for (i, chunk) in steps.enumerate() {
        let a = pollster::block_on(model.forward_with_cache(g, chunk, &mut exact)).unwrap();
        let b = pollster::block_on(model.forward_with_cache(g, chunk, &mut half)).unwrap();
        for (x, y) in a.iter().zip(&b) {
            largest = largest.max((x - y).abs());
            differs |= x != y;
        }
        assert!(largest < 1e-2, "step {i}: logits differ by {largest}");
    }
    assert!(differs, "the rounding to f16 is real");
    assert_eq!(half.len, 12);
    assert!(pollster::block_on(model.forward_with_cache(g, &[1], &mut half)).is_err());
}

/// f16 activations (`Model::use_f16_activations`) round the feed-forward blocks' hidden
/// activations to f16 once each (a relative error of at most 2^-11 per value, the kernels
/// test the rounding itself), which moves these logits (of order 1) by well under 1e-2: on a
/// dense model and on one with a Memory+ layer, in a batch and in decoding, alone and with
/// f16 weights. Training refuses such a model.
#[test]
fn f16_activations_compute_close_to_f32_activations() {
    let g = gpu();
    for json in HALF_PRECISION_MODELS {
        let w = weights(json);
        let c = &w.config;
        let tokens: Vec<u32> = (0..12u32).map(|i| (i * 5 + 2) % c.vocab as u32).collect();
        let mut want = Vec::new();
        for with_f16_weights in [false, true] {
            // The same model with f32 activations, and with them f16.
            let (mut exact, mut half) = (Model::new(g, &w).unwrap(), Model::new(g, &w).unwrap());
            half.use_f16_activations(true);
            assert!(half.uses_f16_activations());
            if with_f16_weights {
                exact.use_f16_weights(g, &w).unwrap();
                half.use_f16_weights(g, &w).unwrap();
            }
            let (expected, _) = pollster::block_on(exact.forward(g, &tokens, None, 2, 6)).unwrap();
            if !with_f16_weights {
                want = expected.clone();
            }
            let name = format!("{json} f16 weights {with_f16_weights}");
            let (got, _) = pollster::block_on(half.forward(g, &tokens, None, 2, 6)).unwrap();
            let largest = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(largest < 1e-2, "{name}: logits differ by {largest}");
            assert!(largest > 0.0, "{name}: the rounding to f16 is real");
            let (mut ca, mut cb) = (half.new_cache(g), exact.new_cache(g));
            for &t in &tokens[..6] {
                let a = pollster::block_on(half.forward_with_cache(g, &[t], &mut ca)).unwrap();
                let b = pollster::block_on(exact.forward_with_cache(g, &[t], &mut cb)).unwrap();
                let largest = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(largest < 1e-2, "{name}: decoding differs by {largest}");
            }
        }
        // Off again: the f32 path's bits.
        let mut back = Model::new(g, &w).unwrap();
        back.use_f16_activations(true);
        back.use_f16_activations(false);
        let (again, _) = pollster::block_on(back.forward(g, &tokens, None, 2, 6)).unwrap();
        assert!(again.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let w = weights(
        r#"{"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 8}"#,
    );
    let mut trainer = memlayers::train::Trainer::new(g, &w, Default::default()).unwrap();
    trainer.model.use_f16_activations(true);
    assert!(trainer
        .submit_step(g, &[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4)
        .is_err());
}

/// The embedding's gradient as a GEMM against one-hot rows (small vocabularies) and through
/// the sparse sort (large ones) agree bit for bit, repeated tokens and unused ones included.
#[test]
fn token_gradient_paths_agree_bit_for_bit() {
    let g = gpu();
    let mut rng = Rng::new(8);
    for &(rows, vocab, d) in &[(1u32, 1u32, 1u32), (37, 11, 5), (300, 258, 32), (1000, 7, 3)] {
        let tokens: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
        let dh = rng.vec_normal((rows * d) as usize, 1.0);
        let (tb, db) = (g.upload("tokens", &tokens), g.upload("dh", &dh));
        let mut got = Vec::new();
        for dense in [true, false] {
            let mut enc = g.device.create_command_encoder(&Default::default());
            let grad =
                memlayers::model::record_token_grad(g, &mut enc, &tb, &db, (rows, vocab, d), Some(dense))
                    .unwrap();
            g.queue.submit([enc.finish()]);
            let v = g.read_f32_blocking(&grad, (vocab * d) as usize).unwrap();
            got.push(v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        }
        assert_eq!(got[0], got[1], "token gradient {rows} rows, vocab {vocab}, d {d}");
    }
}

/// The models the f16 weight and activation tests run: a dense one with grouped-query
/// attention, and one with a Memory+ layer.
const HALF_PRECISION_MODELS: [&str; 2] = [
    r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 50, "multiple_of": 16, "max_seqlen": 16}"#,
    r#"{"dim": 24, "n_layers": 2, "n_heads": 3, "vocab_size": 37, "multiple_of": 8, "max_seqlen": 16, "seed": 5,
        "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 10, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 8}}"#,
];

/// A model with f16 GEMM weights (`Model::use_f16_weights`) computes, bit for bit, what the
/// same model computes with f32 weights that are those f16 values: the kernels widen each
/// weight exactly and sum in the same order. Also in decoding with a KV cache, on a dense
/// model and on one with a memory layer (whose own weights stay f32), and training refuses it.
#[test]
fn f16_weights_compute_exactly_what_their_rounded_f32_weights_do() {
    let g = gpu();
    for json in HALF_PRECISION_MODELS {
        let w = weights(json);
        let mut rounded = w.clone();
        let gemm_weight = |name: &str| {
            name == "output.weight"
                || name.ends_with("query_proj.query_mlps.0.weight")
                || name.ends_with("swilu_projection.weight")
                || name.ends_with("value_proj.weight")
                || name.contains(".attention.w")
                || [".feed_forward.w1.", ".feed_forward.w2.", ".feed_forward.w3."]
                    .iter()
                    .any(|p| name.contains(p))
        };
        let names: Vec<String> = w.named_tensors().into_iter().map(|(n, _, _)| n).collect();
        let mut changed = 0;
        for name in names.iter().filter(|n| gemm_weight(n)) {
            for v in param_mut(&mut rounded, name) {
                *v = half::f16::from_f32(*v).to_f32();
            }
            changed += 1;
        }
        assert!(changed >= 7, "{json}: {changed} GEMM weights found by name");
        let mut half_model = Model::new(g, &w).unwrap();
        half_model.use_f16_weights(g, &w).unwrap();
        assert!(half_model.uses_f16_weights());
        let exact_model = Model::new(g, &rounded).unwrap();
        let c = &w.config;
        let tokens: Vec<u32> = (0..12u32).map(|i| (i * 7 + 3) % c.vocab as u32).collect();
        let (a, _) = pollster::block_on(half_model.forward(g, &tokens, None, 2, 6)).unwrap();
        let (b, _) = pollster::block_on(exact_model.forward(g, &tokens, None, 2, 6)).unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{json}: logits differ"
        );
        // and not what the f32 weights give (the rounding is real)
        let (f32_logits, _) =
            pollster::block_on(Model::new(g, &w).unwrap().forward(g, &tokens, None, 2, 6)).unwrap();
        assert!(a.iter().zip(&f32_logits).any(|(x, y)| x != y));
        let (mut ca, mut cb) = (half_model.new_cache(g), exact_model.new_cache(g));
        for &t in &tokens[..6] {
            let sa = pollster::block_on(half_model.forward_with_cache(g, &[t], &mut ca)).unwrap();
            let sb = pollster::block_on(exact_model.forward_with_cache(g, &[t], &mut cb)).unwrap();
            assert!(
                sa.iter().zip(&sb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{json}: decoding differs"
            );
        }
    }
    let w = weights(
        r#"{"dim": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 8}"#,
    );
    let mut trainer = memlayers::train::Trainer::new(g, &w, Default::default()).unwrap();
    trainer.model.use_f16_weights(g, &w).unwrap();
    assert!(trainer
        .submit_gradients(g, &[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4)
        .is_err());
    assert!(trainer
        .submit_step(g, &[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4)
        .is_err());
}

/// Skipping the frozen weights' gradients (what memory teaching reads: the value tables)
/// leaves every other gradient as it was, bit for bit.
#[test]
fn skipping_frozen_weight_gradients_keeps_the_others() {
    use memlayers::kernels::ops::CrossEntropy;
    let g = gpu();
    let w = parallel_weights(
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 11, "multiple_of": 8, "max_seqlen": 8, "seed": 6,
            "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 6, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#,
    );
    let model = Model::new(g, &w).unwrap();
    let tokens: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 11).collect();
    let targets: Vec<u32> = (0..10).map(|i| (i * 5 + 1) % 11).collect();
    let layout = model.layout();
    let values = layout.values.clone();
    let skipped: Vec<bool> = layout
        .registry
        .iter()
        .map(|(id, _)| !values.contains(&id))
        .collect();
    let grads_with = |skip: &[bool]| {
        let (tb, yb) = (g.upload("tokens", &tokens), g.upload("targets", &targets));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let fwd = model.record_forward(g, &mut enc, &tb, 2, 5).unwrap();
        let (loss, d_logits) = (g.storage("loss", 40), g.storage("d logits", 10 * 11 * 4));
        CrossEntropy {
            rows: 10,
            vocab: 11,
            scale: 0.1,
            logits: &fwd.logits,
            targets: &yb,
            loss: &loss,
            grad: &d_logits,
        }
        .record(g, &mut enc)
        .unwrap();
        let grads = model
            .record_backward_skipping(g, &mut enc, &fwd, &d_logits, true, skip)
            .unwrap();
        g.queue.submit([enc.finish()]);
        values
            .iter()
            .map(|&id| {
                let n = layout.registry.spec(id).len();
                g.read_f32_blocking(grads.grad(id), n)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<u32>>()
            })
            .collect::<Vec<_>>()
    };
    let (all, some) = (grads_with(&[]), grads_with(&skipped));
    assert_eq!(all, some);
    assert!(all[0].iter().any(|&b| b != 0), "the value table has a gradient");
}
