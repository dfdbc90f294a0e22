//! The dense SwiGLU feed-forward block: `h += w2(silu(w1 x) * w3 x)`.

use super::{FeedForwardKind, FeedForwardOnGpu, GradSink, Pass};
use crate::error::Result;
use crate::kernels::linear::{gemm, Gate, Linear};
use crate::kernels::swilu_backward::SwiluBackward;
use crate::model::config::ModelConfig;
use crate::params::{ParamId, Registry};

#[derive(Clone, Debug, PartialEq)]
pub struct DenseParams {
    /// `[hidden, dim]`
    pub w1: ParamId,
    /// `[dim, hidden]`
    pub w2: ParamId,
    /// `[hidden, dim]`
    pub w3: ParamId,
}

/// `w3 x`, `w1 x` and `(w3 x) * silu(w1 x)`; with f16 activations (`Model::
/// use_f16_activations`, inference) the first and last hold f16 pairs and `w1 x` is not kept.
pub(crate) struct DenseActs {
    pub u: wgpu::Buffer,
    pub g: Option<wgpu::Buffer>,
    pub gated: wgpu::Buffer,
}

impl DenseParams {
    pub(crate) fn declare(r: &mut Registry, prefix: &str, c: &ModelConfig, std: f32) -> Self {
        let (d, hidden) = (c.dim, c.hidden);
        let mut w = |name: &str, shape| r.normal_weight(format!("{prefix}feed_forward.{name}"), shape, std);
        DenseParams {
            w1: w("w1.weight", vec![hidden, d]),
            w2: w("w2.weight", vec![d, hidden]),
            w3: w("w3.weight", vec![hidden, d]),
        }
    }
}

impl FeedForwardKind for DenseParams {
    fn ids(&self) -> Vec<ParamId> {
        vec![self.w1, self.w2, self.w3]
    }

    fn flops_per_token(&self, c: &ModelConfig) -> f64 {
        2.0 * 3.0 * c.dim as f64 * c.hidden as f64
    }

    fn compact_weights(&self) -> Vec<ParamId> {
        vec![self.w1, self.w2, self.w3]
    }

    fn dense(&self) -> Option<&DenseParams> {
        Some(self)
    }
}

impl FeedForwardOnGpu for DenseParams {
    type Params = DenseParams;
    type Acts = DenseActs;

    fn new(params: &DenseParams, _: &ModelConfig, _: &dyn Fn(ParamId) -> wgpu::Buffer) -> Result<Self> {
        Ok(params.clone())
    }

    fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<DenseActs> {
        let (gpu, rows) = (p.gpu, p.rows());
        let (d, hidden) = (p.model.config.dim as u32, p.model.config.hidden as u32);
        let f16 = p.model.f16_activations && hidden.is_multiple_of(2);
        let hidden_act = |label: &str| {
            p.gpu
                .scratch(label, rows as u64 * hidden as u64 * if f16 { 2 } else { 4 })
        };
        let (u, gated) = (hidden_act("w3 x"), hidden_act("swiglu"));
        let g = (!f16).then(|| p.f32s("w1 x", rows * hidden));
        Linear {
            y_f16: f16,
            ..p.linear(x, self.w3, &u, (rows, hidden, d))
        }
        .record(gpu, encoder)?;
        Linear {
            gate: Some(Gate {
                by: &u,
                by_f16: f16,
                keep_input: g.as_ref(),
            }),
            y_f16: f16,
            ..p.linear(x, self.w1, &gated, (rows, hidden, d))
        }
        .record(gpu, encoder)?;
        Linear {
            accumulate: true,
            x_f16: f16,
            ..p.linear(&gated, self.w2, h, (rows, d, hidden))
        }
        .record(gpu, encoder)?;
        Ok(DenseActs { u, g, gated })
    }

    fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &DenseActs,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        let (gpu, rows) = (p.gpu, p.rows());
        let (d, hidden) = (p.model.config.dim as u32, p.model.config.hidden as u32);
        let (w1, w2, w3) = (p.param(self.w1), p.param(self.w2), p.param(self.w3));
        grads.weight_grad(
            gpu,
            encoder,
            (self.w2, "grad w2"),
            dh,
            &acts.gated,
            (d, hidden, rows),
        )?;
        let d_gated = p.f32s("grad swiglu", rows * hidden);
        gemm(
            gpu,
            encoder,
            "grad swiglu",
            (dh, false),
            (w2, true),
            &d_gated,
            (rows, hidden, d),
            false,
        )?;
        let (du, dg) = (
            p.f32s("grad w3 x", rows * hidden),
            p.f32s("grad w1 x", rows * hidden),
        );
        let g = acts
            .g
            .as_ref()
            .ok_or_else(|| crate::error::Error::Config("the backward needs f32 activations".into()))?;
        SwiluBackward {
            len: rows * hidden,
            dh: &d_gated,
            y: &acts.u,
            g,
            dy: &du,
            dg: &dg,
        }
        .record(gpu, encoder)?;
        grads.weight_grad(gpu, encoder, (self.w1, "grad w1"), &dg, x, (hidden, d, rows))?;
        grads.weight_grad(gpu, encoder, (self.w3, "grad w3"), &du, x, (hidden, d, rows))?;
        gemm(
            gpu,
            encoder,
            "grad ffn input",
            (&dg, false),
            (w1, true),
            dx,
            (rows, d, hidden),
            false,
        )?;
        gemm(
            gpu,
            encoder,
            "grad ffn input",
            (&du, false),
            (w3, true),
            dx,
            (rows, d, hidden),
            true,
        )?;
        Ok(())
    }
}
