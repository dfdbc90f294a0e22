//! The transformer's backward on the GPU: every parameter's gradient, by registry identity.
//!
//! The reverse of `Model::record_forward`, from dL/dlogits: output layer and final norm,
//! then the residual blocks last first (each block's backward, then its norm's, which adds into
//! the residual stream's gradient), finally the embedding. Sparse gradients (embedding rows,
//! value rows of each memory layer) are added into dense tables in a fixed order.
//! Deterministic throughout.

use super::blocks::{GradSink, Pass, ValueTableGrad};
use super::gpu::{Model, ModelForward};
use crate::error::{Error, Result};
use crate::kernels::embedding_grad::record_embedding_grad;
use crate::kernels::linear::{gemm, Batched, Linear, MAX_K_PER_DISPATCH};
use crate::kernels::ops::record_add;
use crate::kernels::value_grads::ValueGrads;
use crate::kernels::Gpu;
use crate::params::ParamId;

/// The embedding's gradient skips the sort (`embedding_grad.wgsl`, whose invocations each walk
/// every row and every id compares against every row) up to this many rows and rows x vocab:
/// byte-level vocabularies at the batches the models here take; subword vocabularies take the
/// sparse path.
const DENSE_TOKEN_GRAD_MAX_ROWS: u32 = 16_384;
const DENSE_TOKEN_GRAD_MAX_WORK: u64 = 1 << 22;

/// Every parameter's gradient, by registry id.
pub struct ModelGrads {
    by_id: Vec<wgpu::Buffer>,
    /// Under the names and in the order of `ModelWeights::named_tensors`, with their lengths
    /// (1 for a skipped gradient's stand-in).
    pub named: Vec<(String, wgpu::Buffer, usize)>,
    /// With memory layers (and when asked for): per value table, a u32 per row, 1 where
    /// some layer read the row this step (what a lazy update touches).
    pub values_read: Vec<(ParamId, wgpu::Buffer)>,
    /// A sharded model's tables (`Model::new_sharded`): each shard's dense gradient
    /// `[n_rows, its columns]` and rows read (when asked for), on the shard's device, in device
    /// order. `named` and `grad` hold a one-value stand-in for these tables.
    pub sharded_values: Vec<(ParamId, Vec<ShardGrad>)>,
}

/// One shard's dense gradient and, when asked for, its rows read (a u32 per row), on the
/// shard's device.
pub type ShardGrad = (wgpu::Buffer, Option<wgpu::Buffer>);

impl Model {
    /// Zeroed gradients of each sharded table's shards, each on its device.
    fn sharded_table_grads(&self, gpu: &Gpu, mark_read: bool) -> Vec<(ParamId, Vec<ValueTableGrad>)> {
        let ctx = self.context();
        let Some(sharding) = ctx.sharding else {
            return Vec::new();
        };
        let devices = sharding.devices(gpu);
        sharding
            .tables
            .iter()
            .map(|(id, table)| {
                let shards = devices
                    .iter()
                    .enumerate()
                    .map(|(s, device)| {
                        let (rows, width) = (table.n_rows() as u64, table.shard(s).v_dim() as u64);
                        ValueTableGrad {
                            id: *id,
                            grad: device.storage("grad values (shard)", rows * width * 4),
                            rows,
                            read: mark_read.then(|| device.storage("value rows read (shard)", rows * 4)),
                        }
                    })
                    .collect();
                (*id, shards)
            })
            .collect()
    }
}

impl Model {
    /// Parameter `id`'s gradient from `grads` on the host (a sharded table's joined from its
    /// shards, each read from its device).
    pub async fn read_gradient(&self, gpu: &Gpu, grads: &ModelGrads, id: ParamId) -> Result<Vec<f32>> {
        let spec = self.layout.registry.spec(id);
        let ctx = self.context();
        let (Some(table), Some((_, shards))) = (
            ctx.sharded(id),
            grads.sharded_values.iter().find(|(t, _)| *t == id),
        ) else {
            return gpu.read_f32(grads.grad(id), spec.len()).await;
        };
        let devices = ctx.shard_devices(gpu);
        let (rows, v) = (table.n_rows(), table.v_dim());
        let mut joined = vec![0f32; rows * v];
        for ((device, (grad, _)), cols) in devices.iter().zip(shards).zip(table.columns()) {
            let part = device.read_f32(grad, rows * cols.len()).await?;
            crate::memory::put_shard(&mut joined, (rows, v), cols, &part);
        }
        Ok(joined)
    }
}

