//! A memory layer beside a dense SwiGLU (`MemoryPlacement::Parallel`, how a memory is
//! retrofitted into a pretrained model): both read the same normed input, `h += w2(silu(w1
//! x) * w3 x) + memory(x)`; the backward adds their input gradients.

use super::dense::{DenseActs, DenseParams};
use super::memory::{MemoryBlock, MemoryParams};
use super::{FeedForwardKind, FeedForwardOnGpu, GradSink, Pass};
use crate::error::Result;
use crate::kernels::ops::record_add;
use crate::memory::{MemoryActivations, MemoryConfig};
use crate::model::config::ModelConfig;
use crate::params::{ParamId, Registry};

#[derive(Clone, Debug, PartialEq)]
pub struct DenseAndMemoryParams {
    pub dense: DenseParams,
    /// Declared under `layers.<l>.memory.`, its own block's name.
    pub memory: MemoryParams,
}

impl DenseAndMemoryParams {
    /// Declares the dense block, then the memory layer (its value tables first where it is
    /// the first to read them).
    pub(crate) fn declare(
        r: &mut Registry,
        prefix: &str,
        c: &ModelConfig,
        m: &MemoryConfig,
        std: f32,
        values: &mut Vec<ParamId>,
    ) -> Result<Self> {
        let dense = DenseParams::declare(r, prefix, c, std);
        let memory = MemoryParams::declare_with_tables(r, &format!("{prefix}memory."), m, values, c)?;
        Ok(DenseAndMemoryParams { dense, memory })
    }
}

impl FeedForwardKind for DenseAndMemoryParams {
    fn ids(&self) -> Vec<ParamId> {
        let mut ids = self.dense.ids();
        ids.extend(self.memory.ids());
        ids
    }

    fn flops_per_token(&self, c: &ModelConfig) -> f64 {
        self.dense.flops_per_token(c) + self.memory.flops_per_token(c)
    }

    fn compact_weights(&self) -> Vec<ParamId> {
        self.dense.compact_weights()
    }

    fn memory(&self) -> Option<&MemoryParams> {
        Some(&self.memory)
    }

    fn dense(&self) -> Option<&DenseParams> {
        Some(&self.dense)
    }
}

/// The two blocks on the GPU.
pub(crate) struct DenseAndMemoryBlock {
    dense: DenseParams,
    memory: MemoryBlock,
}

impl FeedForwardOnGpu for DenseAndMemoryBlock {
    type Params = DenseAndMemoryParams;
    type Acts = (DenseActs, MemoryActivations);

    fn new(
        params: &DenseAndMemoryParams,
        c: &ModelConfig,
        buffer: &dyn Fn(ParamId) -> wgpu::Buffer,
    ) -> Result<Self> {
        Ok(DenseAndMemoryBlock {
            dense: DenseParams::new(&params.dense, c, buffer)?,
            memory: MemoryBlock::new(&params.memory, c, buffer)?,
        })
    }

    fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<Self::Acts> {
        let dense = self.dense.record_forward(p, encoder, x, h)?;
        Ok((dense, self.memory.record_forward(p, encoder, x, h)?))
    }

    fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        (dense, memory): &Self::Acts,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        self.dense.record_backward(p, encoder, x, dense, dh, dx, grads)?;
        let n = p.rows() * p.model.config.dim as u32;
        let dx_memory = p.f32s("grad memory input", n);
        self.memory
            .record_backward(p, encoder, x, memory, dh, &dx_memory, grads)?;
        record_add(p.gpu, encoder, &dx_memory, dx, n)
    }

    fn memory_mut(&mut self) -> Option<&mut MemoryBlock> {
        Some(&mut self.memory)
    }

    fn memory_acts((_, memory): &Self::Acts) -> Option<&MemoryActivations> {
        Some(memory)
    }
}
