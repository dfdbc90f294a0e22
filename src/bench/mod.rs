//! `memlayers bench`: speed of the memory layer's forward pass and of training on this
//! adapter, with the yardsticks it is measured against (`kernels::yardsticks`: the adapter's
//! bandwidth and its arithmetic ceiling) and the reference layer in PyTorch when it can run.
//! Behind the `bench` feature (on by default): not part of the library's core.
//!
//! Every figure comes from this run, on this adapter: GPU time per kernel from timestamp
//! queries (averaged over the timed repetitions), tokens/s from wall time including submission
//! and synchronisation, the matmul's GFLOP/s (also as a share of multiply-adds on registers,
//! the adapter's arithmetic ceiling), and the embedding bag's effective bandwidth set
//! next to a plain copy kernel's bandwidth measured in the same process (a ratio, because
//! absolute numbers on shared machines are noisy).

use crate::error::Result;
use crate::gpu::KernelTiming;
use crate::kernels;
use crate::kernels::linear::{GemmKernel, GemmPrecision, GemmTile};
use crate::kernels::yardsticks::{copy, fma_peak};
use crate::kernels::Gpu;
use crate::memory::{ForwardWorkload, MemoryConfig, ValueDtype, ValuePool};
use crate::rng::Rng;
use std::time::Instant;

pub struct Options {
    /// Benchmark training (dense vs memory model) instead of the memory layer's forward.
    pub train: bool,
    pub quick: bool,
    pub tokens: usize,
    pub iters: usize,
    /// Print every kernel's GPU time per training step, not only the six largest shares.
    pub all_kernels: bool,
}

/// The reference layer in plain PyTorch (`scripts/torch_memory_forward_bench.py`), run by
/// the benchmark in the same run when `python3` can import torch.
const TORCH_BENCH: &str = include_str!("../../scripts/torch_memory_forward_bench.py");

/// Runs a Python `script` (given on stdin) with `args` under `MEMLAYERS_PYTHON` (default
/// `python3`): its stdout, or why there is none (the last line of its stderr, such as torch
/// not importing). The PyTorch side of the benchmarks.
pub fn run_python(script: &str, args: &[String]) -> std::result::Result<String, String> {
    use std::io::Write;
    let python = std::env::var("MEMLAYERS_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = std::process::Command::new(&python)
        .arg("-")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{python}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("{python}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// PyTorch's forward tokens/s by (device, config, value dtype), e.g. ("cpu", "paper",
/// "float32"), measured now on this machine; an error says why there are none.
fn torch_tokens_per_s(
    tokens: usize,
    iters: usize,
) -> std::result::Result<Vec<(String, String, String, f64)>, String> {
    let stdout = run_python(
        TORCH_BENCH,
        &[
            "--tokens".into(),
            tokens.to_string(),
            "--iters".into(),
            iters.to_string(),
        ],
    )?;
    // "torch 2.5.1 cpu  paper  values float32  512 tokens:      8700 tokens/s (58.8 ms)"
    let mut rows = Vec::new();
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() >= 9 && w[0] == "torch" && w[4] == "values" {
            if let Ok(v) = w[8].parse::<f64>() {
                rows.push((w[2].to_string(), w[3].to_string(), w[5].to_string(), v));
            }
        }
    }
    Ok(rows)
}

/// Samples of a host-time measurement: sub-millisecond times on a shared machine need many,
/// and their median.
const HOST_SAMPLES: usize = 25;

/// Steps per timing window of `bench --train`: shared machines slow down for stretches of a
/// second or so, so besides the mean the benchmark reports the median window.
const TRAIN_WINDOW: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn wait(gpu: &Gpu) -> Result<()> {
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| crate::Error::Device(format!("poll: {e}")))?;
    Ok(())
}

/// GB/s of a plain copy (bytes read + written) over a buffer of up to 64 MiB.
pub fn copy_bandwidth(gpu: &Gpu, iters: usize) -> Result<f64> {
    let bytes = (64u64 << 20).min(gpu.max_binding_bytes() / 16 * 16);
    let words = (bytes / 16) as u32;
    let (src, dst) = (gpu.storage("copy src", bytes), gpu.storage("copy dst", bytes));
    let record = |passes: usize| -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..passes {
            copy::record(gpu, &mut enc, &src, &dst, words)?;
        }
        gpu.queue.submit([enc.finish()]);
        wait(gpu)
    };
    record(1)?;
    let seconds = timed(gpu, iters, || record(1))?
        .iter()
        .map(|t| t.seconds)
        .sum::<f64>();
    Ok(2.0 * bytes as f64 * iters as f64 / seconds / 1e9)
}

