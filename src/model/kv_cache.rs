//! The key/value cache of one sequence being decoded: every layer's keys (after RoPE) and
//! values for the positions seen so far, in f32 or as f16 pairs.

use super::config::ModelConfig;
use crate::kernels::Gpu;

/// Keys (after RoPE) and values of every layer for the positions seen so far.
pub struct KvCache {
    /// Positions cached.
    pub len: u32,
    /// Keys and values stored as f16 pairs (`Model::new_cache_f16`), else f32.
    pub f16: bool,
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
}

impl KvCache {
    pub(crate) fn layer(&self, layer: usize) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.k[layer], &self.v[layer])
    }

    /// A cache for one sequence of up to `max_seqlen` positions of a model of `c`.
    pub(crate) fn new(gpu: &Gpu, c: &ModelConfig, f16: bool) -> Self {
        let values = (c.max_seqlen * c.n_kv_heads * c.head_dim) as u64;
        let bytes = if f16 { values.div_ceil(2) * 4 } else { values * 4 };
        KvCache {
            len: 0,
            f16,
            k: (0..c.n_layers)
                .map(|_| gpu.storage("kv cache k", bytes))
                .collect(),
            v: (0..c.n_layers)
                .map(|_| gpu.storage("kv cache v", bytes))
                .collect(),
        }
    }
}