impl ModelGrads {
    /// The gradient of parameter `id`.
    pub fn grad(&self, id: ParamId) -> &wgpu::Buffer {
        &self.by_id[id.0]
    }

    pub fn get(&self, name: &str) -> Option<&wgpu::Buffer> {
        self.named.iter().find(|(n, _, _)| n == name).map(|(_, b, _)| b)
    }
}

impl Model {
    /// Records the backward of `fwd` for `d_logits [rows, vocab]`. Nothing is submitted, except
    /// with sharded value tables (`Model::new_sharded`): each memory layer submits and waits.
    pub fn record_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        fwd: &ModelForward,
        d_logits: &wgpu::Buffer,
    ) -> Result<ModelGrads> {
        self.record_backward_with(gpu, encoder, fwd, d_logits, true)
    }

    /// `record_backward`; `mark_values_read` says whether to mark the value rows read
    /// (`ModelGrads::values_read`, what a lazy value update needs; a dispatch otherwise
    /// spent for nothing).
    pub fn record_backward_with(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        fwd: &ModelForward,
        d_logits: &wgpu::Buffer,
        mark_values_read: bool,
    ) -> Result<ModelGrads> {
        self.record_backward_skipping(gpu, encoder, fwd, d_logits, mark_values_read, &[])
    }

    /// `record_backward_with`, without the weight gradients of the parameters `skipped` marks
    /// (by registry index; frozen weights nobody reads): their GEMMs are not recorded and
    /// `ModelGrads` holds a 4-byte stand-in for each. Value tables and norms are always
    /// computed. Every other gradient is the same.
    pub fn record_backward_skipping(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        fwd: &ModelForward,
        d_logits: &wgpu::Buffer,
        mark_values_read: bool,
        skipped: &[bool],
    ) -> Result<ModelGrads> {
        let (c, layout) = (&self.config, &self.layout);
        if !self.vocab.is_whole() {
            return Err(Error::Config(
                "the backward needs the embedding and output tables in one buffer each; this vocabulary takes several".into(),
            ));
        }
        let rows = fwd.rows;
        let (d, vocab) = (c.dim as u32, c.vocab as u32);
        // Written in full before they are read: scratch buffers (the sums that scatter into
        // their gradient, the embedding's and the value table's, take zeroed ones).
        let f32s = |label: &str, n: u32| gpu.scratch(label, n as u64 * 4);
        let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
        let mut grads = GradSink {
            by_id: vec![None; layout.registry.len()],
            skipped: skipped.to_vec(),
            values: self
                .values
                .iter()
                .map(|(id, pool)| ValueTableGrad {
                    id: *id,
                    grad: gpu.storage("grad values", (pool.n_rows() * pool.v_dim()) as u64 * 4),
                    rows: pool.n_rows() as u64,
                    read: mark_values_read.then(|| gpu.storage("value rows read", pool.n_rows() as u64 * 4)),
                })
                .collect(),
            sharded: self.sharded_table_grads(gpu, mark_values_read),
        };
        // Every RMSNorm's backward writes its per-row weight-gradient terms into its own
        // slice of `dw_rows` (the final norm first, then the blocks' last first); one batched
        // GEMM with a ones vector sums them all at the end (`norm_weight_grads`).
        let norms: Vec<ParamId> = std::iter::once(layout.norm)
            .chain(self.residuals.iter().rev().map(|r| r.norm))
            .collect();
        let dw_rows = gpu.scratch("grad norm rows", norms.len() as u64 * rows as u64 * d as u64 * 4);
        // dx into `dx`, or added into it with `accumulate` (the residual stream's gradient).
        let norm_backward = |encoder: &mut wgpu::CommandEncoder,
                             slot: usize,
                             (id, x, rstd): (ParamId, &wgpu::Buffer, &wgpu::Buffer),
                             dy: &wgpu::Buffer,
                             dx: (&wgpu::Buffer, bool)|
         -> Result<()> {
            debug_assert_eq!(norms[slot], id);
            let at = slot as u64 * rows as u64 * d as u64;
            self.norm(rows, id, x, rstd)
                .record_backward_into(gpu, encoder, dy, dx, (&dw_rows, at))
        };

        // Output layer and final norm.
        grads.weight_grad(
            gpu,
            encoder,
            (layout.output, "grad output.weight"),
            d_logits,
            &fwd.final_normed,
            (vocab, d, rows),
        )?;
        let d_normed = f32s("grad final normed", rows * d);
        gemm(
            gpu,
            encoder,
            "grad final normed",
            (d_logits, false),
            (self.param(layout.output), true),
            &d_normed,
            (rows, d, vocab),
            false,
        )?;
        let dh = f32s("grad residual", rows * d);
        norm_backward(
            encoder,
            0,
            (layout.norm, &fwd.h_final, &fwd.final_rstd),
            &d_normed,
            (&dh, false),
        )?;

        // The residual blocks, last first: h_out = h_in + block(norm(h_in)).
        for (slot, (r, acts)) in self.residuals.iter().zip(&fwd.residuals).rev().enumerate() {
            let pass = Pass {
                gpu,
                model: self.context(),
                batch: fwd.batch,
                seq: fwd.seq,
                layer: r.layer,
                cache: None,
            };
            let d_block_in = f32s("grad block input", rows * d);
            r.block.record_backward(
                &pass,
                encoder,
                &acts.normed,
                &acts.block,
                &dh,
                &d_block_in,
                &mut grads,
            )?;
            norm_backward(
                encoder,
                slot + 1,
                (r.norm, &acts.h_in, &acts.rstd),
                &d_block_in,
                (&dh, true),
            )?;
        }

        for (id, g) in norm_weight_grads(gpu, encoder, &ones, &dw_rows, &norms, (rows, d))? {
            grads.set(id, g);
        }

        // Embedding: one row per token, weight 1; a tied output layer's gradient added in.
        if grads.wants(layout.tok_embeddings) {
            let d_emb = record_token_grad(gpu, encoder, &fwd.tokens, &dh, (rows, vocab, d), None)?;
            if layout.output == layout.tok_embeddings {
                let d_output = grads.by_id[layout.output.0]
                    .take()
                    .expect("the output layer's gradient is recorded first");
                record_add(gpu, encoder, &d_output, &d_emb, vocab * d)?;
            }
            grads.set(layout.tok_embeddings, d_emb);
        } else {
            grads.set(layout.tok_embeddings, gpu.scratch("skipped gradient", 4));
        }
        let tables: Vec<(ParamId, wgpu::Buffer)> =
            grads.values.iter().map(|t| (t.id, t.grad.clone())).collect();
        for (id, g) in tables {
            grads.set(id, g);
        }
        // A sharded table's gradient lives on its devices (`ModelGrads::sharded_values`); a
        // word stands in for it here.
        let sharded: Vec<ParamId> = grads.sharded.iter().map(|(id, _)| *id).collect();
        for id in sharded {
            grads.set(id, gpu.scratch("sharded table's gradient (on its devices)", 4));
        }
        let values_read = grads
            .values
            .iter()
            .filter_map(|t| t.read.clone().map(|r| (t.id, r)))
            .collect();

        let sharded_values = grads
            .sharded
            .iter()
            .map(|(id, shards)| {
                (
                    *id,
                    shards.iter().map(|t| (t.grad.clone(), t.read.clone())).collect(),
                )
            })
            .collect();
        let mut by_id = Vec::with_capacity(grads.by_id.len());
        let mut named = Vec::with_capacity(grads.by_id.len());
        for ((id, spec), g) in layout.registry.iter().zip(grads.by_id) {
            let g = g.ok_or_else(|| Error::MissingTensor(format!("grad.{}", spec.name)))?;
            debug_assert_eq!(id.0, by_id.len());
            // A skipped gradient's stand-in holds one value, and says so; so does a sharded
            // table's.
            let stand_in =
                skipped.get(id.0).copied().unwrap_or(false) || self.context().sharded(id).is_some();
            let len = if stand_in { 1 } else { spec.len() };
            named.push((spec.name.clone(), g.clone(), len));
            by_id.push(g);
        }
        Ok(ModelGrads {
            by_id,
            named,
            values_read,
            sharded_values,
        })
    }
}