/// GFLOP/s of multiply-adds on registers (`fma_peak.wgsl`): what this adapter's arithmetic
/// allows a kernel with no memory traffic, the yardstick for the GEMMs.
pub fn fma_ceiling(gpu: &Gpu, iters: usize) -> Result<f64> {
    const WORKGROUPS: u32 = 4096;
    const ROUNDS: u32 = 256;
    let out = gpu.storage("fma_peak out", WORKGROUPS as u64 * fma_peak::WORKGROUP as u64 * 4);
    let mut flops = 0.0;
    let mut record = || -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        flops = fma_peak::record(gpu, &mut enc, &out, WORKGROUPS, ROUNDS)?;
        gpu.queue.submit([enc.finish()]);
        wait(gpu)
    };
    record()?;
    let seconds = timed(gpu, iters, &mut record)?
        .iter()
        .map(|t| t.seconds)
        .sum::<f64>();
    Ok(flops * iters as f64 / seconds / 1e9)
}

/// Runs `f` `iters` times with profiling on; falls back to wall time per call when the
/// adapter has no timestamp queries.
fn timed(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<KernelTiming>> {
    if gpu.start_profiling(64 * iters as u32).is_ok() {
        for _ in 0..iters {
            f()?;
        }
        pollster::block_on(gpu.finish_profiling())
    } else {
        let mut out = Vec::new();
        for _ in 0..iters {
            let t = Instant::now();
            f()?;
            out.push(KernelTiming {
                label: "wall (no timestamp queries)",
                seconds: t.elapsed().as_secs_f64(),
            });
        }
        Ok(out)
    }
}

/// GFLOP/s of one product `[m, k] x [n, k]^T` with `kernel`.
fn gemm_gflops(gpu: &Gpu, kernel: GemmKernel, (m, n, k): (u32, u32, u32), iters: usize) -> Result<f64> {
    let mut rng = Rng::new(5);
    let x = gpu.upload("gemm x", &rng.vec_symmetric((m * k) as usize, 1.0));
    let w = gpu.upload("gemm w", &rng.vec_symmetric((n * k) as usize, 1.0));
    let y = gpu.storage("gemm y", m as u64 * n as u64 * 4);
    let product = kernels::linear::Linear::new("gemm", &x, &w, &y, (m, n, k));
    let run = || -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        product.record_with(gpu, &mut enc, kernel)?;
        gpu.queue.submit([enc.finish()]);
        wait(gpu)
    };
    run()?;
    let seconds = timed(gpu, iters, run)?.iter().map(|t| t.seconds).sum::<f64>() / iters as f64;
    Ok(2.0 * m as f64 * n as f64 * k as f64 / seconds / 1e9)
}

