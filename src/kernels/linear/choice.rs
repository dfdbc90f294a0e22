//! Which GEMM kernel and tile shape the linear layers run on an adapter. Every candidate
//! gives the same results bit for bit, so the choice is about speed only: a short timed trial
//! of every candidate at first use (a few hundred milliseconds on a CPU adapter, less on a
//! GPU), remembered per adapter, driver and kernel source, in memory for the process and in a
//! small JSON file (`cache_file`) for the next one. Where there is no clock to wait on (the
//! browser) or the tuning turns the trial off, the tuning's fixed `gemm` runs. Under
//! `GemmPrecision::F16Inputs`, the matrix units run where the adapter has them.

use super::Linear;
use super::{GemmKernel, GemmPrecision, GemmTile};
use crate::error::{Error, Result};
use crate::kernels::Gpu;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Choices made in this process, by `adapter_key`.
static CHOSEN: Mutex<Option<HashMap<String, GemmKernel>>> = Mutex::new(None);

/// The kernel linear layers run on `gpu`: the tuning's fixed choice, or the timed trial's
/// (from memory, the cache file, or a trial run now).
pub fn kernel(gpu: &Gpu) -> GemmKernel {
    if gpu.gemm_precision() == GemmPrecision::F16Inputs {
        if let Some(config) = gpu.matrix_config() {
            return GemmKernel::Matrix(config);
        }
    }
    let fixed = gpu.tuning().gemm;
    if !gpu.tuning().gemm_trial || cfg!(target_arch = "wasm32") {
        return fixed;
    }
    // Every GEMM recording asks: after the first, the answer is the device's own.
    if let Some(k) = gpu.timed_gemm.get() {
        return *k;
    }
    let Some(key) = adapter_key(gpu) else {
        return fixed;
    };
    let mut chosen = CHOSEN.lock().unwrap();
    let chosen = chosen.get_or_insert_with(HashMap::new);
    let k = match chosen.get(&key) {
        Some(k) => *k,
        None => {
            // A trial that fails (a device error) leaves the fixed choice, for this process.
            let k = choose(gpu, cache_file().as_deref()).unwrap_or(fixed);
            chosen.insert(key, k);
            k
        }
    };
    let _ = gpu.timed_gemm.set(k);
    k
}

/// The cached choice for this adapter in `cache` if there is one, else a timed trial's,
/// which is then written to `cache` (best effort: a cache that cannot be written is only a
/// cache). Errors when the adapter is unknown (a host's device) or a trial fails.
pub fn choose(gpu: &Gpu, cache: Option<&Path>) -> Result<GemmKernel> {
    let key = adapter_key(gpu)
        .ok_or_else(|| Error::Adapter("no adapter information to key a GEMM choice by".into()))?;
    let mut entries = cache.map(read_cache).unwrap_or_default();
    if let Some(k) = entries.get(&key).and_then(|s| s.parse::<GemmKernel>().ok()) {
        if candidates(gpu).contains(&k) {
            return Ok(k);
        }
    }
    let timings = time_candidates(gpu)?;
    let best = timings
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|t| t.0)
        .unwrap_or(gpu.tuning().gemm);
    if let Some(path) = cache {
        entries.insert(key, best.to_string());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(text) = serde_json::to_string_pretty(&entries) {
            let _ = std::fs::write(path, text);
        }
    }
    Ok(best)
}

/// Every kernel this device can run: the subgroup kernel where it has subgroups of 8 or more
/// lanes, and every candidate tile within the tuning's workgroup size.
pub fn candidates(gpu: &Gpu) -> Vec<GemmKernel> {
    let subgroup = gpu.has_subgroup_gemm().then_some(GemmKernel::Subgroup);
    let largest = gpu.tuning().gemm_max_invocations;
    let tiles = GemmTile::CANDIDATES
        .into_iter()
        .filter(|t| t.invocations() <= largest)
        .map(GemmKernel::Tiled);
    subgroup.into_iter().chain(tiles).collect()
}

