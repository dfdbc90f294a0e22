//! The transformer's forward on the CPU, composed from the reference ops: the oracle the GPU
//! model is tested against.

use crate::model::{DenseParams, FeedForwardParams, MemoryParams, ModelWeights};
use crate::reference::{self, ops};

/// Logits `[batch * seq, vocab]` for `tokens [batch, seq]`.
pub fn forward_cpu(w: &ModelWeights, tokens: &[u32], batch: usize, seq: usize) -> Vec<f32> {
    forward_cpu_with_selections(w, tokens, batch, seq).0
}

/// `forward_cpu`, and every memory layer's selected slots and mixture-of-experts layer's
/// chosen experts in order (a fingerprint of the non-differentiable choices, for
/// finite-difference checks).
pub fn forward_cpu_with_selections(
    w: &ModelWeights,
    tokens: &[u32],
    batch: usize,
    seq: usize,
) -> (Vec<f32>, Vec<u32>) {
    let mut selections = Vec::new();
    let c = &w.config;
    let (d, rows) = (c.dim, batch * seq);
    let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let mut h: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| w.get(w.layout.tok_embeddings)[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect();
    let dims = ops::AttentionDims {
        seq,
        heads: c.n_heads,
        kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
    };
    for l in &w.layout.layers {
        let at = &l.attention;
        let a = ops::rmsnorm(&h, w.get(l.attention_norm), c.norm_eps);
        let q = reference::linear(&a, w.get(at.wq), None, rows, qd, d);
        let k = reference::linear(&a, w.get(at.wk), None, rows, kvd, d);
        let v = reference::linear(&a, w.get(at.wv), None, rows, kvd, d);
        let mut o = Vec::with_capacity(rows * qd);
        for b in 0..batch {
            let qb = ops::rope(
                &q[b * seq * qd..(b + 1) * seq * qd],
                seq,
                c.n_heads,
                c.head_dim,
                c.rope_theta,
                0,
                false,
            );
            let kb = ops::rope(
                &k[b * seq * kvd..(b + 1) * seq * kvd],
                seq,
                c.n_kv_heads,
                c.head_dim,
                c.rope_theta,
                0,
                false,
            );
            o.extend(ops::attention(&qb, &kb, &v[b * seq * kvd..(b + 1) * seq * kvd], dims).0);
        }
        let attn = reference::linear(&o, w.get(at.wo), None, rows, d, qd);
        h.iter_mut().zip(&attn).for_each(|(x, y)| *x += y);
        let f = ops::rmsnorm(&h, w.get(l.ffn_norm), c.norm_eps);
        let dense = |p: &DenseParams| {
            let g = reference::linear(&f, w.get(p.w1), None, rows, c.hidden, d);
            let u = reference::linear(&f, w.get(p.w3), None, rows, c.hidden, d);
            reference::linear(
                &reference::silu_gate(&u, &g),
                w.get(p.w2),
                None,
                rows,
                d,
                c.hidden,
            )
        };
        let mut memory = |p: &MemoryParams| {
            let m = w.memory_weights(p).expect("memory layers have a configuration");
            let values = w.get(p.values);
            let params = reference::MemoryParamsRef {
                values_u: p.values_u.map(|u| w.get(u)),
                ..super::memory_params(&m, values)
            };
            let (out, lookup) = reference::memory_forward(&f, &params, super::lookup_dims(&m.config, rows));
            selections.extend(lookup.indices);
            out
        };
        let ffn = match &l.feed_forward {
            FeedForwardParams::Dense(p) => dense(p),
            FeedForwardParams::Memory(p) => memory(p),
            FeedForwardParams::DenseAndMemory(p) => {
                let mut out = dense(&p.dense);
                out.iter_mut().zip(memory(&p.memory)).for_each(|(a, b)| *a += b);
                out
            }
            FeedForwardParams::Moe(p) => {
                let weights = reference::moe::MoeWeightsRef {
                    router: w.get(p.router),
                    w1: w.get(p.w1),
                    w3: w.get(p.w3),
                    w2: w.get(p.w2),
                };
                let shape = reference::moe::MoeShape {
                    dim: d,
                    hidden: p.config.hidden,
                    experts: p.config.experts,
                    top_k: p.config.top_k,
                };
                let out = reference::moe::moe_forward(&f, rows, weights, shape, p.config.aux_loss_coef);
                selections.extend(out.chosen);
                out.y
            }
        };
        h.iter_mut().zip(&ffn).for_each(|(x, y)| *x += y);
    }
    let n = ops::rmsnorm(&h, w.get(w.layout.norm), c.norm_eps);
    (
        reference::linear(&n, w.get(w.layout.output), None, rows, c.vocab, d),
        selections,
    )
}
