//! The transformer on the GPU: parameters uploaded once, the forward recorded into a
//! caller's encoder.

use super::config::ModelConfig;
use super::weights::{FeedForward, ModelWeights};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, StepPlan};
use crate::kernels::embedding_bag::{EmbeddingBag, ValueChunks};
use crate::kernels::linear::Linear;
use crate::kernels::ops::{record_add, rope_tables, Attention, CrossEntropy, RmsNorm, Rope, IGNORE_TARGET};
use crate::memory::{MemoryLayer, ValueDtype, ValuePool};

pub(super) enum GpuFeedForward {
    Dense {
        w1: wgpu::Buffer,
        w2: wgpu::Buffer,
        w3: wgpu::Buffer,
    },
    Memory(MemoryLayer),
}

pub(super) struct GpuLayer {
    pub attention_norm: wgpu::Buffer,
    pub wq: wgpu::Buffer,
    pub wk: wgpu::Buffer,
    pub wv: wgpu::Buffer,
    pub wo: wgpu::Buffer,
    pub ffn_norm: wgpu::Buffer,
    pub feed_forward: GpuFeedForward,
}

/// The model's parameters on the GPU.
pub struct Model {
    pub config: ModelConfig,
    pub(super) tok_embeddings: wgpu::Buffer,
    pub(super) layers: Vec<GpuLayer>,
    pub(super) norm: wgpu::Buffer,
    pub(super) output: wgpu::Buffer,
    pub(super) values: Option<ValuePool>,
    pub(super) rope_cos: wgpu::Buffer,
    pub(super) rope_sin: wgpu::Buffer,
    /// The step plans of `forward` and `forward_with_cache`, by shape (most recent last).
    plans: std::sync::Mutex<Vec<(PlanKey, StepPlan)>>,
}

/// The shape a step plan of the model serves: batch, seq, with targets, with a KV cache.
type PlanKey = (u32, u32, bool, bool);

/// Shapes whose plans a model keeps (an evaluation's last partial batch, a prompt's prefill
/// and its decode steps, ...).
const KEPT_PLANS: usize = 8;

/// Keys (after RoPE) and values of every layer for the positions seen so far.
pub struct KvCache {
    /// Positions cached.
    pub len: u32,
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
}

/// What one layer's forward leaves for the backward.
pub(super) struct LayerActs {
    /// Residual stream entering the layer, and after the attention block.
    pub h_in: wgpu::Buffer,
    pub h_mid: wgpu::Buffer,
    pub attn_normed: wgpu::Buffer,
    pub attn_rstd: wgpu::Buffer,
    pub q_rot: wgpu::Buffer,
    pub k_rot: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub attn: wgpu::Buffer,
    pub lse: wgpu::Buffer,
    pub ffn_normed: wgpu::Buffer,
    pub ffn_rstd: wgpu::Buffer,
    pub ffn: FfnActs,
}

pub(super) enum FfnActs {
    /// `w3 x` and `(w3 x) * silu(w1 x)`.
    Dense {
        u: wgpu::Buffer,
        gated: wgpu::Buffer,
    },
    Memory(crate::memory::MemoryActivations),
}

/// What one forward pass leaves on the GPU.
pub struct ModelForward {
    pub batch: u32,
    pub seq: u32,
    pub rows: u32,
    /// `[batch * seq, vocab]`
    pub logits: wgpu::Buffer,
    pub(super) tokens: wgpu::Buffer,
    pub(super) layers: Vec<LayerActs>,
    pub(super) h_final: wgpu::Buffer,
    pub(super) final_normed: wgpu::Buffer,
    pub(super) final_rstd: wgpu::Buffer,
}

impl ModelForward {
    /// The memory layers' lookups in this pass, `(layer index, activations)` in layer order:
    /// the selected slots, scores and softmax weights of every position and head.
    pub fn memory_lookups(&self) -> Vec<(usize, &crate::memory::MemoryActivations)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.ffn {
                FfnActs::Memory(acts) => Some((i, acts)),
                FfnActs::Dense { .. } => None,
            })
            .collect()
    }
}

pub(super) fn linear<'a>(
    x: &'a wgpu::Buffer,
    w: &'a wgpu::Buffer,
    y: &'a wgpu::Buffer,
    (m, n, k): (u32, u32, u32),
) -> Linear<'a> {
    Linear {
        label: "linear",
        x,
        w,
        bias: None,
        gate: None,
        y,
        m,
        n,
        k,
        batched: None,
        accumulate: false,
    }
}

