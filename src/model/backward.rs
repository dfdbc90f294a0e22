//! The transformer's backward on the GPU: every parameter's gradient, under lingua's names.
//!
//! The reverse of `Model::record_forward`, from dL/dlogits: output layer, final norm, then per
//! layer (last first) the feed-forward or memory block, its norm, the attention block (dq, dk,
//! dv, RoPE inverted, projections) and its norm, each adding into the residual stream's
//! gradient; finally the embedding. Sparse gradients (embedding rows, value rows of each
//! memory layer) are added into dense tables in a fixed order. Deterministic throughout.

use super::gpu::{linear, FfnActs, GpuFeedForward, Model, ModelForward};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::linear::gemm;
use crate::kernels::ops::{record_add, RmsNorm};
use crate::kernels::swilu_backward::SwiluBackward;
use crate::kernels::value_grads::ValueGrads;
use crate::memory::VALUES_NAME;

/// Gradient buffers in the order and under the names of `ModelWeights::named_tensors`.
pub struct ModelGrads {
    pub named: Vec<(String, wgpu::Buffer, usize)>,
    /// With memory layers: a u32 per value row, 1 where some layer read the row this step
    /// (what a lazy update touches).
    pub values_read: Option<wgpu::Buffer>,
}

impl ModelGrads {
    pub fn get(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.named.iter().find(|(n, _, _)| n == name).map(|(_, b, _)| b)
    }
}

