//! The value table sharded by columns over several devices (several wgpu devices on one
//! adapter here): the forward, the backward and a run of training steps give the bits of one
//! device, and the table read back loads on any number of devices.

mod common;
use common::gpu;
use memlayers::kernels::adamw::AdamWStep;
use memlayers::kernels::columns::{copy_reference, record_copy, Columns};
use memlayers::memory::{
    shard_columns, MemoryConfig, MemoryLayer, MemoryWeights, ShardOptions, ShardedAdamW, ShardedValues,
    ValueDtype, ValuePool,
};
use memlayers::rng::Rng;
use memlayers::Gpu;
use std::sync::OnceLock;

/// Two more devices on the test adapter, beside `gpu()`.
fn devices() -> Vec<&'static Gpu> {
    static MORE: OnceLock<Vec<Gpu>> = OnceLock::new();
    let more = MORE.get_or_init(|| (0..2).map(|_| Gpu::new_blocking().unwrap()).collect());
    std::iter::once(gpu()).chain(more.iter()).collect()
}

fn config(v_dim: usize, swilu: bool, gated: bool, qk_norm: bool) -> MemoryConfig {
    MemoryConfig {
        d: 12,
        heads: 2,
        n_keys: 9,
        knn: 4,
        k_dim: 8,
        v_dim,
        swilu,
        value_proj: swilu || v_dim != 12,
        gated,
        peer: false,
        qk_norm,
    }
}

fn cases() -> Vec<MemoryConfig> {
    vec![
        config(12, false, false, false),
        config(13, true, false, false),
        config(16, true, true, true),
        config(7, false, true, false),
    ]
}

struct Setup {
    weights: MemoryWeights,
    values: Vec<f32>,
    x: Vec<f32>,
    d_out: Vec<f32>,
    rows: usize,
}

fn setup(c: &MemoryConfig, seed: u64, rows: usize) -> Setup {
    let mut rng = Rng::new(seed);
    let weights = MemoryWeights::init(c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(c, &mut rng);
    Setup {
        x: rng.vec_normal(rows * c.d, 1.0),
        d_out: rng.vec_normal(rows * c.out_dim(), 1.0),
        weights,
        values,
        rows,
    }
}

fn read(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<u32> {
    gpu.read_u32_blocking(b, n).unwrap()
}

fn same_bits(what: &str, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: element {i} differs: {} vs {} (one device)",
            f32::from_bits(got[i]),
            f32::from_bits(want[i])
        );
    }
}

#[test]
fn shards_are_contiguous_and_even() {
    assert_eq!(shard_columns(10, 3), vec![0..4, 4..7, 7..10]);
    assert_eq!(shard_columns(6, 2), vec![0..3, 3..6]);
    assert_eq!(shard_columns(5, 1), vec![0..5]);
}

#[test]
fn column_copies_match_the_reference() {
    let g = gpu();
    let mut rng = Rng::new(3);
    for &(rows, width, src_stride, src_first, dst_stride, dst_first) in &[
        (1, 1, 1, 0, 1, 0),
        (5, 3, 7, 2, 9, 6),
        (33, 16, 16, 0, 40, 24),
        (130, 5, 13, 8, 5, 0),
        (700, 64, 100, 36, 64, 0),
    ] {
        let src = rng.vec_normal(rows * src_stride, 1.0);
        let dst0 = rng.vec_normal(rows * dst_stride, 1.0);
        let (sb, db) = (g.upload("src", &src), g.upload("dst", &dst0));
        let mut encoder = g.device.create_command_encoder(&Default::default());
        record_copy(
            g,
            &mut encoder,
            Columns {
                buffer: &sb,
                stride: src_stride as u32,
                first: src_first as u32,
            },
            Columns {
                buffer: &db,
                stride: dst_stride as u32,
                first: dst_first as u32,
            },
            (rows as u32, width as u32),
        )
        .unwrap();
        g.queue.submit([encoder.finish()]);
        let mut want = dst0.clone();
        copy_reference(
            &src,
            (src_stride, src_first),
            &mut want,
            (dst_stride, dst_first),
            (rows, width),
        );
        let got = g.read_f32_blocking(&db, rows * dst_stride).unwrap();
        assert_eq!(got, want, "rows {rows} width {width}");
    }
    // Columns past the row are refused.
    let b = g.upload("b", &[0f32; 8]);
    let mut encoder = g.device.create_command_encoder(&Default::default());
    let cols = |first| Columns {
        buffer: &b,
        stride: 4,
        first,
    };
    assert!(record_copy(g, &mut encoder, cols(2), cols(0), (2, 3)).is_err());
}

