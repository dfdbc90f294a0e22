//! The memory layer's backward pass on the GPU (`docs/memory-layer.md`, "Gradients").
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
use crate::kernels::embedding_bag::{EmbeddingBag, WeightGrads};
use crate::kernels::linear::{gemm, Batched, Linear};
use crate::kernels::normalize;
use crate::kernels::product_topk::ProductTopKBackward;
use crate::kernels::swilu_backward::SwiluBackward;
use crate::kernels::value_grads::{SparseRows, ValueGrads};
use crate::kernels::Gpu;
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
        pools: (Option<&ValuePool>, &ValuePool),
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<MemoryGrads> {
        let pass = self.backward_pass(gpu, x, acts)?;
        let above = pass.above_bag(encoder, d_out)?;
        let (d_weights, values, values_u) = pass.bag(encoder, pools, &above.dy, &above.dx)?;
        pass.below_bag(encoder, above, d_weights, values, values_u)
    }

    /// The shared inputs of one backward pass (refused for a layer with f16 weights or
    /// activations).
    pub(super) fn backward_pass<'a>(
        &'a self,
        gpu: &'a Gpu,
        x: &'a wgpu::Buffer,
        acts: &'a MemoryActivations,
    ) -> Result<BackwardPass<'a>> {
        if self.uses_f16_weights() || self.uses_f16_activations() {
            return Err(Error::Config(
                "the backward reads f32 weights and activations: a layer with f16 weights or activations (`use_f16_weights`, `use_f16_activations`) is for inference".into(),
            ));
        }
        Ok(BackwardPass {
            layer: self,
            gpu,
            x,
            acts,
            rows: acts.rows,
            ones: gpu.upload("ones", &vec![1f32; acts.rows as usize]),
        })
    }
}

/// The backward down to the bag's output: the gradients of the stages after the bag, the
/// bag output's gradient `dy [rows, v_dim]` and the input gradient `dx` begun.
pub(super) struct AboveBag {
    /// mem_gated: dL/d(ungated output) and dL/d(gate logit).
    gate: Option<WeightAndBias>,
    value_proj: Option<WeightAndBias>,
    swilu: Option<WeightAndBias>,
    pub dy: wgpu::Buffer,
    pub dx: wgpu::Buffer,
}

/// One backward pass's shared inputs: each method is the backward of one forward stage.
pub(super) struct BackwardPass<'a> {
    layer: &'a MemoryLayer,
    gpu: &'a Gpu,
    /// The forward's input.
    x: &'a wgpu::Buffer,
    acts: &'a MemoryActivations,
    rows: u32,
    /// `[rows]` ones: bias gradients are the column sums `ones^T dY`.
    ones: wgpu::Buffer,
}

/// A weight's and a bias's gradient.
type WeightAndBias = (wgpu::Buffer, wgpu::Buffer);

