//! `memlayers bench --train`: training steps of a dense model and the same model with a
//! memory layer (and the demo's presets), tokens/s, host time with and without step plans,
//! allocations per step and the kernels with the largest share of a step.

use super::Options;
use super::{median, HOST_SAMPLES};
use memlayers::gpu::KernelTiming;
use memlayers::kernels::Gpu;
use memlayers::rng::Rng;
use memlayers::Result;
use std::time::Instant;

/// Steps per timing window of `bench --train`: shared machines slow down for stretches of a
/// second or so, so besides the mean the benchmark reports the median window.
const TRAIN_WINDOW: usize = 10;

/// Training tokens/s of a small dense model and of the same model with its middle
/// feed-forward block replaced by a memory layer, on the same adapter, in the same run.
/// One model's training throughput (tokens/s, wall) and where a step's GPU time goes.
struct TrainRun {
    /// Over all timed steps (wall clock).
    tokens_per_s: f64,
    /// The median of the windows of `TRAIN_WINDOW` steps, and how many windows.
    median_tokens_per_s: f64,
    windows: usize,
    params: usize,
    flops: f64,
    top: Vec<(String, f64)>,
    /// Buffers, bind groups and dispatches per step after the warm-up step.
    per_step: memlayers::gpu::Counts,
    /// Compute passes of one step by kernel label, most first.
    passes: Vec<(String, usize)>,
    /// Host seconds per step (encode + submit), through the step plan and without one.
    host_seconds: (f64, f64),
    /// The encoding's part of those (recording and `finish`, without the submission).
    encode_seconds: (f64, f64),
    /// Tokens/s of steps recorded without a plan, each waited for (the loss read back).
    unplanned_tokens_per_s: f64,
    /// Buffers and bind groups a step recorded without a plan creates.
    unplanned_per_step: (u64, u64),
}

fn train_run(
    gpu: &Gpu,
    json: &str,
    lazy_values: bool,
    (batch, seq): (usize, usize),
    iters: usize,
) -> Result<TrainRun> {
    use memlayers::model::{LMTransformerArgs, ModelWeights};
    use memlayers::train::{TrainConfig, Trainer};
    let config = LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = ModelWeights::init(&config)?;
    let train = TrainConfig {
        lazy_values,
        ..Default::default()
    };
    let mut trainer = Trainer::new(gpu, &weights, train)?;
    let mut rng = Rng::new(3);
    let mut batch_of = || {
        let x: Vec<u32> = (0..batch * seq).map(|_| rng.below(256) as u32).collect();
        let y: Vec<u32> = (0..batch * seq).map(|_| rng.below(256) as u32).collect();
        (x, y)
    };
    let (x, y) = batch_of();
    // A warm-up step, then steps submitted back to back through the trainer's step plan, in
    // windows of TRAIN_WINDOW steps, each window's last loss read back (so each window's time
    // is its steps' own).
    trainer.step_blocking(gpu, &x, &y, batch, seq)?;
    let before = gpu.counts();
    let t = Instant::now();
    let mut windows = Vec::new();
    let mut done = 0;
    while done < iters {
        let steps = TRAIN_WINDOW.min(iters - done);
        let w = Instant::now();
        for _ in 0..steps {
            let (x, y) = batch_of();
            trainer.submit_step(gpu, &x, &y, batch, seq)?;
        }
        trainer.last_loss_blocking(gpu)?;
        windows.push((steps * batch * seq) as f64 / w.elapsed().as_secs_f64());
        done += steps;
    }
    let tokens_per_s = (iters * batch * seq) as f64 / t.elapsed().as_secs_f64();
    let median_tokens_per_s = median(windows.clone());
    let per_step = (gpu.counts() - before).per(iters as u64);
    // Host time of a step (encode + submit), each submitted to an idle GPU: a submit that
    // finds the queue busy may wait for it (lavapipe's does), which is not host work.
    let (mut host, mut encode) = (Vec::with_capacity(HOST_SAMPLES), Vec::with_capacity(HOST_SAMPLES));
    for _ in 0..HOST_SAMPLES {
        let (x, y) = batch_of();
        let h = Instant::now();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        trainer.record_planned_step(gpu, &mut encoder, &x, &y, batch, seq)?;
        let command_buffer = encoder.finish();
        encode.push(h.elapsed().as_secs_f64());
        gpu.queue.submit([command_buffer]);
        host.push(h.elapsed().as_secs_f64());
        trainer.last_loss_blocking(gpu)?;
    }
    // The same steps recorded without a plan (every buffer, parameter block and bind group
    // created anew) and waited for one by one, as before step plans.
    let unplanned_before = gpu.counts();
    let (t, mut host_unplanned) = (Instant::now(), Vec::with_capacity(HOST_SAMPLES));
    let mut encode_unplanned = Vec::with_capacity(HOST_SAMPLES);
    for _ in 0..HOST_SAMPLES {
        let (x, y) = batch_of();
        let counted = y.len() as u32;
        let h = Instant::now();
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let (tb, gb) = (gpu.upload("tokens", &x), gpu.upload("targets", &y));
        let loss = trainer.record_step(gpu, &mut encoder, &tb, &gb, batch as u32, seq as u32, counted)?;
        let command_buffer = encoder.finish();
        encode_unplanned.push(h.elapsed().as_secs_f64());
        gpu.queue.submit([command_buffer]);
        host_unplanned.push(h.elapsed().as_secs_f64());
        gpu.read_f32_blocking(&loss, batch * seq)?;
    }
    let unplanned_tokens_per_s = (HOST_SAMPLES * batch * seq) as f64 / t.elapsed().as_secs_f64();
    let u = gpu.counts() - unplanned_before;
    let u = u.per(HOST_SAMPLES as u64);
    let unplanned_per_step = (u.buffers, u.bind_groups);
    // Where one step's GPU time goes, by pass label (timestamp queries).
    let (x, y) = batch_of();
    gpu.start_profiling(2048)?;
    trainer.step_blocking(gpu, &x, &y, batch, seq)?;
    let timings = pollster::block_on(gpu.finish_profiling())?;
    let mut top: Vec<(String, f64)> = KernelTiming::per_label(&timings, 1)
        .into_iter()
        .map(|(l, s)| (l.to_string(), s))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut passes: Vec<(String, usize)> = Vec::new();
    for t in &timings {
        match passes.iter_mut().find(|(l, _)| l == t.label) {
            Some((_, n)) => *n += 1,
            None => passes.push((t.label.to_string(), 1)),
        }
    }
    passes.sort_by_key(|p| std::cmp::Reverse(p.1));
    Ok(TrainRun {
        passes,
        tokens_per_s,
        median_tokens_per_s,
        windows: windows.len(),
        params: weights.parameter_count(),
        flops: config.flops_per_token(seq)?,
        top,
        per_step,
        host_seconds: (median(host), median(host_unplanned)),
        encode_seconds: (median(encode), median(encode_unplanned)),
        unplanned_tokens_per_s,
        unplanned_per_step,
    })
}

