//! `memlayers bench --devices I,J,...`: the value table sharded over the first 1, 2, ... of
//! the listed devices. Three figures, each for every count, in one run on these adapters:
//! the largest table a per-device cap lets each count hold (built and run, not computed
//! only), the memory layer's forward tokens/s, and a training step of the demo's cpu-preset
//! memory layer with what it relays through the host (bytes and seconds), set against the
//! whole memory model's training step measured in the same run.

use memlayers::kernels::adamw::AdamWStep;
use memlayers::memory::{
    max_device_bytes_from_env, shard_bytes, MemoryConfig, MemoryLayer, MemoryWeights, Relay, ShardOptions,
    ShardedAdamW, ShardedValues, ValueDtype,
};
use memlayers::model::{LMTransformerArgs, ModelWeights};
use memlayers::rng::Rng;
use memlayers::train::{TrainConfig, Trainer};
use memlayers::{Gpu, Result};
use std::time::Instant;

pub struct Options {
    pub devices: Vec<usize>,
    pub quick: bool,
    pub tokens: usize,
    pub iters: usize,
}

/// The per-device cap of the capacity figure when `MEMLAYERS_MAX_DEVICE_BYTES` is not set.
const DEFAULT_CAP: u64 = 64 << 20;

/// The demo's cpu-preset memory model (`memlayers demo --preset cpu`) and its batch.
const DEMO_CPU_MODEL: &str = r#"{"dim": 32, "n_layers": 2, "n_heads": 1, "vocab_size": 256, "multiple_of": 32, "max_seqlen": 48, "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 96, "mem_heads": 2, "mem_knn": 16, "mem_k_dim": 20}}"#;
const DEMO_CPU_BATCH: (usize, usize) = (32, 48);

pub fn run(o: &Options) -> Result<()> {
    let gpus = super::super::devices::open(Some(&o.devices))?;
    for (i, (gpu, index)) in gpus.iter().zip(&o.devices).enumerate() {
        println!("device {i}: adapter {index}, {}", gpu.adapter_name());
    }
    let all: Vec<&Gpu> = gpus.iter().collect();
    let counts: Vec<usize> = (1..=all.len()).collect();
    let paper = MemoryConfig::memory_plus(1024);
    let small = MemoryConfig {
        n_keys: 128,
        knn: 16,
        k_dim: 128,
        ..MemoryConfig::memory_plus(256)
    };
    capacity(&all, &counts, &paper, o)?;
    let (name, shape) = if o.quick {
        ("small d=256 n_keys=128 knn=16 k_dim=128", small)
    } else {
        ("paper d=1024 n_keys=1024 knn=32 k_dim=512", paper)
    };
    println!(
        "\nforward of {} tokens, {name}, f32 values, {} timed passes",
        o.tokens, o.iters
    );
    let table = pattern(shape.n_values() * shape.v_dim);
    let layer_weights = MemoryWeights::init(&shape, &mut Rng::new(1))?;
    let mut one = None;
    for &k in &counts {
        let (tokens_per_s, relay) = forward_rate(&all[..k], &shape, &layer_weights, &table, o)?;
        let base = *one.get_or_insert(tokens_per_s);
        println!(
            "  {k} device(s): {tokens_per_s:.0} tokens/s ({:.2}x one device), relayed {:.2} MB in {:.2} ms a pass",
            tokens_per_s / base,
            relay.bytes() as f64 / 1e6,
            relay.seconds * 1e3
        );
    }
    drop(table);
    training(&all, &counts, o)
}

/// Values for speed figures: the bag's speed does not depend on them, and a pattern is
/// written far faster than normal draws (the paper's table holds a billion).
fn pattern(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 20) as f32 / 4096.0 - 0.5)
        .collect()
}