/// Every GEMM kernel and tile shape this adapter can run, side by side in this run, as
/// GFLOP/s and as a share of the multiply-add ceiling, and the one linear layers use here.
fn gemm_comparison(gpu: &Gpu, o: &Options, fma_gflops: f64) -> Result<()> {
    let shapes: &[(u32, u32, u32)] = if o.quick {
        &[(o.tokens as u32, 512, 256)]
    } else {
        &[(o.tokens as u32, 512, 256), (o.tokens as u32, 2048, 1024)]
    };
    let in_use = kernels::linear::choice::kernel(gpu);
    for &shape in shapes {
        println!("linear {} x {} x {} (m x n x k):", shape.0, shape.1, shape.2);
        let (mut default, mut used) = (f64::NAN, f64::NAN);
        for kernel in kernels::linear::choice::candidates(gpu) {
            let gflops = gemm_gflops(gpu, kernel, shape, o.iters)?;
            if kernel == GemmKernel::Tiled(GemmTile::DEFAULT) {
                default = gflops;
            }
            if kernel == in_use {
                used = gflops;
            }
            println!(
                "  {:<20} {gflops:>8.1} GFLOP/s = {:>3.0}% of the ceiling{}",
                kernel.to_string(),
                100.0 * gflops / fma_gflops,
                if kernel == in_use { "  (in use)" } else { "" }
            );
        }
        println!("  in use against the default tile: {:.2}x", used / default);
    }
    println!(
        "  in use on this adapter: {in_use} ({})\n",
        if gpu.tuning().gemm_trial {
            "timed trial"
        } else {
            "fixed by the tuning"
        }
    );
    Ok(())
}

/// The GEMM on the adapter's matrix units (f16 inputs), on the comparison's shapes; run after
/// the exact figures (an experimental feature: a failure is reported, not fatal).
fn matrix_gemm_figures(gpu: &Gpu, o: &Options) {
    let Some(config) = gpu.matrix_config() else {
        return;
    };
    let kernel = GemmKernel::Matrix(config);
    let shapes: &[(u32, u32, u32)] = if o.quick {
        &[(o.tokens as u32, 512, 256)]
    } else {
        &[
            (o.tokens as u32, 512, 256),
            (o.tokens as u32, 2048, 1024),
            (4096, 4096, 4096),
        ]
    };
    for &(m, n, k) in shapes {
        match gemm_gflops(gpu, kernel, (m, n, k), o.iters).and_then(|g| gpu.take_device_error().map(|_| g)) {
            Ok(gflops) => println!("matrix units: linear {m} x {n} x {k} on {kernel}: {gflops:.1} GFLOP/s"),
            Err(e) => println!("matrix units: linear {m} x {n} x {k} on {kernel}: failed ({e})"),
        }
    }
    println!();
}

/// Tokens/s of `timed` decoding steps (one token each) into `cache`, after `warm` untimed.
fn decoding_rate(
    gpu: &Gpu,
    model: &crate::model::Model,
    cache: &mut crate::model::KvCache,
    warm: usize,
    timed: usize,
) -> Result<f64> {
    let mut start = Instant::now();
    for i in 0..warm + timed {
        if i == warm {
            start = Instant::now();
        }
        pollster::block_on(model.forward_with_cache(gpu, &[(i * 37 % 256) as u32], cache))?;
    }
    Ok(timed as f64 / start.elapsed().as_secs_f64())
}

