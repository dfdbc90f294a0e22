//! LoRA (Hu et al. 2021), the adapters practitioners teach with: each attention and
//! feed-forward projection `W [out, in]` gets `A [r, in]` and `B [out, r]`, and computes
//! `W0 + (alpha / r) B A`; only `A` and `B` train, `B` starting at zero so the model starts as
//! it was. The baseline `teach --method lora` compares sparse memory fine-tuning with.
//!
//! Run here by merging: the model's weight buffers hold `W0 + (alpha / r) B A`, so the
//! forward and backward are the model's own, and each step turns the backward's gradient of
//! a merged weight `G = dL/dW` into the adapters' (`dL/dA = s B^T G`, `dL/dB = s G A^T`),
//! steps AdamW on them, and merges again (one GEMM each). `B` is kept scaled, `B' = s B`,
//! which makes every one of these a plain GEMM: its gradient `G A^T` is `dL/dB / s`, and its
//! learning rate is `s` times `A`'s, the same AdamW steps up to where epsilon enters. The
//! gradients of all adapters are clipped together at norm 1 (transformers' default), as
//! stored (`A`'s and `B'`'s).

use crate::error::{Error, Result};
use crate::io::hf::names::{hf_name_and_order, rows_to_halves};
use crate::kernels::adamw::{record_clip, record_dense_step, AdamWState, AdamWStep, Clip};
use crate::kernels::linear::gemm;
use crate::kernels::Gpu;
use crate::model::{Model, ModelGrads};
use crate::params::ParamId;
use crate::rng::Rng;
use crate::tensor_file::{HostTensor, TensorFile};

/// Rank and scale of the adapters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
}

impl Default for LoraConfig {
    /// PEFT's usual `r = 8`, `lora_alpha = 16`.
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0 }
    }
}

/// One adapted projection.
struct Adapter {
    id: ParamId,
    /// memlayers' name of the adapted weight.
    name: String,
    out: u32,
    inp: u32,
    /// `W0`.
    base: wgpu::Buffer,
    a: wgpu::Buffer,
    /// `s B`.
    b: wgpu::Buffer,
    moments: [wgpu::Buffer; 4],
    grads: [wgpu::Buffer; 2],
}

/// The adapters of a model being taught, with their AdamW state.
pub struct Lora {
    pub config: LoraConfig,
    adapters: Vec<Adapter>,
    step: u32,
    head_dim: usize,
}