/// The largest table of `config`'s shape each count of devices holds under the cap: the
/// most rows whose widest shard fits, as n_keys^2. Each is built, run once and its neighbour
/// one key larger refused.
fn capacity(all: &[&Gpu], counts: &[usize], config: &MemoryConfig, o: &Options) -> Result<()> {
    let cap = max_device_bytes_from_env()?.unwrap_or(DEFAULT_CAP);
    println!(
        "\nlargest table under a cap of {:.1} MiB a device ({}), v_dim {}, f32 values:",
        cap as f64 / (1 << 20) as f64,
        if max_device_bytes_from_env()?.is_some() {
            "MEMLAYERS_MAX_DEVICE_BYTES"
        } else {
            "the default; MEMLAYERS_MAX_DEVICE_BYTES sets another"
        },
        config.v_dim
    );
    let options = ShardOptions {
        rows_per_chunk: None,
        max_device_bytes: Some(cap),
    };
    let mut first = None;
    for &k in counts {
        let widest = config.v_dim.div_ceil(k);
        let rows = (cap / shard_bytes(1, widest, ValueDtype::F32)) as usize;
        let n_keys = rows.isqrt();
        let c = MemoryConfig {
            n_keys,
            ..config.clone()
        };
        let weights = MemoryWeights::init(&c, &mut Rng::new(2))?;
        let table = pattern(c.n_values() * c.v_dim);
        let values = ShardedValues::new(
            &all[..k],
            &table,
            (c.n_values(), c.v_dim),
            ValueDtype::F32,
            options,
        )?;
        let layer = MemoryLayer::new(all[0], &weights)?;
        let x = all[0].upload("input", &pattern(o.tokens.min(64) * c.d));
        let (acts, _) =
            pollster::block_on(layer.forward_sharded(&all[..k], &values, &x, o.tokens.min(64) as u32, None))?;
        all[0].read_f32_blocking(&acts.acts.out, 1)?;
        drop(values);
        let larger = (n_keys + 1) * (n_keys + 1);
        let refused = shard_bytes(larger, widest, ValueDtype::F32) > cap;
        let base = *first.get_or_insert(c.n_values());
        println!(
            "  {k} device(s): n_keys {n_keys}, {} values ({:.2}x one device), {:.1} MiB a device, ran a forward; n_keys {} {}",
            c.n_values(),
            c.n_values() as f64 / base as f64,
            shard_bytes(c.n_values(), widest, ValueDtype::F32) as f64 / (1 << 20) as f64,
            n_keys + 1,
            if refused { "is over the cap" } else { "would fit (a rounding of the square)" }
        );
    }
    Ok(())
}

/// Forward tokens/s over `devices` after a warm-up pass (wall time, each pass read back),
/// and what the last pass relayed.
fn forward_rate(
    devices: &[&Gpu],
    c: &MemoryConfig,
    weights: &MemoryWeights,
    table: &[f32],
    o: &Options,
) -> Result<(f64, Relay)> {
    let values = ShardedValues::new(
        devices,
        table,
        (c.n_values(), c.v_dim),
        ValueDtype::F32,
        ShardOptions::default(),
    )?;
    let layer = MemoryLayer::new(devices[0], weights)?;
    let x = devices[0].upload("input", &pattern(o.tokens * c.d));
    let pass = || -> Result<Relay> {
        let (acts, relay) =
            pollster::block_on(layer.forward_sharded(devices, &values, &x, o.tokens as u32, None))?;
        devices[0].read_f32_blocking(&acts.acts.out, 1)?;
        Ok(relay)
    };
    pass()?;
    let start = Instant::now();
    let mut relay = Relay::default();
    for _ in 0..o.iters {
        relay = pass()?;
    }
    Ok(((o.tokens * o.iters) as f64 / start.elapsed().as_secs_f64(), relay))
}