#[test]
fn sharded_forward_and_backward_give_one_devices_bits() {
    let all = devices();
    for (i, c) in cases().iter().enumerate() {
        for devices in [2, 3] {
            matches_one_device(
                &all[..devices],
                c,
                40 + i as u64,
                &format!("case {i}, {devices} devices"),
            );
        }
    }
}

/// Devices of two back ends (wgpu's Vulkan and GL on lavapipe and llvmpipe here): run by
/// `scripts/test.sh` with `WGPU_BACKEND=vulkan,gl`, and fails where that lists one back end.
#[test]
#[ignore = "needs WGPU_BACKEND=vulkan,gl (scripts/test.sh runs it)"]
fn shards_on_two_back_ends_give_one_devices_bits() {
    let adapters = pollster::block_on(memlayers::gpu::all_adapters());
    let index_of = |backend| {
        adapters
            .iter()
            .position(|a| a.get_info().backend == backend)
            .unwrap_or_else(|| panic!("no {backend:?} adapter: run with WGPU_BACKEND=vulkan,gl"))
    };
    let vulkan = Gpu::on_adapter_blocking(index_of(wgpu::Backend::Vulkan)).unwrap();
    let gl = Gpu::on_adapter_blocking(index_of(wgpu::Backend::Gl)).unwrap();
    for (i, c) in cases().iter().enumerate() {
        matches_one_device(
            &[&vulkan, &gl],
            c,
            60 + i as u64,
            &format!("case {i}, Vulkan + GL"),
        );
        matches_one_device(
            &[&gl, &vulkan, &gl],
            c,
            70 + i as u64,
            &format!("case {i}, GL + Vulkan + GL"),
        );
    }
}