impl BackwardPass<'_> {
    /// The forward's stages after the bag, in reverse: gate, value projection, swilu.
    pub(super) fn above_bag(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        d_out: &wgpu::Buffer,
    ) -> Result<AboveBag> {
        let gate = self.gate(encoder, d_out)?;
        let d_out = gate.as_ref().map_or(d_out, |(d_ungated, _)| d_ungated);
        let (dh, value_proj) = self.value_proj(encoder, d_out)?;
        let dx = self.f32s("grad input", self.rows as u64 * self.layer.config.d as u64);
        let (dy, swilu) = self.swilu(encoder, dh, &dx)?;
        Ok(AboveBag {
            gate,
            value_proj,
            swilu,
            dy,
            dx,
        })
    }

    /// The forward's stages before the bag, in reverse, from dL/d(each softmax weight)
    /// `d_weights`: product top-k, query projection; the gate's own weights last.
    pub(super) fn below_bag(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        above: AboveBag,
        d_weights: wgpu::Buffer,
        values: SparseRows,
        values_u: Option<SparseRows>,
    ) -> Result<MemoryGrads> {
        let (dq, dkeys) = self.product_topk(encoder, &d_weights)?;
        // dx was written by the swilu gate's (not PEER's unused one) or PEER's input
        // gradient, if any.
        let dx_written = values_u.is_some() || (above.swilu.is_some() && !self.layer.config.peer);
        let (dwq, dbq) = self.query_proj(encoder, &dq, &above.dx, dx_written)?;
        let gating = match &above.gate {
            Some((_, dg)) => self.gating_weights(encoder, dg, &above.dx)?,
            None => None,
        };
        Ok(MemoryGrads {
            x: above.dx,
            query_w: dwq,
            query_b: dbq,
            keys: dkeys,
            swilu: above.swilu,
            value_proj: above.value_proj,
            gating,
            values,
            values_u,
            bag_out: above.dy,
            bag_weights: d_weights,
        })
    }

    fn f32s(&self, label: &str, n: u64) -> wgpu::Buffer {
        self.gpu.storage(label, n * 4)
    }

    /// The gradients of `y = x W^T + b` for `dy [rows, out]` (`w [out, inp]`): dW and db, and
    /// dx into `dx` (added to it with `accumulate`) when given.
    fn linear(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        names: &GradNames,
        (dy, input, w): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
        (out, inp): (u32, u32),
        dx: Option<(&wgpu::Buffer, bool)>,
    ) -> Result<WeightAndBias> {
        let (gpu, rows) = (self.gpu, self.rows);
        let (dw, db) = (
            self.f32s(names.weight, (out * inp) as u64),
            self.f32s(names.bias, out as u64),
        );
        gemm(
            gpu,
            encoder,
            names.weight,
            (dy, true),
            (input, true),
            &dw,
            (out, inp, rows),
            false,
        )?;
        gemm(
            gpu,
            encoder,
            names.bias,
            (&self.ones, false),
            (dy, true),
            &db,
            (1, out, rows),
            false,
        )?;
        if let Some((dx, accumulate)) = dx {
            gemm(
                gpu,
                encoder,
                names.input,
                (dy, false),
                (w, true),
                dx,
                (rows, inp, out),
                accumulate,
            )?;
        }
        Ok((dw, db))
    }

    /// `mem_gated`: out = sigmoid(g) * ungated with g = x Wg^T + bg. Returns dL/d(ungated),
    /// from which the rest of the backward starts, and dL/dg.
    fn gate(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        d_out: &wgpu::Buffer,
    ) -> Result<Option<WeightAndBias>> {
        match (&self.layer.gating, &self.acts.gate) {
            (Some(_), Some((logits, ungated))) => {
                let out_dim = self.layer.config.out_dim() as u32;
                let (d_ungated, dg) = (
                    self.f32s("grad ungated output", self.rows as u64 * out_dim as u64),
                    self.f32s("grad gate", self.rows as u64),
                );
                row_gate::record_backward(
                    self.gpu,
                    encoder,
                    (logits, ungated, d_out),
                    (&d_ungated, &dg),
                    (self.rows, out_dim),
                )?;
                Ok(Some((d_ungated, dg)))
            }
            (None, _) => Ok(None),
            (Some(_), None) => Err(Error::Config(
                "memory backward: activations without the gate (not from this layer's forward)".into(),
            )),
        }
    }

    /// The gate's weights, from dL/dg; adds its input gradient to `dx`.
    fn gating_weights(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dg: &wgpu::Buffer,
        dx: &wgpu::Buffer,
    ) -> Result<Option<WeightAndBias>> {
        let Some((gw, _)) = &self.layer.gating else {
            return Ok(None);
        };
        let d = self.layer.config.d as u32;
        self.linear(encoder, &GATING, (dg, self.x, gw), (1, d), Some((dx, true)))
            .map(Some)
    }

    /// `value_proj`: out = h Wo^T + bo. Returns dL/dh and the projection's gradients (PEER's
    /// projections exist unused: zero gradients).
    fn value_proj(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        d_out: &wgpu::Buffer,
    ) -> Result<(wgpu::Buffer, Option<WeightAndBias>)> {
        let c = &self.layer.config;
        let (d, v) = (c.d as u32, c.v_dim as u32);
        let h = self.acts.gated.as_ref().unwrap_or(&self.acts.bag);
        match &self.layer.value_proj {
            Some(_) if c.peer => Ok((
                d_out.clone(),
                Some((
                    self.f32s("grad value_proj.weight", (d * v) as u64),
                    self.f32s("grad value_proj.bias", d as u64),
                )),
            )),
            Some((wo, _)) => {
                let dh = self.f32s("grad h", self.rows as u64 * v as u64);
                let grads = self.linear(encoder, &VALUE_PROJ, (d_out, h, wo), (d, v), Some((&dh, false)))?;
                Ok((dh, Some(grads)))
            }
            None => Ok((d_out.clone(), None)),
        }
    }

    /// swilu: h = y * silu(g), g = x W1^T + b1 (kept by the forward). Returns dL/dy (the bag
    /// output's gradient) and the projection's gradients; writes the input gradient to `dx`.
    fn swilu(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dh: wgpu::Buffer,
        dx: &wgpu::Buffer,
    ) -> Result<(wgpu::Buffer, Option<WeightAndBias>)> {
        let c = &self.layer.config;
        let (d, v) = (c.d as u32, c.v_dim as u32);
        match (&self.layer.swilu, &self.acts.swilu_input) {
            (Some(_), _) if c.peer => Ok((
                dh,
                Some((
                    self.f32s("grad swilu_projection.weight", (v * d) as u64),
                    self.f32s("grad swilu_projection.bias", v as u64),
                )),
            )),
            (Some((w1, _)), Some(g)) => {
                let n = self.rows as u64 * v as u64;
                let (dy, dg) = (self.f32s("grad bag", n), self.f32s("grad g", n));
                SwiluBackward {
                    len: n as u32,
                    dh: &dh,
                    y: &self.acts.bag,
                    g,
                    dy: &dy,
                    dg: &dg,
                }
                .record(self.gpu, encoder)?;
                let grads = self.linear(
                    encoder,
                    &SWILU_PROJECTION,
                    (&dg, self.x, w1),
                    (v, d),
                    Some((dx, false)),
                )?;
                Ok((dy, Some(grads)))
            }
            (None, _) => Ok((dh, None)),
            (Some(_), None) => Err(Error::Config(
                "memory backward: activations without the swilu input (not from this layer's forward)".into(),
            )),
        }
    }

    /// The bag: dL/d(each softmax weight) and the value gradients (PEER: through its GELU
    /// scores, both tables', and its input gradient into `dx`).
    fn bag(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (pool_u, pool): (Option<&ValuePool>, &ValuePool),
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
    ) -> Result<(wgpu::Buffer, SparseRows, Option<SparseRows>)> {
        let (gpu, acts, rows) = (self.gpu, self.acts, self.rows);
        let c = &self.layer.config;
        let (d, v, heads) = (c.d as u32, c.v_dim as u32, c.heads as u32);
        let bag = heads * c.knn as u32;
        let entries = rows * bag;
        let value_grads =
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
        let d_bag_weights = self.f32s("grad bag weights", entries as u64);
        WeightGrads {
            rows,
            bag,
            indices: &acts.indices,
            values: &pool.chunks(),
            dy,
            grad_weights: &d_bag_weights,
            continues: false,
        }
        .record(gpu, encoder)?;
        match (pool_u, &acts.peer) {
            // PEER: the bag weight is a_i = w_i gelu(s_i), s_i = <x, u_i>.
            (Some(pool_u), Some((dots, activations))) => {
                let (d_weights, d_dots) = (
                    self.f32s("grad softmax weights", entries as u64),
                    self.f32s("grad PEER scores", entries as u64),
                );
                peer::record_backward(
                    gpu,
                    encoder,
                    (dots, &acts.weights, &d_bag_weights),
                    (&d_weights, &d_dots),
                    entries,
                )?;
                let values = value_grads(encoder, activations, dy, v)?;
                let values_u = value_grads(encoder, &d_dots, self.x, d)?;
                // dL/dx = sum_i dL/ds_i u_i: a bag of values_u rows.
                EmbeddingBag {
                    rows,
                    bag,
                    indices: &acts.indices,
                    weights: &d_dots,
                    values: &pool_u.chunks(),
                    out: dx,
                    workgroup_size: None,
                    columns_per_invocation: None,
                }
                .record(gpu, encoder)?;
                Ok((d_weights, values, Some(values_u)))
            }
            (None, None) => Ok((d_bag_weights, value_grads(encoder, &acts.weights, dy, v)?, None)),
            _ => Err(Error::Config(
                "memory backward: PEER activations and tables do not match the layer".into(),
            )),
        }
    }

    /// The product top-k: softmax and product sums into dense sub-key score gradients (in
    /// blocks of rows that fit one binding), then the query's and the keys' gradients against
    /// them (with qk-norm, through the normalisation). Returns (dq, dkeys).
    fn product_topk(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        d_weights: &wgpu::Buffer,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let (gpu, acts, rows) = (self.gpu, self.acts, self.rows);
        let c = &self.layer.config;
        let (heads, n_keys, knn, half) = (
            c.heads as u32,
            c.n_keys as u32,
            c.knn as u32,
            (c.k_dim / 2) as u32,
        );
        let qw = heads * c.k_dim as u32;
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
            let q = self.f32s("query (normalised)", (q_rows * half) as u64);
            let k = self.f32s("keys (normalised)", (k_rows * half) as u64);
            normalize::record(gpu, encoder, &acts.query, &q, q_rows, half)?;
            normalize::record(gpu, encoder, &self.layer.keys, &k, k_rows, half)?;
            normalized = (q, k);
            (&normalized.0, &normalized.1)
        } else {
            (&acts.query, &self.layer.keys)
        };
        let dq = self.f32s("grad query", rows as u64 * qw as u64);
        let dkeys = self.f32s("grad keys", (halves * n_keys * half) as u64);
        let shape = ScoreShape {
            halves,
            n_keys,
            half,
            qw,
        };
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
                grad_weights: d_weights,
                grad_scores: &d_scores,
            }
            .record(gpu, encoder)?;
            shape
                .query_grads(&d_scores, scored_keys, &dq, (row0, nb))
                .record(gpu, encoder)?;
            shape
                .key_grads(&d_scores, scored_query, &dkeys, (row0, nb))
                .record(gpu, encoder)?;
        }
        if !c.qk_norm {
            return Ok((dq, dkeys));
        }
        let (dq_raw, dk_raw) = (
            self.f32s("grad query", (q_rows * half) as u64),
            self.f32s("grad keys", (k_rows * half) as u64),
        );
        normalize::record_backward(gpu, encoder, &acts.query, &dq, &dq_raw, q_rows, half)?;
        normalize::record_backward(gpu, encoder, &self.layer.keys, &dkeys, &dk_raw, k_rows, half)?;
        Ok((dq_raw, dk_raw))
    }

    /// The query projection: q = x Wq^T + bq. Its input gradient goes to `dx`, added to what
    /// is there when `dx_written`.
    fn query_proj(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        dq: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        dx_written: bool,
    ) -> Result<WeightAndBias> {
        let c = &self.layer.config;
        let qw = (c.heads * c.k_dim) as u32;
        self.linear(
            encoder,
            &QUERY_PROJ,
            (dq, self.x, &self.layer.query_w),
            (qw, c.d as u32),
            Some((dx, dx_written)),
        )
    }
}