impl Model {
    /// Records the backward of `fwd` for `d_logits [rows, vocab]`. Nothing is submitted.
    pub fn record_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        fwd: &ModelForward,
        d_logits: &wgpu::Buffer,
    ) -> Result<ModelGrads> {
        let c = &self.config;
        let (rows, batch, seq) = (fwd.rows, fwd.batch, fwd.seq);
        let (d, hd, vocab) = (c.dim as u32, c.head_dim as u32, c.vocab as u32);
        let (qd, kvd) = (c.n_heads as u32 * hd, c.n_kv_heads as u32 * hd);
        let f32s = |label: &str, n: u32| gpu.storage(label, n as u64 * 4);
        let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
        // dL/dweight of an RMSNorm from its per-row terms.
        let norm_weight_grad =
            |encoder: &mut wgpu::CommandEncoder, dw_rows: &wgpu::Buffer, label| -> Result<wgpu::Buffer> {
                let g = f32s(label, d);
                gemm(
                    gpu,
                    encoder,
                    label,
                    (&ones, false),
                    (dw_rows, true),
                    &g,
                    (1, d, rows),
                    false,
                )?;
                Ok(g)
            };
        let norm = |weight, x, rstd| RmsNorm {
            rows,
            d,
            eps: c.norm_eps,
            x,
            weight,
            rstd,
        };

        // Output layer and final norm.
        let d_output = f32s("grad output.weight", vocab * d);
        gemm(
            gpu,
            encoder,
            "grad output.weight",
            (d_logits, true),
            (&fwd.final_normed, true),
            &d_output,
            (vocab, d, rows),
            false,
        )?;
        let d_normed = f32s("grad final normed", rows * d);
        gemm(
            gpu,
            encoder,
            "grad final normed",
            (d_logits, false),
            (&self.output, true),
            &d_normed,
            (rows, d, vocab),
            false,
        )?;
        let (dh, dw_rows) = (f32s("grad residual", rows * d), f32s("grad norm rows", rows * d));
        norm(&self.norm, &fwd.h_final, &fwd.final_rstd)
            .record_backward(gpu, encoder, &d_normed, &dh, &dw_rows)?;
        let d_norm = norm_weight_grad(encoder, &dw_rows, "grad norm.weight")?;

        let values_grad = self.values.as_ref().map(|pool| {
            let g = gpu.storage("grad values", (pool.n_rows() * pool.v_dim()) as u64 * 4);
            (g, pool.n_rows() as u64)
        });
        let values_read = self
            .values
            .as_ref()
            .map(|pool| gpu.storage("value rows read", pool.n_rows() as u64 * 4));
        let mut per_layer: Vec<Vec<(String, wgpu::Buffer, usize)>> = Vec::with_capacity(self.layers.len());
        for (li, (layer, acts)) in self.layers.iter().zip(&fwd.layers).enumerate().rev() {
            let name = |n: &str| format!("layers.{li}.{n}");
            let mut grads: Vec<(String, wgpu::Buffer, usize)> = Vec::new();
            // Feed-forward block: h_out = h_mid + ffn(ffn_norm(h_mid)); dh is dL/dh_out.
            let d_ffn_in = f32s("grad ffn input", rows * d);
            let mut ffn_grads: Vec<(String, wgpu::Buffer, usize)> = Vec::new();
            match (&layer.feed_forward, &acts.ffn) {
                (GpuFeedForward::Dense { w1, w2, w3 }, FfnActs::Dense { u, gated }) => {
                    let hidden = c.hidden as u32;
                    let (dw1, dw2, dw3) = (
                        f32s("grad w1", hidden * d),
                        f32s("grad w2", d * hidden),
                        f32s("grad w3", hidden * d),
                    );
                    gemm(
                        gpu,
                        encoder,
                        "grad w2",
                        (&dh, true),
                        (gated, true),
                        &dw2,
                        (d, hidden, rows),
                        false,
                    )?;
                    let d_gated = f32s("grad swiglu", rows * hidden);
                    gemm(
                        gpu,
                        encoder,
                        "grad swiglu",
                        (&dh, false),
                        (w2, true),
                        &d_gated,
                        (rows, hidden, d),
                        false,
                    )?;
                    let g = f32s("w1 x (recomputed)", rows * hidden);
                    linear(&acts.ffn_normed, w1, &g, (rows, hidden, d)).record(gpu, encoder)?;
                    let (du, dg) = (f32s("grad w3 x", rows * hidden), f32s("grad w1 x", rows * hidden));
                    SwiluBackward {
                        len: rows * hidden,
                        dh: &d_gated,
                        y: u,
                        g: &g,
                        dy: &du,
                        dg: &dg,
                    }
                    .record(gpu, encoder)?;
                    gemm(
                        gpu,
                        encoder,
                        "grad w1",
                        (&dg, true),
                        (&acts.ffn_normed, true),
                        &dw1,
                        (hidden, d, rows),
                        false,
                    )?;
                    gemm(
                        gpu,
                        encoder,
                        "grad w3",
                        (&du, true),
                        (&acts.ffn_normed, true),
                        &dw3,
                        (hidden, d, rows),
                        false,
                    )?;
                    gemm(
                        gpu,
                        encoder,
                        "grad ffn input",
                        (&dg, false),
                        (w1, true),
                        &d_ffn_in,
                        (rows, d, hidden),
                        false,
                    )?;
                    gemm(
                        gpu,
                        encoder,
                        "grad ffn input",
                        (&du, false),
                        (w3, true),
                        &d_ffn_in,
                        (rows, d, hidden),
                        true,
                    )?;
                    let n = (hidden * d) as usize;
                    ffn_grads.push((name("feed_forward.w1.weight"), dw1, n));
                    ffn_grads.push((name("feed_forward.w2.weight"), dw2, n));
                    ffn_grads.push((name("feed_forward.w3.weight"), dw3, n));
                }
                (GpuFeedForward::Memory(memory), FfnActs::Memory(mem_acts)) => {
                    let pool = self.values.as_ref().expect("memory layers have a pool");
                    let g = memory.record_backward(gpu, encoder, pool, &acts.ffn_normed, mem_acts, &dh)?;
                    encoder.copy_buffer_to_buffer(&g.x, 0, &d_ffn_in, 0, rows as u64 * d as u64 * 4);
                    let mc = &memory.config;
                    let (qw, half) = (mc.heads * mc.k_dim, mc.k_dim / 2);
                    let p = |n: &str| name(&format!("feed_forward.{n}"));
                    ffn_grads.push((p(crate::memory::QUERY_W), g.query_w, qw * mc.d));
                    ffn_grads.push((p(crate::memory::QUERY_B), g.query_b, qw));
                    ffn_grads.push((p(crate::memory::KEYS), g.keys, 2 * mc.heads * mc.n_keys * half));
                    if let Some((w, b)) = g.swilu {
                        ffn_grads.push((p(crate::memory::SWILU_W), w, mc.v_dim * mc.d));
                        ffn_grads.push((p(crate::memory::SWILU_B), b, mc.v_dim));
                    }
                    if let Some((w, b)) = g.value_proj {
                        ffn_grads.push((p(crate::memory::VALUE_PROJ_W), w, mc.d * mc.v_dim));
                        ffn_grads.push((p(crate::memory::VALUE_PROJ_B), b, mc.d));
                    }
                    let (values, n_rows) = values_grad.as_ref().expect("memory layers have a pool");
                    g.values.record_scatter_add(gpu, encoder, values, *n_rows)?;
                    g.values.record_mark(
                        gpu,
                        encoder,
                        values_read.as_ref().expect("with values"),
                        *n_rows,
                    )?;
                }
                _ => unreachable!("activations match the layer kind"),
            }
            // ffn_norm: dh_mid = dh + d(norm input).
            let d_norm_in = f32s("grad ffn norm input", rows * d);
            norm(&layer.ffn_norm, &acts.h_mid, &acts.ffn_rstd)
                .record_backward(gpu, encoder, &d_ffn_in, &d_norm_in, &dw_rows)?;
            let d_ffn_norm = norm_weight_grad(encoder, &dw_rows, "grad ffn_norm.weight")?;
            record_add(gpu, encoder, &d_norm_in, &dh, rows * d)?;
            // Attention block: h_mid = h_in + attn Wo^T.
            let dwo = f32s("grad wo", d * qd);
            gemm(
                gpu,
                encoder,
                "grad wo",
                (&dh, true),
                (&acts.attn, true),
                &dwo,
                (d, qd, rows),
                false,
            )?;
            let d_attn = f32s("grad attention", rows * qd);
            gemm(
                gpu,
                encoder,
                "grad attention",
                (&dh, false),
                (&layer.wo, true),
                &d_attn,
                (rows, qd, d),
                false,
            )?;
            let (dq_rot, dk_rot, dv) = (
                f32s("grad q rotated", rows * qd),
                f32s("grad k rotated", rows * kvd),
                f32s("grad v", rows * kvd),
            );
            self.attention(
                batch,
                seq,
                &acts.q_rot,
                &acts.k_rot,
                &acts.v,
                &acts.attn,
                &acts.lse,
            )
            .record_backward(gpu, encoder, &d_attn, &dq_rot, &dk_rot, &dv)?;
            let (dq, dk) = (f32s("grad q", rows * qd), f32s("grad k", rows * kvd));
            self.rope(batch, seq, c.n_heads, true)
                .record(gpu, encoder, &dq_rot, &dq)?;
            self.rope(batch, seq, c.n_kv_heads, true)
                .record(gpu, encoder, &dk_rot, &dk)?;
            let (dwq, dwk, dwv) = (
                f32s("grad wq", qd * d),
                f32s("grad wk", kvd * d),
                f32s("grad wv", kvd * d),
            );
            let a = &acts.attn_normed;
            gemm(
                gpu,
                encoder,
                "grad wq",
                (&dq, true),
                (a, true),
                &dwq,
                (qd, d, rows),
                false,
            )?;
            gemm(
                gpu,
                encoder,
                "grad wk",
                (&dk, true),
                (a, true),
                &dwk,
                (kvd, d, rows),
                false,
            )?;
            gemm(
                gpu,
                encoder,
                "grad wv",
                (&dv, true),
                (a, true),
                &dwv,
                (kvd, d, rows),
                false,
            )?;
            let d_a = f32s("grad attention normed", rows * d);
            gemm(
                gpu,
                encoder,
                "grad attention normed",
                (&dq, false),
                (&layer.wq, true),
                &d_a,
                (rows, d, qd),
                false,
            )?;
            gemm(
                gpu,
                encoder,
                "grad attention normed",
                (&dk, false),
                (&layer.wk, true),
                &d_a,
                (rows, d, kvd),
                true,
            )?;
            gemm(
                gpu,
                encoder,
                "grad attention normed",
                (&dv, false),
                (&layer.wv, true),
                &d_a,
                (rows, d, kvd),
                true,
            )?;
            let d_norm_in = f32s("grad attention norm input", rows * d);
            norm(&layer.attention_norm, &acts.h_in, &acts.attn_rstd)
                .record_backward(gpu, encoder, &d_a, &d_norm_in, &dw_rows)?;
            let d_attention_norm = norm_weight_grad(encoder, &dw_rows, "grad attention_norm.weight")?;
            record_add(gpu, encoder, &d_norm_in, &dh, rows * d)?;
            grads.push((name("attention.wq.weight"), dwq, (qd * d) as usize));
            grads.push((name("attention.wk.weight"), dwk, (kvd * d) as usize));
            grads.push((name("attention.wv.weight"), dwv, (kvd * d) as usize));
            grads.push((name("attention.wo.weight"), dwo, (d * qd) as usize));
            grads.push((name("attention_norm.weight"), d_attention_norm, d as usize));
            grads.push((name("ffn_norm.weight"), d_ffn_norm, d as usize));
            grads.extend(ffn_grads);
            if Some(li) == c.memory_layers.first().copied() {
                let (values, n_rows) = values_grad.as_ref().expect("memory layers have a pool");
                let len = *n_rows as usize * c.memory.as_ref().map_or(0, |m| m.v_dim);
                grads.push((name(&format!("feed_forward.{VALUES_NAME}")), values.clone(), len));
            }
            per_layer.push(grads);
        }
        // Embedding: one row per token, weight 1.
        let d_emb = f32s("grad tok_embeddings", vocab * d);
        let sparse = ValueGrads {
            rows,
            bag: 1,
            v_dim: d,
            n_values: vocab,
            max_per_slot: rows,
            indices: &fwd.tokens,
            weights: &ones,
            dy: &dh,
        }
        .record(gpu, encoder)?;
        sparse.record_scatter_add(gpu, encoder, &d_emb, vocab as u64)?;

        let mut named = vec![("tok_embeddings.weight".to_string(), d_emb, (vocab * d) as usize)];
        named.extend(per_layer.into_iter().rev().flatten());
        named.push(("norm.weight".into(), d_norm, d as usize));
        named.push(("output.weight".into(), d_output, (vocab * d) as usize));
        Ok(ModelGrads { named, values_read })
    }
}
