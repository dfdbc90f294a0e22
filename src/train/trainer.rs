//! One training step on the GPU: forward, cross-entropy, backward, gradient clipping and
//! AdamW, recorded into one encoder. REFERENCE.md section 4: AdamW (0.9, 0.95), eps 1e-8,
//! weight decay 0.1 (values included), base lr with linear warm-up and linear decay to 1%,
//! the value table in its own group at a constant lr (value_fixed_lr), norms clipped at 1.0
//! separately for the values and for everything else.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::{HostTensor, TensorFile};
use crate::kernels::adamw::{record_clip, record_dense_step, record_masked_step, AdamWState, AdamWStep};
use crate::kernels::ops::CrossEntropy;
use crate::memory::VALUES_NAME;
use crate::model::{Model, ModelWeights};

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

struct ParamState {
    name: String,
    param: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
    len: usize,
    values: bool,
}

/// A model with its optimiser state, stepping on the GPU.
pub struct Trainer {
    pub model: Model,
    pub config: TrainConfig,
    /// Steps taken.
    pub step: u32,
    shapes: Vec<(String, Vec<usize>)>,
    params: Vec<ParamState>,
}

impl Trainer {
    pub fn new(gpu: &Gpu, weights: &ModelWeights, config: TrainConfig) -> Result<Self> {
        let model = Model::new(gpu, weights)?;
        let params = model
            .param_buffers()?
            .into_iter()
            .map(|(name, param, len)| ParamState {
                values: name.ends_with(VALUES_NAME),
                m: gpu.storage("adam m", len as u64 * 4),
                v: gpu.storage("adam v", len as u64 * 4),
                name,
                param,
                len,
            })
            .collect();
        let shapes = weights
            .named_tensors()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        Ok(Trainer {
            model,
            config,
            step: 0,
            shapes,
            params,
        })
    }

    /// Records one step on `tokens`/`targets` (`[batch, seq]`, u32, checked against the
    /// vocabulary by the caller; targets may be `IGNORE_TARGET`, and `counted` is the number
    /// of the others: the loss is their mean) and returns the per-row losses' buffer.
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
        let grads = self.model.record_backward(gpu, encoder, &fwd, &d_logits)?;
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
        for values_group in [false, true] {
            let members: Vec<(&ParamState, &wgpu::Buffer)> = self
                .params
                .iter()
                .zip(&grads.named)
                .filter(|(p, _)| p.values == values_group)
                .map(|(p, (name, g, _))| {
                    debug_assert_eq!(&p.name, name);
                    (p, g)
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            let lists: Vec<(&wgpu::Buffer, u64)> = members.iter().map(|(p, g)| (*g, p.len as u64)).collect();
            let clip = record_clip(gpu, encoder, &lists, t.clip)?;
            let lr = if values_group {
                t.value_lr
            } else {
                t.lr_at(self.step)
            };
            for (p, g) in members {
                let state = AdamWState {
                    param: &p.param,
                    m: &p.m,
                    v: &p.v,
                };
                match (&grads.values_read, p.values && t.lazy_values) {
                    (Some(mask), true) => {
                        let v_dim = self.model.config.memory.as_ref().map_or(1, |m| m.v_dim);
                        let rows = (p.len / v_dim) as u32;
                        record_masked_step(
                            gpu,
                            encoder,
                            &state,
                            g,
                            mask,
                            (rows, v_dim as u32),
                            &clip,
                            step(lr),
                        )?
                    }
                    _ => record_dense_step(gpu, encoder, &state, g, p.len as u64, &clip, step(lr))?,
                }
            }
        }
        Ok(loss)
    }

    /// One step, submitted, returning the mean loss over the targets that are not
    /// `IGNORE_TARGET`.
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f32> {
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
        let counted = targets
            .iter()
            .filter(|&&t| t != crate::kernels::ops::IGNORE_TARGET)
            .count();
        let (tb, gb) = (gpu.upload("tokens", tokens), gpu.upload("targets", targets));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let loss = self.record_step(
            gpu,
            &mut encoder,
            &tb,
            &gb,
            batch as u32,
            seq as u32,
            counted as u32,
        )?;
        gpu.queue.submit([encoder.finish()]);
        let per_row = gpu.read_f32(&loss, batch * seq).await?;
        Ok(per_row.iter().sum::<f32>() / counted.max(1) as f32)
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

    /// The current weights, read back.
    pub async fn weights(&self, gpu: &Gpu) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        for (p, (name, shape)) in self.params.iter().zip(&self.shapes) {
            file.insert(
                name.clone(),
                HostTensor::f32(shape.clone(), gpu.read_f32(&p.param, p.len).await?),
            );
        }
        Ok(file)
    }

    /// `weights`, waited for (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn weights_blocking(&self, gpu: &Gpu) -> Result<TensorFile> {
        pollster::block_on(self.weights(gpu))
    }

    /// The optimiser state (`adam_m.<name>`, `adam_v.<name>`, `step`), read back (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn optimizer_state_blocking(&self, gpu: &Gpu) -> Result<TensorFile> {
        let mut file = TensorFile::default();
        for (p, (name, shape)) in self.params.iter().zip(&self.shapes) {
            file.insert(
                format!("adam_m.{name}"),
                HostTensor::f32(shape.clone(), gpu.read_f32_blocking(&p.m, p.len)?),
            );
            file.insert(
                format!("adam_v.{name}"),
                HostTensor::f32(shape.clone(), gpu.read_f32_blocking(&p.v, p.len)?),
            );
        }
        file.insert("step", HostTensor::i64(vec![1], vec![self.step as i64]));
        Ok(file)
    }

    /// Restores the optimiser state saved by `optimizer_state_blocking`.
    pub fn load_optimizer_state(&mut self, gpu: &Gpu, file: &TensorFile) -> Result<()> {
        for (p, (name, shape)) in self.params.iter().zip(&self.shapes) {
            let dims: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
            for (prefix, buffer) in [("adam_m.", &p.m), ("adam_v.", &p.v)] {
                let (_, data) = file.f32_with_shape(&format!("{prefix}{name}"), &dims)?;
                gpu.queue.write_buffer(buffer, 0, bytemuck::cast_slice(data));
            }
        }
        self.step = match &file.get("step")?.data {
            crate::io::TensorData::I64(v) if v.len() == 1 && v[0] >= 0 => v[0] as u32,
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
