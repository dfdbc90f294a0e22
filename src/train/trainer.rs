//! One training step on the GPU: forward, cross-entropy, backward, gradient clipping and
//! AdamW, recorded into one encoder. docs/reference.md, "The training recipe": AdamW (0.9, 0.95), eps 1e-8,
//! weight decay 0.1 (values included), base lr with linear warm-up and linear decay to 1%,
//! the value table in its own group at a constant lr (value_fixed_lr), norms clipped at 1.0
//! separately for the values and for everything else.

use crate::error::{Error, Result};
use crate::gpu::StepPlan;
#[cfg(not(target_arch = "wasm32"))]
use crate::kernels::adamw::record_sum_squares;
use crate::kernels::adamw::{
    record_clip, record_dense_step, record_masked_step, AdamWState, AdamWStep, Clip, CLIP_BLOCK,
};
use crate::kernels::ops::CrossEntropy;
use crate::kernels::Gpu;
use crate::model::{Model, ModelForward, ModelGrads, ModelWeights};
use crate::params::{Group, ParamId};
use crate::tensor_file::{HostTensor, TensorFile};

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub steps: u32,
    pub lr: f32,
    pub warmup: u32,
    /// The decayed lr at the last step, as a fraction of `lr`.
    pub lr_min_ratio: f32,
    pub value_lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub clip: f32,
    /// Update only the value rows read in a step (their moments and weight decay included),
    /// instead of the whole table as the reference does.
    pub lazy_values: bool,
    /// Update the value tables only: every other parameter stays as it is (the memory
    /// methods of `teach`).
    pub freeze_weights: bool,
    /// The value tables' optimiser.
    pub value_optimizer: ValueOptimizer,
    /// Optimise the weights other than value tables as one flat tensor where they fit one
    /// storage binding (three dispatches a step); false, or where they do not fit: tensor by
    /// tensor. Both give the same bits.
    pub flat_weights: bool,
}

/// How the value tables are updated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueOptimizer {
    /// AdamW, as every other parameter (the reference).
    #[default]
    AdamW,
    /// Plain SGD (`p -= lr * clip * g`), on the rows of a row mask only: what sparse memory
    /// fine-tuning updates with.
    Sgd,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            lr: 1e-4,
            warmup: 100,
            lr_min_ratio: 0.01,
            value_lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
            lazy_values: false,
            freeze_weights: false,
            flat_weights: true,
            value_optimizer: ValueOptimizer::AdamW,
        }
    }
}

impl TrainConfig {
    /// The base learning rate at 1-based `step`: linear warm-up, then linear decay to
    /// `lr * lr_min_ratio` at `steps`.
    pub fn lr_at(&self, step: u32) -> f32 {
        if step <= self.warmup {
            return self.lr * step as f32 / self.warmup.max(1) as f32;
        }
        let span = (self.steps.saturating_sub(self.warmup)).max(1) as f32;
        let t = ((step - self.warmup) as f32 / span).min(1.0);
        self.lr * (1.0 - t * (1.0 - self.lr_min_ratio))
    }
}

/// One parameter with where its AdamW moments live: its own buffers (a value table, updated
/// in place, densely or on the rows read) or a range of its group's flat buffers.
struct ParamState {
    id: ParamId,
    name: String,
    shape: Vec<usize>,
    param: wgpu::Buffer,
    len: usize,
    values: bool,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    /// First element of this parameter in `m`, `v` (and the flat group's other buffers).
    offset: u64,
}

/// The parameters other than value tables, optimised as one flat tensor: each step their
/// gradients are copied into `grad`, the group's norm, clipping and AdamW run over the flat
/// buffers in three dispatches, and the updated `master` copy goes back to the parameters'
/// own buffers. Each parameter starts at a multiple of the clipping block (1024 elements,
/// zero-padded), so the norm's partial sums are those of the parameters one by one, in the
/// same order: the results are bit-identical to one update per tensor.
struct FlatGroup {
    master: wgpu::Buffer,
    grad: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    len: u64,
}