/// The demo's cpu-preset memory layer trained (forward, backward, AdamW on its values) over
/// each count of devices, against the whole memory model's step on device 0.
fn training(all: &[&Gpu], counts: &[usize], o: &Options) -> Result<()> {
    let config = LMTransformerArgs::from_json(DEMO_CPU_MODEL)?.resolve()?;
    let c = config.memory.clone().expect("the demo's model has a memory");
    let (batch, seq) = DEMO_CPU_BATCH;
    let rows = batch * seq;
    let model_step = model_step_seconds(all[0], Vec::new(), &config, o.iters)?;
    println!(
        "\ntraining, the demo's cpu preset (batch {batch} x {seq}; memory n_keys {}, heads {}, knn {}, v_dim {}), {} timed steps",
        c.n_keys, c.heads, c.knn, c.v_dim, o.iters
    );
    println!(
        "  the memory model's whole training step on device 0: {:.1} ms",
        model_step * 1e3
    );
    let mut rng = Rng::new(5);
    let weights = MemoryWeights::init(&c, &mut rng)?;
    let table = MemoryWeights::init_values(&c, &mut rng);
    let x = rng.vec_normal(rows * c.d, 1.0);
    let d_out = rng.vec_normal(rows * c.out_dim(), 1e-3);
    let step = |t| AdamWStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: t,
    };
    let mut one = None;
    for &k in counts {
        let devices = &all[..k];
        let values = ShardedValues::new(
            devices,
            &table,
            (c.n_values(), c.v_dim),
            ValueDtype::F32,
            ShardOptions::default(),
        )?;
        let adam = ShardedAdamW::new(devices, &values)?;
        let layer = MemoryLayer::new(devices[0], &weights)?;
        let (xb, db) = (
            devices[0].upload("input", &x),
            devices[0].upload("grad output", &d_out),
        );
        let layer_step = |t| -> Result<Relay> {
            let (acts, r1) =
                pollster::block_on(layer.forward_sharded(devices, &values, &xb, rows as u32, None))?;
            let (grads, r2) = pollster::block_on(layer.backward_sharded(devices, &values, &xb, &acts, &db))?;
            adam.step(devices, &values, &grads, step(t))?;
            for gpu in devices {
                gpu.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| memlayers::Error::Device(format!("poll failed: {e}")))?;
            }
            let mut relay = r1;
            relay += r2;
            Ok(relay)
        };
        layer_step(1)?;
        let start = Instant::now();
        let mut relay = Relay::default();
        for t in 0..o.iters {
            relay += layer_step(t as u32 + 2)?;
        }
        let n = o.iters as f64;
        let seconds = start.elapsed().as_secs_f64() / n;
        let base = *one.get_or_insert(seconds);
        println!(
            "  {k} device(s): the layer's step {:.1} ms ({:.2}x one device's time); relayed {:.2} MB a step in {:.2} ms = {:.1}% of the memory model's step (target <= 25% on 2 devices)",
            seconds * 1e3,
            seconds / base,
            relay.bytes() as f64 / n / 1e6,
            relay.seconds / n * 1e3,
            100.0 * relay.seconds / n / model_step
        );
    }
    println!("  the memory model's whole training step with its table sharded (Trainer::new_sharded):");
    for &k in counts {
        let others = super::super::devices::open_each(&o.devices[1..k])?;
        let seconds = model_step_seconds(all[0], others, &config, o.iters)?;
        println!(
            "    {k} device(s): {:.1} ms a step, {:.0} tokens/s ({:.2}x one device's time)",
            seconds * 1e3,
            rows as f64 / seconds,
            seconds / model_step
        );
    }
    Ok(())
}

/// Seconds a training step of `config`'s model takes on `gpu` (the trainer's planned steps,
/// each waited for), after a warm-up step.
fn model_step_seconds(
    gpu: &Gpu,
    others: Vec<Gpu>,
    config: &memlayers::model::ModelConfig,
    iters: usize,
) -> Result<f64> {
    let weights = ModelWeights::init(config)?;
    let mut trainer = match others.is_empty() {
        true => Trainer::new(gpu, &weights, TrainConfig::default())?,
        false => Trainer::new_sharded(
            gpu,
            others,
            &weights,
            TrainConfig::default(),
            ShardOptions::default(),
        )?,
    };
    let (batch, seq) = DEMO_CPU_BATCH;
    let mut rng = Rng::new(3);
    let mut tokens = || {
        (0..batch * seq)
            .map(|_| rng.below(256) as u32)
            .collect::<Vec<u32>>()
    };
    let (x, y) = (tokens(), tokens());
    trainer.step_blocking(gpu, &x, &y, batch, seq)?;
    let start = Instant::now();
    for _ in 0..iters {
        let (x, y) = (tokens(), tokens());
        trainer.step_blocking(gpu, &x, &y, batch, seq)?;
    }
    Ok(start.elapsed().as_secs_f64() / iters as f64)
}
