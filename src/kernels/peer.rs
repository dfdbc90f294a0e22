//! `peer.wgsl`: PEER's expert activations `w * gelu(s)` over the bag entries, and their
//! backward.

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/peer.wgsl");

fn check(n: u32) -> Result<()> {
    if n == 0 {
        return Err(Error::Config("PEER activations: no entries".into()));
    }
    Ok(())
}

/// `a[e] = w[e] * gelu(s[e])` for `n` entries.
pub fn record_forward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (s, w, a): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    n: u32,
) -> Result<()> {
    check(n)?;
    for (name, b) in [("PEER scores", s), ("PEER weights", w), ("PEER activations", a)] {
        check_buffer(gpu, name, b, n as u64)?;
    }
    let params = gpu.uniform("PEER params", &[n, 0, 0, 0]);
    let pipeline = gpu.pipeline_entry("peer", SOURCE, "forward", &[]);
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, s), (2, w), (3, a)]);
    let (x, y) = grid(n.div_ceil(64));
    gpu.run(encoder, "peer_gelu", &pipeline, &bind, (x, y, 1));
    Ok(())
}

/// From `g = dL/da`: `dw = g * gelu(s)` and `ds = g * w * gelu'(s)`.
pub fn record_backward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (s, w, g): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    (dw, ds): (&wgpu::Buffer, &wgpu::Buffer),
    n: u32,
) -> Result<()> {
    check(n)?;
    for (name, b) in [
        ("PEER scores", s),
        ("PEER weights", w),
        ("PEER grad", g),
        ("PEER dw", dw),
        ("PEER ds", ds),
    ] {
        check_buffer(gpu, name, b, n as u64)?;
    }
    let params = gpu.uniform("PEER params", &[n, 0, 0, 0]);
    let pipeline = gpu.pipeline_entry("peer", SOURCE, "backward", &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[(0, &params), (1, s), (2, w), (4, g), (5, dw), (6, ds)],
    );
    let (x, y) = grid(n.div_ceil(64));
    gpu.run(encoder, "peer_gelu_backward", &pipeline, &bind, (x, y, 1));
    Ok(())
}