/// A model with its optimiser state, stepping on the GPU.
pub struct Trainer {
    pub model: Model,
    pub config: TrainConfig,
    /// Steps taken.
    pub step: u32,
    params: Vec<ParamState>,
    flat: Option<FlatGroup>,
    /// The buffers and bind groups of a step, kept from one step to the next.
    plan: StepPlan,
    /// The buffers and bind groups of `submit_update`'s half of a step.
    update_plan: StepPlan,
    /// The gradients `submit_gradients` recorded, waiting for `submit_update`.
    pending: Option<ModelGrads>,
    /// The last submitted step's per-row losses, their count and the number of targets.
    last_loss: Option<(wgpu::Buffer, usize, usize)>,
    /// Row masks (one u32 per row, non-zero: update) of value tables: each step updates only
    /// these rows of these tables (set by `set_value_rows`).
    value_rows: Option<Vec<(ParamId, Vec<u32>)>>,
    /// By registry index: gradients the backward skips (frozen weights: nothing reads them).
    skipped_grads: Vec<bool>,
    /// The value tables sharded over devices (`new_sharded`), each shard with its moments.
    sharded: Vec<ShardedTableState>,
}

/// A value table sharded over devices: each shard's parameters (its `ValuePool`'s buffer) and
/// AdamW moments on the shard's device, in device order.
struct ShardedTableState {
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    id: ParamId,
    name: String,
    /// `[n_rows, v_dim]`
    shape: Vec<usize>,
    /// (parameters, m, v, columns) of each shard.
    shards: Vec<ShardState>,
}

/// One shard's parameters, AdamW moments and columns.
type ShardState = (wgpu::Buffer, wgpu::Buffer, wgpu::Buffer, std::ops::Range<usize>);

/// An encoder of its own for each device after the first (whose work goes into the step's
/// encoder): the sharded update's.
#[cfg(not(target_arch = "wasm32"))]
fn encoders_after_first(devices: &[&Gpu]) -> Vec<Option<wgpu::CommandEncoder>> {
    devices
        .iter()
        .enumerate()
        .map(|(s, d)| (s > 0).then(|| d.device.create_command_encoder(&Default::default())))
        .collect()
}

/// Submits each device's own encoder (`encoders_after_first`).
#[cfg(not(target_arch = "wasm32"))]
fn submit_each(devices: &[&Gpu], encoders: &mut [Option<wgpu::CommandEncoder>]) {
    for (device, enc) in devices.iter().zip(encoders) {
        if let Some(enc) = enc.take() {
            device.queue.submit([enc.finish()]);
        }
    }
}

impl Trainer {
    pub fn new(gpu: &Gpu, weights: &ModelWeights, config: TrainConfig) -> Result<Self> {
        Self::with_model(gpu, Model::new(gpu, weights)?, config)
    }

    /// `new` with the value tables sharded by columns over `gpu` and `others`
    /// (`Model::new_sharded`): each shard is updated on its device, with its own moments.
    /// Every value optimiser and row choice of one device's (dense, lazy, listed rows with
    /// AdamW or SGD); the value group is clipped by the norm of all
    /// its shards, summed in a different order from one device's (so with clipping active the
    /// values agree with one device's to rounding, not bit for bit; without, bit for bit).
    pub fn new_sharded(
        gpu: &Gpu,
        others: Vec<Gpu>,
        weights: &ModelWeights,
        config: TrainConfig,
        options: crate::memory::ShardOptions,
    ) -> Result<Self> {
        let model = Model::new_sharded(gpu, others, weights, options)?;
        Self::with_model(gpu, model, config)
    }

