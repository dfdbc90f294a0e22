//! `fma_peak.wgsl`: multiply-adds on registers, the arithmetic yardstick that the benchmark
//! sets next to the GEMMs on the same adapter.

use crate::error::Result;
use crate::gpu::grid;
use crate::kernels::Gpu;
use crate::kernels::{check_buffer, check_loop_budget};

pub const SOURCE: &str = include_str!("../../../shaders/fma_peak.wgsl");

/// Invocations per workgroup (each writes one value of `out`).
pub const WORKGROUP: u32 = 64;
/// Floating-point operations per invocation and iteration (8 vec4 multiply-adds of 2
/// operations per component).
const FLOPS_PER_ITERATION: f64 = 8.0 * 4.0 * 2.0;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    iterations: u32,
    _pad: [u32; 3],
}

/// Records about `workgroups` x 64 invocations of `iterations` rounds each, writing one value
/// per invocation to `out`; returns the floating-point operations of the dispatch as
/// recorded (its grid may round `workgroups` up).
pub fn record(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    out: &wgpu::Buffer,
    workgroups: u32,
    iterations: u32,
) -> Result<f64> {
    let (x, y) = grid(workgroups);
    check_buffer(gpu, "fma_peak.out", out, x as u64 * y as u64 * WORKGROUP as u64)?;
    check_loop_budget("fma_peak", iterations as u64, "the rounds")?;
    let pipeline = gpu.pipeline("fma_peak", SOURCE, &[]);
    let params = gpu.uniform(
        "fma_peak params",
        &Params {
            iterations,
            _pad: [0; 3],
        },
    );
    let bind = gpu.bind(&pipeline, &[&params, out]);
    gpu.run(encoder, "fma_peak", &pipeline, &bind, (x, y, 1));
    Ok(x as f64 * y as f64 * WORKGROUP as f64 * iterations as f64 * FLOPS_PER_ITERATION)
}
