//! The transformer on the GPU: parameters uploaded once (one buffer per registry entry), the
//! forward recorded into a caller's encoder as a loop over pre-norm residual blocks.

use super::blocks::{Block, BlockActs, FeedForwardBlock, Pass};
use super::config::ModelConfig;
use super::context::CompactWeight;
use super::context::ModelContext;
use super::kv_cache::KvCache;
use super::layout::ModelLayout;
use super::precision::{compact_copy, compact_weight_ids, output_compact_table, WeightPrecision};
use super::sharding::Sharding;
use super::vocab::VocabTables;
use super::weights::ModelWeights;
use crate::error::{Error, Result};
use crate::gpu::StepPlan;
use crate::kernels::ops::{rope_tables, CrossEntropy, RmsNorm, IGNORE_TARGET};
use crate::kernels::Gpu;
use crate::memory::{ShardOptions, ShardedValues, ValueDtype, ValuePool};
use crate::params::ParamId;
use std::borrow::Cow;

/// One pre-norm residual block of a layer: `h += block(norm(h))`.
pub(crate) struct Residual {
    pub layer: usize,
    pub norm: ParamId,
    pub block: Block,
}

/// The model's parameters on the GPU.
pub struct Model {
    pub config: ModelConfig,
    pub(crate) layout: ModelLayout,
    /// One buffer per registry entry; a value table's is its pool's first buffer.
    params: Vec<wgpu::Buffer>,
    pub(crate) residuals: Vec<Residual>,
    /// A pool per value table (`ModelLayout::values`).
    pub(crate) values: Vec<(ParamId, ValuePool)>,
    pub(super) rope_cos: wgpu::Buffer,
    pub(super) rope_sin: wgpu::Buffer,
    /// The embedding and output tables, split by rows where they exceed one binding.
    pub(super) vocab: VocabTables,
    /// The step plans of `forward` and `forward_with_cache`, by shape (most recent last).
    plans: std::sync::Mutex<Vec<(PlanKey, StepPlan)>>,
    /// Compact copies of the GEMM weights by parameter id (f16 pairs or 8-bit), once
    /// `use_f16_weights` or `use_q8_weights` made them; empty for f32.
    compact_weights: Vec<Option<CompactWeight>>,
    /// What the forward GEMMs read (`use_compact_weights`).
    precision: WeightPrecision,
    /// The feed-forward blocks store their hidden activations as f16 (`use_f16_activations`).
    pub(crate) f16_activations: bool,
    /// The value tables sharded over further devices (`new_sharded`).
    sharding: Option<Sharding>,
}

/// Errors, naming the first parameter that would not fit, where one of `layout`'s parameters
/// outside the tables split by rows (the vocabulary's and the memories' values) exceeds the
/// adapter's largest buffer binding: before anything is uploaded, so that a model too large
/// for the adapter (a browser's, say) is a message, not a device error.
fn check_fits(gpu: &Gpu, layout: &ModelLayout) -> Result<()> {
    let largest = gpu.max_binding_bytes();
    for (id, spec) in layout.registry.iter() {
        let split = id == layout.tok_embeddings || id == layout.output || layout.values.contains(&id);
        let bytes = spec.len() as u64 * 4;
        if !split && bytes > largest {
            return Err(Error::Config(format!(
                "{} ({:?}, {:.0} MB) is larger than this adapter's largest buffer binding ({:.0} MB)",
                spec.name,
                spec.shape,
                bytes as f64 / 1e6,
                largest as f64 / 1e6
            )));
        }
    }
    Ok(())
}

/// The shape a step plan of the model serves.
/// (batch, seq, with targets, with a KV cache, the last position's logits only).
type PlanKey = (u32, u32, bool, bool, bool);

/// Shapes whose plans a model keeps (an evaluation's last partial batch, a prompt's prefill
/// and its decode steps, ...).
const KEPT_PLANS: usize = 8;

/// What one residual block's forward leaves for the backward.
pub(crate) struct ResidualActs {
    pub layer: usize,
    /// The residual stream entering the block, its norm and the norm's 1/rms per row.
    pub h_in: wgpu::Buffer,
    pub normed: wgpu::Buffer,
    pub rstd: wgpu::Buffer,
    pub block: BlockActs,
}

