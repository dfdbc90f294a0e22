//! What a block reads of the model it belongs to (`ModelContext`): the configuration, the
//! parameters' buffers (and the compact copies forward GEMMs read), the value tables and the
//! RoPE tables. The model hands one to each block's pass (`Model::context`), so the blocks
//! need nothing of the model's own type.

use super::config::ModelConfig;
use super::sharding::Sharding;
use crate::error::{Error, Result};
use crate::kernels::linear::WeightFormat;
use crate::kernels::ops::{Attention, Rope};
use crate::kernels::Gpu;
use crate::memory::{ShardedValues, ValuePool};
use crate::params::ParamId;

/// A GEMM weight's compact copy (`model::precision`) and its format.
pub(crate) type CompactWeight = (wgpu::Buffer, WeightFormat);

#[derive(Clone, Copy)]
pub(crate) struct ModelContext<'a> {
    pub config: &'a ModelConfig,
    /// One buffer per registry entry.
    pub params: &'a [wgpu::Buffer],
    /// Compact copies of GEMM weights by parameter id (empty for f32).
    pub compact: &'a [Option<CompactWeight>],
    /// A pool per value table (none for a sharded one).
    pub values: &'a [(ParamId, ValuePool)],
    /// The tables sharded over several devices (`Model::new_sharded`).
    pub sharding: Option<&'a Sharding>,
    pub rope_cos: &'a wgpu::Buffer,
    pub rope_sin: &'a wgpu::Buffer,
    /// The feed-forward blocks store their hidden activations as f16.
    pub f16_activations: bool,
}

impl<'a> ModelContext<'a> {
    /// The buffer of parameter `id`.
    pub fn param(&self, id: ParamId) -> &'a wgpu::Buffer {
        &self.params[id.0]
    }

    /// The buffer a forward GEMM reads for weight `id`, and its format.
    pub fn gemm_weight(&self, id: ParamId) -> (&'a wgpu::Buffer, WeightFormat) {
        match self.compact.get(id.0).and_then(Option::as_ref) {
            Some((buffer, format)) => (buffer, *format),
            None => (&self.params[id.0], WeightFormat::F32),
        }
    }

    /// The pool of value table `id` (an error for a sharded one: see `sharded`).
    pub fn pool(&self, id: ParamId) -> Result<&'a ValuePool> {
        if self.sharded(id).is_some() {
            return Err(Sharding::whole_table_needed("reading the whole value table"));
        }
        self.values
            .iter()
            .find(|(table, _)| *table == id)
            .map(|(_, pool)| pool)
            .ok_or_else(|| Error::MissingTensor(format!("value table {id:?}")))
    }

    /// Value table `id`'s shards, where the table is sharded.
    pub fn sharded(&self, id: ParamId) -> Option<&'a ShardedValues> {
        self.sharding.and_then(|s| s.table(id))
    }

    /// The devices of a sharded model, `main` first.
    pub fn shard_devices(&self, main: &'a Gpu) -> Vec<&'a Gpu> {
        self.sharding.map_or_else(|| vec![main], |s| s.devices(main))
    }

    /// RoPE over `heads` heads of `[batch, seq]` positions (`inverse`: its transpose, for the
    /// backward).
    pub fn rope(&self, batch: u32, seq: u32, heads: usize, inverse: bool) -> Rope<'a> {
        Rope {
            batch,
            seq,
            heads: heads as u32,
            head_dim: self.config.head_dim as u32,
            pos0: 0,
            inverse,
            cos: self.rope_cos,
            sin: self.rope_sin,
        }
    }

    /// Causal attention of the configuration's heads over `[batch, seq]` positions.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<'b>(
        &self,
        batch: u32,
        seq: u32,
        q: &'b wgpu::Buffer,
        k: &'b wgpu::Buffer,
        v: &'b wgpu::Buffer,
        out: &'b wgpu::Buffer,
        lse: &'b wgpu::Buffer,
    ) -> Attention<'b> {
        let c = self.config;
        Attention {
            batch,
            seq,
            heads: c.n_heads as u32,
            kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            q,
            k,
            v,
            out,
            lse,
            kv_f16: false,
        }
    }
}