fn print_train_run(name: &str, r: &TrainRun, all_kernels: bool) {
    let total: f64 = r.top.iter().map(|k| k.1).sum();
    let top: Vec<String> = if all_kernels {
        r.top
            .iter()
            .map(|(l, s)| format!("{l} {:.2} ms", s * 1e3))
            .collect()
    } else {
        r.top
            .iter()
            .take(6)
            .map(|(l, s)| format!("{l} {:.0}%", 100.0 * s / total))
            .collect()
    };
    println!(
        "{name:<27} {:>9} params  {:>6.2} MFLOP/token  {:>8.0} training tokens/s",
        r.params,
        r.flops / 1e6,
        r.tokens_per_s
    );
    println!(
        "  median of {} windows of {TRAIN_WINDOW} steps: {:.0} training tokens/s",
        r.windows, r.median_tokens_per_s
    );
    println!(
        "  GPU time of one step: {:.0} ms; {}: {}",
        total * 1e3,
        if all_kernels { "by kernel" } else { "largest" },
        top.join(", ")
    );
    let c = r.per_step;
    println!(
        "  allocations per step after warm-up: {} buffers, {} bind groups",
        c.buffers, c.bind_groups
    );
    println!(
        "  (a step recorded without the step plan creates {} buffers, {} bind groups)",
        r.unplanned_per_step.0, r.unplanned_per_step.1
    );
    println!("  dispatches per step: {}", c.dispatches);
    let passes: Vec<String> = r.passes.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!("  compute passes by kernel: {}", passes.join(", "));
    let (planned, unplanned) = r.host_seconds;
    println!(
        "  host time per step (encode + submit, median): {:.2} ms with the step plan, {:.2} ms without ({:.1}x less); \
without the plan and waiting each step: {:.0} tokens/s ({:.2}x)",
        planned * 1e3,
        unplanned * 1e3,
        unplanned / planned,
        r.unplanned_tokens_per_s,
        r.tokens_per_s / r.unplanned_tokens_per_s
    );
    let (planned, unplanned) = r.encode_seconds;
    println!(
        "  of which encoding (record + finish, median): {:.2} ms with the step plan, {:.2} ms without ({:.1}x less)",
        planned * 1e3,
        unplanned * 1e3,
        unplanned / planned
    );
}