    fn with_model(gpu: &Gpu, model: Model, config: TrainConfig) -> Result<Self> {
        let registry = &model.layout().registry;
        let buffers: Vec<(ParamId, wgpu::Buffer, usize)> = model
            .trainable_params()?
            .into_iter()
            .map(|(id, b)| (id, b, registry.spec(id).len()))
            .collect();
        // The flat group's layout: each parameter at a multiple of the clipping block.
        let mut flat_len = 0u64;
        let mut offsets = Vec::with_capacity(buffers.len());
        for (id, _, len) in &buffers {
            if registry.spec(*id).group == Group::Values {
                offsets.push(0);
            } else {
                offsets.push(flat_len);
                flat_len += (*len as u64).next_multiple_of(CLIP_BLOCK);
            }
        }
        // Frozen weights keep no optimiser state: only the value tables get moments. Weights
        // too many for one binding (a model of 100M parameters) are updated tensor by tensor,
        // each with its own moments: the same sums, in the same order.
        let frozen = config.freeze_weights;
        let flat_fits = config.flat_weights && flat_len * 4 <= gpu.max_binding_bytes();
        if !flat_fits {
            offsets.iter_mut().for_each(|o| *o = 0);
        }
        let flat = (flat_len > 0 && !frozen && flat_fits).then(|| {
            let f32s = |label: &str| gpu.storage(label, flat_len * 4);
            FlatGroup {
                master: f32s("flat parameters"),
                grad: f32s("flat gradients"),
                m: f32s("adam m"),
                v: f32s("adam v"),
                len: flat_len,
            }
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut params = Vec::with_capacity(buffers.len());
        for ((id, param, len), offset) in buffers.into_iter().zip(offsets) {
            let spec = registry.spec(id);
            let values = spec.group == Group::Values;
            let (m, v) = match (&flat, values) {
                (Some(group), false) => {
                    gpu.copy(
                        &mut encoder,
                        (&param, 0),
                        (&group.master, offset * 4),
                        len as u64 * 4,
                    );
                    (group.m.clone(), group.v.clone())
                }
                _ => {
                    let len = if frozen && !values { 1 } else { len };
                    (
                        gpu.storage("adam m", len as u64 * 4),
                        gpu.storage("adam v", len as u64 * 4),
                    )
                }
            };
            params.push(ParamState {
                id,
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                param,
                len,
                values,
                m,
                v,
                offset,
            });
        }
        gpu.queue.submit([encoder.finish()]);
        let mut skipped_grads: Vec<bool> = vec![false; registry.len()];
        for p in &params {
            skipped_grads[p.id.0] = frozen && !p.values;
        }
        let devices = model.shard_devices(gpu);
        let mut sharded = Vec::new();
        for (id, table) in model.sharded_tables() {
            let spec = registry.spec(id);
            let mut shards = Vec::new();
            for (s, (device, cols)) in devices.iter().zip(table.columns()).enumerate() {
                let pool = table.shard(s);
                if pool.buffer_count() != 1 || pool.dtype() != crate::memory::ValueDtype::F32 {
                    return Err(Error::Config(format!(
                        "training needs each shard of {} in one f32 buffer; device {s}'s is {:?} in {}",
                        spec.name,
                        pool.dtype(),
                        pool.buffer_count()
                    )));
                }
                let bytes = pool.bytes();
                shards.push((
                    pool.buffers()[0].clone(),
                    device.storage("adam m (shard)", bytes),
                    device.storage("adam v (shard)", bytes),
                    cols.clone(),
                ));
            }
            sharded.push(ShardedTableState {
                id,
                name: spec.name.clone(),
                shape: spec.shape.clone(),
                shards,
            });
        }
        Ok(Trainer {
            sharded,
            skipped_grads,
            model,
            config,
            step: 0,
            params,
            flat,
            plan: StepPlan::new(),
            update_plan: StepPlan::new(),
            pending: None,
            last_loss: None,
            value_rows: None,
        })
    }

    /// Has the backward compute the gradients of `ids` though the weights are frozen (a caller
    /// that updates something of its own from them: LoRA's adapters). Call before stepping.
    pub fn need_gradients(&mut self, ids: &[ParamId]) {
        for id in ids {
            self.skipped_grads[id.0] = false;
        }
        self.plan = StepPlan::new();
    }

    /// The rows of each value table (`(table, one u32 per row)`, non-zero: update) that the
    /// following steps update, with `TrainConfig::value_optimizer`; None: the rows
    /// `lazy_values` says. Every value table must be listed.
    pub fn set_value_rows(&mut self, rows: Option<Vec<(ParamId, Vec<u32>)>>) -> Result<()> {
        if let Some(rows) = &rows {
            let tables = self
                .params
                .iter()
                .filter(|p| p.values)
                .map(|p| (p.id, &p.name, &p.shape));
            let sharded = self.sharded.iter().map(|t| (t.id, &t.name, &t.shape));
            for (id, name, shape) in tables.chain(sharded) {
                let n = shape.first().copied().unwrap_or(0);
                match rows.iter().find(|(t, _)| *t == id) {
                    Some((_, mask)) if mask.len() == n => {}
                    Some((_, mask)) => {
                        return Err(Error::tensor(
                            name,
                            format!("a mask of {n} rows"),
                            format!("{} rows", mask.len()),
                        ))
                    }
                    None => return Err(Error::Config(format!("value rows: no mask for {name}"))),
                }
            }
        }
        self.value_rows = rows;
        Ok(())
    }

    /// Records one step on `tokens`/`targets` (`[batch, seq]`, u32, checked against the
    /// vocabulary by the caller; targets may be `IGNORE_TARGET`, and `counted` is the number
    /// of the others: the loss is their mean) and returns the per-row losses' buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn record_step(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        targets: &wgpu::Buffer,
        batch: u32,
        seq: u32,
        counted: u32,
    ) -> Result<wgpu::Buffer> {
        let (loss, _, grads) = self.record_gradients(gpu, encoder, tokens, targets, (batch, seq), counted)?;
        self.record_update(gpu, encoder, &grads)?;
        Ok(loss)
    }

    /// The first half of `record_step`: the forward, the loss and the backward. Returns the
    /// per-row losses, the forward's activations and the gradients.
    fn record_gradients(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        targets: &wgpu::Buffer,
        (batch, seq): (u32, u32),
        counted: u32,
    ) -> Result<(wgpu::Buffer, ModelForward, ModelGrads)> {
        let c = &self.model.config;
        let fwd = self.model.record_forward(gpu, encoder, tokens, batch, seq)?;
        let rows = fwd.rows;
        let loss = gpu.storage("loss", rows as u64 * 4);
        let d_logits = gpu.storage("grad logits", rows as u64 * c.vocab as u64 * 4);
        CrossEntropy {
            rows,
            vocab: c.vocab as u32,
            scale: 1.0 / counted.max(1) as f32,
            logits: &fwd.logits,
            targets,
            loss: &loss,
            grad: &d_logits,
        }
        .record(gpu, encoder)?;
        let grads = self.model.record_backward_skipping(
            gpu,
            encoder,
            &fwd,
            &d_logits,
            self.config.lazy_values,
            &self.skipped_grads,
        )?;
        Ok((loss, fwd, grads))
    }

    /// The second half of `record_step`: clipping and the optimiser's update from `grads`
    /// (the step count advances here).
    fn record_update(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        grads: &ModelGrads,
    ) -> Result<()> {
        self.step += 1;
        let t = &self.config;
        let step = |lr| AdamWStep {
            lr,
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
            step: self.step,
        };
        // Gradients are matched to parameters by registry identity, never by position. Each
        // group is clipped by its own norm; both groups' factors come from one recording.
        let values: Vec<&ParamState> = self.params.iter().filter(|p| p.values).collect();
        let value_grads: Vec<(&wgpu::Buffer, u64)> =
            values.iter().map(|p| (grads.grad(p.id), p.len as u64)).collect();
        // Frozen weights: the flat group is neither clipped (its factor comes out 1) nor updated.
        let flat = self.flat.as_ref().filter(|_| !t.freeze_weights);
        // Without a flat group, the weights one by one.
        let weights: Vec<&ParamState> = match (flat, t.freeze_weights) {
            (None, false) => self.params.iter().filter(|p| !p.values).collect(),
            _ => Vec::new(),
        };
        let flat_grad: Vec<(&wgpu::Buffer, u64)> = match flat {
            Some(f) => vec![(&f.grad, f.len)],
            None => weights.iter().map(|p| (grads.grad(p.id), p.len as u64)).collect(),
        };
        if let Some(flat) = flat {
            for p in self.params.iter().filter(|p| !p.values) {
                gpu.copy(
                    encoder,
                    (grads.grad(p.id), 0),
                    (&flat.grad, p.offset * 4),
                    p.len as u64 * 4,
                );
            }
        }
        let clips = record_clip(gpu, encoder, &[&flat_grad, &value_grads], t.clip)?;
        let clip = |group| Clip {
            factors: &clips,
            group,
        };
        if let Some(flat) = flat {
            let state = AdamWState {
                param: &flat.master,
                m: &flat.m,
                v: &flat.v,
            };
            record_dense_step(
                gpu,
                encoder,
                &state,
                &flat.grad,
                flat.len,
                clip(0),
                step(t.lr_at(self.step)),
            )?;
            for p in self.params.iter().filter(|p| !p.values) {
                gpu.copy(
                    encoder,
                    (&flat.master, p.offset * 4),
                    (&p.param, 0),
                    p.len as u64 * 4,
                );
            }
        }
        for p in weights {
            let state = AdamWState {
                param: &p.param,
                m: &p.m,
                v: &p.v,
            };
            record_dense_step(
                gpu,
                encoder,
                &state,
                grads.grad(p.id),
                p.len as u64,
                clip(0),
                step(t.lr_at(self.step)),
            )?;
        }
        // Value tables: one group of their own, updated in place.
        for p in values {
            let g = grads.grad(p.id);
            let state = AdamWState {
                param: &p.param,
                m: &p.m,
                v: &p.v,
            };
            let read = grads
                .values_read
                .iter()
                .find(|(id, _)| *id == p.id)
                .map(|(_, r)| r);
            let taught = self
                .value_rows
                .as_ref()
                .and_then(|rows| rows.iter().find(|(id, _)| *id == p.id))
                .map(|(_, mask)| gpu.upload("value rows updated", mask));
            let mask = match (&taught, read, t.lazy_values) {
                (Some(mask), _, _) => Some(mask),
                (None, Some(read), true) => Some(read),
                _ => None,
            };
            let v_dim = p.shape.get(1).copied().unwrap_or(1);
            let rows = (p.len / v_dim.max(1)) as u32;
            match (mask, t.value_optimizer) {
                (Some(mask), ValueOptimizer::AdamW) => record_masked_step(
                    gpu,
                    encoder,
                    &state,
                    g,
                    mask,
                    (rows, v_dim as u32),
                    clip(1),
                    step(t.value_lr),
                )?,
                (Some(mask), ValueOptimizer::Sgd) => crate::kernels::sgd::record_masked_step(
                    gpu,
                    encoder,
                    &p.param,
                    g,
                    mask,
                    (rows, v_dim as u32),
                    clip(1),
                    t.value_lr,
                )?,
                (None, ValueOptimizer::AdamW) => {
                    record_dense_step(gpu, encoder, &state, g, p.len as u64, clip(1), step(t.value_lr))?
                }
                (None, ValueOptimizer::Sgd) => {
                    return Err(Error::Config(
                        "plain SGD updates listed value rows only: set value rows or lazy_values".into(),
                    ))
                }
            }
        }
        if !self.sharded.is_empty() {
            self.record_sharded_update(gpu, encoder, grads, step(t.value_lr))?;
        }
        Ok(())
    }

    /// The sharded value tables' update: each shard's sum of squares on its device, the
    /// group's clipping factor from all of them (added on the host in table, device and block
    /// order), then AdamW on each shard where it lives. Submits what `encoder` holds to read
    /// the sums, and leaves a new encoder in its place.
    #[cfg(not(target_arch = "wasm32"))]
    fn record_sharded_update(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        grads: &ModelGrads,
        step: AdamWStep,
    ) -> Result<()> {
        let devices = self.model.shard_devices(gpu);
        let shard_grads = |t: &ShardedTableState| {
            grads
                .sharded_values
                .iter()
                .find(|(id, _)| *id == t.id)
                .map(|(_, g)| g)
                .ok_or_else(|| Error::MissingTensor(format!("grad.{}", t.name)))
        };
        let mut own = encoders_after_first(&devices);
        let mut partials = Vec::new();
        for t in &self.sharded {
            for (s, ((g, _), (_, _, _, cols))) in shard_grads(t)?.iter().zip(&t.shards).enumerate() {
                let len = (t.shape[0] * cols.len()) as u64;
                let enc = own[s].as_mut().unwrap_or(&mut *encoder);
                let sums = record_sum_squares(devices[s], enc, g, len)?;
                partials.push((s, sums, len.div_ceil(CLIP_BLOCK) as usize));
            }
        }
        gpu.end_open_pass();
        let before = std::mem::replace(encoder, gpu.device.create_command_encoder(&Default::default()));
        gpu.queue.submit([before.finish()]);
        submit_each(&devices, &mut own);
        let mut ss = 0f32;
        for (s, sums, n) in &partials {
            for v in pollster::block_on(devices[*s].read_f32(sums, *n))? {
                ss += v;
            }
        }
        // As `record_clip` computes a group's factor.
        let factor = (self.config.clip / (ss.sqrt() + 1e-6)).min(1.0);
        let mut own = encoders_after_first(&devices);
        let factors: Vec<wgpu::Buffer> = devices
            .iter()
            .map(|d| d.upload("clip factor (sharded values)", &[factor]))
            .collect();
        for t in &self.sharded {
            for (s, ((g, read), (param, m, v, cols))) in shard_grads(t)?.iter().zip(&t.shards).enumerate() {
                let (device, state) = (devices[s], AdamWState { param, m, v });
                let clip = Clip {
                    factors: &factors[s],
                    group: 0,
                };
                let (rows, width) = (t.shape[0] as u32, cols.len() as u32);
                // Every shard holds every row: the rows to update are the same on each.
                let taught = self
                    .value_rows
                    .as_ref()
                    .and_then(|r| r.iter().find(|(id, _)| *id == t.id))
                    .map(|(_, mask)| device.upload("value rows updated", mask));
                let mask = match (&taught, read, self.config.lazy_values) {
                    (Some(mask), _, _) => Some(mask),
                    (None, Some(read), true) => Some(read),
                    _ => None,
                };
                let enc = own[s].as_mut().unwrap_or(&mut *encoder);
                match (mask, self.config.value_optimizer) {
                    (Some(mask), ValueOptimizer::AdamW) => {
                        record_masked_step(device, enc, &state, g, mask, (rows, width), clip, step)?
                    }
                    (Some(mask), ValueOptimizer::Sgd) => crate::kernels::sgd::record_masked_step(
                        device,
                        enc,
                        param,
                        g,
                        mask,
                        (rows, width),
                        clip,
                        self.config.value_lr,
                    )?,
                    (None, ValueOptimizer::AdamW) => {
                        record_dense_step(device, enc, &state, g, rows as u64 * width as u64, clip, step)?
                    }
                    (None, ValueOptimizer::Sgd) => {
                        return Err(Error::Config(
                            "plain SGD updates listed value rows only: set value rows or lazy_values".into(),
                        ))
                    }
                }
            }
        }
        submit_each(&devices, &mut own);
        Ok(())
    }

    #[cfg(target_arch = "wasm32")]
    fn record_sharded_update(
        &self,
        _: &Gpu,
        _: &mut wgpu::CommandEncoder,
        _: &ModelGrads,
        _: AdamWStep,
    ) -> Result<()> {
        Err(Error::Config("sharded value tables need a native build".into()))
    }

    /// One step, submitted, returning the mean loss over the targets that are not
    /// `IGNORE_TARGET` (which waits for the GPU; `submit_step` does not).
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f32> {
        self.submit_step(gpu, tokens, targets, batch, seq)?;
        self.last_loss(gpu).await
    }

    /// One step, recorded through the trainer's step plan and submitted without waiting for
    /// it: after the first step of a shape it creates no buffer and no bind group, and the
    /// GPU runs it while the host prepares the next. `last_loss` reads its loss when asked.
    pub fn submit_step(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<()> {
        self.submit_step_over(gpu, tokens, targets, (batch, seq), None)
    }

    /// `submit_step` with the loss the sum over the targets divided by `denominator` (when
    /// given) instead of their number: extra targets then add their terms without scaling
    /// down the others' (the demo divides by the answer bytes alone, the facts' ends being
    /// targets too).
    pub fn submit_step_over(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        (batch, seq): (usize, usize),
        denominator: Option<usize>,
    ) -> Result<()> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.record_planned_step_over(gpu, &mut encoder, (tokens, targets), (batch, seq), denominator)?;
        gpu.queue.submit([encoder.finish()]);
        // Lets wgpu retire finished submissions without waiting for this one.
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| Error::Device(format!("poll failed: {e}")))?;
        Ok(())
    }