impl Model {
    pub fn new(gpu: &Gpu, w: &ModelWeights) -> Result<Self> {
        let c = &w.config;
        let up = |name: &str, data: &[f32]| gpu.upload(name, data);
        let mut layers = Vec::with_capacity(c.n_layers);
        for (i, l) in w.layers.iter().enumerate() {
            let feed_forward = match &l.feed_forward {
                FeedForward::Dense { w1, w2, w3 } => GpuFeedForward::Dense {
                    w1: up("w1", w1),
                    w2: up("w2", w2),
                    w3: up("w3", w3),
                },
                FeedForward::Memory(m) => GpuFeedForward::Memory(
                    MemoryLayer::new(gpu, m).map_err(|e| Error::Config(format!("layer {i}: {e}")))?,
                ),
            };
            layers.push(GpuLayer {
                attention_norm: up("attention_norm", &l.attention_norm),
                wq: up("wq", &l.wq),
                wk: up("wk", &l.wk),
                wv: up("wv", &l.wv),
                wo: up("wo", &l.wo),
                ffn_norm: up("ffn_norm", &l.ffn_norm),
                feed_forward,
            });
        }
        let values = match (&c.memory, &w.values) {
            (Some(m), Some(v)) => Some(ValuePool::new(gpu, v, m.n_values(), m.v_dim, ValueDtype::F32)?),
            (Some(_), None) => return Err(Error::MissingTensor(crate::memory::VALUES_NAME.into())),
            _ => None,
        };
        let (cos, sin) = rope_tables(c.max_seqlen, c.head_dim, c.rope_theta);
        Ok(Model {
            config: c.clone(),
            tok_embeddings: up("tok_embeddings", &w.tok_embeddings),
            layers,
            norm: up("norm", &w.norm),
            output: up("output", &w.output),
            values,
            rope_cos: up("rope cos", &cos),
            rope_sin: up("rope sin", &sin),
            plans: Default::default(),
        })
    }

    /// Every parameter buffer with its lingua name and element count, in the order of
    /// `ModelWeights::named_tensors` (the value table once, under the first memory layer).
    pub fn param_buffers(&self) -> Result<Vec<(String, wgpu::Buffer, usize)>> {
        let c = &self.config;
        let (d, qd, kvd) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut p = vec![(
            "tok_embeddings.weight".to_string(),
            self.tok_embeddings.clone(),
            c.vocab * d,
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("layers.{i}.{s}");
            p.push((n("attention.wq.weight"), l.wq.clone(), qd * d));
            p.push((n("attention.wk.weight"), l.wk.clone(), kvd * d));
            p.push((n("attention.wv.weight"), l.wv.clone(), kvd * d));
            p.push((n("attention.wo.weight"), l.wo.clone(), d * qd));
            p.push((n("attention_norm.weight"), l.attention_norm.clone(), d));
            p.push((n("ffn_norm.weight"), l.ffn_norm.clone(), d));
            match &l.feed_forward {
                GpuFeedForward::Dense { w1, w2, w3 } => {
                    p.push((n("feed_forward.w1.weight"), w1.clone(), c.hidden * d));
                    p.push((n("feed_forward.w2.weight"), w2.clone(), d * c.hidden));
                    p.push((n("feed_forward.w3.weight"), w3.clone(), c.hidden * d));
                }
                GpuFeedForward::Memory(m) => {
                    for (name, b) in m.param_buffers() {
                        p.push((
                            n(&format!("feed_forward.{name}")),
                            b.clone(),
                            (b.size() / 4) as usize,
                        ));
                    }
                    if Some(i) == c.memory_layers.first().copied() {
                        let pool = self.values.as_ref().expect("memory layers have a pool");
                        if pool.buffer_count() != 1 {
                            return Err(Error::Config(format!(
                                "training needs the value table in one buffer; it takes {} here",
                                pool.buffer_count()
                            )));
                        }
                        let len = pool.n_rows() * pool.v_dim();
                        p.push((
                            n(&format!("feed_forward.{}", crate::memory::VALUES_NAME)),
                            pool.buffers()[0].clone(),
                            len,
                        ));
                    }
                }
            }
        }
        p.push(("norm.weight".into(), self.norm.clone(), d));
        p.push(("output.weight".into(), self.output.clone(), c.vocab * d));
        Ok(p)
    }

    pub(super) fn rope(&self, batch: u32, seq: u32, heads: usize, inverse: bool) -> Rope<'_> {
        Rope {
            batch,
            seq,
            heads: heads as u32,
            head_dim: self.config.head_dim as u32,
            pos0: 0,
            inverse,
            cos: &self.rope_cos,
            sin: &self.rope_sin,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention<'a>(
        &self,
        batch: u32,
        seq: u32,
        q: &'a wgpu::Buffer,
        k: &'a wgpu::Buffer,
        v: &'a wgpu::Buffer,
        out: &'a wgpu::Buffer,
        lse: &'a wgpu::Buffer,
    ) -> Attention<'a> {
        let c = &self.config;
        Attention {
            batch,
            seq,
            heads: c.n_heads as u32,
            kv_heads: c.n_kv_heads as u32,
            head_dim: c.head_dim as u32,
            q,
            k,
            v,
            out,
            lse,
        }
    }