/// The trial's product (m, n, k) and repetitions per timing: small on CPU adapters, where
/// a GEMM runs at a few GFLOP/s, large enough on GPUs to fill the chip.
fn trial_shape(gpu: &Gpu) -> ((u32, u32, u32), u32) {
    let cpu = gpu
        .adapter_info()
        .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu);
    if cpu {
        ((256, 512, 512), 1)
    } else {
        ((1024, 1024, 1024), 10)
    }
}

/// Seconds per product of every candidate on the trial's shape, best of three timings each
/// (after one untimed run that compiles the pipeline). Native only: it waits on the device.
pub fn time_candidates(gpu: &Gpu) -> Result<Vec<(GemmKernel, f64)>> {
    if cfg!(target_arch = "wasm32") {
        return Err(Error::Adapter(
            "no blocking wait to time GEMM kernels with in a browser".into(),
        ));
    }
    if gpu.device_error_pending() {
        return Err(Error::Device(
            "a device error is pending; GEMM kernels not timed".into(),
        ));
    }
    let ((m, n, k), reps) = trial_shape(gpu);
    gpu.outside_plan(|| {
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 97) as f32 - 48.0) / 64.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i % 89) as f32 - 44.0) / 64.0).collect();
        let (xb, wb) = (gpu.upload("gemm trial x", &x), gpu.upload("gemm trial w", &w));
        let yb = gpu.storage("gemm trial y", m as u64 * n as u64 * 4);
        let product = Linear::new("gemm trial", &xb, &wb, &yb, (m, n, k));
        let run = |kernel: GemmKernel, times: u32| -> Result<f64> {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            for _ in 0..times {
                product.record_with(gpu, &mut encoder, kernel)?;
            }
            let start = std::time::Instant::now();
            gpu.queue.submit([encoder.finish()]);
            gpu.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Device(format!("GEMM trial: {e}")))?;
            Ok(start.elapsed().as_secs_f64() / times as f64)
        };
        // A candidate the device rejects (its error is the trial's own: none was pending)
        // is left out.
        let mut timings = Vec::new();
        for kernel in candidates(gpu) {
            let best = (0..4)
                .map(|i| run(kernel, if i == 0 { 1 } else { reps }))
                .collect::<Result<Vec<f64>>>()?;
            if gpu.take_device_error().is_ok() {
                timings.push((kernel, best[1..].iter().copied().fold(f64::INFINITY, f64::min)));
            }
        }
        Ok(timings)
    })
}

/// What identifies an adapter's GEMM speeds: its name, back end, vendor and device ids,
/// driver and driver version, and the kernels' own source (a changed kernel is timed again).
/// None for a host's device, whose adapter this crate does not know.
fn adapter_key(gpu: &Gpu) -> Option<String> {
    let i = gpu.adapter_info()?;
    let source = format!(
        "{}{}{:?}",
        super::SOURCE,
        super::SUBGROUP_SOURCE,
        GemmTile::CANDIDATES
    );
    Some(format!(
        "{} | {:?} | {:04x}:{:04x} | {} | {} | kernels {:016x}",
        i.name,
        i.backend,
        i.vendor,
        i.device,
        i.driver,
        i.driver_info,
        fnv1a(source.as_bytes())
    ))
}

/// 64-bit FNV-1a: a hash that stays the same across runs, builds and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where choices persist: `$MEMLAYERS_CACHE_DIR`, else `$XDG_CACHE_HOME/memlayers`, else
/// `~/.cache/memlayers`; the file `gemm-kernels.json` there, one entry per adapter.
pub fn cache_file() -> Option<PathBuf> {
    if cfg!(target_arch = "wasm32") {
        return None;
    }
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = var("MEMLAYERS_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("memlayers")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("memlayers")))?;
    Some(dir.join("gemm-kernels.json"))
}

fn read_cache(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}
