//! `pkm_lookup.wgsl`: the fused product-key lookup (sub-key scores, top-k of each half,
//! top-k of the k x k products, softmax), one workgroup per (token, head).

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::{grid, Gpu};

pub const SOURCE: &str = include_str!("../../shaders/pkm_lookup.wgsl");

/// Limits of the kernel's workgroup arrays (see the WGSL header).
pub const MAX_HALF_DIM: u32 = 512;
pub const MAX_KNN: u32 = 128;
const SORT_CAP: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    n_keys: u32,
    half_dim: u32,
    knn: u32,
    qk_norm: u32,
    sort_size: u32,
    _pad: u32,
}

/// Shape of a lookup.
#[derive(Clone, Copy, Debug)]
pub struct LookupShape {
    pub rows: u32,
    pub heads: u32,
    pub n_keys: u32,
    /// Full query/key width; each half is `k_dim / 2`.
    pub k_dim: u32,
    pub knn: u32,
    pub qk_norm: bool,
}

impl LookupShape {
    pub fn validate(&self) -> Result<()> {
        let s = self;
        if s.rows == 0 || s.heads == 0 || s.n_keys == 0 || s.knn == 0 {
            return Err(Error::Config(format!("lookup: empty shape {s:?}")));
        }
        if s.k_dim < 2 || s.k_dim % 2 != 0 || s.k_dim / 2 > MAX_HALF_DIM {
            return Err(Error::Config(format!(
                "k_dim must be even and in [2, {}], found {}",
                2 * MAX_HALF_DIM,
                s.k_dim
            )));
        }
        if s.knn > MAX_KNN || s.knn > s.n_keys {
            return Err(Error::Config(format!(
                "knn must be at most {MAX_KNN} and at most n_keys ({}), found {}",
                s.n_keys, s.knn
            )));
        }
        if s.n_keys > 65535 {
            return Err(Error::Config(format!(
                "n_keys must be at most 65535 (slots are u32), found {}",
                s.n_keys
            )));
        }
        if (s.rows as u64) * (s.heads as u64) > u32::MAX as u64 {
            return Err(Error::Config(format!(
                "lookup: {} rows x {} heads is too many",
                s.rows, s.heads
            )));
        }
        Ok(())
    }

    /// Entries of the indices/scores/weights outputs.
    pub fn out_len(&self) -> u64 {
        self.rows as u64 * self.heads as u64 * self.knn as u64
    }

    fn sort_size(&self) -> u32 {
        (self.n_keys + self.knn).next_power_of_two().min(SORT_CAP)
    }
}

/// Buffers of a lookup: `query [rows, heads * k_dim]`, `keys [heads, 2, n_keys, k_dim / 2]`,
/// outputs `indices` (u32), `scores`, `weights`, each `[rows, heads, knn]`.
pub struct Lookup<'a> {
    pub shape: LookupShape,
    pub query: &'a wgpu::Buffer,
    pub keys: &'a wgpu::Buffer,
    pub indices: &'a wgpu::Buffer,
    pub scores: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
}

impl Lookup<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let s = self.shape;
        s.validate()?;
        let (rows, heads, k_dim) = (s.rows as u64, s.heads as u64, s.k_dim as u64);
        check_buffer(gpu, "lookup.query", self.query, rows * heads * k_dim)?;
        check_buffer(gpu, "keys", self.keys, heads * s.n_keys as u64 * k_dim)?;
        check_buffer(gpu, "lookup.indices", self.indices, s.out_len())?;
        check_buffer(gpu, "lookup.scores", self.scores, s.out_len())?;
        check_buffer(gpu, "lookup.weights", self.weights, s.out_len())?;
        let pipeline = gpu.pipeline("pkm_lookup", SOURCE, &[]);
        let params = gpu.uniform(
            "lookup params",
            &Params {
                rows: s.rows,
                heads: s.heads,
                n_keys: s.n_keys,
                half_dim: s.k_dim / 2,
                knn: s.knn,
                qk_norm: s.qk_norm as u32,
                sort_size: s.sort_size(),
                _pad: 0,
            },
        );
        let bind = gpu.bind(
            &pipeline,
            &[
                &params,
                self.query,
                self.keys,
                self.indices,
                self.scores,
                self.weights,
            ],
        );
        let (x, y) = grid(s.rows * s.heads);
        let mut pass = gpu.begin_pass(encoder, "pkm_lookup");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }
}
