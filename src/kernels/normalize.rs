//! `normalize.wgsl`: row-wise L2 normalisation (qk-norm) and its backward.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/normalize.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    len: u32,
    _pad: [u32; 2],
}

/// Records `dst[r, :] = src[r, :] / max(|src[r, :]|, 1e-12)` for `rows` rows of `len`.
pub fn record(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    rows: u32,
    len: u32,
) -> Result<()> {
    if rows == 0 || len == 0 {
        return Err(Error::Config("normalize: empty shape".into()));
    }
    check_buffer(gpu, "normalize.src", src, rows as u64 * len as u64)?;
    check_buffer(gpu, "normalize.dst", dst, rows as u64 * len as u64)?;
    check_loop_budget("normalize", 2 * len as u64, "the row length")?;
    let pipeline = gpu.pipeline("normalize", SOURCE, &[]);
    let params = gpu.uniform(
        "normalize params",
        &Params {
            rows,
            len,
            _pad: [0; 2],
        },
    );
    let bind = gpu.bind(&pipeline, &[&params, src, dst]);
    let (x, y) = grid(rows.div_ceil(64));
    gpu.run(encoder, "normalize", &pipeline, &bind, (x, y, 1));
    Ok(())
}

/// Records the backward: `grad_out` = d/d src of `<normalize(src), grad_in>`, row by row.
pub fn record_backward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    grad_in: &wgpu::Buffer,
    grad_out: &wgpu::Buffer,
    rows: u32,
    len: u32,
) -> Result<()> {
    if rows == 0 || len == 0 {
        return Err(Error::Config("normalize backward: empty shape".into()));
    }
    let n = rows as u64 * len as u64;
    check_buffer(gpu, "normalize.src", src, n)?;
    check_buffer(gpu, "normalize.grad_in", grad_in, n)?;
    check_buffer(gpu, "normalize.grad_out", grad_out, n)?;
    check_loop_budget("normalize backward", 3 * len as u64, "the row length")?;
    let pipeline = gpu.pipeline_entry("normalize", SOURCE, "backward", &[]);
    let params = gpu.uniform(
        "normalize params",
        &Params {
            rows,
            len,
            _pad: [0; 2],
        },
    );
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, src), (3, grad_in), (4, grad_out)]);
    let (x, y) = grid(rows.div_ceil(64));
    gpu.run(encoder, "normalize_backward", &pipeline, &bind, (x, y, 1));
    Ok(())
}
