//! `copy.wgsl`: dst = src over vec4 words, the bandwidth yardstick.

use crate::error::Result;
use crate::gpu::grid;
use crate::kernels::check_buffer;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../../shaders/copy.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    _pad: [u32; 3],
}

/// Records a copy of `vec4_words` 16-byte words from `src` to `dst`.
pub fn record(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    vec4_words: u32,
) -> Result<()> {
    check_buffer(gpu, "copy.src", src, vec4_words as u64 * 4)?;
    check_buffer(gpu, "copy.dst", dst, vec4_words as u64 * 4)?;
    let pipeline = gpu.pipeline("copy", SOURCE, &[]);
    let params = gpu.uniform(
        "copy params",
        &Params {
            len: vec4_words,
            _pad: [0; 3],
        },
    );
    let bind = gpu.bind(&pipeline, &[&params, src, dst]);
    let (x, y) = grid(vec4_words.div_ceil(256));
    gpu.run(encoder, "copy", &pipeline, &bind, (x, y, 1));
    Ok(())
}