    /// A key/value cache for one sequence of up to max_seqlen tokens.
    pub fn new_cache(&self, gpu: &Gpu) -> KvCache {
        let c = &self.config;
        let bytes = (c.max_seqlen * c.n_kv_heads * c.head_dim * 4) as u64;
        KvCache {
            len: 0,
            k: self
                .layers
                .iter()
                .map(|_| gpu.storage("kv cache k", bytes))
                .collect(),
            v: self
                .layers
                .iter()
                .map(|_| gpu.storage("kv cache v", bytes))
                .collect(),
        }
    }

    /// Records the forward of `tokens [batch, seq]` (u32, already checked against the
    /// vocabulary). Nothing is submitted.
    pub fn record_forward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        batch: u32,
        seq: u32,
    ) -> Result<ModelForward> {
        self.record(gpu, encoder, tokens, batch, seq, None)
    }

    /// Records the forward of the next `seq` tokens of one sequence whose earlier tokens are
    /// in `cache` (prefill with the whole prompt, then one token at a time), appending their
    /// keys and values to it. The logits are those of the new positions.
    pub fn record_with_cache(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        seq: u32,
        cache: &mut KvCache,
    ) -> Result<ModelForward> {
        let fwd = self.record(gpu, encoder, tokens, 1, seq, Some(cache))?;
        cache.len += seq;
        Ok(fwd)
    }

    fn record(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        batch: u32,
        seq: u32,
        cache: Option<&KvCache>,
    ) -> Result<ModelForward> {
        let c = &self.config;
        let pos0 = cache.map_or(0, |k| k.len);
        if batch == 0 || seq == 0 || (pos0 + seq) as usize > c.max_seqlen {
            return Err(Error::tensor(
                "tokens",
                format!(
                    "[batch, seq] with 1 <= seq and cached + seq <= max_seqlen ({})",
                    c.max_seqlen
                ),
                format!("[{batch}, {seq}] after {pos0} cached"),
            ));
        }
        let rows = batch * seq;
        let (d, hd) = (c.dim as u32, c.head_dim as u32);
        let (qd, kvd) = (c.n_heads as u32 * hd, c.n_kv_heads as u32 * hd);
        let f32s = |label: &str, n: u32| gpu.storage(label, n as u64 * 4);
        // Embedding: a bag of one row per token, weight 1.
        let h = f32s("residual", rows * d);
        let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
        let table = [self.tok_embeddings.clone()];
        let chunks = ValueChunks {
            buffers: &table,
            n_rows: c.vocab as u32,
            v_dim: d,
            f16: false,
            rows_per_chunk: c.vocab as u32,
        };
        EmbeddingBag {
            rows,
            bag: 1,
            indices: tokens,
            weights: &ones,
            values: &chunks,
            out: &h,
            workgroup_size: None,
            columns_per_invocation: None,
        }
        .record(gpu, encoder)?;
        let mut layer_acts = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let h_in = f32s("residual in", rows * d);
            encoder.copy_buffer_to_buffer(&h, 0, &h_in, 0, rows as u64 * d as u64 * 4);
            let (attn_normed, attn_rstd) = (f32s("attention normed", rows * d), f32s("rstd", rows));
            let (q, k, v) = (f32s("q", rows * qd), f32s("k", rows * kvd), f32s("v", rows * kvd));
            let (q_rot, k_rot) = (f32s("q rotated", rows * qd), f32s("k rotated", rows * kvd));
            let (attn, lse) = (f32s("attention", rows * qd), f32s("lse", rows * c.n_heads as u32));
            let norm = |weight, x, rstd| RmsNorm {
                rows,
                d,
                eps: c.norm_eps,
                x,
                weight,
                rstd,
            };
            norm(&layer.attention_norm, &h_in, &attn_rstd).record_forward(gpu, encoder, &attn_normed)?;
            linear(&attn_normed, &layer.wq, &q, (rows, qd, d)).record(gpu, encoder)?;
            linear(&attn_normed, &layer.wk, &k, (rows, kvd, d)).record(gpu, encoder)?;
            linear(&attn_normed, &layer.wv, &v, (rows, kvd, d)).record(gpu, encoder)?;
            Rope {
                pos0,
                ..self.rope(batch, seq, c.n_heads, false)
            }
            .record(gpu, encoder, &q, &q_rot)?;
            Rope {
                pos0,
                ..self.rope(batch, seq, c.n_kv_heads, false)
            }
            .record(gpu, encoder, &k, &k_rot)?;
            match cache {
                None => self
                    .attention(batch, seq, &q_rot, &k_rot, &v, &attn, &lse)
                    .record_forward(gpu, encoder)?,
                Some(cache) => {
                    let (at, bytes) = (pos0 as u64 * kvd as u64 * 4, seq as u64 * kvd as u64 * 4);
                    encoder.copy_buffer_to_buffer(&k_rot, 0, &cache.k[li], at, bytes);
                    encoder.copy_buffer_to_buffer(&v, 0, &cache.v[li], at, bytes);
                    self.attention(batch, seq, &q_rot, &cache.k[li], &cache.v[li], &attn, &lse)
                        .record_decode(gpu, encoder, pos0 + seq)?;
                }
            }
            Linear {
                accumulate: true,
                ..linear(&attn, &layer.wo, &h, (rows, d, qd))
            }
            .record(gpu, encoder)?;
            let h_mid = f32s("residual mid", rows * d);
            encoder.copy_buffer_to_buffer(&h, 0, &h_mid, 0, rows as u64 * d as u64 * 4);
            let (ffn_normed, ffn_rstd) = (f32s("ffn normed", rows * d), f32s("rstd", rows));
            norm(&layer.ffn_norm, &h_mid, &ffn_rstd).record_forward(gpu, encoder, &ffn_normed)?;
            let ffn = match &layer.feed_forward {
                GpuFeedForward::Dense { w1, w2, w3 } => {
                    let hidden = c.hidden as u32;
                    let (u, gated) = (f32s("w3 x", rows * hidden), f32s("swiglu", rows * hidden));
                    linear(&ffn_normed, w3, &u, (rows, hidden, d)).record(gpu, encoder)?;
                    Linear {
                        gate: Some(&u),
                        ..linear(&ffn_normed, w1, &gated, (rows, hidden, d))
                    }
                    .record(gpu, encoder)?;
                    Linear {
                        accumulate: true,
                        ..linear(&gated, w2, &h, (rows, d, hidden))
                    }
                    .record(gpu, encoder)?;
                    FfnActs::Dense { u, gated }
                }
                GpuFeedForward::Memory(memory) => {
                    let pool = self.values.as_ref().expect("checked in new");
                    let acts = memory.record_forward(gpu, encoder, pool, &ffn_normed, rows)?;
                    record_add(gpu, encoder, &acts.out, &h, rows * d)?;
                    FfnActs::Memory(acts)
                }
            };
            layer_acts.push(LayerActs {
                h_in,
                h_mid,
                attn_normed,
                attn_rstd,
                q_rot,
                k_rot,
                v,
                attn,
                lse,
                ffn_normed,
                ffn_rstd,
                ffn,
            });
        }
        let (final_normed, final_rstd) = (f32s("final normed", rows * d), f32s("rstd", rows));
        RmsNorm {
            rows,
            d,
            eps: c.norm_eps,
            x: &h,
            weight: &self.norm,
            rstd: &final_rstd,
        }
        .record_forward(gpu, encoder, &final_normed)?;
        let logits = f32s("logits", rows * c.vocab as u32);
        linear(&final_normed, &self.output, &logits, (rows, c.vocab as u32, d)).record(gpu, encoder)?;
        Ok(ModelForward {
            batch,
            seq,
            rows,
            logits,
            tokens: tokens.clone(),
            layers: layer_acts,
            h_final: h,
            final_normed,
            final_rstd,
        })
    }

    /// The kept plan for `key` (or a new one), taken out while it records.
    fn take_plan(&self, key: PlanKey) -> StepPlan {
        let mut plans = self.plans.lock().unwrap();
        match plans.iter().position(|(k, _)| *k == key) {
            Some(i) => plans.remove(i).1,
            None => StepPlan::new(),
        }
    }

    fn keep_plan(&self, key: PlanKey, plan: StepPlan) {
        let mut plans = self.plans.lock().unwrap();
        plans.push((key, plan));
        if plans.len() > KEPT_PLANS {
            plans.remove(0);
        }
    }

    /// Logits `[tokens.len(), vocab]` of the next tokens of the sequence in `cache`.
    pub async fn forward_with_cache(
        &self,
        gpu: &Gpu,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        c.check_ids("tokens", tokens)?;
        let key = (1, tokens.len() as u32, false, true);
        let mut plan = self.take_plan(key);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let fwd = gpu.record_planned(&mut plan, &mut encoder, |encoder| {
            let tb = gpu.upload("tokens", tokens);
            self.record_with_cache(gpu, encoder, &tb, tokens.len() as u32, cache)
        });
        let logits = match fwd {
            Ok(fwd) => {
                gpu.queue.submit([encoder.finish()]);
                gpu.read_f32(&fwd.logits, tokens.len() * c.vocab).await
            }
            Err(e) => Err(e),
        };
        self.keep_plan(key, plan);
        logits
    }

    /// Logits `[batch * seq, vocab]` and, with `targets`, the mean cross-entropy (over the
    /// targets that are not `IGNORE_TARGET`).
    pub async fn forward(
        &self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: Option<&[u32]>,
        batch: usize,
        seq: usize,
    ) -> Result<(Vec<f32>, Option<f32>)> {
        let c = &self.config;
        if tokens.len() != batch * seq || targets.is_some_and(|t| t.len() != tokens.len()) {
            return Err(Error::tensor(
                "tokens",
                format!("[{batch}, {seq}] (and targets alike)"),
                format!("{} ids", tokens.len()),
            ));
        }
        c.check_ids("tokens", tokens)?;
        if let Some(t) = targets {
            c.check_targets("targets", t)?;
        }
        let counted = targets.map_or(0, |t| t.iter().filter(|&&t| t != IGNORE_TARGET).count());
        let key = (batch as u32, seq as u32, targets.is_some(), false);
        let mut plan = self.take_plan(key);
        let result = self
            .forward_planned(gpu, &mut plan, tokens, targets, batch, seq, counted)
            .await;
        self.keep_plan(key, plan);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_planned(
        &self,
        gpu: &Gpu,
        plan: &mut StepPlan,
        tokens: &[u32],
        targets: Option<&[u32]>,
        batch: usize,
        seq: usize,
        counted: usize,
    ) -> Result<(Vec<f32>, Option<f32>)> {
        let c = &self.config;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let (fwd, loss_rows) = gpu.record_planned(plan, &mut encoder, |encoder| {
            let tb = gpu.upload("tokens", tokens);
            let fwd = self.record_forward(gpu, encoder, &tb, batch as u32, seq as u32)?;
            let rows = fwd.rows;
            let loss_rows = match targets {
                Some(t) => {
                    let loss_rows = gpu.storage("loss", rows as u64 * 4);
                    let (target_buf, grad) = (
                        gpu.upload("targets", t),
                        gpu.storage("grad logits", rows as u64 * c.vocab as u64 * 4),
                    );
                    CrossEntropy {
                        rows,
                        vocab: c.vocab as u32,
                        scale: 1.0 / counted.max(1) as f32,
                        logits: &fwd.logits,
                        targets: &target_buf,
                        loss: &loss_rows,
                        grad: &grad,
                    }
                    .record(gpu, encoder)?;
                    Some(loss_rows)
                }
                None => None,
            };
            Ok((fwd, loss_rows))
        })?;
        gpu.queue.submit([encoder.finish()]);
        let rows = fwd.rows;
        let logits = gpu.read_f32(&fwd.logits, rows as usize * c.vocab).await?;
        let loss = match loss_rows {
            Some(loss_rows) => {
                let per_row = gpu.read_f32(&loss_rows, rows as usize).await?;
                Some(per_row.iter().sum::<f32>() / counted.max(1) as f32)
            }
            None => None,
        };
        Ok((logits, loss))
    }
}