    /// `submit_step` without the submission: records the step (inputs checked, then written
    /// into the plan's buffers) into `encoder`, which the caller submits before the next.
    /// (With sharded value tables the step submits and waits at each memory layer and at the
    /// values' update, leaving a new encoder in `encoder`'s place.)
    pub fn record_planned_step(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<()> {
        self.record_planned_step_over(gpu, encoder, (tokens, targets), (batch, seq), None)
    }

    fn record_planned_step_over(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (tokens, targets): (&[u32], &[u32]),
        (batch, seq): (usize, usize),
        denominator: Option<usize>,
    ) -> Result<()> {
        let counted = self.check_inputs(tokens, targets, batch, seq)?;
        let counted = denominator.unwrap_or(counted);
        let loss = self.record_planned_inputs(gpu, encoder, (tokens, targets), |t, encoder, tb, gb| {
            t.record_step(gpu, encoder, tb, gb, batch as u32, seq as u32, counted as u32)
        })?;
        self.last_loss = Some((loss, batch * seq, counted));
        Ok(())
    }

    /// Runs `record` through the step plan, with `tokens` and `targets` written into the
    /// plan's input buffers.
    fn record_planned_inputs<R>(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (tokens, targets): (&[u32], &[u32]),
        record: impl FnOnce(&mut Self, &mut wgpu::CommandEncoder, &wgpu::Buffer, &wgpu::Buffer) -> Result<R>,
    ) -> Result<R> {
        let mut plan = std::mem::take(&mut self.plan);
        let recorded = gpu.record_planned(&mut plan, encoder, |encoder| {
            let (tb, gb) = (gpu.upload("tokens", tokens), gpu.upload("targets", targets));
            record(self, encoder, &tb, &gb)
        });
        self.plan = plan;
        recorded
    }

    /// A step in two submissions, for callers that choose the value rows to update from the
    /// step's own forward (teaching): this one submits the forward, the loss and the backward
    /// and returns the forward's activations (they belong to the step plan: read what is
    /// needed before the next step); `submit_update` then submits the update. The same
    /// arithmetic as `submit_step`, without running the forward twice.
    pub fn submit_gradients(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<ModelForward> {
        let counted = self.check_inputs(tokens, targets, batch, seq)?;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let (loss, fwd, grads) =
            self.record_planned_inputs(gpu, &mut encoder, (tokens, targets), |t, encoder, tb, gb| {
                t.record_gradients(gpu, encoder, tb, gb, (batch as u32, seq as u32), counted as u32)
            })?;
        gpu.queue.submit([encoder.finish()]);
        self.last_loss = Some((loss, batch * seq, counted));
        self.pending = Some(grads);
        Ok(fwd)
    }

    /// The gradients of the step `submit_gradients` began, for a caller that updates
    /// parameters of its own from them (LoRA adapters): the step counts as taken, and nothing
    /// of the trainer's is updated.
    pub fn take_gradients(&mut self) -> Result<ModelGrads> {
        let grads = self
            .pending
            .take()
            .ok_or_else(|| Error::Config("take_gradients: no gradients submitted".into()))?;
        self.step += 1;
        Ok(grads)
    }

    /// Submits the update of the step `submit_gradients` began, with the value rows set by
    /// then (`set_value_rows`).
    pub fn submit_update(&mut self, gpu: &Gpu) -> Result<()> {
        let grads = self
            .pending
            .take()
            .ok_or_else(|| Error::Config("submit_update: no gradients submitted".into()))?;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut plan = std::mem::take(&mut self.update_plan);
        let recorded = gpu.record_planned(&mut plan, &mut encoder, |encoder| {
            self.record_update(gpu, encoder, &grads)
        });
        self.update_plan = plan;
        recorded?;
        gpu.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Checks a step's inputs (and that the model trains: f16 weights and activations are
    /// for inference); returns how many targets count towards the loss.
    fn check_inputs(&self, tokens: &[u32], targets: &[u32], batch: usize, seq: usize) -> Result<usize> {
        if self.model.uses_f16_weights() || self.model.uses_f16_activations() {
            return Err(Error::Config(
                "training updates the f32 weights from f32 activations: a model with f16 or 8-bit weights or f16 activations (`Model::use_f16_weights`, `use_q8_weights`, `use_f16_activations`) is for inference".into(),
            ));
        }
        for (name, ids) in [("tokens", tokens), ("targets", targets)] {
            if ids.len() != batch * seq {
                return Err(Error::tensor(
                    name,
                    format!("[{batch}, {seq}]"),
                    format!("{} ids", ids.len()),
                ));
            }
            if name == "tokens" {
                self.model.config.check_ids(name, ids)?;
            } else {
                self.model.config.check_targets(name, ids)?;
            }
        }
        Ok(targets
            .iter()
            .filter(|&&t| t != crate::kernels::ops::IGNORE_TARGET)
            .count())
    }

    /// The mean loss of the last submitted step (waits for it).
    pub async fn last_loss(&self, gpu: &Gpu) -> Result<f32> {
        let (buffer, rows, counted) = self
            .last_loss
            .as_ref()
            .ok_or_else(|| Error::Config("no step has been taken yet".into()))?;
        let per_row = gpu.read_f32(buffer, *rows).await?;
        Ok(per_row.iter().sum::<f32>() / (*counted).max(1) as f32)
    }

    /// `last_loss`, waited for (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn last_loss_blocking(&self, gpu: &Gpu) -> Result<f32> {
        pollster::block_on(self.last_loss(gpu))
    }

    /// `step`, waited for (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f32> {
        pollster::block_on(self.step(gpu, tokens, targets, batch, seq))
    }

    /// The current weights, read back (a sharded table joined from its shards).
    pub async fn weights(&self, gpu: &Gpu) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        for p in &self.params {
            file.insert(
                p.name.clone(),
                HostTensor::f32(p.shape.clone(), gpu.read_f32(&p.param, p.len).await?),
            );
        }
        for t in &self.sharded {
            let table = self.read_sharded(gpu, t, 0).await?;
            file.insert(t.name.clone(), HostTensor::f32(t.shape.clone(), table));
        }
        Ok(file)
    }