/// The labels of a linear layer's gradients, as the profiler and the buffers show them.
struct GradNames {
    weight: &'static str,
    bias: &'static str,
    input: &'static str,
}

const GATING: GradNames = GradNames {
    weight: "grad gating.weight",
    bias: "grad gating.bias",
    input: "grad input (gating)",
};
const VALUE_PROJ: GradNames = GradNames {
    weight: "grad value_proj.weight",
    bias: "grad value_proj.bias",
    input: "grad h",
};
const SWILU_PROJECTION: GradNames = GradNames {
    weight: "grad swilu_projection.weight",
    bias: "grad swilu_projection.bias",
    input: "grad input (swilu)",
};
const QUERY_PROJ: GradNames = GradNames {
    weight: "grad query_proj.weight",
    bias: "grad query_proj.bias",
    input: "grad input (query)",
};

/// The sub-key scores' layout: `[rows, halves, n_keys]` score gradients against queries
/// `[rows, qw]` (each half `half` wide) and keys `[halves, n_keys, half]`.
struct ScoreShape {
    halves: u32,
    n_keys: u32,
    half: u32,
    qw: u32,
}

impl ScoreShape {
    /// dq[row, b, :] = sum_key dS[row, b, key] K[b, key, :], for rows `row0..row0 + nb`.
    fn query_grads<'a>(
        &self,
        d_scores: &'a wgpu::Buffer,
        keys: &'a wgpu::Buffer,
        dq: &'a wgpu::Buffer,
        (row0, nb): (u32, u32),
    ) -> Linear<'a> {
        let (halves, n_keys, half, qw) = (self.halves, self.n_keys, self.half, self.qw);
        Linear {
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
            ..Linear::new("grad query", d_scores, keys, dq, (nb, half, n_keys))
        }
    }

    /// dK[b, key, :] += sum_row dS[row, b, key] q[row, b, :], for rows `row0..row0 + nb`
    /// (the first block writes, the others add).
    fn key_grads<'a>(
        &self,
        d_scores: &'a wgpu::Buffer,
        query: &'a wgpu::Buffer,
        dkeys: &'a wgpu::Buffer,
        (row0, nb): (u32, u32),
    ) -> Linear<'a> {
        let (halves, n_keys, half, qw) = (self.halves, self.n_keys, self.half, self.qw);
        Linear {
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
            ..Linear::new("grad keys", d_scores, query, dkeys, (n_keys, half, nb))
        }
    }
}
