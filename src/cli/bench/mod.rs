//! `memlayers bench`: speed on this adapter, each figure set beside a yardstick or a
//! comparison measured in the same run (these machines are noisy, so ratios, not absolute
//! numbers, carry the claims). Every figure comes from this run, on this adapter: GPU time
//! per kernel from timestamp queries (averaged over the timed repetitions), tokens/s from
//! wall time including submission and synchronisation, GEMM GFLOP/s as a share of
//! multiply-adds on registers (the arithmetic ceiling), the embedding bag's bandwidth beside
//! a plain copy kernel's.
//!
//! - `layer.rs`: the memory layer's forward (the default run), with
//! - `gemm.rs`: every GEMM kernel and tile against the ceiling, and
//! - `decoding.rs`: decoding and prefill with f32 and compact weights, caches, activations;
//! - `train.rs`: `--train`, dense against memory models' training steps;
//! - `lm.rs`: `--model` / `--shape`, a Hugging Face model's prefill and decoding;
//! - `teach.rs`: `--teach`, a teaching step of each method;
//! - `devices.rs`: `--devices`, the value table sharded over several devices.
//!
//! Behind the `bench` feature (on by default).

mod decoding;
pub mod devices;
mod gemm;
pub mod layer;
pub mod lm;
pub mod teach;
pub mod train;

use memlayers::gpu::KernelTiming;
use memlayers::kernels::yardsticks::{copy, fma_peak};
use memlayers::kernels::Gpu;
use memlayers::Result;
use std::time::Instant;

/// What `memlayers bench` (without --model, --shape, --teach or --devices) measures.
pub struct Options {
    /// Benchmark training (dense vs memory model) instead of the memory layer's forward.
    pub train: bool,
    pub quick: bool,
    pub tokens: usize,
    pub iters: usize,
    /// Print every kernel's GPU time per training step, not only the six largest shares.
    pub all_kernels: bool,
}

/// `memlayers bench`: the memory layer's forward, or with `train` training steps.
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
        train::train_bench(&mut gpu, o)
    } else {
        layer::run(&mut gpu, o)
    }
}

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

/// Samples of a host-time measurement: sub-millisecond times on a shared machine need many,
/// and their median.
pub(super) const HOST_SAMPLES: usize = 25;

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn wait(gpu: &Gpu) -> Result<()> {
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| memlayers::Error::Device(format!("poll: {e}")))?;
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
pub(super) fn timed(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<KernelTiming>> {
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
