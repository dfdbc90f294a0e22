//! The demo's settings: a preset (cpu or gpu, chosen from the adapter) with the user's flags
//! applied.

use super::Args;
use memlayers::{Error, Result};
use std::path::PathBuf;

/// The demo's settings: a preset with the user's flags applied.
#[derive(Clone, Debug)]
pub struct Settings {
    pub preset: &'static str,
    pub facts: Option<PathBuf>,
    pub out: PathBuf,
    pub subjects: usize,
    pub seed: u64,
    pub steps: u32,
    pub batch: usize,
    pub seq: usize,
    pub lrs: Vec<f32>,
    pub dim: usize,
    pub layers: usize,
    pub n_keys: usize,
    pub mem_heads: usize,
    pub mem_knn: usize,
    pub mem_k_dim: usize,
    pub eval_every: u32,
    pub sweep: bool,
    pub sweep_n_keys: Vec<usize>,
    /// Train the prompts' trailing spaces and the facts' newlines too.
    pub fact_ends: bool,
    /// `--devices`: the adapters the memory models' tables are sharded over.
    pub devices: Option<Vec<usize>>,
    /// Models besides dense, in training order: "memory", "peer", "moe".
    pub models: Vec<&'static str>,
}

impl Args {
    /// The settings on `adapter`: "auto" picks the gpu preset on GPUs and the cpu preset on
    /// CPU implementations (lavapipe, SwiftShader) and unknown adapters.
    pub fn settings(&self, adapter: Option<&wgpu::AdapterInfo>) -> Settings {
        let on_gpu = adapter.is_some_and(|i| {
            matches!(
                i.device_type,
                wgpu::DeviceType::DiscreteGpu
                    | wgpu::DeviceType::IntegratedGpu
                    | wgpu::DeviceType::VirtualGpu
            )
        });
        let gpu = match self.preset.as_str() {
            "gpu" => true,
            "cpu" => false,
            _ => on_gpu,
        };
        fn pick<T>(gpu: bool, cpu: T, on_gpu: T) -> T {
            if gpu {
                on_gpu
            } else {
                cpu
            }
        }
        Settings {
            preset: if gpu { "gpu" } else { "cpu" },
            facts: self.facts.clone(),
            out: self.out.clone(),
            subjects: self.subjects.unwrap_or(pick(gpu, 250, 5000)),
            seed: self.seed,
            steps: self.steps.unwrap_or(pick(gpu, 800, 3500)),
            batch: self.batch.unwrap_or(pick(gpu, 32, 128)),
            seq: self.seq.unwrap_or(48),
            lrs: self.lrs.clone().unwrap_or_else(|| vec![3e-3, 1e-2]),
            dim: self.dim.unwrap_or(pick(gpu, 32, 64)),
            layers: self.layers.unwrap_or(2),
            n_keys: self.n_keys.unwrap_or(pick(gpu, 96, 128)),
            mem_heads: self.mem_heads.unwrap_or(pick(gpu, 2, 4)),
            mem_knn: self.mem_knn.unwrap_or(16),
            mem_k_dim: self.mem_k_dim.unwrap_or(pick(gpu, 20, 32)),
            eval_every: self.eval_every.unwrap_or(pick(gpu, 100, 350)),
            sweep: self.sweep,
            fact_ends: !self.answers_only,
            devices: self.devices.clone(),
            sweep_n_keys: self
                .sweep_n_keys
                .clone()
                .unwrap_or_else(|| pick(gpu, vec![32, 64, 96, 120], vec![64, 96, 128, 181])),
            models: match &self.models {
                Some(list) => {
                    let all = list.iter().any(|m| m == "all");
                    ["memory", "peer", "moe"]
                        .into_iter()
                        .filter(|m| all || list.iter().any(|l| l == m))
                        .collect()
                }
                None => pick(gpu, vec!["memory"], vec!["memory", "peer", "moe"]),
            },
        }
    }

    /// Errors for model names the demo does not know.
    pub fn check_models(&self) -> Result<()> {
        for m in self.models.iter().flatten() {
            match m.as_str() {
                "dense" | "memory" | "peer" | "moe" | "all" => {}
                other => {
                    return Err(Error::Config(format!(
                        "--models {other}: the demo's models are dense, moe, peer and memory (or all)"
                    )))
                }
            }
        }
        Ok(())
    }
}