impl Lora {
    /// Adapters on every attention projection (q, k, v, o) and dense feed-forward projection
    /// (gate, up, down) of `model`: `A` uniform in +-1/sqrt(in) (PEFT's Kaiming bound) from
    /// `seed`, `B` zero. The model's weights are unchanged.
    pub fn new(gpu: &Gpu, model: &Model, config: LoraConfig, seed: u64) -> Result<Self> {
        if config.rank == 0 || !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(Error::Config("lora: the rank and alpha must be positive".into()));
        }
        let layout = model.layout();
        let mut ids = Vec::new();
        for l in &layout.layers {
            let at = &l.attention;
            ids.extend([at.wq, at.wk, at.wv, at.wo]);
            if let Some(d) = l.feed_forward.dense() {
                ids.extend([d.w1, d.w3, d.w2]);
            }
        }
        let mut rng = Rng::new(seed);
        let r = config.rank;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut adapters = Vec::with_capacity(ids.len());
        for id in ids {
            let spec = layout.registry.spec(id);
            let (out, inp) = (spec.shape[0], spec.shape[1]);
            let base = gpu.storage("lora base weight", spec.len() as u64 * 4);
            gpu.copy(
                &mut encoder,
                (model.param(id), 0),
                (&base, 0),
                spec.len() as u64 * 4,
            );
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..r * inp).map(|_| rng.symmetric(bound)).collect();
            let f32s = |label: &str, n: usize| gpu.storage(label, n as u64 * 4);
            adapters.push(Adapter {
                id,
                name: spec.name.clone(),
                out: out as u32,
                inp: inp as u32,
                base,
                a: gpu.upload("lora A", &a),
                b: f32s("lora B", out * r),
                moments: [
                    f32s("lora A m", r * inp),
                    f32s("lora A v", r * inp),
                    f32s("lora B m", out * r),
                    f32s("lora B v", out * r),
                ],
                grads: [f32s("lora A grad", r * inp), f32s("lora B grad", out * r)],
            });
        }
        gpu.queue.submit([encoder.finish()]);
        Ok(Lora {
            config,
            adapters,
            step: 0,
            head_dim: model.config.head_dim,
        })
    }

    /// The adapted weights.
    pub fn targets(&self) -> Vec<ParamId> {
        self.adapters.iter().map(|a| a.id).collect()
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f32 {
        self.config.alpha / self.config.rank as f32
    }

    /// Records one AdamW step of the adapters from the merged weights' gradients `grads`
    /// (learning rate `lr`, no weight decay), and the merge of the new adapters into `model`'s
    /// weights.
    pub fn record_step(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        model: &Model,
        grads: &ModelGrads,
        lr: f32,
    ) -> Result<()> {
        self.step += 1;
        let r = self.config.rank as u32;
        for ad in &self.adapters {
            let g = grads.grad(ad.id);
            // dA [r, in] = B'^T G: B' is [out, r], read transposed; G [out, in] as [k, n].
            gemm(
                gpu,
                encoder,
                "lora grad A",
                (&ad.b, true),
                (g, true),
                &ad.grads[0],
                (r, ad.inp, ad.out),
                false,
            )?;
            // dB' [out, r] = G A^T: A [r, in] is nn.Linear's [n, k].
            gemm(
                gpu,
                encoder,
                "lora grad B",
                (g, false),
                (&ad.a, false),
                &ad.grads[1],
                (ad.out, r, ad.inp),
                false,
            )?;
        }
        let all: Vec<(&wgpu::Buffer, u64)> = self
            .adapters
            .iter()
            .flat_map(|ad| {
                [
                    (&ad.grads[0], (r * ad.inp) as u64),
                    (&ad.grads[1], (ad.out * r) as u64),
                ]
            })
            .collect();
        let factors = record_clip(gpu, encoder, &[&all], 1.0)?;
        let step = |lr| AdamWStep {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step: self.step,
        };
        let clip = Clip {
            factors: &factors,
            group: 0,
        };
        for ad in &self.adapters {
            for (i, (param, lr)) in [(&ad.a, lr), (&ad.b, lr * self.scale())].into_iter().enumerate() {
                let state = AdamWState {
                    param,
                    m: &ad.moments[2 * i],
                    v: &ad.moments[2 * i + 1],
                };
                let len = ad.grads[i].size() / 4;
                record_dense_step(gpu, encoder, &state, &ad.grads[i], len, clip, step(lr))?;
            }
            // W = W0 + B' A.
            let bytes = ad.out as u64 * ad.inp as u64 * 4;
            gpu.copy(encoder, (&ad.base, 0), (model.param(ad.id), 0), bytes);
            gemm(
                gpu,
                encoder,
                "lora merge",
                (&ad.b, false),
                (&ad.a, true),
                model.param(ad.id),
                (ad.out, ad.inp, r),
                true,
            )?;
        }
        Ok(())
    }

    /// The adapters as PEFT saves them (`adapter_model.safetensors`): per projection
    /// `base_model.model.<transformers name without .weight>.lora_A.weight [r, in]` and
    /// `lora_B.weight [out, r]` (B unscaled, its rows in transformers' order).
    pub async fn peft_tensors(&self, gpu: &Gpu) -> Result<TensorFile> {
        let (r, s) = (self.config.rank, self.scale());
        let mut file = TensorFile::default();
        for ad in &self.adapters {
            let (hf, rope_rows) = hf_name_and_order(&ad.name)
                .ok_or_else(|| Error::Config(format!("lora: {} has no Hugging Face name", ad.name)))?;
            let module = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
            let a = gpu.read_f32(&ad.a, r * ad.inp as usize).await?;
            let mut b: Vec<f32> = gpu
                .read_f32(&ad.b, ad.out as usize * r)
                .await?
                .iter()
                .map(|v| v / s)
                .collect();
            if rope_rows {
                b = rows_to_halves(&b, r, self.head_dim);
            }
            file.insert(
                format!("base_model.model.{module}.lora_A.weight"),
                HostTensor::f32(vec![r, ad.inp as usize], a),
            );
            file.insert(
                format!("base_model.model.{module}.lora_B.weight"),
                HostTensor::f32(vec![ad.out as usize, r], b),
            );
        }
        Ok(file)
    }

    /// PEFT's `adapter_config.json` for these adapters on the model at `base`.
    pub fn peft_config(&self, base: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "inference_mode": true,
            "use_rslora": false,
            "use_dora": false,
        })
    }
}
