//! The memory layer's backward pass on the GPU (REFERENCE.md section 1, "Gradients").
//!
//! Built from the batched, strided GEMM (every transpose case, accumulating over row blocks)
//! and small kernels: the swilu gate's backward, the bag's weight gradients, the product
//! top-k's backward (softmax, then the dense sub-key score gradient, non-zero only at
//! selected sub-keys), and the value gradient. Query and sub-key gradients are two GEMMs
//! against the dense score gradient, so only the selected sub-key rows receive non-zero
//! gradients. The value gradient is sparse (one row per slot read this step): the bag
//! entries are sorted by slot with a stable radix sort (the reverse map of the reference) and
//! each slot's run is summed in entry order. Every reduction runs in a fixed order and no
//! float atomics are used: the backward is deterministic.
//! With qk-norm the scores saw normalised query halves and key rows: the two GEMMs use those
//! (recomputed), and their gradients go back through the normalisation's backward.

use super::layer::{MemoryActivations, MemoryLayer};
use super::lookup::SCORE_BLOCK_BYTES;
use super::pool::ValuePool;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::embedding_bag::{EmbeddingBag, WeightGrads};
use crate::kernels::linear::{gemm, Batched, Linear};
use crate::kernels::normalize;
use crate::kernels::product_topk::ProductTopKBackward;
use crate::kernels::swilu_backward::SwiluBackward;
use crate::kernels::value_grads::{SparseRows, ValueGrads};
use crate::kernels::MAX_GRID_ROWS;
use crate::kernels::{peer, row_gate};

/// Gradient buffers of one backward pass, laid out as the parameters.
pub struct MemoryGrads {
    pub x: wgpu::Buffer,
    pub query_w: wgpu::Buffer,
    pub query_b: wgpu::Buffer,
    pub keys: wgpu::Buffer,
    pub swilu: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub value_proj: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub gating: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// The shared value table's gradient from this layer: one row per slot read (PEER: the
    /// values_v table's).
    pub values: SparseRows,
    /// PEER: the values_u table's gradient, alike.
    pub values_u: Option<SparseRows>,
    /// dL/d(bag output) `[rows, v_dim]` and dL/dw per bag entry `[rows, heads * knn]`: what
    /// the value gradient is made of (`dV[slot] += w * dy[row]`).
    pub bag_out: wgpu::Buffer,
    pub bag_weights: wgpu::Buffer,
}

impl MemoryGrads {
    /// Each parameter's gradient under its reference name, in `parameters` order.
    pub fn named(&self, config: &super::MemoryConfig) -> Vec<(&'static str, &wgpu::Buffer)> {
        use super::layer::{by_name, parameters};
        let fields = (&self.query_w, &self.query_b, &self.keys);
        let buffer = |name: &str| {
            by_name(
                name,
                fields,
                (
                    self.swilu.as_ref(),
                    self.value_proj.as_ref(),
                    self.gating.as_ref(),
                ),
            )
        };
        parameters(config)
            .into_iter()
            .filter_map(|(name, _, _)| Some((name, buffer(name)?)))
            .collect()
    }
}

impl MemoryLayer {
    /// Records the backward of `record_forward` for `d_out [rows, out_dim]`, given the same
    /// input `x`, pool and the forward's activations. Nothing is submitted.
    pub fn record_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        pool: &ValuePool,
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<MemoryGrads> {
        if self.config.peer {
            return Err(Error::Config(
                "a PEER layer reads two tables: record_backward_peer".into(),
            ));
        }
        self.backward(gpu, encoder, (None, pool), x, acts, d_out)
    }

