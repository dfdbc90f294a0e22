//! Every GEMM kernel and tile shape against the multiply-add ceiling, and which one the
//! adapter uses; the matrix units' GEMMs where the adapter has them.

use super::Options;
use super::{timed, wait};
use memlayers::kernels;
use memlayers::kernels::linear::{GemmKernel, GemmTile};
use memlayers::kernels::Gpu;
use memlayers::rng::Rng;
use memlayers::Result;

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
pub(super) fn gemm_comparison(gpu: &Gpu, o: &Options, fma_gflops: f64) -> Result<()> {
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
pub(super) fn matrix_gemm_figures(gpu: &Gpu, o: &Options) {
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