/// The weight gradients of the norms whose per-row terms fill `dw_rows [norms, rows, d]`:
/// column sums, as one batched GEMM with a ones vector (per norm where the reduction is too
/// long for one dispatch), copied out into a buffer per norm.
fn norm_weight_grads(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    ones: &wgpu::Buffer,
    dw_rows: &wgpu::Buffer,
    norms: &[ParamId],
    (rows, d): (u32, u32),
) -> Result<Vec<(ParamId, wgpu::Buffer)>> {
    let n = norms.len() as u32;
    let sums = gpu.scratch("grad norm weights", n as u64 * d as u64 * 4);
    let product = |encoder: &mut wgpu::CommandEncoder, layout: Batched| {
        Linear {
            batched: Some(layout),
            ..Linear::new("grad norm weights", ones, dw_rows, &sums, (1, d, rows))
        }
        .record(gpu, encoder)
    };
    let one = Batched::dense(1, d, rows, false, true);
    if rows <= MAX_K_PER_DISPATCH {
        let all = Batched {
            batch: n,
            w_batch: rows * d,
            y_batch: d,
            ..one
        };
        product(encoder, all)?;
    } else {
        for i in 0..n {
            let norm_i = Batched {
                w_offset: i * rows * d,
                y_offset: i * d,
                ..one
            };
            product(encoder, norm_i)?;
        }
    }
    let bytes = d as u64 * 4;
    Ok(norms
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let g = gpu.scratch("grad norm weight", bytes);
            gpu.copy(encoder, (&sums, i as u64 * bytes), (&g, 0), bytes);
            (id, g)
        })
        .collect())
}