/// Decoding one token at a time (batch 1, KV cache) with a dense transformer of 4 layers of
/// width 1024 (50 MB of f32 weights, each read once a token): f32 weights against f16
/// (`Model::use_f16_weights`), in the same run.
fn f16_weights_decoding(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 64}"#;
    let config = crate::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = crate::model::ModelWeights::init(&config)?;
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut model = crate::model::Model::new(gpu, &weights)?;
        if f16 {
            model.use_f16_weights(gpu, &weights)?;
        }
        let mut cache = model.new_cache(gpu);
        rates.push(decoding_rate(gpu, &model, &mut cache, 4, 24)?);
    }
    println!(
        "decoding, 4 x 1024 dense model, batch 1: f32 weights {:.1} tokens/s, f16 weights {:.1} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

/// Decoding one token at a time late in a long sequence (positions 960-983 of 1,024), where
/// every step reads the whole KV cache (32 MB in f32 for this 4 x 1024 model, next to 50 MB
/// of weights): an f32 cache against an f16 one (`Model::new_cache_f16`), in the same run.
fn f16_cache_decoding(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 1024}"#;
    let config = crate::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = crate::model::ModelWeights::init(&config)?;
    let model = crate::model::Model::new(gpu, &weights)?;
    let prompt: Vec<u32> = (0..960u32).map(|i| i * 37 % 256).collect();
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut cache = if f16 {
            model.new_cache_f16(gpu)
        } else {
            model.new_cache(gpu)
        };
        pollster::block_on(model.forward_with_cache(gpu, &prompt, &mut cache))?;
        rates.push(decoding_rate(gpu, &model, &mut cache, 2, 16)?);
    }
    println!(
        "decoding at positions 960-983, 4 x 1024 dense model, batch 1: f32 KV cache {:.1} tokens/s, f16 KV cache {:.1} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

/// A forward of 2 x 64 tokens (prefill) through the 4 x 1024 dense model with f16 weights:
/// its feed-forward hidden activations in f32 against f16 (`Model::use_f16_activations`),
/// in the same run. The f16 forward also leaves out `w1 x`, which the f32 one keeps for a
/// backward (forwards do not know whether one follows): 3 stores of `[rows, hidden]` f32
/// against 2 of f16 per dense block, plus the reads.
fn f16_activations_prefill(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 64}"#;
    let config = crate::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = crate::model::ModelWeights::init(&config)?;
    let (batch, seq) = (2, 64);
    let tokens: Vec<u32> = (0..(batch * seq) as u32).map(|i| i * 37 % 256).collect();
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut model = crate::model::Model::new(gpu, &weights)?;
        model.use_f16_weights(gpu, &weights)?;
        model.use_f16_activations(f16);
        pollster::block_on(model.forward(gpu, &tokens, None, batch, seq))?;
        let (repeats, start) = (3, Instant::now());
        for _ in 0..repeats {
            pollster::block_on(model.forward(gpu, &tokens, None, batch, seq))?;
        }
        rates.push((repeats * tokens.len()) as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "prefill of 2 x 64 tokens, 4 x 1024 dense model, f16 weights: f32 activations {:.0} tokens/s, f16 activations {:.0} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

struct Row {
    name: String,
    tokens_per_s: f64,
    kernels: Vec<(&'static str, f64)>,
    matmul_gflops: f64,
    lookup_gflops: f64,
    bag_gbs: f64,
    /// The same bag over consecutive value rows (no random access): what the kernel reaches
    /// when memory access is not the limit.
    bag_streaming_gbs: f64,
    /// The bag alone on random slots with 1 and with 4 16-byte columns per invocation (GB/s).
    bag_variants_gbs: (f64, f64),
    /// Host seconds per forward (encode + submit), through the step plan and without one.
    host_seconds: (f64, f64),
    /// The encoding's part of those (recording and `finish`, without the submission).
    encode_seconds: (f64, f64),
    /// Encoding only, back to back with nothing submitted, planned and not.
    encode_back_to_back: (f64, f64),
    /// Buffers, bind groups and dispatches of one planned forward after the first.
    per_forward: crate::gpu::Counts,
}

/// GPU seconds of one embedding bag of the real lookup's sizes, its slots `consecutive`
/// (every token reads the next heads * knn rows in order) or random, with the kernel variant
/// of `columns` 16-byte columns per invocation (None: this adapter's).
fn bag_seconds(
    gpu: &Gpu,
    c: &MemoryConfig,
    pool: &ValuePool,
    o: &Options,
    consecutive: bool,
    columns: Option<u32>,
) -> Result<f64> {
    let bag = c.heads * c.knn;
    let n = pool.n_rows() as u64;
    let mut rng = Rng::new(9);
    let slots: Vec<u32> = (0..o.tokens * bag)
        .map(|e| if consecutive { e as u64 % n } else { rng.below(n) } as u32)
        .collect();
    let weights = vec![1.0 / bag as f32; o.tokens * bag];
    let (ib, wb) = (gpu.upload("slots", &slots), gpu.upload("weights", &weights));
    let out = gpu.storage("bag out", (o.tokens * c.v_dim * 4) as u64);
    let chunks = pool.chunks();
    let run = || -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        kernels::embedding_bag::EmbeddingBag {
            rows: o.tokens as u32,
            bag: bag as u32,
            indices: &ib,
            weights: &wb,
            values: &chunks,
            out: &out,
            workgroup_size: None,
            columns_per_invocation: columns,
        }
        .record(gpu, &mut enc)?;
        gpu.queue.submit([enc.finish()]);
        wait(gpu)
    };
    run()?;
    Ok(timed(gpu, o.iters, run)?.iter().map(|t| t.seconds).sum::<f64>() / o.iters as f64)
}

fn bench_config(gpu: &Gpu, name: &str, c: &MemoryConfig, dtype: ValueDtype, o: &Options) -> Result<Row> {
    let work = ForwardWorkload::new(gpu, c, dtype, o.tokens)?;
    let clock = Instant::now();
    let tokens_per_s = pollster::block_on(work.tokens_per_s(gpu, o.iters, || clock.elapsed().as_secs_f64()))?;
    let pool = &work.pool;
    let forward = || -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        work.record_planned(gpu, &mut enc)?;
        gpu.queue.submit([enc.finish()]);
        wait(gpu)
    };
    // Host time per forward (encode + submit), through the step plan and without one (every
    // buffer, parameter block and bind group created anew), in the same run.
    let host = |planned: bool| -> Result<(f64, f64)> {
        let (mut seconds, mut encode) = (Vec::with_capacity(HOST_SAMPLES), Vec::with_capacity(HOST_SAMPLES));
        for _ in 0..HOST_SAMPLES {
            let t = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            if planned {
                work.record_planned(gpu, &mut enc)?;
            } else {
                work.record(gpu, &mut enc)?;
            }
            let command_buffer = enc.finish();
            encode.push(t.elapsed().as_secs_f64());
            gpu.queue.submit([command_buffer]);
            seconds.push(t.elapsed().as_secs_f64());
            wait(gpu)?;
        }
        Ok((median(seconds), median(encode)))
    };
    // Encoding back to back, nothing submitted in between: the host's own work, as on a GPU
    // that does not share the host's cores and caches (lavapipe runs each forward on them,
    // which leaves the next encoding's data cold).
    let back_to_back = |planned: bool, n: usize| -> Result<f64> {
        let t = Instant::now();
        for _ in 0..n {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            if planned {
                work.record_planned(gpu, &mut enc)?;
            } else {
                work.record(gpu, &mut enc)?;
            }
            drop(enc.finish());
            gpu.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| crate::Error::Device(format!("poll: {e}")))?;
        }
        Ok(t.elapsed().as_secs_f64() / n as f64)
    };
    let encode_back_to_back = (back_to_back(true, 200)?, back_to_back(false, 50)?);
    let host_unplanned = host(false)?;
    let before = gpu.counts();
    let host_planned = host(true)?;
    let per_forward = (gpu.counts() - before).per(HOST_SAMPLES as u64);
    let kernels = KernelTiming::per_label(&timed(gpu, o.iters, forward)?, o.iters);
    let time_of = |label: &str| kernels.iter().find(|k| k.0 == label).map_or(f64::NAN, |k| k.1);
    let tokens = o.tokens as f64;
    let matmul_flops = 2.0 * tokens * (c.heads * c.k_dim) as f64 * c.d as f64;
    let lookup_flops = 2.0 * tokens * (c.heads * c.n_keys * c.k_dim) as f64;
    let row_bytes = match dtype {
        ValueDtype::F32 => 4 * c.v_dim,
        ValueDtype::F16 => 4 * c.v_dim.div_ceil(2),
    };
    let bag_bytes = tokens * (c.heads * c.knn) as f64 * row_bytes as f64;
    let streaming = bag_seconds(gpu, c, pool, o, true, None)?;
    let one_column = bag_seconds(gpu, c, pool, o, false, Some(1))?;
    let four_columns = bag_seconds(gpu, c, pool, o, false, Some(4))?;
    Ok(Row {
        bag_streaming_gbs: bag_bytes / streaming / 1e9,
        bag_variants_gbs: (bag_bytes / one_column / 1e9, bag_bytes / four_columns / 1e9),
        name: format!("{name} {dtype:?}"),
        tokens_per_s,
        matmul_gflops: matmul_flops / time_of("query_proj") / 1e9,
        lookup_gflops: lookup_flops / time_of("subkey_scores") / 1e9,
        bag_gbs: bag_bytes / time_of("embedding_bag") / 1e9,
        kernels,
        host_seconds: (host_planned.0, host_unplanned.0),
        encode_seconds: (host_planned.1, host_unplanned.1),
        encode_back_to_back,
        per_forward,
    })
}

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
    per_step: crate::gpu::Counts,
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
    use crate::model::{LMTransformerArgs, ModelWeights};
    use crate::train::{TrainConfig, Trainer};
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
        flops: config.flops_per_token(seq),
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

