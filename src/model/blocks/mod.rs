//! The transformer's blocks. A layer is two pre-norm residual blocks, `h += f(norm(h))`: the
//! attention block, then a feed-forward block (dense SwiGLU, a memory layer, a mixture of
//! experts, or a dense block with a memory beside it). Each block is one type in its own file
//! that declares its parameters into the registry and records its forward and backward; the
//! model's forward and backward are loops over blocks (`model::gpu`, `model::backward`), and
//! the norms around them are the model's.
//!
//! The feed-forward kinds implement one interface (`FeedForwardKind`, `FeedForwardOnGpu`,
//! below) and are listed in one place (`feed_forward`): adding one touches its own file, its
//! line there, and its tests.

mod attention;
mod dense;
mod dense_and_memory;
mod feed_forward;
mod memory;
mod moe;

pub use attention::AttentionParams;
pub use dense::DenseParams;
pub use dense_and_memory::DenseAndMemoryParams;
pub use feed_forward::FeedForwardParams;
pub use memory::MemoryParams;
pub use moe::MoeParams;

pub(crate) use attention::AttentionActs;
pub(crate) use feed_forward::{FeedForwardActs, FeedForwardBlock};
pub(crate) use memory::MemoryBlock;

use super::context::ModelContext;
use super::kv_cache::KvCache;
use crate::error::Result;
use crate::kernels::linear::Linear;
use crate::kernels::Gpu;
use crate::memory::MemoryActivations;
use crate::model::config::ModelConfig;
use crate::params::ParamId;

/// What the model asks of a feed-forward kind's parameters.
pub(crate) trait FeedForwardKind {
    /// Every parameter of the block, in its declaration order.
    fn ids(&self) -> Vec<ParamId>;

    /// Forward FLOPs per token (multiply-adds x 2).
    fn flops_per_token(&self, c: &ModelConfig) -> f64;

    /// The weights that a model with compact weights (f16 or 8-bit) reads from a compact copy
    /// in its GEMMs (`Pass::linear`). A memory layer keeps its own compact copies
    /// (`MemoryLayer::use_f16_weights`) and lists none here.
    fn compact_weights(&self) -> Vec<ParamId>;

    /// The block's memory layer, if it has one.
    fn memory(&self) -> Option<&MemoryParams> {
        None
    }

    /// The block's dense SwiGLU, if it has one (LoRA adapts its weights).
    fn dense(&self) -> Option<&DenseParams> {
        None
    }
}

/// A feed-forward block on the GPU: `h += f(x)` and its backward.
pub(crate) trait FeedForwardOnGpu: Sized {
    /// The parameters it is made from.
    type Params;
    /// What its forward leaves for its backward.
    type Acts;

    /// The block over the model's parameter buffers (`buffer(id)`).
    fn new(params: &Self::Params, c: &ModelConfig, buffer: &dyn Fn(ParamId) -> wgpu::Buffer) -> Result<Self>;

    /// Records `h += f(x)` for `x` (the block's normed input, `[rows, dim]`).
    fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<Self::Acts>;

    /// Records the backward of `record_forward` for `dh` (dL/dh after the block): writes
    /// dL/dx into `dx` and the block's parameter gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &Self::Acts,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()>;

    /// The block's memory layer, if it has one (compact weights and activations switch it).
    fn memory_mut(&mut self) -> Option<&mut MemoryBlock> {
        None
    }

    /// The memory layer's lookup in `acts`, if the block has one.
    fn memory_acts(_acts: &Self::Acts) -> Option<&MemoryActivations> {
        None
    }
}

/// A block on the GPU.
pub(crate) enum Block {
    Attention(AttentionParams),
    FeedForward(FeedForwardBlock),
}

/// What a block's forward leaves for its backward.
pub(crate) enum BlockActs {
    Attention(Box<AttentionActs>),
    FeedForward(FeedForwardActs),
}

impl BlockActs {
    /// The memory layer's lookup, if the block has one.
    pub fn memory(&self) -> Option<&MemoryActivations> {
        match self {
            BlockActs::FeedForward(f) => f.memory(),
            BlockActs::Attention(_) => None,
        }
    }
}

/// What every block's forward sees: the model, the batch's shape, and where it is.
pub(crate) struct Pass<'a> {
    pub gpu: &'a Gpu,
    pub model: ModelContext<'a>,
    pub batch: u32,
    pub seq: u32,
    /// The layer the block belongs to.
    pub layer: usize,
    /// Earlier positions of the one sequence being decoded, if any.
    pub cache: Option<&'a KvCache>,
}

