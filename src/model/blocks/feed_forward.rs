//! The feed-forward kinds, registered: the list (one line each, in `feed_forward_kinds!`
//! below), which kind each layer gets (`FeedForwardParams::declare`), and the enums the model
//! holds over them. What each kind implements is in `blocks` (`FeedForwardKind`,
//! `FeedForwardOnGpu`).
//!
//! A new kind is a file in `model/blocks/` with its parameters type implementing
//! `FeedForwardKind` (parameter order, FLOPs, the weights that may be compact) and its GPU
//! block implementing `FeedForwardOnGpu` (forward, backward); a line in the list; the
//! condition that picks it in `declare`; and its CPU forward in `oracle::model` with its
//! tests. Nothing else in the model names a kind.

use super::dense::DenseParams;
use super::dense_and_memory::{DenseAndMemoryBlock, DenseAndMemoryParams};
use super::memory::{MemoryBlock, MemoryParams};
use super::moe::MoeParams;
use super::{FeedForwardKind, FeedForwardOnGpu, GradSink, Pass};
use crate::error::Result;
use crate::memory::MemoryActivations;
use crate::model::config::{MemoryPlacement, ModelConfig};
use crate::params::{ParamId, Registry};

/// Makes, from one list of `Kind(ParamsType => GpuType)`, the three enums over the kinds
/// (`FeedForwardParams`, `FeedForwardBlock`, `FeedForwardActs`) and their dispatch to the
/// traits (`FeedForwardKind`, `FeedForwardOnGpu`, in `blocks`).
macro_rules! feed_forward_kinds {
    ($($(#[$doc:meta])* $kind:ident($params:ty => $block:ty)),+ $(,)?) => {
        /// The parameters of a layer's feed-forward block, by kind.
        #[derive(Clone, Debug, PartialEq)]
        pub enum FeedForwardParams {
            $($(#[$doc])* $kind($params)),+
        }

        /// A feed-forward block on the GPU.
        pub(crate) enum FeedForwardBlock {
            $($kind(Box<$block>)),+
        }

        /// What a feed-forward block's forward leaves for its backward.
        pub(crate) enum FeedForwardActs {
            $($kind(Box<<$block as FeedForwardOnGpu>::Acts>)),+
        }

        impl FeedForwardParams {
            fn kind(&self) -> &dyn FeedForwardKind {
                match self {
                    $(FeedForwardParams::$kind(p) => p),+
                }
            }
        }

        impl FeedForwardBlock {
            pub fn new(
                params: &FeedForwardParams,
                c: &ModelConfig,
                buffer: &dyn Fn(ParamId) -> wgpu::Buffer,
            ) -> Result<Self> {
                Ok(match params {
                    $(FeedForwardParams::$kind(p) => {
                        FeedForwardBlock::$kind(Box::new(<$block>::new(p, c, buffer)?))
                    })+
                })
            }

            pub fn record_forward(
                &self,
                p: &Pass,
                encoder: &mut wgpu::CommandEncoder,
                x: &wgpu::Buffer,
                h: &wgpu::Buffer,
            ) -> Result<FeedForwardActs> {
                Ok(match self {
                    $(FeedForwardBlock::$kind(b) => {
                        FeedForwardActs::$kind(Box::new(b.record_forward(p, encoder, x, h)?))
                    })+
                })
            }

            #[allow(clippy::too_many_arguments)]
            pub fn record_backward(
                &self,
                p: &Pass,
                encoder: &mut wgpu::CommandEncoder,
                x: &wgpu::Buffer,
                acts: &FeedForwardActs,
                dh: &wgpu::Buffer,
                dx: &wgpu::Buffer,
                grads: &mut GradSink,
            ) -> Result<()> {
                match (self, acts) {
                    $((FeedForwardBlock::$kind(b), FeedForwardActs::$kind(a)) => {
                        b.record_backward(p, encoder, x, a, dh, dx, grads)
                    })+
                    #[allow(unreachable_patterns)]
                    _ => unreachable!("activations come from the same block"),
                }
            }

            pub fn memory_mut(&mut self) -> Option<&mut MemoryBlock> {
                match self {
                    $(FeedForwardBlock::$kind(b) => b.memory_mut()),+
                }
            }
        }

        impl FeedForwardActs {
            pub fn memory(&self) -> Option<&MemoryActivations> {
                match self {
                    $(FeedForwardActs::$kind(a) => <$block as FeedForwardOnGpu>::memory_acts(a)),+
                }
            }
        }
    };
}

feed_forward_kinds! {
    /// The dense SwiGLU.
    Dense(DenseParams => DenseParams),
    /// A memory layer in the feed-forward block's place.
    Memory(MemoryParams => MemoryBlock),
    /// A mixture of SwiGLU experts.
    Moe(MoeParams => MoeParams),
    /// A dense block with a memory layer beside it (a retrofitted memory).
    DenseAndMemory(DenseAndMemoryParams => DenseAndMemoryBlock),
}

impl FeedForwardParams {
    /// Declares layer `layer`'s block under `prefix` (`layers.<l>.`): a memory layer where
    /// `c` puts one (in the block's place, or beside a dense block), a mixture of experts
    /// where `c` has one, else the dense SwiGLU. `values` holds the value tables declared so
    /// far (a memory layer declares its own, or reads the first one's).
    pub(crate) fn declare(
        r: &mut Registry,
        prefix: &str,
        c: &ModelConfig,
        (layer, std): (usize, f32),
        values: &mut Vec<ParamId>,
    ) -> Result<Self> {
        Ok(match (&c.memory, c.is_memory_layer(layer)) {
            (Some(m), true) if c.memory_placement == MemoryPlacement::Parallel => {
                FeedForwardParams::DenseAndMemory(DenseAndMemoryParams::declare(
                    r, prefix, c, m, std, values,
                )?)
            }
            (Some(m), true) => {
                let block = format!("{prefix}feed_forward.");
                FeedForwardParams::Memory(MemoryParams::declare_with_tables(r, &block, m, values, c)?)
            }
            _ => match c.moe_at(layer) {
                Some(m) => FeedForwardParams::Moe(MoeParams::declare(r, prefix, c, m, std)),
                None => FeedForwardParams::Dense(DenseParams::declare(r, prefix, c, std)),
            },
        })
    }

    /// Every parameter of the block, in its declaration order.
    pub fn ids(&self) -> Vec<ParamId> {
        self.kind().ids()
    }

    /// Forward FLOPs per token of the block (multiply-adds x 2).
    pub fn flops_per_token(&self, c: &ModelConfig) -> f64 {
        self.kind().flops_per_token(c)
    }

    /// The weights read from a compact copy where the model has compact weights.
    pub fn compact_weights(&self) -> Vec<ParamId> {
        self.kind().compact_weights()
    }

    /// The block's memory layer, if it has one.
    pub fn memory(&self) -> Option<&MemoryParams> {
        self.kind().memory()
    }

    /// The block's dense SwiGLU, if it has one.
    pub fn dense(&self) -> Option<&DenseParams> {
        self.kind().dense()
    }
}