fn train_bench(gpu: &mut Gpu, o: &Options) -> Result<()> {
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
    let workgroups = crate::kernels::Tuning {
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

pub fn run(o: &Options) -> Result<()> {
    let mut gpu = Gpu::new_blocking()?;
    println!("adapter: {}", gpu.adapter_name());
    if !gpu.pinned_threads().is_empty() {
        println!(
            "  its {} worker threads pinned to one CPU each (MEMLAYERS_PIN_CPU_THREADS=0: not)",
            gpu.pinned_threads().len()
        );
    }
    if o.train {
        return train_bench(&mut gpu, o);
    }
    println!("tokens per forward: {}, timed repetitions: {}", o.tokens, o.iters);
    let copy_gbs = copy_bandwidth(&gpu, o.iters.max(3))?;
    println!("plain copy kernel: {copy_gbs:.2} GB/s (read + write)");
    let fma_gflops = fma_ceiling(&gpu, o.iters.max(3))?;
    println!(
        "multiply-adds on registers (the arithmetic ceiling; GEMM percentages are of this): {fma_gflops:.1} GFLOP/s\n"
    );
    gemm_comparison(&gpu, o, fma_gflops)?;
    if !o.quick {
        f16_weights_decoding(&gpu)?;
        f16_cache_decoding(&gpu)?;
        f16_activations_prefill(&gpu)?;
    }
    let paper = MemoryConfig::memory_plus(1024);
    let small = MemoryConfig {
        n_keys: 128,
        knn: 16,
        k_dim: 128,
        ..MemoryConfig::memory_plus(256)
    };
    let mut configs = vec![("small d=256 n_keys=128 knn=16 k_dim=128", small)];
    if !o.quick {
        configs.push(("paper d=1024 n_keys=1024 knn=32 k_dim=512", paper.clone()));
    }
    let torch = torch_tokens_per_s(o.tokens, o.iters.min(5));
    // f32 and f16 values with the exact GEMMs; and where the adapter has matrix units, f16
    // values with f16-input GEMMs on them (compared with PyTorch's bfloat16 layer).
    let mut variants = vec![
        (ValueDtype::F32, GemmPrecision::F32),
        (ValueDtype::F16, GemmPrecision::F32),
    ];
    match gpu.matrix_config() {
        Some(_) => variants.push((ValueDtype::F16, GemmPrecision::F16Inputs)),
        None => println!(
            "f16-input GEMMs on matrix units: not measured (this adapter has no cooperative matrices)\n"
        ),
    }
    // The exact variants of every configuration first (config by config); then the matrix
    // units' (an experimental feature: a failure there is reported and costs no other figure).
    let mut runs: Vec<_> = configs
        .iter()
        .flat_map(|c| variants.iter().map(move |&v| (c, v)))
        .collect();
    runs.sort_by_key(|(_, (_, precision))| *precision == GemmPrecision::F16Inputs);
    let mut matrix_gemms_done = false;
    for ((name, c), (dtype, precision)) in runs {
        if precision == GemmPrecision::F16Inputs && !matrix_gemms_done {
            matrix_gemm_figures(&gpu, o);
            matrix_gemms_done = true;
        }
        {
            gpu.set_gemm_precision(precision);
            let result = bench_config(&gpu, name, c, dtype, o);
            gpu.set_gemm_precision(GemmPrecision::F32);
            let mut r = match result {
                Ok(r) => r,
                Err(e) if precision == GemmPrecision::F16Inputs => {
                    println!("{name} {dtype:?} GEMMs-f16-inputs: failed on the matrix units ({e})\n");
                    let _ = gpu.take_device_error();
                    continue;
                }
                Err(e) => return Err(e),
            };
            if precision == GemmPrecision::F16Inputs {
                r.name += " GEMMs-f16-inputs";
            }
            println!(
                "{} (heads {}, {} values, {} MFLOP/token)",
                r.name,
                c.heads,
                c.n_values(),
                c.flops_per_token() / 1e6
            );
            println!("  forward: {:.0} tokens/s (wall)", r.tokens_per_s);
            let (planned, unplanned) = r.host_seconds;
            println!(
                "  host time per forward (encode + submit, median): {:.3} ms with the step plan, {:.3} ms without ({:.1}x less)",
                planned * 1e3,
                unplanned * 1e3,
                unplanned / planned
            );
            let (planned, unplanned) = r.encode_seconds;
            println!(
                "  of which encoding (record + finish, median): {:.3} ms with the step plan, {:.3} ms without ({:.1}x less)",
                planned * 1e3,
                unplanned * 1e3,
                unplanned / planned
            );
            let (planned, unplanned) = r.encode_back_to_back;
            println!(
                "  encoding back to back (no GPU work in between): {:.1} us with the step plan, {:.1} us without ({:.1}x less)",
                planned * 1e6,
                unplanned * 1e6,
                unplanned / planned
            );
            let f = r.per_forward;
            println!(
                "  allocations per forward after warm-up: {} buffers, {} bind groups; dispatches per forward: {}",
                f.buffers, f.bind_groups, f.dispatches
            );
            for (label, s) in &r.kernels {
                println!("  {label:<24} {:>9.3} ms", s * 1e3);
            }
            for (what, gflops) in [
                ("query_proj matmul", r.matmul_gflops),
                ("sub-key scoring GEMM", r.lookup_gflops),
            ] {
                println!(
                    "  {what}: {gflops:.1} GFLOP/s = {:.0}% of the arithmetic ceiling",
                    100.0 * gflops / fma_gflops
                );
            }
            println!(
                "  embedding bag: {:.2} GB/s of value rows = {:.0}% of the copy kernel (target >= 70%)",
                r.bag_gbs,
                100.0 * r.bag_gbs / copy_gbs
            );
            println!(
                "  same bag over consecutive rows: {:.2} GB/s = {:.0}% of the copy kernel (random access costs {:.1}x)",
                r.bag_streaming_gbs,
                100.0 * r.bag_streaming_gbs / copy_gbs,
                r.bag_streaming_gbs / r.bag_gbs
            );
            let (one, four) = r.bag_variants_gbs;
            println!(
                "  the bag alone, 1 / 4 columns per invocation: {one:.2} / {four:.2} GB/s = {:.0}% / {:.0}% of the copy kernel",
                100.0 * one / copy_gbs,
                100.0 * four / copy_gbs
            );
            let (config, dtype_name) = (
                if c == &paper { "paper" } else { "small" },
                match (dtype, precision) {
                    (_, GemmPrecision::F16Inputs) => "bfloat16",
                    (ValueDtype::F32, _) => "float32",
                    _ => "float16",
                },
            );
            match &torch {
                Ok(rows) => {
                    for (device, _, _, t) in rows.iter().filter(|r| r.1 == config && r.2 == dtype_name) {
                        println!(
                            "  vs the reference layer in PyTorch on {device} ({t:.0} tokens/s, measured now): {:.2}x",
                            r.tokens_per_s / t
                        );
                    }
                }
                Err(why) => println!("  vs the reference layer in PyTorch: not measured ({why})"),
            }
            println!();
        }
    }
    Ok(())
}
