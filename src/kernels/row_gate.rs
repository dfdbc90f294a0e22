//! `row_gate.wgsl`: a sigmoid gate per row (lingua's `mem_gated`), forward and backward.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/row_gate.wgsl");

fn check_shape(rows: u32, cols: u32) -> Result<u64> {
    let n = rows as u64 * cols as u64;
    if n == 0 || n > u32::MAX as u64 {
        return Err(Error::Config(format!("row gate: {rows} x {cols}")));
    }
    Ok(n)
}

/// `y [rows, cols] (+)= sigmoid(g[r]) * x[r, c]` (added to `y` with `accumulate`).
pub fn record_forward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (g, x, y): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    (rows, cols): (u32, u32),
    accumulate: bool,
) -> Result<()> {
    let n = check_shape(rows, cols)?;
    check_buffer(gpu, "row gate logits", g, rows as u64)?;
    check_buffer(gpu, "row gate input", x, n)?;
    check_buffer(gpu, "row gate output", y, n)?;
    let params = gpu.uniform("row gate params", &[rows, cols, accumulate as u32, 0]);
    let pipeline = gpu.pipeline_entry("row_gate", SOURCE, "forward", &[]);
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, g), (2, x), (3, y)]);
    let (gx, gy) = grid((n as u32).div_ceil(64));
    gpu.run(encoder, "row_gate", &pipeline, &bind, (gx, gy, 1));
    Ok(())
}

/// From `dy` (dL/d output) and the forward's `g`, `x`: `dx = sigmoid(g[r]) * dy` and
/// `dg [rows] = sigmoid'(g[r]) * sum_c dy[r, c] x[r, c]`.
pub fn record_backward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (g, x, dy): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    (dx, dg): (&wgpu::Buffer, &wgpu::Buffer),
    (rows, cols): (u32, u32),
) -> Result<()> {
    let n = check_shape(rows, cols)?;
    check_loop_budget("row gate backward", cols as u64, "the row width")?;
    check_buffer(gpu, "row gate logits", g, rows as u64)?;
    check_buffer(gpu, "row gate input", x, n)?;
    check_buffer(gpu, "row gate output gradient", dy, n)?;
    check_buffer(gpu, "row gate input gradient", dx, n)?;
    check_buffer(gpu, "row gate logit gradient", dg, rows as u64)?;
    let params = gpu.uniform("row gate params", &[rows, cols, 0, 0]);
    let pipeline = gpu.pipeline_entry("row_gate", SOURCE, "backward", &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[(0, &params), (1, g), (2, x), (3, dx), (4, dy), (5, dg)],
    );
    let (gx, gy) = grid(rows.div_ceil(64));
    gpu.run(encoder, "row_gate_backward", &pipeline, &bind, (gx, gy, 1));
    Ok(())
}
