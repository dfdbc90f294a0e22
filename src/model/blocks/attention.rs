//! The attention block: `h += wo(attention(rope(wq x), rope(wk x), wv x))`, causal, with
//! grouped key/value heads, and a KV cache for decoding. Hugging Face variants add biases to
//! the q/k/v projections (Qwen2) and an RMSNorm of each q and k head before RoPE (Qwen3).

use super::{GradSink, Pass};
use crate::error::Result;
use crate::kernels::linear::{column_sums, gemm, Linear};
use crate::kernels::ops::{record_pack_f16, Attention, RmsNorm, Rope};
use crate::model::config::ModelConfig;
use crate::params::{Group, Init, ParamId, Registry};

#[derive(Clone, Debug, PartialEq)]
pub struct AttentionParams {
    /// `[n_heads * head_dim, dim]`
    pub wq: ParamId,
    /// `[n_kv_heads * head_dim, dim]`
    pub wk: ParamId,
    pub wv: ParamId,
    /// `[dim, n_heads * head_dim]`
    pub wo: ParamId,
    /// The q, k and v projections' biases (`TransformerVariant::qkv_bias`).
    pub qkv_bias: Option<[ParamId; 3]>,
    /// The per-head q and k norms' weights, `[head_dim]` each (`TransformerVariant::qk_norm`).
    pub qk_norm: Option<[ParamId; 2]>,
}

/// What the forward leaves for the backward.
pub(crate) struct AttentionActs {
    pub q_rot: wgpu::Buffer,
    pub k_rot: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub attn: wgpu::Buffer,
    pub lse: wgpu::Buffer,
    /// With per-head q/k norms: each norm's input and per-row `rstd`, q's then k's.
    pub head_norms: Option<[(wgpu::Buffer, wgpu::Buffer); 2]>,
}

impl AttentionParams {
    pub(crate) fn declare(r: &mut Registry, prefix: &str, c: &ModelConfig, std: f32) -> Self {
        let (d, qd, kvd) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut w = |name: &str, shape| r.normal_weight(format!("{prefix}attention.{name}"), shape, std);
        let (wq, wk, wv, wo) = (
            w("wq.weight", vec![qd, d]),
            w("wk.weight", vec![kvd, d]),
            w("wv.weight", vec![kvd, d]),
            w("wo.weight", vec![d, qd]),
        );
        let mut zeros = |name: &str, len| {
            r.declare(
                format!("{prefix}attention.{name}"),
                vec![len],
                Init::Zeros,
                Group::Weights,
            )
        };
        let qkv_bias = c
            .variant
            .qkv_bias
            .then(|| [zeros("wq.bias", qd), zeros("wk.bias", kvd), zeros("wv.bias", kvd)]);
        let mut ones = |name: &str| {
            r.declare(
                format!("{prefix}attention.{name}"),
                vec![c.head_dim],
                Init::Ones,
                Group::Weights,
            )
        };
        let qk_norm = c
            .variant
            .qk_norm
            .then(|| [ones("q_norm.weight"), ones("k_norm.weight")]);
        AttentionParams {
            wq,
            wk,
            wv,
            wo,
            qkv_bias,
            qk_norm,
        }
    }

    /// Every parameter, in declaration order.
    pub fn ids(&self) -> Vec<ParamId> {
        let mut ids = vec![self.wq, self.wk, self.wv, self.wo];
        ids.extend(self.qkv_bias.iter().flatten());
        ids.extend(self.qk_norm.iter().flatten());
        ids
    }