/// What one forward pass leaves on the GPU.
pub struct ModelForward {
    pub batch: u32,
    pub seq: u32,
    pub rows: u32,
    /// `[batch * seq, vocab]`
    pub logits: wgpu::Buffer,
    pub(super) tokens: wgpu::Buffer,
    pub(crate) residuals: Vec<ResidualActs>,
    pub(super) h_final: wgpu::Buffer,
    pub(super) final_normed: wgpu::Buffer,
    pub(super) final_rstd: wgpu::Buffer,
}

impl ModelForward {
    /// The feed-forward block of `layer`: its input (the normed stream) and the residual
    /// stream before and after it (`[rows, dim]` each); what it added is after minus before.
    pub fn feed_forward_io(&self, layer: usize) -> Option<(&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer)> {
        let at = self
            .residuals
            .iter()
            .position(|r| r.layer == layer && !matches!(r.block, BlockActs::Attention(_)))?;
        let after = match self.residuals.get(at + 1) {
            Some(next) => &next.h_in,
            None => &self.h_final,
        };
        let r = &self.residuals[at];
        Some((&r.normed, &r.h_in, after))
    }

    /// The memory layers' lookups in this pass, `(layer index, activations)` in layer order:
    /// the selected slots, scores and softmax weights of every position and head.
    pub fn memory_lookups(&self) -> Vec<(usize, &crate::memory::MemoryActivations)> {
        self.residuals
            .iter()
            .filter_map(|r| r.block.memory().map(|acts| (r.layer, acts)))
            .collect()
    }
}

impl Model {
    pub fn new(gpu: &Gpu, w: &ModelWeights) -> Result<Self> {
        Self::from_source(gpu, &w.config, WeightPrecision::F32, |id| {
            Ok(Cow::Borrowed(w.get(id)))
        })
    }

