//! `normalize.wgsl`: row-wise L2 normalisation (qk-norm).

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::{grid, Gpu};

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
    let mut pass = gpu.begin_pass(encoder, "normalize");
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &bind, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}
