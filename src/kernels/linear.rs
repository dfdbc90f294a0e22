//! `linear.wgsl`: y = x w^T (+ bias) (then optionally y = gate * silu(y)).

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, MAX_GRID_DIM};

pub const SOURCE: &str = include_str!("../../shaders/linear.wgsl");
const TILE: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
}

/// A linear layer over `m` rows: `x [m, k]`, `w [n, k]` (nn.Linear layout), `bias [n]`,
/// output `y [m, n]`. With `gate [m, n]`, stores `gate * silu(x w^T + bias)` instead.
pub struct Linear<'a> {
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    pub bias: Option<&'a wgpu::Buffer>,
    pub gate: Option<&'a wgpu::Buffer>,
    pub y: &'a wgpu::Buffer,
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

impl Linear<'_> {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::Config(format!("linear: empty shape m={m} n={n} k={k}")));
        }
        if self.m.div_ceil(TILE) > MAX_GRID_DIM || self.n.div_ceil(TILE) > MAX_GRID_DIM {
            return Err(Error::Config(format!(
                "linear: {m} x {n} outputs exceed one dispatch ({} rows or columns at most)",
                MAX_GRID_DIM as u64 * TILE as u64
            )));
        }
        check_buffer(gpu, "linear.x", self.x, m * k)?;
        check_buffer(gpu, "linear.weight", self.w, n * k)?;
        check_buffer(gpu, "linear.y", self.y, m * n)?;
        if let Some(b) = self.bias {
            check_buffer(gpu, "linear.bias", b, n)?;
        }
        if let Some(g) = self.gate {
            check_buffer(gpu, "linear.gate", g, m * n)?;
        }
        let flags = self.bias.map_or(0, |_| 1) | self.gate.map_or(0, |_| 2);
        let pipeline = gpu.pipeline("linear", SOURCE, &[]);
        let params = gpu.uniform(
            "linear params",
            &Params {
                m: self.m,
                n: self.n,
                k: self.k,
                flags,
            },
        );
        // Absent optional inputs are bound to `x`, which the shader then never reads.
        let bind = gpu.bind(
            &pipeline,
            &[
                &params,
                self.x,
                self.w,
                self.bias.unwrap_or(self.x),
                self.gate.unwrap_or(self.x),
                self.y,
            ],
        );
        let mut pass = gpu.begin_pass(
            encoder,
            if self.gate.is_some() {
                "linear+gate"
            } else {
                "linear"
            },
        );
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(self.n.div_ceil(TILE), self.m.div_ceil(TILE), 1);
        Ok(())
    }
}