    /// `y = x w^T (+ b)` for projection `i` of q, k, v (the bias where the variant has one).
    fn projection<'b>(
        &self,
        p: &'b Pass,
        i: usize,
        x: &'b wgpu::Buffer,
        y: &'b wgpu::Buffer,
        shape: (u32, u32, u32),
    ) -> Linear<'b> {
        let w = [self.wq, self.wk, self.wv][i];
        Linear {
            bias: self.qkv_bias.map(|b| p.param(b[i])),
            ..p.linear(x, w, y, shape)
        }
    }

    /// The per-head norm `which` (0: q, 1: k) over `x` `[rows, heads * head_dim]`, its
    /// weight and rstd given.
    fn head_norm<'b>(
        &self,
        p: &'b Pass,
        which: usize,
        x: &'b wgpu::Buffer,
        rstd: &'b wgpu::Buffer,
        heads: u32,
    ) -> Option<RmsNorm<'b>> {
        let c = &p.model.config;
        self.qk_norm.map(|norms| RmsNorm {
            rows: p.rows() * heads,
            d: c.head_dim as u32,
            eps: c.norm_eps,
            x,
            weight: p.param(norms[which]),
            rstd,
        })
    }

    /// Qwen3's norm of each head of `x` (`[rows, heads * head_dim]`) into a new buffer, with
    /// `x` and the rows' rstd for the backward; or `x` itself without one.
    fn norm_heads(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        which: usize,
        x: wgpu::Buffer,
        heads: u32,
    ) -> Result<(wgpu::Buffer, Option<(wgpu::Buffer, wgpu::Buffer)>)> {
        let rstd = p.f32s("head rstd", p.rows() * heads);
        let Some(norm) = self.head_norm(p, which, &x, &rstd, heads) else {
            return Ok((x, None));
        };
        let normed = p.f32s(["q normed", "k normed"][which], norm.rows * norm.d);
        norm.record_forward(p.gpu, encoder, &normed)?;
        Ok((normed, Some((x, rstd))))
    }

    fn dims(p: &Pass) -> (u32, u32, u32) {
        let c = &p.model.config;
        let hd = c.head_dim as u32;
        (c.dim as u32, c.n_heads as u32 * hd, c.n_kv_heads as u32 * hd)
    }

    pub(crate) fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<AttentionActs> {
        let (gpu, m, c) = (p.gpu, p.model, &p.model.config);
        let (rows, (d, qd, kvd)) = (p.rows(), Self::dims(p));
        let pos0 = p.cache.map_or(0, |k| k.len);
        let (q, k, v) = (
            p.f32s("q", rows * qd),
            p.f32s("k", rows * kvd),
            p.f32s("v", rows * kvd),
        );
        let (q_rot, k_rot) = (p.f32s("q rotated", rows * qd), p.f32s("k rotated", rows * kvd));
        let (attn, lse) = (
            p.f32s("attention", rows * qd),
            p.f32s("lse", rows * c.n_heads as u32),
        );
        self.projection(p, 0, x, &q, (rows, qd, d)).record(gpu, encoder)?;
        self.projection(p, 1, x, &k, (rows, kvd, d))
            .record(gpu, encoder)?;
        self.projection(p, 2, x, &v, (rows, kvd, d))
            .record(gpu, encoder)?;
        let (q, q_norm) = self.norm_heads(p, encoder, 0, q, c.n_heads as u32)?;
        let (k, k_norm) = self.norm_heads(p, encoder, 1, k, c.n_kv_heads as u32)?;
        // Queries and keys rotated in one dispatch.
        Rope {
            pos0,
            ..m.rope(p.batch, p.seq, c.n_heads, false)
        }
        .record_pair(gpu, encoder, (&q, &q_rot), c.n_kv_heads as u32, (&k, &k_rot))?;
        match p.cache {
            None => m
                .attention(p.batch, p.seq, &q_rot, &k_rot, &v, &attn, &lse)
                .record_forward(gpu, encoder)?,
            Some(cache) => {
                let (ck, cv) = cache.layer(p.layer);
                let (at, len) = (pos0 * kvd, p.seq * kvd);
                if cache.f16 {
                    // kvd = kv_heads x head_dim is even (RoPE pairs), so every position
                    // starts on a whole word.
                    record_pack_f16(gpu, encoder, &k_rot, ck, at / 2, len)?;
                    record_pack_f16(gpu, encoder, &v, cv, at / 2, len)?;
                } else {
                    let bytes = len as u64 * 4;
                    gpu.copy(encoder, (&k_rot, 0), (ck, at as u64 * 4), bytes);
                    gpu.copy(encoder, (&v, 0), (cv, at as u64 * 4), bytes);
                }
                Attention {
                    kv_f16: cache.f16,
                    ..m.attention(p.batch, p.seq, &q_rot, ck, cv, &attn, &lse)
                }
                .record_decode(gpu, encoder, pos0 + p.seq)?;
            }
        }
        Linear {
            accumulate: true,
            ..p.linear(&attn, self.wo, h, (rows, d, qd))
        }
        .record(gpu, encoder)?;
        Ok(AttentionActs {
            q_rot,
            k_rot,
            v,
            attn,
            lse,
            head_norms: q_norm.zip(k_norm).map(|(q, k)| [q, k]),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &AttentionActs,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        let (gpu, m, c) = (p.gpu, p.model, &p.model.config);
        let (rows, (d, qd, kvd)) = (p.rows(), Self::dims(p));
        grads.weight_grad(gpu, encoder, (self.wo, "grad wo"), dh, &acts.attn, (d, qd, rows))?;
        let d_attn = p.f32s("grad attention", rows * qd);
        gemm(
            gpu,
            encoder,
            "grad attention",
            (dh, false),
            (p.param(self.wo), true),
            &d_attn,
            (rows, qd, d),
            false,
        )?;
        let (dq_rot, dk_rot, dv) = (
            p.f32s("grad q rotated", rows * qd),
            p.f32s("grad k rotated", rows * kvd),
            p.f32s("grad v", rows * kvd),
        );
        m.attention(
            p.batch,
            p.seq,
            &acts.q_rot,
            &acts.k_rot,
            &acts.v,
            &acts.attn,
            &acts.lse,
        )
        .record_backward(gpu, encoder, &d_attn, &dq_rot, &dk_rot, &dv)?;
        let (dq, dk) = (p.f32s("grad q", rows * qd), p.f32s("grad k", rows * kvd));
        m.rope(p.batch, p.seq, c.n_heads, true).record_pair(
            gpu,
            encoder,
            (&dq_rot, &dq),
            c.n_kv_heads as u32,
            (&dk_rot, &dk),
        )?;
        // Through the per-head norms: dq and dk become the gradients of the projections'
        // outputs.
        let (dq, dk) = match &acts.head_norms {
            None => (dq, dk),
            Some(inputs) => {
                let mut pre = Vec::with_capacity(2);
                for (which, ((x_in, rstd), (dy, heads))) in inputs
                    .iter()
                    .zip([(&dq, c.n_heads as u32), (&dk, c.n_kv_heads as u32)])
                    .enumerate()
                {
                    let norm = self
                        .head_norm(p, which, x_in, rstd, heads)
                        .expect("head norms were recorded");
                    let n = norm.rows * norm.d;
                    let (dx_in, dw_rows) = (
                        p.f32s("grad head norm input", n),
                        p.f32s("grad head norm rows", n),
                    );
                    norm.record_backward(gpu, encoder, dy, &dx_in, &dw_rows)?;
                    grads.set_with(gpu, self.qk_norm.expect("head norms")[which], || {
                        column_sums(
                            gpu,
                            encoder,
                            "grad head norm weight",
                            &dw_rows,
                            (norm.rows, norm.d),
                        )
                    })?;
                    pre.push(dx_in);
                }
                let dk = pre.pop().expect("k");
                (pre.pop().expect("q"), dk)
            }
        };
        if let Some(biases) = self.qkv_bias {
            for (id, (dy, n)) in biases.into_iter().zip([(&dq, qd), (&dk, kvd), (&dv, kvd)]) {
                grads.set_with(gpu, id, || column_sums(gpu, encoder, "grad bias", dy, (rows, n)))?;
            }
        }
        for (id, label, dy, out) in [
            (self.wq, "grad wq", &dq, qd),
            (self.wk, "grad wk", &dk, kvd),
            (self.wv, "grad wv", &dv, kvd),
        ] {
            grads.weight_grad(gpu, encoder, (id, label), dy, x, (out, d, rows))?;
        }
        let label = "grad attention normed";
        gemm(
            gpu,
            encoder,
            label,
            (&dq, false),
            (p.param(self.wq), true),
            dx,
            (rows, d, qd),
            false,
        )?;
        gemm(
            gpu,
            encoder,
            label,
            (&dk, false),
            (p.param(self.wk), true),
            dx,
            (rows, d, kvd),
            true,
        )?;
        gemm(
            gpu,
            encoder,
            label,
            (&dv, false),
            (p.param(self.wv), true),
            dx,
            (rows, d, kvd),
            true,
        )?;
        Ok(())
    }
}
