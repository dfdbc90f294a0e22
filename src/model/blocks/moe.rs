//! The mixture-of-experts feed-forward block (`moe_args`, a memlayers extension): `h +=
//! sum_k gate_k * expert_k(x)` over each token's top-k experts of a linear router, SwiGLU
//! experts, the Switch load-balancing loss's gradient added in the backward
//! (`kernels::moe`; oracle: `reference::moe`).

use super::{FeedForwardKind, FeedForwardOnGpu, GradSink, Pass};
use crate::error::Result;
use crate::kernels::linear::Linear;
use crate::kernels::moe::{
    record_backward, record_combine, record_hidden, record_route, MoeActs, MoeDims, MoeWeightBuffers,
};
use crate::model::config::{ModelConfig, MoeConfig};
use crate::params::{ParamId, Registry};

#[derive(Clone, Debug, PartialEq)]
pub struct MoeParams {
    /// `[experts, dim]`
    pub router: ParamId,
    /// `[experts, hidden, dim]`
    pub w1: ParamId,
    /// `[experts, dim, hidden]`
    pub w2: ParamId,
    /// `[experts, hidden, dim]`
    pub w3: ParamId,
    pub config: MoeConfig,
}

/// The router's softmax and choices, and the chosen experts' `w1 x`, `w3 x`.
pub(crate) struct MoeBlockActs {
    pub probs: wgpu::Buffer,
    pub chosen: wgpu::Buffer,
    pub gates: wgpu::Buffer,
    pub a1: wgpu::Buffer,
    pub a3: wgpu::Buffer,
}

impl MoeParams {
    pub(crate) fn declare(r: &mut Registry, prefix: &str, c: &ModelConfig, m: &MoeConfig, std: f32) -> Self {
        let (d, e, h) = (c.dim, m.experts, m.hidden);
        let mut w = |name: &str, shape| r.normal_weight(format!("{prefix}feed_forward.{name}"), shape, std);
        MoeParams {
            router: w("router.weight", vec![e, d]),
            w1: w("experts.w1", vec![e, h, d]),
            w2: w("experts.w2", vec![e, d, h]),
            w3: w("experts.w3", vec![e, h, d]),
            config: *m,
        }
    }

    fn dims(&self, p: &Pass) -> MoeDims {
        MoeDims {
            tokens: p.rows(),
            dim: p.model.config.dim as u32,
            hidden: self.config.hidden as u32,
            experts: self.config.experts as u32,
            top_k: self.config.top_k as u32,
        }
    }
}

impl FeedForwardKind for MoeParams {
    fn ids(&self) -> Vec<ParamId> {
        vec![self.router, self.w1, self.w2, self.w3]
    }

    fn flops_per_token(&self, c: &ModelConfig) -> f64 {
        self.config.flops_per_token(c.dim)
    }

    /// The router and experts are read as f32 (`kernels::moe` has no compact path).
    fn compact_weights(&self) -> Vec<ParamId> {
        Vec::new()
    }
}

impl FeedForwardOnGpu for MoeParams {
    type Params = MoeParams;
    type Acts = MoeBlockActs;

    fn new(params: &MoeParams, _: &ModelConfig, _: &dyn Fn(ParamId) -> wgpu::Buffer) -> Result<Self> {
        Ok(params.clone())
    }

    fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<MoeBlockActs> {
        let (gpu, d) = (p.gpu, self.dims(p));
        let picks = d.tokens * d.top_k;
        let logits = p.f32s("router logits", d.tokens * d.experts);
        Linear::new(
            "linear",
            x,
            p.param(self.router),
            &logits,
            (d.tokens, d.experts, d.dim),
        )
        .record(gpu, encoder)?;
        let acts = MoeBlockActs {
            probs: p.f32s("router probabilities", d.tokens * d.experts),
            chosen: p.f32s("chosen experts", picks),
            gates: p.f32s("expert gates", picks),
            a1: p.f32s("experts w1 x", picks * d.hidden),
            a3: p.f32s("experts w3 x", picks * d.hidden),
        };
        record_route(gpu, encoder, d, &logits, (&acts.probs, &acts.chosen, &acts.gates))?;
        record_hidden(
            gpu,
            encoder,
            d,
            (x, p.param(self.w1), p.param(self.w3), &acts.chosen),
            (&acts.a1, &acts.a3),
        )?;
        record_combine(
            gpu,
            encoder,
            d,
            (&acts.a1, &acts.a3, &acts.chosen, &acts.gates),
            p.param(self.w2),
            (h, true),
        )?;
        Ok(acts)
    }

    fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &MoeBlockActs,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        let g = record_backward(
            p.gpu,
            encoder,
            self.dims(p),
            self.config.aux_loss_coef,
            (x, dh),
            MoeActs {
                probs: &acts.probs,
                chosen: &acts.chosen,
                gates: &acts.gates,
                a1: &acts.a1,
                a3: &acts.a3,
            },
            MoeWeightBuffers {
                router: p.param(self.router),
                w1: p.param(self.w1),
                w3: p.param(self.w3),
                w2: p.param(self.w2),
            },
            dx,
        )?;
        grads.set(self.router, g.router);
        grads.set(self.w1, g.w1);
        grads.set(self.w2, g.w2);
        grads.set(self.w3, g.w3);
        Ok(())
    }
}