/// The gradient of an embedding table `[vocab, d]` whose rows were looked up by `tokens
/// [rows]`, from `dh [rows, d]`: each token's rows of `dh` summed in row order. For small
/// vocabularies and batches (byte-level models; `dense` None picks by size) one pass over the
/// rows per block of ids (`embedding_grad.wgsl`); otherwise the sparse path, a stable sort by
/// token and a sum per run. Both sum in the same order, so they agree bit for bit (tested).
pub fn record_token_grad(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    tokens: &wgpu::Buffer,
    dh: &wgpu::Buffer,
    (rows, vocab, d): (u32, u32, u32),
    dense: Option<bool>,
) -> Result<wgpu::Buffer> {
    let small = rows <= DENSE_TOKEN_GRAD_MAX_ROWS && rows as u64 * vocab as u64 <= DENSE_TOKEN_GRAD_MAX_WORK;
    if dense.unwrap_or(small) {
        let grad = gpu.scratch("grad tok_embeddings", vocab as u64 * d as u64 * 4);
        record_embedding_grad(gpu, encoder, tokens, dh, &grad, (rows, vocab, d))?;
        return Ok(grad);
    }
    let grad = gpu.storage("grad tok_embeddings", vocab as u64 * d as u64 * 4);
    let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
    let sparse = ValueGrads {
        rows,
        bag: 1,
        v_dim: d,
        n_values: vocab,
        max_per_slot: rows,
        indices: tokens,
        weights: &ones,
        dy: dh,
    }
    .record(gpu, encoder)?;
    sparse.record_scatter_add(gpu, encoder, &grad, vocab as u64)?;
    Ok(grad)
}