/// The sharded forward and backward over `gpus` against one device (`gpus[0]`), bit for bit.
fn matches_one_device(gpus: &[&Gpu], c: &MemoryConfig, seed: u64, label: &str) {
    let s = setup(c, seed, 37);
    let main = gpus[0];
    let layer = MemoryLayer::new(main, &s.weights).unwrap();
    let x = main.upload("x", &s.x);
    let d_out = main.upload("d_out", &s.d_out);
    let pool = ValuePool::new(main, &s.values, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
    let mut encoder = main.device.create_command_encoder(&Default::default());
    let acts = layer
        .record_forward(main, &mut encoder, &pool, &x, s.rows as u32)
        .unwrap();
    let grads = layer
        .record_backward(main, &mut encoder, &pool, &x, &acts, &d_out)
        .unwrap();
    main.queue.submit([encoder.finish()]);
    let n_out = s.rows * c.out_dim();
    let entries = s.rows * c.heads * c.knn;
    let want_values = pollster::block_on(grads.values.to_dense(main, c.n_values())).unwrap();
    let what = |name: &str| format!("{label}: {name}");
    let sharded = ShardedValues::new(
        gpus,
        &s.values,
        (c.n_values(), c.v_dim),
        ValueDtype::F32,
        ShardOptions::default(),
    )
    .unwrap();
    let (sa, relay) =
        pollster::block_on(layer.forward_sharded(gpus, &sharded, &x, s.rows as u32, None)).unwrap();
    assert!(relay.bytes() > 0);
    same_bits(
        &what("out"),
        &read(main, &sa.acts.out, n_out),
        &read(main, &acts.out, n_out),
    );
    same_bits(
        &what("bag"),
        &read(main, &sa.acts.bag, s.rows * c.v_dim),
        &read(main, &acts.bag, s.rows * c.v_dim),
    );
    same_bits(
        &what("slots"),
        &read(main, &sa.acts.indices, entries),
        &read(main, &acts.indices, entries),
    );
    let (sg, _) = pollster::block_on(layer.backward_sharded(gpus, &sharded, &x, &sa, &d_out)).unwrap();
    same_bits(
        &what("grad bag weights"),
        &read(main, &sg.grads.bag_weights, entries),
        &read(main, &grads.bag_weights, entries),
    );
    same_bits(
        &what("grad x"),
        &read(main, &sg.grads.x, s.rows * c.d),
        &read(main, &grads.x, s.rows * c.d),
    );
    for ((name, got), (_, want)) in sg.grads.named(c).into_iter().zip(grads.named(c)) {
        let n = (want.size() / 4) as usize;
        same_bits(&what(name), &read(main, got, n), &read(main, want, n));
    }
    for (shard, cols) in sharded.columns().iter().enumerate() {
        let got = pollster::block_on(sg.values[shard].to_dense(gpus[shard], c.n_values())).unwrap();
        let mut want = vec![0f32; c.n_values() * cols.len()];
        copy_reference(
            &want_values,
            (c.v_dim, cols.start),
            &mut want,
            (cols.len(), 0),
            (c.n_values(), cols.len()),
        );
        same_bits(
            &what(&format!("value grads of shard {shard}")),
            &bits(&got),
            &bits(&want),
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn f16_values_and_split_buffers_shard_alike() {
    let all = devices();
    let c = config(13, true, false, false);
    let s = setup(&c, 7, 21);
    let main = all[0];
    let layer = MemoryLayer::new(main, &s.weights).unwrap();
    let x = main.upload("x", &s.x);
    for (dtype, rows_per_chunk) in [(ValueDtype::F16, None), (ValueDtype::F32, Some(20))] {
        let pool = match rows_per_chunk {
            Some(r) => ValuePool::with_rows_per_chunk(main, &s.values, c.n_values(), c.v_dim, dtype, r),
            None => ValuePool::new(main, &s.values, c.n_values(), c.v_dim, dtype),
        }
        .unwrap();
        let want = layer.forward_blocking(main, &pool, &s.x, s.rows).unwrap();
        let gpus = &all[..3];
        let sharded = ShardedValues::new(
            gpus,
            &s.values,
            (c.n_values(), c.v_dim),
            dtype,
            ShardOptions {
                rows_per_chunk,
                max_device_bytes: None,
            },
        )
        .unwrap();
        let (sa, _) =
            pollster::block_on(layer.forward_sharded(gpus, &sharded, &x, s.rows as u32, None)).unwrap();
        let out = main
            .read_f32_blocking(&sa.acts.out, s.rows * c.out_dim())
            .unwrap();
        same_bits(&format!("{dtype:?} out"), &bits(&out), &bits(&want.out));
        let table = pollster::block_on(sharded.read(gpus)).unwrap();
        let single = pollster::block_on(pool.read(main)).unwrap();
        same_bits(&format!("{dtype:?} table"), &bits(&table), &bits(&single));
    }
}

#[test]
fn training_steps_on_shards_give_one_devices_table_and_resume_on_one() {
    let all = devices();
    let c = config(16, true, false, false);
    let s = setup(&c, 11, 29);
    let main = all[0];
    let layer = MemoryLayer::new(main, &s.weights).unwrap();
    let x = main.upload("x", &s.x);
    let d_out = main.upload("d_out", &s.d_out);
    let shape = (c.n_values(), c.v_dim);
    let step = |t| AdamWStep {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: t,
    };
    let train = |gpus: &[&Gpu]| -> Vec<f32> {
        let values =
            ShardedValues::new(gpus, &s.values, shape, ValueDtype::F32, ShardOptions::default()).unwrap();
        let adam = ShardedAdamW::new(gpus, &values).unwrap();
        for t in 1..=4 {
            let (acts, _) =
                pollster::block_on(layer.forward_sharded(gpus, &values, &x, s.rows as u32, None)).unwrap();
            let (grads, _) =
                pollster::block_on(layer.backward_sharded(gpus, &values, &x, &acts, &d_out)).unwrap();
            adam.step(gpus, &values, &grads, step(t)).unwrap();
        }
        pollster::block_on(values.read(gpus)).unwrap()
    };
    let one = train(&all[..1]);
    assert_ne!(one, s.values, "the steps changed the table");
    for devices in [2, 3] {
        let trained = train(&all[..devices]);
        same_bits(
            &format!("{devices} devices: table after 4 steps"),
            &bits(&trained),
            &bits(&one),
        );
        // Trained on several devices, the table runs on one.
        let pool = ValuePool::new(main, &trained, shape.0, shape.1, ValueDtype::F32).unwrap();
        let resumed = layer.forward_blocking(main, &pool, &s.x, s.rows).unwrap();
        assert!(resumed.out.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn bad_shardings_are_one_line_errors() {
    let all = devices();
    let c = config(12, false, false, false);
    let s = setup(&c, 5, 4);
    let shape = (c.n_values(), c.v_dim);
    let capped = |cap| ShardOptions {
        rows_per_chunk: None,
        max_device_bytes: Some(cap),
    };
    // Each shard holds 81 rows x 6 columns x 4 bytes = 1,944 bytes on two devices.
    let err = ShardedValues::new(&all[..1], &s.values, shape, ValueDtype::F32, capped(2000))
        .err()
        .expect("one device over the cap")
        .to_string();
    assert!(
        err.contains("MEMLAYERS_MAX_DEVICE_BYTES") && !err.contains('\n'),
        "{err}"
    );
    assert!(ShardedValues::new(&all[..2], &s.values, shape, ValueDtype::F32, capped(2000)).is_ok());
    let wide = ShardedValues::new(
        &all[..3],
        &s.values[..81 * 2],
        (81, 2),
        ValueDtype::F32,
        ShardOptions::default(),
    );
    assert!(wide
        .err()
        .unwrap()
        .to_string()
        .contains("3 devices for 2 value columns"));
    // A table sharded over two devices, used with three.
    let values = ShardedValues::new(
        &all[..2],
        &s.values,
        shape,
        ValueDtype::F32,
        ShardOptions::default(),
    )
    .unwrap();
    let layer = MemoryLayer::new(all[0], &s.weights).unwrap();
    let x = all[0].upload("x", &s.x);
    let err = pollster::block_on(layer.forward_sharded(&all[..3], &values, &x, 4, None))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("sharded over 2 devices, given 3"),
        "{err}"
    );
    // An adapter that does not exist.
    let err = Gpu::on_adapter_blocking(99).err().unwrap().to_string();
    assert!(err.contains("no adapter 99") && !err.contains('\n'), "{err}");
}

/// A model whose value tables are sharded gives one device's logits, loss, gradients, slot
/// counts and cached generation steps (the same plan twice: the sharded layer submits in the
/// middle of a planned pass).
#[test]
fn a_model_with_sharded_tables_gives_one_devices_logits() {
    use memlayers::model::{LMTransformerArgs, Model, ModelWeights};
    let main = gpu();
    let configs = [
        r#"{"dim": 24, "n_layers": 3, "n_heads": 3, "vocab_size": 37, "multiple_of": 8, "max_seqlen": 32,
            "productkey_args": {"is_enabled": true, "layers": "0,2", "mem_n_keys": 10, "mem_heads": 2, "mem_knn": 4, "mem_k_dim": 8}}"#,
        r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 20, "multiple_of": 8, "max_seqlen": 16, "seed": 3,
            "productkey_args": {"is_enabled": true, "layers": "0,1", "mem_n_keys": 6, "mem_heads": 1, "mem_knn": 3, "mem_k_dim": 4,
            "mem_share_values": false, "mem_gated": true}}"#,
    ];
    let mut rng = Rng::new(17);
    for json in configs {
        let config = LMTransformerArgs::from_json(json).unwrap().resolve().unwrap();
        let w = ModelWeights::init(&config).unwrap();
        let (batch, seq) = (2, 9);
        let tokens: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(config.vocab as u64) as u32)
            .collect();
        let targets: Vec<u32> = (0..batch * seq)
            .map(|_| rng.below(config.vocab as u64) as u32)
            .collect();
        let one = Model::new(main, &w).unwrap();
        let (want, want_loss) =
            pollster::block_on(one.forward(main, &tokens, Some(&targets), batch, seq)).unwrap();
        let mut cache = one.new_cache(main);
        let want_steps: Vec<Vec<f32>> = [&tokens[..5], &tokens[5..6], &tokens[6..7]]
            .iter()
            .map(|t| pollster::block_on(one.forward_last_with_cache(main, t, &mut cache)).unwrap())
            .collect();
        for others in [1, 2] {
            let more = (0..others).map(|_| Gpu::new_blocking().unwrap()).collect();
            let sharded = Model::new_sharded(main, more, &w, ShardOptions::default()).unwrap();
            for pass in 0..2 {
                let (got, loss) =
                    pollster::block_on(sharded.forward(main, &tokens, Some(&targets), batch, seq)).unwrap();
                let label = format!("{} devices, pass {pass}", others + 1);
                same_bits(&format!("{label}: logits"), &bits(&got), &bits(&want));
                assert_eq!(
                    loss.unwrap().to_bits(),
                    want_loss.unwrap().to_bits(),
                    "{label}: loss"
                );
            }
            // The backward: every parameter's gradient, the tables' joined from their shards.
            assert_eq!(
                gradients(&sharded, main, &tokens, &targets, (batch, seq)),
                gradients(&one, main, &tokens, &targets, (batch, seq)),
                "{} devices: gradients",
                others + 1
            );
            // Slot counts read the forward's lookups: the same counts.
            let counts = |m: &Model| {
                pollster::block_on(memlayers::model::SlotCounts::measure(
                    m, main, &tokens, None, seq, batch,
                ))
                .unwrap()
            };
            assert_eq!(counts(&sharded), counts(&one), "slot counts");
            let mut cache = sharded.new_cache(main);
            for (i, t) in [&tokens[..5], &tokens[5..6], &tokens[6..7]].iter().enumerate() {
                let got = pollster::block_on(sharded.forward_last_with_cache(main, t, &mut cache)).unwrap();
                same_bits(
                    &format!("{} devices: cached step {i}", others + 1),
                    &bits(&got),
                    &bits(&want_steps[i]),
                );
            }
            // The tables live on their shards, not among the trainable buffers.
            let listed = sharded.trainable_params().unwrap().len();
            let tables = sharded.sharded_tables().len();
            assert!(tables > 0 && listed + tables == one.trainable_params().unwrap().len());
        }
    }
}

/// Every parameter's gradient of the mean cross-entropy of `tokens` against `targets`, as
/// bits, by name.
fn gradients(
    model: &memlayers::model::Model,
    gpu: &Gpu,
    tokens: &[u32],
    targets: &[u32],
    (batch, seq): (usize, usize),
) -> Vec<(String, Vec<u32>)> {
    use memlayers::kernels::ops::CrossEntropy;
    let tb = gpu.upload("tokens", tokens);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let fwd = model
        .record_forward(gpu, &mut encoder, &tb, batch as u32, seq as u32)
        .unwrap();
    let (rows, vocab) = (fwd.rows, model.config.vocab as u32);
    let loss = gpu.storage("loss", rows as u64 * 4);
    let d_logits = gpu.storage("grad logits", rows as u64 * vocab as u64 * 4);
    let target_buffer = gpu.upload("targets", targets);
    CrossEntropy {
        rows,
        vocab,
        scale: 1.0 / rows as f32,
        logits: &fwd.logits,
        targets: &target_buffer,
        loss: &loss,
        grad: &d_logits,
    }
    .record(gpu, &mut encoder)
    .unwrap();
    let grads = model.record_backward(gpu, &mut encoder, &fwd, &d_logits).unwrap();
    gpu.queue.submit([encoder.finish()]);
    model
        .layout()
        .registry
        .iter()
        .map(|(id, spec)| {
            let g = pollster::block_on(model.read_gradient(gpu, &grads, id)).unwrap();
            (spec.name.clone(), bits(&g))
        })
        .collect()
}

/// Float bits of every tensor of a file, by name.
fn file_bits(file: &memlayers::io::TensorFile) -> Vec<(String, Vec<u32>)> {
    let mut v: Vec<(String, Vec<u32>)> = file
        .tensors
        .iter()
        .map(|(n, t)| match &t.data {
            memlayers::io::TensorData::F32(x) => (n.clone(), bits(x)),
            memlayers::io::TensorData::I64(x) => (n.clone(), x.iter().map(|&i| i as u32).collect()),
        })
        .collect();
    v.sort();
    v
}

/// A model trained with its value tables sharded: without clipping (the one sum whose order
/// differs) the weights, optimiser state and losses are one device's bits, densely and with
/// the lazy update; with clipping they agree to rounding; a table trained on two devices
/// resumes on one.
#[test]
fn training_a_sharded_model_gives_one_devices_weights() {
    use memlayers::model::{LMTransformerArgs, ModelWeights};
    use memlayers::train::{TrainConfig, Trainer};
    let main = gpu();
    let json = r#"{"dim": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 40, "multiple_of": 8, "max_seqlen": 16, "seed": 5,
        "productkey_args": {"is_enabled": true, "layers": "0,1", "mem_n_keys": 6, "mem_heads": 2, "mem_knn": 3, "mem_k_dim": 8}}"#;
    let config = LMTransformerArgs::from_json(json).unwrap().resolve().unwrap();
    let w = ModelWeights::init(&config).unwrap();
    let mut rng = Rng::new(23);
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..6)
        .map(|_| {
            let ids = |rng: &mut Rng| (0..2 * 8).map(|_| rng.below(40) as u32).collect::<Vec<u32>>();
            (ids(&mut rng), ids(&mut rng))
        })
        .collect();
    let train_config = |clip: f32, lazy: bool| TrainConfig {
        steps: 6,
        lr: 1e-2,
        warmup: 2,
        value_lr: 5e-2,
        clip,
        lazy_values: lazy,
        ..Default::default()
    };
    let run = |t: &mut Trainer, steps: std::ops::Range<usize>| -> Vec<u32> {
        steps
            .map(|i| {
                t.step_blocking(main, &batches[i].0, &batches[i].1, 2, 8)
                    .unwrap()
                    .to_bits()
            })
            .collect()
    };
    for lazy in [false, true] {
        let mut one = Trainer::new(main, &w, train_config(1e30, lazy)).unwrap();
        let losses = run(&mut one, 0..6);
        let weights = file_bits(&one.weights_blocking(main).unwrap());
        let state = file_bits(&one.optimizer_state_blocking(main).unwrap());
        for others in [1, 2] {
            let more = (0..others).map(|_| Gpu::new_blocking().unwrap()).collect();
            let mut t =
                Trainer::new_sharded(main, more, &w, train_config(1e30, lazy), ShardOptions::default())
                    .unwrap();
            let label = format!("{} devices, lazy {lazy}", others + 1);
            assert_eq!(run(&mut t, 0..6), losses, "{label}: losses");
            assert!(
                file_bits(&t.weights_blocking(main).unwrap()) == weights,
                "{label}: weights"
            );
            assert!(
                file_bits(&t.optimizer_state_blocking(main).unwrap()) == state,
                "{label}: optimiser state"
            );
        }
    }
    // With clipping active (at 1e-3: every step's norm is over it): the value group's norm
    // is summed in another order.
    let mut one = Trainer::new(main, &w, train_config(1e-3, false)).unwrap();
    run(&mut one, 0..6);
    let more = vec![Gpu::new_blocking().unwrap()];
    let mut two =
        Trainer::new_sharded(main, more, &w, train_config(1e-3, false), ShardOptions::default()).unwrap();
    run(&mut two, 0..6);
    // Listed rows must name every table, sharded ones included.
    let err = two.set_value_rows(Some(Vec::new())).unwrap_err().to_string();
    assert!(err.contains("no mask"), "{err}");
    let (a, b) = (
        one.weights_blocking(main).unwrap(),
        two.weights_blocking(main).unwrap(),
    );
    let mut largest = 0f32;
    for (name, t) in &a.tensors {
        let (memlayers::io::TensorData::F32(x), memlayers::io::TensorData::F32(y)) =
            (&t.data, &b.get(name).unwrap().data)
        else {
            panic!("{name}")
        };
        for (p, q) in x.iter().zip(y) {
            largest = largest.max((p - q).abs() / p.abs().max(1e-3));
        }
    }
    eprintln!("clipped: largest relative difference from one device {largest:e}");
    assert!(largest < 1e-4, "{largest}");
    // Trained on two devices for 3 steps, resumed on one for 3 more: one device's 6 steps.
    let mut first = Trainer::new_sharded(
        main,
        vec![Gpu::new_blocking().unwrap()],
        &w,
        train_config(1e30, false),
        ShardOptions::default(),
    )
    .unwrap();
    run(&mut first, 0..3);
    let saved = first.weights_blocking(main).unwrap();
    let state = first.optimizer_state_blocking(main).unwrap();
    let mut resumed = Trainer::new(
        main,
        &ModelWeights::from_tensors(&config, &saved).unwrap(),
        train_config(1e30, false),
    )
    .unwrap();
    resumed.load_optimizer_state(main, &state).unwrap();
    run(&mut resumed, 3..6);
    let mut straight = Trainer::new(main, &w, train_config(1e30, false)).unwrap();
    run(&mut straight, 0..6);
    assert!(
        file_bits(&resumed.weights_blocking(main).unwrap())
            == file_bits(&straight.weights_blocking(main).unwrap()),
        "resumed on one device"
    );
    // And the other way: 3 steps on one device, resumed on three.
    let mut first = Trainer::new(main, &w, train_config(1e30, false)).unwrap();
    run(&mut first, 0..3);
    let (saved, state) = (
        first.weights_blocking(main).unwrap(),
        first.optimizer_state_blocking(main).unwrap(),
    );
    let more = (0..2).map(|_| Gpu::new_blocking().unwrap()).collect();
    let mut resumed = Trainer::new_sharded(
        main,
        more,
        &ModelWeights::from_tensors(&config, &saved).unwrap(),
        train_config(1e30, false),
        ShardOptions::default(),
    )
    .unwrap();
    resumed.load_optimizer_state(main, &state).unwrap();
    run(&mut resumed, 3..6);
    assert!(
        file_bits(&resumed.weights_blocking(main).unwrap())
            == file_bits(&straight.weights_blocking(main).unwrap()),
        "resumed on three devices"
    );
}

/// A device lost in the middle of sharded work: the pass ends in a one-line error (no panic,
/// no results that look valid).
#[test]
fn a_device_lost_mid_pass_is_a_one_line_error() {
    let main = gpu();
    let c = config(12, true, false, false);
    let s = setup(&c, 31, 9);
    let lost = Gpu::new_blocking().unwrap();
    let devices = [main, &lost];
    let layer = MemoryLayer::new(main, &s.weights).unwrap();
    let x = main.upload("x", &s.x);
    let values = ShardedValues::new(
        &devices,
        &s.values,
        (c.n_values(), c.v_dim),
        ValueDtype::F32,
        ShardOptions::default(),
    )
    .unwrap();
    pollster::block_on(layer.forward_sharded(&devices, &values, &x, s.rows as u32, None)).unwrap();
    lost.device.destroy();
    let err = pollster::block_on(layer.forward_sharded(&devices, &values, &x, s.rows as u32, None))
        .err()
        .expect("a lost device is an error")
        .to_string();
    assert!(err.contains("lost") && !err.contains('\n'), "{err}");
}
