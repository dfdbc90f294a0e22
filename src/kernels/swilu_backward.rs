//! `swilu_backward.wgsl`: dy = dh silu(g), dg = dh y silu'(g), elementwise.

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/swilu_backward.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    _pad: [u32; 3],
}

/// Backward of `h = y * silu(g)` over `len` elements.
pub struct SwiluBackward<'a> {
    pub len: u32,
    pub dh: &'a wgpu::Buffer,
    pub y: &'a wgpu::Buffer,
    pub g: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
    pub dg: &'a wgpu::Buffer,
}

impl SwiluBackward<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if self.len == 0 {
            return Err(Error::Config("swilu backward: empty".into()));
        }
        let n = self.len as u64;
        for (name, b) in [
            ("dh", self.dh),
            ("y", self.y),
            ("g", self.g),
            ("dy", self.dy),
            ("dg", self.dg),
        ] {
            check_buffer(gpu, name, b, n)?;
        }
        // Four elements an invocation with 16-byte loads where the length allows.
        let quads = self.len.is_multiple_of(4);
        let pipeline = gpu.pipeline_entry(
            "swilu_backward",
            SOURCE,
            if quads { "main_vec4" } else { "main" },
            &[],
        );
        let params = gpu.uniform(
            "swilu backward params",
            &Params {
                len: self.len,
                _pad: [0; 3],
            },
        );
        let first = if quads { 6 } else { 1 };
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (first, self.dh),
                (first + 1, self.y),
                (first + 2, self.g),
                (first + 3, self.dy),
                (first + 4, self.dg),
            ],
        );
        let invocations = if quads { self.len / 4 } else { self.len };
        let (x, y) = grid(invocations.div_ceil(64));
        gpu.run(encoder, "swilu_backward", &pipeline, &bind, (x, y, 1));
        Ok(())
    }
}