pub fn train_bench(gpu: &mut Gpu, o: &Options) -> Result<()> {
    let base =
        r#""dim": 128, "n_layers": 4, "n_heads": 4, "vocab_size": 256, "multiple_of": 64, "max_seqlen": 64"#;
    let memory = r#", "productkey_args": {"is_enabled": true, "layers": "2", "mem_n_keys": 64, "mem_heads": 2, "mem_knn": 16, "mem_k_dim": 64}"#;
    println!("training, batch 8 x 64 tokens, {} timed steps each", o.iters);
    let mut results = Vec::new();
    let runs = [
        ("dense", format!("{{{base}}}"), false),
        ("memory", format!("{{{base}{memory}}}"), false),
        ("memory, lazy value update", format!("{{{base}{memory}}}"), true),
    ];
    for (name, json, lazy_values) in runs {
        let r = train_run(gpu, &json, lazy_values, (8, 64), o.iters)?;
        print_train_run(name, &r, o.all_kernels);
        results.push(r.tokens_per_s);
    }
    println!(
        "memory / dense training throughput: {:.2}x",
        results[1] / results[0]
    );
    println!("lazy / full value update: {:.2}x", results[2] / results[1]);
    if o.quick {
        return Ok(());
    }
    // The demo's cpu-preset models (`memlayers demo --preset cpu`), with this adapter's kernel
    // variants and with the per-invocation variants (top-k, RMSNorm, bag rows) turned off,
    // in the same run.
    let base =
        r#""dim": 32, "n_layers": 2, "n_heads": 1, "vocab_size": 256, "multiple_of": 32, "max_seqlen": 48"#;
    let memory = r#", "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 96, "mem_heads": 2, "mem_knn": 16, "mem_k_dim": 20}"#;
    println!(
        "\nthe demo's cpu preset, batch 32 x 48 tokens, {} timed steps each",
        o.iters
    );
    let tuning = gpu.tuning();
    let workgroups = memlayers::kernels::Tuning {
        topk_per_invocation: false,
        norm_rows: false,
        bag_rows: false,
        ..tuning
    };
    let mut by_model = Vec::new();
    for (name, json) in [
        ("dense", format!("{{{base}}}")),
        ("memory", format!("{{{base}{memory}}}")),
    ] {
        let r = train_run(gpu, &json, false, (32, 48), o.iters)?;
        print_train_run(name, &r, o.all_kernels);
        let mut ratio = None;
        if workgroups != tuning {
            gpu.set_tuning(workgroups);
            let w = train_run(gpu, &json, false, (32, 48), o.iters);
            gpu.set_tuning(tuning);
            let w = w?;
            print_train_run(&format!("{name}, workgroup variants"), &w, o.all_kernels);
            ratio = Some(r.tokens_per_s / w.tokens_per_s);
        }
        by_model.push((name, r.tokens_per_s, ratio));
    }
    println!(
        "memory / dense training throughput: {:.2}x",
        by_model[1].1 / by_model[0].1
    );
    for (name, _, ratio) in by_model {
        if let Some(x) = ratio {
            println!("{name}: this adapter's variants / workgroup variants: {x:.2}x");
        }
    }
    // The demo's gpu-preset models (`memlayers demo --preset gpu`), on GPUs only (minutes of a
    // CPU adapter's time).
    println!(
        "\nthe demo's gpu preset, batch 128 x 48 tokens, {} timed steps each",
        o.iters
    );
    if gpu
        .adapter_info()
        .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
    {
        println!("  skipped on a CPU adapter");
        return Ok(());
    }
    let base =
        r#""dim": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 256, "multiple_of": 32, "max_seqlen": 48"#;
    let memory = r#", "productkey_args": {"is_enabled": true, "layers": "1", "mem_n_keys": 128, "mem_heads": 4, "mem_knn": 16, "mem_k_dim": 32}"#;
    for (name, json) in [
        ("dense", format!("{{{base}}}")),
        ("memory", format!("{{{base}{memory}}}")),
    ] {
        let r = train_run(gpu, &json, false, (128, 48), o.iters)?;
        print_train_run(name, &r, o.all_kernels);
    }
    Ok(())
}
