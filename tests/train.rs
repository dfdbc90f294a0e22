//! Training on the GPU: determinism, resuming, and overfitting a short text.

mod common;
use common::gpu;
use memlayers::model::{LMTransformerArgs, ModelWeights};
use memlayers::rng::Rng;
use memlayers::train::{ByteData, TrainConfig, Trainer};

const TINY: &str = r#"{"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 16,
    "max_seqlen": 16, "seed": 7,
    "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 16, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 16}}"#;

fn weights() -> ModelWeights {
    ModelWeights::init(&LMTransformerArgs::from_json(TINY).unwrap().resolve().unwrap()).unwrap()
}

fn bits(file: &memlayers::io::TensorFile) -> Vec<(String, Vec<u32>)> {
    file.tensors
        .iter()
        .map(|(n, t)| match &t.data {
            memlayers::io::TensorData::F32(v) => (n.clone(), v.iter().map(|x| x.to_bits()).collect()),
            memlayers::io::TensorData::I64(v) => (n.clone(), v.iter().map(|&x| x as u32).collect()),
        })
        .collect()
}

fn config(steps: u32) -> TrainConfig {
    TrainConfig {
        steps,
        lr: 3e-3,
        warmup: 5,
        value_lr: 1e-2,
        ..Default::default()
    }
}

const TEXT: &[u8] = b"the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs. \
how vexingly quick daft zebras jump! sphinx of black quartz, judge my vow. the five boxing wizards jump quickly.";

#[test]
fn same_seed_same_adapter_bit_identical_weights() {
    let g = gpu();
    let data = ByteData::new(TEXT, 16).unwrap();
    let run = |steps: usize| {
        let mut t = Trainer::new(g, &weights(), config(10)).unwrap();
        let mut rng = Rng::new(1);
        for _ in 0..steps {
            let (x, y) = ByteData::sample(&data.train, &mut rng, 4, 16);
            t.step_blocking(g, &x, &y, 4, 16).unwrap();
        }
        bits(&t.weights_blocking(g).unwrap())
    };
    let (a, b) = (run(3), run(3));
    assert_eq!(a, b);
    assert_ne!(a, bits(&weights().to_tensors()), "training changed the weights");
}

/// Weights optimised tensor by tensor (what a model too large for one flat binding gets) take
/// the same steps as the flat group, bit for bit, optimiser state included.
#[test]
fn weights_tensor_by_tensor_step_as_the_flat_group() {
    let g = gpu();
    let data = ByteData::new(TEXT, 16).unwrap();
    let run = |flat_weights: bool| {
        let mut t = Trainer::new(
            g,
            &weights(),
            TrainConfig {
                flat_weights,
                ..config(10)
            },
        )
        .unwrap();
        let mut rng = Rng::new(2);
        for _ in 0..3 {
            let (x, y) = ByteData::sample(&data.train, &mut rng, 4, 16);
            t.step_blocking(g, &x, &y, 4, 16).unwrap();
        }
        (
            bits(&t.weights_blocking(g).unwrap()),
            bits(&t.optimizer_state_blocking(g).unwrap()),
        )
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn resuming_continues_bit_identically() {
    let g = gpu();
    let data = ByteData::new(TEXT, 16).unwrap();
    let batches: Vec<(Vec<u32>, Vec<u32>)> = {
        let mut rng = Rng::new(2);
        (0..4)
            .map(|_| ByteData::sample(&data.train, &mut rng, 4, 16))
            .collect()
    };
    let mut straight = Trainer::new(g, &weights(), config(4)).unwrap();
    for (x, y) in &batches {
        straight.step_blocking(g, x, y, 4, 16).unwrap();
    }
    let mut first = Trainer::new(g, &weights(), config(4)).unwrap();
    for (x, y) in &batches[..2] {
        first.step_blocking(g, x, y, 4, 16).unwrap();
    }
    // Through bytes, as a checkpoint on disk would be.
    let w =
        memlayers::io::TensorFile::from_bytes(&first.weights_blocking(g).unwrap().to_bytes().unwrap(), "w")
            .unwrap();
    let o = memlayers::io::TensorFile::from_bytes(
        &first.optimizer_state_blocking(g).unwrap().to_bytes().unwrap(),
        "o",
    )
    .unwrap();
    let config_model = weights().config;
    let mut resumed = Trainer::new(
        g,
        &ModelWeights::from_tensors(&config_model, &w).unwrap(),
        config(4),
    )
    .unwrap();
    resumed.load_optimizer_state(g, &o).unwrap();
    assert_eq!(resumed.step, 2);
    for (x, y) in &batches[2..] {
        resumed.step_blocking(g, x, y, 4, 16).unwrap();
    }
    assert_eq!(
        bits(&resumed.weights_blocking(g).unwrap()),
        bits(&straight.weights_blocking(g).unwrap())
    );
}

#[test]
fn a_memory_model_overfits_a_short_text() {
    // The same 16-token window every step: its continuation is fully determined, so the
    // loss can go to zero (random windows of a text have an irreducible loss at the first
    // positions of each window, where little context is seen).
    let g = gpu();
    let text = b"memory layers at scale!";
    let x: Vec<u32> = text[..16].iter().map(|&b| b as u32).collect();
    let y: Vec<u32> = text[1..17].iter().map(|&b| b as u32).collect();
    let (xs, ys) = (x.repeat(2), y.repeat(2));
    let steps = 120;
    let fast = TrainConfig {
        lr: 1e-2,
        value_lr: 3e-2,
        ..config(steps)
    };
    let mut t = Trainer::new(g, &weights(), fast).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(t.step_blocking(g, &xs, &ys, 2, 16).unwrap());
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("loss {first} -> {last}");
    assert!(first > 4.0, "starts near ln(256) = 5.5, got {first}");
    assert!(last < 0.02, "did not overfit: loss {first} -> {last}");
}

#[test]
fn lazy_value_update_touches_only_rows_read() {
    let g = gpu();
    let data = ByteData::new(TEXT, 16).unwrap();
    let (x, y) = ByteData::sample(&data.train, &mut Rng::new(4), 2, 16);
    let values = |lazy: bool| {
        let mut t = Trainer::new(
            g,
            &weights(),
            TrainConfig {
                lazy_values: lazy,
                ..config(5)
            },
        )
        .unwrap();
        t.step_blocking(g, &x, &y, 2, 16).unwrap();
        match &t
            .weights_blocking(g)
            .unwrap()
            .get("layers.1.feed_forward.values.weight")
            .unwrap()
            .data
        {
            memlayers::io::TensorData::F32(v) => v.clone(),
            _ => unreachable!(),
        }
    };
    let (lazy, dense, before) = (values(true), values(false), weights().values().unwrap().to_vec());
    let v_dim = 32;
    let (mut read, mut unread) = (0, 0);
    for r in 0..before.len() / v_dim {
        let s = r * v_dim..(r + 1) * v_dim;
        if lazy[s.clone()] == before[s.clone()] {
            // Not read: lazy leaves it; the dense update still decays it.
            assert!(dense[s.clone()]
                .iter()
                .zip(&before[s])
                .all(|(d, b)| (d - b * (1.0 - 1e-2 * 0.1)).abs() < 1e-6));
            unread += 1;
        } else {
            // Read: both updates agree exactly.
            assert_eq!(lazy[s.clone()], dense[s]);
            read += 1;
        }
    }
    assert!(read > 0 && unread > 0, "read {read}, unread {unread}");
}
