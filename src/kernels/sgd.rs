//! `sgd.wgsl`: plain SGD on the masked rows of a table (sparse memory fine-tuning's value
//! update, which Lin et al. 2025 found better than AdamW there).

use super::adamw::Clip;
use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/sgd.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    row_len: u32,
    lr: f32,
    clip_index: u32,
}

/// Records `param[r] -= lr * clip * grad[r]` for every row `r` of the `[rows, row_len]`
/// table whose `mask` entry (u32) is set; other rows are left as they are.
#[allow(clippy::too_many_arguments)]
pub fn record_masked_step(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    param: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (rows, row_len): (u32, u32),
    clip: Clip,
    lr: f32,
) -> Result<()> {
    let n = rows as u64 * row_len as u64;
    if n == 0 || n > u32::MAX as u64 {
        return Err(Error::Config(format!("sgd: a table of {rows} x {row_len}")));
    }
    check_buffer(gpu, "param", param, n)?;
    check_buffer(gpu, "grad", grad, n)?;
    check_buffer(gpu, "row mask", mask, rows as u64)?;
    check_loop_budget("sgd rows", (row_len as u64).div_ceil(64), "row length")?;
    let params = Params {
        rows,
        row_len,
        lr,
        clip_index: clip.group,
    };
    let params = gpu.uniform("sgd params", &params);
    let pipeline = gpu.pipeline_entry("sgd", SOURCE, "masked_step", &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[(0, &params), (1, grad), (2, clip.factors), (3, param), (4, mask)],
    );
    let (x, y) = grid(rows);
    gpu.run(encoder, "sgd_masked_rows", &pipeline, &bind, (x, y, 1));
    Ok(())
}