    /// A model of `config` whose parameters `tensor` gives one at a time (each of its
    /// registry's length, as `ModelWeights` holds them), each uploaded as it comes: the host
    /// needs one tensor at a time, not a copy of the model (a Hugging Face folder read
    /// through memory maps: `io::hf::HfFolder::upload`). With a `precision` other than f32,
    /// the compact copies of `use_f16_weights` or `use_q8_weights` are made from the same
    /// reads (a model without memory layers).
    pub fn from_source<'w>(
        gpu: &Gpu,
        config: &ModelConfig,
        precision: WeightPrecision,
        tensor: impl FnMut(ParamId) -> Result<Cow<'w, [f32]>>,
    ) -> Result<Self> {
        Self::from_source_with(gpu, config, None, precision, tensor)
    }

    /// `new` with the value tables sharded by columns over `gpu` (which holds everything else
    /// and the first columns) and `others` (`memory::ShardedValues`): a table larger than
    /// one device holds. No device holds a whole table at any time. Logits, gradients
    /// (`record_backward`; a table's on its devices, `read_gradient` joins them), generation
    /// and slot counts; training and teaching through `Trainer::new_sharded`. Its forward and backward submit and wait (blocking) at each memory layer, so
    /// call them from native code outside an async runtime's worker. Each table is checked
    /// against `options`' cap on its own.
    pub fn new_sharded(gpu: &Gpu, others: Vec<Gpu>, w: &ModelWeights, options: ShardOptions) -> Result<Self> {
        Self::from_source_sharded(gpu, others, &w.config, options, |id| Ok(Cow::Borrowed(w.get(id))))
    }

    /// `new_sharded` from tensors given one at a time (`from_source`'s way, in f32).
    pub fn from_source_sharded<'w>(
        gpu: &Gpu,
        others: Vec<Gpu>,
        config: &ModelConfig,
        options: ShardOptions,
        source: impl FnMut(ParamId) -> Result<Cow<'w, [f32]>>,
    ) -> Result<Self> {
        let sharding = Sharding {
            others,
            tables: Vec::new(),
        };
        Self::build(
            gpu,
            config,
            (None, WeightPrecision::F32),
            Some((sharding, options)),
            source,
        )
    }

    /// `from_source` with the embedding and output tables split into buffers of at most
    /// `table_rows` rows (as a vocabulary too large for one binding is; for tests).
    pub fn from_source_with<'w>(
        gpu: &Gpu,
        config: &ModelConfig,
        table_rows: Option<usize>,
        precision: WeightPrecision,
        source: impl FnMut(ParamId) -> Result<Cow<'w, [f32]>>,
    ) -> Result<Self> {
        Self::build(gpu, config, (table_rows, precision), None, source)
    }

    fn build<'w>(
        gpu: &Gpu,
        config: &ModelConfig,
        (table_rows, precision): (Option<usize>, WeightPrecision),
        mut sharding: Option<(Sharding, ShardOptions)>,
        mut source: impl FnMut(ParamId) -> Result<Cow<'w, [f32]>>,
    ) -> Result<Self> {
        let c = config;
        let layout = ModelLayout::new(c)?;
        check_fits(gpu, &layout)?;
        if sharding.is_some() && c.memory.as_ref().is_some_and(|m| m.peer) {
            return Err(Error::Config(
                "a PEER memory dots its input with whole values_u rows: its tables are not sharded".into(),
            ));
        }
        let compact = precision != WeightPrecision::F32;
        if compact && c.memory.is_some() {
            return Err(Error::Config(
                "a model with memory layers gets its compact weights from its ModelWeights (use_f16_weights, use_q8_weights)"
                    .into(),
            ));
        }
        // Each tensor is read once; the compact copies are made as the GEMM weights go by.
        let compact_ids = if compact {
            compact_weight_ids(&layout)
        } else {
            Vec::new()
        };
        let mut copies: Vec<Option<CompactWeight>> =
            vec![None; if compact { layout.registry.len() } else { 0 }];
        let mut output_compact = None;
        let mut tensor = |id: ParamId| -> Result<Cow<'w, [f32]>> {
            let data = source(id)?;
            if compact_ids.contains(&id) {
                let row_len = layout.registry.spec(id).shape.last().copied().unwrap_or(1);
                copies[id.0] = Some(compact_copy(gpu, &layout, (id, row_len), &data, precision)?);
            }
            if compact && id == layout.output {
                output_compact = output_compact_table(gpu, c, &layout, &data, table_rows, precision)?;
            }
            Ok(data)
        };
        let table =
            |data: &[f32]| VocabTables::table(gpu, data, (c.vocab, c.dim), ValueDtype::F32, table_rows);
        let embedding = table(&tensor(layout.tok_embeddings)?)?;
        let output = if layout.output == layout.tok_embeddings {
            None
        } else {
            Some(table(&tensor(layout.output)?)?)
        };
        let mut values = Vec::with_capacity(layout.values.len());
        if let Some(m) = &c.memory {
            for &id in &layout.values {
                let shape = (m.n_values(), m.v_dim);
                match &mut sharding {
                    Some((sharding, options)) => {
                        let devices = sharding.devices(gpu);
                        let table =
                            ShardedValues::new(&devices, &tensor(id)?, shape, ValueDtype::F32, *options)?;
                        sharding.tables.push((id, table));
                    }
                    None => values.push((
                        id,
                        ValuePool::new(gpu, &tensor(id)?, shape.0, shape.1, ValueDtype::F32)?,
                    )),
                }
            }
        }
        let sharding = sharding.map(|(s, _)| s);
        let params: Vec<wgpu::Buffer> = layout
            .registry
            .iter()
            .map(|(id, spec)| match values.iter().find(|(table, _)| *table == id) {
                Some((_, pool)) => Ok(pool.buffers()[0].clone()),
                // A sharded table has no buffer on this device (a word stands in for it).
                None if sharding.as_ref().is_some_and(|s| s.table(id).is_some()) => {
                    Ok(gpu.upload(&spec.name, &[0f32]))
                }
                // The vocabulary tables' first buffers (the whole table where it fits one).
                None if id == layout.tok_embeddings => Ok(embedding.buffers()[0].clone()),
                None if id == layout.output => Ok(output.as_ref().expect("untied").buffers()[0].clone()),
                None => Ok(gpu.upload(&spec.name, &tensor(id)?)),
            })
            .collect::<Result<_>>()?;
        let mut residuals = Vec::with_capacity(2 * c.n_layers);
        for (i, l) in layout.layers.iter().enumerate() {
            residuals.push(Residual {
                layer: i,
                norm: l.attention_norm,
                block: Block::Attention(l.attention.clone()),
            });
            let block = FeedForwardBlock::new(&l.feed_forward, c, &|id| params[id.0].clone())
                .map_err(|e| Error::Config(format!("layer {i}: {e}")))?;
            residuals.push(Residual {
                layer: i,
                norm: l.ffn_norm,
                block: Block::FeedForward(block),
            });
        }
        let (cos, sin) = rope_tables(c.max_seqlen, &c.rope_inv_freq());
        Ok(Model {
            config: c.clone(),
            layout,
            params,
            residuals,
            values,
            rope_cos: gpu.upload("rope cos", &cos),
            rope_sin: gpu.upload("rope sin", &sin),
            vocab: VocabTables {
                embedding,
                output,
                output_compact,
                rows_per_chunk: table_rows,
            },
            plans: Default::default(),
            compact_weights: copies,
            precision,
            f16_activations: false,
            sharding,
        })
    }

    /// What its blocks read of the model (`blocks::Pass`).
    pub(crate) fn context(&self) -> ModelContext<'_> {
        ModelContext {
            config: &self.config,
            params: &self.params,
            compact: &self.compact_weights,
            values: &self.values,
            sharding: self.sharding.as_ref(),
            rope_cos: &self.rope_cos,
            rope_sin: &self.rope_sin,
            f16_activations: self.f16_activations,
        }
    }

    /// Where each parameter is in the model's registry.
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// The buffer of parameter `id`.
    pub fn param(&self, id: ParamId) -> &wgpu::Buffer {
        &self.params[id.0]
    }

    /// Stores the GEMM weights of attention, the dense feed-forward blocks, the memory layers'
    /// projections and the output head as f16 (from `weights`, the model's own), and has
    /// every forward read those: half the weight memory and traffic of those layers, products
    /// still summed in f32 (each weight rounded to the nearest f16). For inference
    /// (`forward`, `generate`): training updates the f32 weights and refuses such a model.
    /// The memory layers' keys and values, mixture-of-experts blocks and the embedding keep
    /// f32 (a value table has its own f16 option, `ValueDtype::F16`). A weight beyond f16's
    /// range (|x| > 65504, which bf16 checkpoints can hold) is an error naming it: rounded,
    /// it would be infinite.
    pub fn use_f16_weights(&mut self, gpu: &Gpu, weights: &ModelWeights) -> Result<()> {
        self.use_compact_weights(gpu, weights, WeightPrecision::F16)
    }

    /// As `use_f16_weights`, with the GEMM weights of attention, the dense feed-forward
    /// blocks and the output head stored as 8-bit integers with one f16 scale per 32 values
    /// along the input (q8_0, `kernels::linear::pack_q8`): about a quarter of the f32 bytes,
    /// widened inside the GEMM kernels, products summed in f32. A weight whose rows are not
    /// whole groups of 32 keeps f16, and so do the memory layers' projections.
    pub fn use_q8_weights(&mut self, gpu: &Gpu, weights: &ModelWeights) -> Result<()> {
        self.use_compact_weights(gpu, weights, WeightPrecision::Q8)
    }

    /// Has forwards read the GEMM weights in `precision` (f32: the weights themselves).
    pub fn use_compact_weights(
        &mut self,
        gpu: &Gpu,
        weights: &ModelWeights,
        precision: WeightPrecision,
    ) -> Result<()> {
        if weights.layout.registry.len() != self.layout.registry.len()
            || weights.config.dim != self.config.dim
        {
            return Err(Error::Config(
                "compact weights: the weights are not this model's".into(),
            ));
        }
        let compact = precision != WeightPrecision::F32;
        for r in &mut self.residuals {
            if let Some(block) = r.block.memory_mut() {
                if compact {
                    let memory = weights.memory_weights(&block.params)?;
                    block.layer.use_f16_weights(gpu, &memory)?;
                } else {
                    block.layer.use_f32_weights();
                }
            }
        }
        let mut copies = vec![None; if compact { self.layout.registry.len() } else { 0 }];
        if compact {
            for id in compact_weight_ids(&self.layout) {
                let row_len = self.layout.registry.spec(id).shape.last().copied().unwrap_or(1);
                copies[id.0] = Some(compact_copy(
                    gpu,
                    &self.layout,
                    (id, row_len),
                    weights.get(id),
                    precision,
                )?);
            }
        }
        let output = weights.get(self.layout.output);
        let rows = self.vocab.rows_per_chunk;
        self.vocab.output_compact =
            output_compact_table(gpu, &self.config, &self.layout, output, rows, precision)?;
        self.compact_weights = copies;
        self.precision = precision;
        // Plans recorded so far bound the other weights.
        self.plans.lock().unwrap().clear();
        Ok(())
    }

    /// Stores the activations between the feed-forward blocks' GEMMs as f16 (`on`) or f32:
    /// the dense SwiGLU's `w3 x` and `silu(w1 x) * w3 x` (`[rows, hidden]` each) and Memory+'s
    /// gated hidden (`[rows, v_dim]`), the widest activations of a layer. Each is rounded
    /// once as its GEMM stores it and widened exactly where the next reads it; sums stay f32.
    /// Half their memory and traffic; no `shader-f16` needed. For inference, like
    /// `use_f16_weights` (with which it combines): training refuses such a model. The
    /// residual stream, norms, attention's activations (its keys and values have the f16 KV
    /// cache), the memory lookup's query, scores and bag, and mixture-of-experts blocks stay
    /// f32; an odd hidden width keeps f32 (an f16 word holds two columns).
    pub fn use_f16_activations(&mut self, on: bool) {
        self.f16_activations = on;
        for r in &mut self.residuals {
            if let Some(block) = r.block.memory_mut() {
                block.layer.use_f16_activations(on);
            }
        }
        // Plans recorded so far bound buffers of the other size.
        self.plans.lock().unwrap().clear();
    }

    /// Whether forwards store f16 activations (`use_f16_activations`).
    pub fn uses_f16_activations(&self) -> bool {
        self.f16_activations
    }

    /// Whether forwards read compact GEMM weights (`use_f16_weights`, `use_q8_weights`).
    pub fn uses_f16_weights(&self) -> bool {
        self.precision != WeightPrecision::F32
    }

    /// The precision forwards read the GEMM weights in.
    pub fn weight_precision(&self) -> WeightPrecision {
        self.precision
    }

    /// Every parameter's buffer by id, for training: each value table must fit one buffer. A
    /// sharded table is not listed (its shards: `sharded_tables`).
    pub fn trainable_params(&self) -> Result<Vec<(ParamId, wgpu::Buffer)>> {
        if !self.vocab.is_whole() {
            return Err(Error::Config(
                "training needs the embedding and output tables in one buffer each; this vocabulary takes several"
                    .into(),
            ));
        }
        for (_, pool) in &self.values {
            if pool.buffer_count() != 1 {
                return Err(Error::Config(format!(
                    "training needs the value table in one buffer; it takes {} here",
                    pool.buffer_count()
                )));
            }
        }
        Ok(self
            .layout
            .registry
            .iter()
            .filter(|(id, _)| self.context().sharded(*id).is_none())
            .map(|(id, _)| (id, self.params[id.0].clone()))
            .collect())
    }

    /// The value tables sharded over devices (`new_sharded`), by id.
    pub fn sharded_tables(&self) -> Vec<(ParamId, &ShardedValues)> {
        self.sharding
            .as_ref()
            .map_or_else(Vec::new, |s| s.tables.iter().map(|(id, t)| (*id, t)).collect())
    }

    /// The devices a sharded model's tables live on, `gpu` (the model's own) first; `[gpu]`
    /// for a model on one device.
    pub fn shard_devices<'a>(&'a self, gpu: &'a Gpu) -> Vec<&'a Gpu> {
        self.context().shard_devices(gpu)
    }

    pub(crate) fn norm<'a>(
        &'a self,
        rows: u32,
        id: ParamId,
        x: &'a wgpu::Buffer,
        rstd: &'a wgpu::Buffer,
    ) -> RmsNorm<'a> {
        RmsNorm {
            rows,
            d: self.config.dim as u32,
            eps: self.config.norm_eps,
            x,
            weight: self.param(id),
            rstd,
        }
    }

    /// A key/value cache for one sequence of up to max_seqlen tokens.
    pub fn new_cache(&self, gpu: &Gpu) -> KvCache {
        KvCache::new(gpu, &self.config, false)
    }

    /// A key/value cache that stores keys and values as f16, in half the memory of
    /// `new_cache`'s: each is rounded to f16 as it is appended (to one of its two nearest
    /// f16s, as WGSL allows) and attention reads them back exactly, computing in f32.
    pub fn new_cache_f16(&self, gpu: &Gpu) -> KvCache {
        KvCache::new(gpu, &self.config, true)
    }

    /// Records the forward of `tokens [batch, seq]` (u32, already checked against the
    /// vocabulary). Nothing is submitted, except in a model whose value tables are sharded
    /// (`new_sharded`): each memory layer submits what `encoder` holds, waits (blocking) for
    /// the relays between devices, and leaves a new encoder in `encoder`'s place.
    pub fn record_forward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        batch: u32,
        seq: u32,
    ) -> Result<ModelForward> {
        self.record(gpu, encoder, tokens, (batch, seq), None, false)
    }

    /// Records the forward of the next `seq` tokens of one sequence whose earlier tokens are
    /// in `cache` (prefill with the whole prompt, then one token at a time), appending their
    /// keys and values to it. The logits are those of the new positions. (Sharded tables:
    /// as `record_forward`, this submits and waits at each memory layer.)
    pub fn record_with_cache(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        seq: u32,
        cache: &mut KvCache,
    ) -> Result<ModelForward> {
        let fwd = self.record(gpu, encoder, tokens, (1, seq), Some(cache), false)?;
        cache.len += seq;
        Ok(fwd)
    }

    /// `record_with_cache` computing only the last position's logits (`[1, vocab]`): what
    /// generation needs, without the output layer's product over the rest of a prompt.
    pub fn record_last_with_cache(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        seq: u32,
        cache: &mut KvCache,
    ) -> Result<ModelForward> {
        let fwd = self.record(gpu, encoder, tokens, (1, seq), Some(cache), true)?;
        cache.len += seq;
        Ok(fwd)
    }

    fn record(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        (batch, seq): (u32, u32),
        cache: Option<&KvCache>,
        last_logits_only: bool,
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
        let d = c.dim as u32;
        // Every activation here is written in full before it is read: scratch buffers.
        let f32s = |label: &str, n: u32| gpu.scratch(label, n as u64 * 4);
        // Embedding: a bag of one row per token, weight 1.
        let h = f32s("residual", rows * d);
        self.vocab.record_embedding(gpu, encoder, tokens, rows, &h)?;
        let mut residuals = Vec::with_capacity(self.residuals.len());
        for r in &self.residuals {
            let pass = Pass {
                gpu,
                model: self.context(),
                batch,
                seq,
                layer: r.layer,
                cache,
            };
            let h_in = f32s("residual in", rows * d);
            gpu.copy(encoder, (&h, 0), (&h_in, 0), rows as u64 * d as u64 * 4);
            let (normed, rstd) = (f32s("normed", rows * d), f32s("rstd", rows));
            self.norm(rows, r.norm, &h_in, &rstd)
                .record_forward(gpu, encoder, &normed)?;
            let block = r.block.record_forward(&pass, encoder, &normed, &h)?;
            residuals.push(ResidualActs {
                layer: r.layer,
                h_in,
                normed,
                rstd,
                block,
            });
        }
        let (final_normed, final_rstd) = (f32s("final normed", rows * d), f32s("rstd", rows));
        self.norm(rows, self.layout.norm, &h, &final_rstd)
            .record_forward(gpu, encoder, &final_normed)?;
        // Every row's logits, or the last row's (of a single sequence).
        let (first, logit_rows) = if last_logits_only {
            (rows - 1, 1)
        } else {
            (0, rows)
        };
        let logits = f32s("logits", logit_rows * c.vocab as u32);
        self.vocab
            .record_output(gpu, encoder, (&final_normed, first), logit_rows, &logits)?;
        Ok(ModelForward {
            batch,
            seq,
            rows,
            logits,
            tokens: tokens.clone(),
            residuals,
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
        self.forward_cached(gpu, tokens, cache, false).await
    }

    /// The logits `[vocab]` of the last of `tokens`, the next tokens of the sequence in
    /// `cache`: a generation step (the prompt's prefill included) without the output layer
    /// on the other positions. The same bits as `forward_with_cache`'s last row.
    pub async fn forward_last_with_cache(
        &self,
        gpu: &Gpu,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        self.forward_cached(gpu, tokens, cache, true).await
    }

    async fn forward_cached(
        &self,
        gpu: &Gpu,
        tokens: &[u32],
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        c.check_ids("tokens", tokens)?;
        let key = (1, tokens.len() as u32, false, true, last_only);
        let mut plan = self.take_plan(key);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let fwd = gpu.record_planned(&mut plan, &mut encoder, |encoder| {
            let tb = gpu.upload("tokens", tokens);
            let seq = tokens.len() as u32;
            if last_only {
                self.record_last_with_cache(gpu, encoder, &tb, seq, cache)
            } else {
                self.record_with_cache(gpu, encoder, &tb, seq, cache)
            }
        });
        let logits = match fwd {
            Ok(fwd) => {
                gpu.queue.submit([encoder.finish()]);
                let rows = if last_only { 1 } else { tokens.len() };
                gpu.read_f32(&fwd.logits, rows * c.vocab).await
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
        let key = (batch as u32, seq as u32, targets.is_some(), false, false);
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