    /// The backward of `record_forward_peer` (pools `(values_u, values_v)`).
    pub fn record_backward_peer(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (pool_u, pool_v): (&ValuePool, &ValuePool),
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<MemoryGrads> {
        if !self.config.peer {
            return Err(Error::Config(
                "record_backward_peer on a layer that is not PEER".into(),
            ));
        }
        self.backward(gpu, encoder, (Some(pool_u), pool_v), x, acts, d_out)
    }

    fn backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (pool_u, pool): (Option<&ValuePool>, &ValuePool),
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<MemoryGrads> {
        if self.uses_f16_weights() || self.uses_f16_activations() {
            return Err(Error::Config(
                "the backward reads f32 weights and activations: a layer with f16 weights or activations (`use_f16_weights`, `use_f16_activations`) is for inference".into(),
            ));
        }
        let c = &self.config;
        let rows = acts.rows;
        let (d, v, qw) = (c.d as u32, c.v_dim as u32, (c.heads * c.k_dim) as u32);
        let (heads, n_keys, knn, half) = (
            c.heads as u32,
            c.n_keys as u32,
            c.knn as u32,
            (c.k_dim / 2) as u32,
        );
        let f32s = |label: &str, n: u64| gpu.storage(label, n * 4);
        let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
        // mem_gated: out = sigmoid(g) * ungated with g = x Wg^T + bg; the rest of the
        // backward starts from dL/d(ungated).
        let gate_grads = match (&self.gating, &acts.gate) {
            (Some(_), Some((logits, ungated))) => {
                let out_dim = c.out_dim() as u32;
                let (d_ungated, dg) = (
                    f32s("grad ungated output", rows as u64 * out_dim as u64),
                    f32s("grad gate", rows as u64),
                );
                row_gate::record_backward(
                    gpu,
                    encoder,
                    (logits, ungated, d_out),
                    (&d_ungated, &dg),
                    (rows, out_dim),
                )?;
                Some((d_ungated, dg))
            }
            (None, _) => None,
            (Some(_), None) => {
                return Err(Error::Config(
                    "memory backward: activations without the gate (not from this layer's forward)".into(),
                ))
            }
        };
        let d_out = gate_grads.as_ref().map_or(d_out, |(d_ungated, _)| d_ungated);

        // value_proj: out = h Wo^T + bo. (PEER's projections exist unused: zero gradients.)
        let h = acts.gated.as_ref().unwrap_or(&acts.bag);
        let (dh, value_proj) = match &self.value_proj {
            Some(_) if c.peer => (
                d_out.clone(),
                Some((
                    f32s("grad value_proj.weight", (d * v) as u64),
                    f32s("grad value_proj.bias", d as u64),
                )),
            ),
            Some((wo, _)) => {
                let (dwo, dbo, dh) = (
                    f32s("grad value_proj.weight", (d * v) as u64),
                    f32s("grad value_proj.bias", d as u64),
                    f32s("grad h", rows as u64 * v as u64),
                );
                gemm(
                    gpu,
                    encoder,
                    "grad value_proj.weight",
                    (d_out, true),
                    (h, true),
                    &dwo,
                    (d, v, rows),
                    false,
                )?;
                gemm(
                    gpu,
                    encoder,
                    "grad value_proj.bias",
                    (&ones, false),
                    (d_out, true),
                    &dbo,
                    (1, d, rows),
                    false,
                )?;
                gemm(
                    gpu,
                    encoder,
                    "grad h",
                    (d_out, false),
                    (wo, true),
                    &dh,
                    (rows, v, d),
                    false,
                )?;
                (dh, Some((dwo, dbo)))
            }
            None => (d_out.clone(), None),
        };
        // swilu: h = y * silu(g), g = x W1^T + b1 (kept by the forward).
        let dx = f32s("grad input", rows as u64 * d as u64);
        let (dy, swilu) =
            match (&self.swilu, &acts.swilu_input) {
                (Some(_), _) if c.peer => (
                    dh,
                    Some((
                        f32s("grad swilu_projection.weight", (v * d) as u64),
                        f32s("grad swilu_projection.bias", v as u64),
                    )),
                ),
                (Some((w1, _)), Some(g)) => {
                    let n = rows as u64 * v as u64;
                    let (dy, dg) = (f32s("grad bag", n), f32s("grad g", n));
                    SwiluBackward {
                        len: n as u32,
                        dh: &dh,
                        y: &acts.bag,
                        g,
                        dy: &dy,
                        dg: &dg,
                    }
                    .record(gpu, encoder)?;
                    let (dw1, db1) = (
                        f32s("grad swilu_projection.weight", (v * d) as u64),
                        f32s("grad swilu_projection.bias", v as u64),
                    );
                    gemm(
                        gpu,
                        encoder,
                        "grad swilu_projection.weight",
                        (&dg, true),
                        (x, true),
                        &dw1,
                        (v, d, rows),
                        false,
                    )?;
                    gemm(
                        gpu,
                        encoder,
                        "grad swilu_projection.bias",
                        (&ones, false),
                        (&dg, true),
                        &db1,
                        (1, v, rows),
                        false,
                    )?;
                    gemm(
                        gpu,
                        encoder,
                        "grad input (swilu)",
                        (&dg, false),
                        (w1, true),
                        &dx,
                        (rows, d, v),
                        false,
                    )?;
                    (dy, Some((dw1, db1)))
                }
                (None, _) => (dh, None),
                (Some(_), None) => return Err(Error::Config(
                    "memory backward: activations without the swilu input (not from this layer's forward)"
                        .into(),
                )),
            };
        // The bag: dL/dw per entry, and the value gradient.
        let bag = heads * knn;
        let entries = rows * bag;
        let chunks = pool.chunks();
        let bag_grads =
            |encoder: &mut wgpu::CommandEncoder, weights: &wgpu::Buffer, dy: &wgpu::Buffer, v_dim: u32| {
                ValueGrads {
                    rows,
                    bag,
                    v_dim,
                    n_values: c.n_values() as u32,
                    max_per_slot: rows * heads,
                    indices: &acts.indices,
                    weights,
                    dy,
                }
                .record(gpu, encoder)
            };
        // dL/d(each entry's bag weight): <dy_row, V[slot]>.
        let d_bag_weights = f32s("grad bag weights", entries as u64);
        WeightGrads {
            rows,
            bag,
            indices: &acts.indices,
            values: &chunks,
            dy: &dy,
            grad_weights: &d_bag_weights,
        }
        .record(gpu, encoder)?;
        let (d_weights, values, values_u) = match (pool_u, &acts.peer) {
            // PEER: the bag weight is a_i = w_i gelu(s_i), s_i = <x, u_i>.
            (Some(pool_u), Some((dots, activations))) => {
                let (d_weights, d_dots) = (
                    f32s("grad softmax weights", entries as u64),
                    f32s("grad PEER scores", entries as u64),
                );
                peer::record_backward(
                    gpu,
                    encoder,
                    (dots, &acts.weights, &d_bag_weights),
                    (&d_weights, &d_dots),
                    entries,
                )?;
                let values = bag_grads(encoder, activations, &dy, v)?;
                let values_u = bag_grads(encoder, &d_dots, x, d)?;
                // dL/dx = sum_i dL/ds_i u_i: a bag of values_u rows.
                EmbeddingBag {
                    rows,
                    bag,
                    indices: &acts.indices,
                    weights: &d_dots,
                    values: &pool_u.chunks(),
                    out: &dx,
                    workgroup_size: None,
                    columns_per_invocation: None,
                }
                .record(gpu, encoder)?;
                (d_weights, values, Some(values_u))
            }
            (None, None) => (d_bag_weights, bag_grads(encoder, &acts.weights, &dy, v)?, None),
            _ => {
                return Err(Error::Config(
                    "memory backward: PEER activations and tables do not match the layer".into(),
                ))
            }
        };
        // Softmax and product sums into dense sub-key score gradients, then query and keys.
        let halves = 2 * heads;
        let row_bytes = halves as u64 * n_keys as u64 * 4;
        let block = (SCORE_BLOCK_BYTES.min(gpu.max_binding_bytes()) / row_bytes)
            .clamp(1, MAX_GRID_ROWS as u64)
            .min(rows as u64) as u32;
        let d_scores = gpu.storage("grad sub-key scores", block as u64 * row_bytes);
        let (q_rows, k_rows) = (rows * halves, halves * n_keys);
        // The query and keys the scores were computed from (normalised with qk-norm).
        let normalized;
        let (scored_query, scored_keys) = if c.qk_norm {
            let q = f32s("query (normalised)", (q_rows * half) as u64);
            let k = f32s("keys (normalised)", (k_rows * half) as u64);
            normalize::record(gpu, encoder, &acts.query, &q, q_rows, half)?;
            normalize::record(gpu, encoder, &self.keys, &k, k_rows, half)?;
            normalized = (q, k);
            (&normalized.0, &normalized.1)
        } else {
            (&acts.query, &self.keys)
        };
        let dq = f32s("grad query", rows as u64 * qw as u64);
        let dkeys = f32s("grad keys", (halves * n_keys * half) as u64);
        for row0 in (0..rows).step_by(block as usize) {
            let nb = block.min(rows - row0);
            gpu.clear(encoder, &d_scores);
            ProductTopKBackward {
                rows: nb,
                row0,
                heads,
                n_keys,
                knn,
                indices: &acts.indices,
                weights: &acts.weights,
                grad_weights: &d_weights,
                grad_scores: &d_scores,
            }
            .record(gpu, encoder)?;
            // dq[row, b, :] = sum_key dS[row, b, key] K[b, key, :]
            Linear {
                label: "grad query",
                x: &d_scores,
                w: scored_keys,
                w_f16: false,
                x_f16: false,
                y_f16: false,
                bias: None,
                gate: None,
                y: &dq,
                m: nb,
                n: half,
                k: n_keys,
                batched: Some(Batched {
                    batch: halves,
                    x_offset: 0,
                    x_batch: n_keys,
                    x_row: halves * n_keys,
                    x_k: 1,
                    w_offset: 0,
                    w_batch: n_keys * half,
                    w_row: 1,
                    w_k: half,
                    y_offset: row0 * qw,
                    y_batch: half,
                    y_row: qw,
                }),
                accumulate: false,
            }
            .record(gpu, encoder)?;
            // dK[b, key, :] += sum_row dS[row, b, key] q[row, b, :]
            Linear {
                label: "grad keys",
                x: &d_scores,
                w: scored_query,
                w_f16: false,
                x_f16: false,
                y_f16: false,
                bias: None,
                gate: None,
                y: &dkeys,
                m: n_keys,
                n: half,
                k: nb,
                batched: Some(Batched {
                    batch: halves,
                    x_offset: 0,
                    x_batch: n_keys,
                    x_row: 1,
                    x_k: halves * n_keys,
                    w_offset: row0 * qw,
                    w_batch: half,
                    w_row: 1,
                    w_k: qw,
                    y_offset: 0,
                    y_batch: n_keys * half,
                    y_row: half,
                }),
                accumulate: row0 > 0,
            }
            .record(gpu, encoder)?;
        }
        let (dq, dkeys) = if c.qk_norm {
            let (dq_raw, dk_raw) = (
                f32s("grad query", (q_rows * half) as u64),
                f32s("grad keys", (k_rows * half) as u64),
            );
            normalize::record_backward(gpu, encoder, &acts.query, &dq, &dq_raw, q_rows, half)?;
            normalize::record_backward(gpu, encoder, &self.keys, &dkeys, &dk_raw, k_rows, half)?;
            (dq_raw, dk_raw)
        } else {
            (dq, dkeys)
        };
        // Query projection: q = x Wq^T + bq.
        let (dwq, dbq) = (
            f32s("grad query_proj.weight", (qw * d) as u64),
            f32s("grad query_proj.bias", qw as u64),
        );
        gemm(
            gpu,
            encoder,
            "grad query_proj.weight",
            (&dq, true),
            (x, true),
            &dwq,
            (qw, d, rows),
            false,
        )?;
        gemm(
            gpu,
            encoder,
            "grad query_proj.bias",
            (&ones, false),
            (&dq, true),
            &dbq,
            (1, qw, rows),
            false,
        )?;
        gemm(
            gpu,
            encoder,
            "grad input (query)",
            (&dq, false),
            (&self.query_w, true),
            &dx,
            (rows, d, qw),
            // dx was written by the swilu gate's (not PEER's unused one) or PEER's input
            // gradient, if any.
            values_u.is_some() || (swilu.is_some() && !c.peer),
        )?;
        let gating = match (&self.gating, &gate_grads) {
            (Some((gw, _)), Some((_, dg))) => {
                let (dgw, dgb) = (f32s("grad gating.weight", d as u64), f32s("grad gating.bias", 1));
                gemm(
                    gpu,
                    encoder,
                    "grad gating.weight",
                    (dg, true),
                    (x, true),
                    &dgw,
                    (1, d, rows),
                    false,
                )?;
                gemm(
                    gpu,
                    encoder,
                    "grad gating.bias",
                    (&ones, false),
                    (dg, true),
                    &dgb,
                    (1, 1, rows),
                    false,
                )?;
                gemm(
                    gpu,
                    encoder,
                    "grad input (gating)",
                    (dg, false),
                    (gw, true),
                    &dx,
                    (rows, d, 1),
                    true,
                )?;
                Some((dgw, dgb))
            }
            _ => None,
        };
        Ok(MemoryGrads {
            x: dx,
            query_w: dwq,
            query_b: dbq,
            keys: dkeys,
            swilu,
            value_proj,
            gating,
            values,
            values_u,
            bag_out: dy,
            bag_weights: d_weights,
        })
    }
}