    /// One buffer of each shard of `t` (`which`: 0 the parameters, 1 and 2 AdamW's moments),
    /// joined into the table's `[n_rows, v_dim]`.
    async fn read_sharded(&self, gpu: &Gpu, t: &ShardedTableState, which: usize) -> Result<Vec<f32>> {
        let devices = self.model.shard_devices(gpu);
        let (rows, v) = (t.shape[0], t.shape[1]);
        let mut table = vec![0f32; rows * v];
        for (device, shard) in devices.iter().zip(&t.shards) {
            let cols = &shard.3;
            let buffer = [&shard.0, &shard.1, &shard.2][which];
            let part = device.read_f32(buffer, rows * cols.len()).await?;
            crate::memory::put_shard(&mut table, (rows, v), cols, &part);
        }
        Ok(table)
    }

    /// `weights`, waited for (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn weights_blocking(&self, gpu: &Gpu) -> Result<TensorFile> {
        pollster::block_on(self.weights(gpu))
    }

    /// The parameters with AdamW moments: all, or the value tables where weights are frozen.
    fn params_with_state(&self) -> impl Iterator<Item = &ParamState> {
        let frozen = self.config.freeze_weights;
        self.params.iter().filter(move |p| p.values || !frozen)
    }

    /// The optimiser state (`adam_m.<name>`, `adam_v.<name>`, `step`), read back (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn optimizer_state_blocking(&self, gpu: &Gpu) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        for p in self.params_with_state() {
            for (prefix, buffer) in [("adam_m.", &p.m), ("adam_v.", &p.v)] {
                let bytes = gpu.read_bytes_blocking(buffer, p.offset * 4, p.len as u64 * 4)?;
                file.insert(
                    format!("{prefix}{}", p.name),
                    HostTensor::f32(p.shape.clone(), bytemuck::pod_collect_to_vec(&bytes)),
                );
            }
        }
        for t in &self.sharded {
            for (prefix, moment) in [("adam_m.", 1), ("adam_v.", 2)] {
                let data = pollster::block_on(self.read_sharded(gpu, t, moment))?;
                file.insert(
                    format!("{prefix}{}", t.name),
                    HostTensor::f32(t.shape.clone(), data),
                );
            }
        }
        file.insert("step", HostTensor::i64(vec![1], vec![self.step as i64]));
        Ok(file)
    }

    /// Restores the optimiser state saved by `optimizer_state_blocking`.
    pub fn load_optimizer_state(&mut self, gpu: &Gpu, file: &TensorFile) -> Result<()> {
        for p in self.params_with_state() {
            let dims: Vec<Option<usize>> = p.shape.iter().map(|&d| Some(d)).collect();
            for (prefix, buffer) in [("adam_m.", &p.m), ("adam_v.", &p.v)] {
                let (_, data) = file.f32_with_shape(&format!("{prefix}{}", p.name), &dims)?;
                gpu.queue
                    .write_buffer(buffer, p.offset * 4, bytemuck::cast_slice(data));
            }
        }
        let devices = self.model.shard_devices(gpu);
        for t in &self.sharded {
            let dims: Vec<Option<usize>> = t.shape.iter().map(|&d| Some(d)).collect();
            let (rows, v) = (t.shape[0], t.shape[1]);
            for (prefix, moment) in [("adam_m.", 1), ("adam_v.", 2)] {
                let (_, data) = file.f32_with_shape(&format!("{prefix}{}", t.name), &dims)?;
                for (device, shard) in devices.iter().zip(&t.shards) {
                    let part = crate::memory::shard_of(data, (rows, v), &shard.3);
                    let buffer = [&shard.1, &shard.2][moment - 1];
                    device.queue.write_buffer(buffer, 0, bytemuck::cast_slice(&part));
                }
            }
        }
        self.step = match &file.get("step")?.data {
            crate::tensor_file::TensorData::I64(v) if v.len() == 1 && v[0] >= 0 => v[0] as u32,
            _ => {
                return Err(Error::tensor(
                    "step",
                    "one non-negative integer",
                    "something else",
                ))
            }
        };
        Ok(())
    }
}
