//! The memory layer's forward (`memlayers bench`, the default run): tokens/s, host time with
//! and without step plans, GPU time per kernel, the query and scoring GEMMs against the
//! arithmetic ceiling, the bag against the copy kernel, and the reference layer in PyTorch
//! when it can run; with the GEMM and decoding figures before them.

use super::decoding::{f16_activations_prefill, f16_cache_decoding, f16_weights_decoding};
use super::gemm::{gemm_comparison, matrix_gemm_figures};
use super::{copy_bandwidth, fma_ceiling, median, run_python, timed, wait, Options, HOST_SAMPLES};
use memlayers::gpu::KernelTiming;
use memlayers::kernels;
use memlayers::kernels::linear::GemmPrecision;
use memlayers::kernels::Gpu;
use memlayers::memory::{ForwardWorkload, MemoryConfig, ValueDtype, ValuePool};
use memlayers::rng::Rng;
use memlayers::Result;
use std::time::Instant;

/// The reference layer in plain PyTorch (`scripts/torch_memory_forward_bench.py`), run by
/// the benchmark in the same run when `python3` can import torch.
const TORCH_BENCH: &str = include_str!("../../../scripts/torch_memory_forward_bench.py");

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
    per_forward: memlayers::gpu::Counts,
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
                .map_err(|e| memlayers::Error::Device(format!("poll: {e}")))?;
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

/// The forward's figures (and the GEMM and decoding ones first).
pub fn run(gpu: &mut Gpu, o: &Options) -> Result<()> {
    println!("tokens per forward: {}, timed repetitions: {}", o.tokens, o.iters);
    let copy_gbs = copy_bandwidth(gpu, o.iters.max(3))?;
    println!("plain copy kernel: {copy_gbs:.2} GB/s (read + write)");
    let fma_gflops = fma_ceiling(gpu, o.iters.max(3))?;
    println!(
        "multiply-adds on registers (the arithmetic ceiling; GEMM percentages are of this): {fma_gflops:.1} GFLOP/s\n"
    );
    gemm_comparison(gpu, o, fma_gflops)?;
    if !o.quick {
        f16_weights_decoding(gpu)?;
        f16_cache_decoding(gpu)?;
        f16_activations_prefill(gpu)?;
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
            matrix_gemm_figures(gpu, o);
            matrix_gemms_done = true;
        }
        {
            gpu.set_gemm_precision(precision);
            let result = bench_config(gpu, name, c, dtype, o);
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