impl Pass<'_> {
    pub fn rows(&self) -> u32 {
        self.batch * self.seq
    }

    /// An activation or gradient of `n` f32 that the block writes in full before reading
    /// it (a step plan does not clear it between steps).
    pub fn f32s(&self, label: &str, n: u32) -> wgpu::Buffer {
        self.gpu.scratch(label, n as u64 * 4)
    }

    pub fn param(&self, id: ParamId) -> &wgpu::Buffer {
        self.model.param(id)
    }

    /// A forward GEMM `y [m, n] = x w^T` with weight `id`, reading its compact copy where the
    /// model has one (`Model::use_f16_weights`, `use_q8_weights`).
    pub fn linear<'b>(
        &'b self,
        x: &'b wgpu::Buffer,
        id: ParamId,
        y: &'b wgpu::Buffer,
        shape: (u32, u32, u32),
    ) -> Linear<'b> {
        let (w, w_format) = self.model.gemm_weight(id);
        Linear {
            w_format,
            ..Linear::new("linear", x, w, y, shape)
        }
    }
}

/// Gradients of one backward pass, by parameter identity.
pub(crate) struct GradSink {
    pub by_id: Vec<Option<wgpu::Buffer>>,
    /// Parameters whose gradient nobody reads (frozen weights while teaching): their weight
    /// GEMMs are not recorded, and a 4-byte stand-in takes their place.
    pub skipped: Vec<bool>,
    /// Every value table's gradient, summed over the memory layers that read it.
    pub values: Vec<ValueTableGrad>,
    /// A sharded table's gradient: one per shard, on the shard's device, in device order.
    pub sharded: Vec<(ParamId, Vec<ValueTableGrad>)>,
}

/// A value table's gradient (zeroed, then added into by each memory layer reading it).
pub(crate) struct ValueTableGrad {
    pub id: ParamId,
    pub grad: wgpu::Buffer,
    pub rows: u64,
    /// A u32 per row, 1 where some layer read it (when asked for: the lazy update's rows).
    pub read: Option<wgpu::Buffer>,
}

impl GradSink {
    pub fn set(&mut self, id: ParamId, grad: wgpu::Buffer) {
        self.by_id[id.0] = Some(grad);
    }

    /// Whether parameter `id`'s gradient is wanted.
    pub fn wants(&self, id: ParamId) -> bool {
        !self.skipped.get(id.0).copied().unwrap_or(false)
    }

    /// Sets `id`'s gradient to `grad()` where it is wanted, else to a stand-in.
    pub fn set_with(
        &mut self,
        gpu: &Gpu,
        id: ParamId,
        grad: impl FnOnce() -> Result<wgpu::Buffer>,
    ) -> Result<()> {
        let g = match self.wants(id) {
            true => grad()?,
            false => gpu.scratch("skipped gradient", 4),
        };
        self.set(id, g);
        Ok(())
    }

    /// Records the gradient of weight `id` (`[out, in]`): `dy^T x` over `rows` rows, for
    /// `dy [rows, out]` and `x [rows, in]`; nothing where it is not wanted.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_grad(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (id, label): (ParamId, &'static str),
        dy: &wgpu::Buffer,
        x: &wgpu::Buffer,
        (out, inp, rows): (u32, u32, u32),
    ) -> Result<()> {
        self.set_with(gpu, id, || {
            let dw = gpu.scratch(label, out as u64 * inp as u64 * 4);
            crate::kernels::linear::gemm(
                gpu,
                encoder,
                label,
                (dy, true),
                (x, true),
                &dw,
                (out, inp, rows),
                false,
            )?;
            Ok(dw)
        })
    }

    /// The gradients of sharded table `id`'s shards, in device order.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn sharded_table(&self, id: ParamId) -> Result<&[ValueTableGrad]> {
        self.sharded
            .iter()
            .find(|(t, _)| *t == id)
            .map(|(_, shards)| &shards[..])
            .ok_or_else(|| crate::error::Error::MissingTensor(format!("grad of sharded value table {id:?}")))
    }

    pub fn value_table(&self, id: ParamId) -> Result<&ValueTableGrad> {
        self.values
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| crate::error::Error::MissingTensor(format!("grad of value table {id:?}")))
    }
}

impl Block {
    /// Records `h += f(x)` for `x` (the block's normed input, `[rows, dim]`).
    pub fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<BlockActs> {
        Ok(match self {
            Block::Attention(a) => BlockActs::Attention(Box::new(a.record_forward(p, encoder, x, h)?)),
            Block::FeedForward(f) => BlockActs::FeedForward(f.record_forward(p, encoder, x, h)?),
        })
    }

    /// The block's memory layer, if it has one.
    pub fn memory_mut(&mut self) -> Option<&mut MemoryBlock> {
        match self {
            Block::FeedForward(f) => f.memory_mut(),
            Block::Attention(_) => None,
        }
    }

    /// Records the backward of `record_forward` for `dh` (dL/dh after the block): writes
    /// dL/dx into `dx` and the block's parameter gradients into `grads`.
    #[allow(clippy::too_many_arguments)]
    pub fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &BlockActs,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        match (self, acts) {
            (Block::Attention(a), BlockActs::Attention(acts)) => {
                a.record_backward(p, encoder, x, acts, dh, dx, grads)
            }
            (Block::FeedForward(f), BlockActs::FeedForward(acts)) => {
                f.record_backward(p, encoder, x, acts, dh, dx, grads)
            }
            _ => unreachable!("activations come from the same block"),
        }
    }
}
