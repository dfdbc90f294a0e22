//! `memlayers bench --teach --shape NAME` (or `--model DIR`): the time of a teaching step of
//! each method on a Hugging Face model with a retrofitted memory (random weights for a shape;
//! a folder without a memory gets the default one), its peak memory, and how much of a
//! sparse-memory step is the forward and backward.

use memlayers::io::hf::retrofit::{retrofit_config, MemorySizes};
use memlayers::io::hf::{HfConfig, HfFolder, MAX_CONTEXT};
use memlayers::kernels::ops::IGNORE_TARGET;
use memlayers::model::{Model, ModelConfig, ModelLayout, ModelWeights, SlotCounts};
use memlayers::rng::Rng;
use memlayers::teach::{LoraConfig, Method, ReadsAt, TeachConfig, Teacher};
use memlayers::train::{Trainer, ValueOptimizer};
use memlayers::{Error, Gpu, Result};
use std::path::PathBuf;
use std::time::Instant;

/// Rows and tokens of a teaching batch: 16 facts of up to 24 tokens, the loss on the last 6.
const BATCH: usize = 16;
const SEQ: usize = 24;
const ANSWER: usize = 6;

/// Resets the peak resident memory (`lm::peak_host_bytes`) to the current (Linux).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn weights_of(
    model: Option<&PathBuf>,
    shape: Option<&str>,
    shapes: &[(&str, &str)],
) -> Result<(ModelWeights, String)> {
    let (weights, name) = match (model, shape) {
        (Some(dir), None) => (HfFolder::open(dir)?.read_weights()?, dir.display().to_string()),
        (None, Some(shape)) => {
            let Some((_, json)) = shapes.iter().find(|(n, _)| *n == shape) else {
                return Err(Error::Config(format!("--shape {shape}: unknown")));
            };
            let config = HfConfig::from_json(json)?.model_config(MAX_CONTEXT)?;
            (random(&config)?, format!("{shape} (random weights)"))
        }
        _ => {
            return Err(Error::Config(
                "bench --teach: give --model DIR or --shape NAME".into(),
            ))
        }
    };
    if weights.config.memory.is_some() {
        return Ok((weights, name));
    }
    // The default retrofit, value rows random (a taught memory's, not zero) for the timing.
    let base = &weights.config;
    let params = weights.parameter_count();
    let (_, config) = retrofit_config(
        base,
        &[base.n_layers / 2],
        &MemorySizes::default_for(base, params),
        memlayers::model::MemoryPlacement::Parallel,
    )?;
    let fresh = random(&config)?;
    let with_memory = ModelWeights::from_loader(&config, |name, _| {
        let from = match weights.layout.registry.id(name) {
            Some(id) => weights.get(id),
            None => fresh.get(fresh.layout.registry.id(name).expect("the retrofitted layout")),
        };
        Ok(from.to_vec())
    })?;
    Ok((with_memory, format!("{name} + memory")))
}

fn random(config: &ModelConfig) -> Result<ModelWeights> {
    let mut rng = Rng::new(7);
    let std = 1.0 / (config.dim as f32).sqrt();
    let registry = ModelLayout::new(config)?.registry;
    ModelWeights::from_loader(config, |name, _| {
        let len = registry.spec(registry.id(name).expect("declared")).len();
        Ok(match name.ends_with("norm.weight") {
            true => vec![1.0; len],
            false => rng.vec_normal(len, std),
        })
    })
}

pub fn run(
    model: Option<&PathBuf>,
    shape: Option<&str>,
    shapes: &[(&str, &str)],
    steps: usize,
) -> Result<()> {
    let (weights, name) = weights_of(model, shape, shapes)?;
    let c = weights.config.clone();
    let m = c.memory.clone().expect("a memory was added");
    let gpu = Gpu::new_blocking()?;
    println!("adapter: {}", gpu.adapter_name());
    println!(
        "model: {name}: {} layers, width {}, vocabulary {}, {:.1} M parameters; memory beside layer {:?}: {} rows of {}",
        c.n_layers,
        c.dim,
        c.vocab,
        weights.parameter_count() as f64 / 1e6,
        c.memory_layers,
        m.n_values(),
        m.v_dim
    );
    let mut rng = Rng::new(3);
    let tokens: Vec<u32> = (0..BATCH * SEQ)
        .map(|_| rng.below(c.vocab.min(32_000) as u64) as u32)
        .collect();
    let targets: Vec<u32> = (0..BATCH * SEQ)
        .map(|i| match i % SEQ >= SEQ - ANSWER {
            true => tokens[(i + 1) % tokens.len()],
            false => IGNORE_TARGET,
        })
        .collect();
    let background = {
        let model = Model::new(&gpu, &weights)?;
        pollster::block_on(SlotCounts::measure(&model, &gpu, &tokens, None, SEQ, BATCH))?
    };
    println!(
        "batch {BATCH} rows of {SEQ} tokens, loss on the last {ANSWER} of each; {steps} timed steps after one untimed\n"
    );
    println!(
        "{:<14} {:>10} {:>10} {:>14}",
        "method", "s/step", "steps/s", "peak memory"
    );
    for method in Method::ALL {
        let config = TeachConfig {
            method,
            slots: 256,
            steps: (steps + 1) as u32,
            lr: 1e-3,
            optimizer: ValueOptimizer::AdamW,
            reads_at: ReadsAt::Answers,
            lora: LoraConfig::default(),
            ranking: Default::default(),
        };
        reset_peak();
        // A method this model is too large for says why and the others still run.
        let first = Teacher::new(&gpu, &weights, config, Some(&background))
            .and_then(|mut t| t.step_blocking(&gpu, &tokens, &targets, BATCH, SEQ).map(|_| t));
        let mut teacher = match first {
            Ok(t) => t,
            Err(e) => {
                println!("{:<14} not available: {e}", method.name());
                continue;
            }
        };
        let started = Instant::now();
        for _ in 0..steps {
            teacher.step_blocking(&gpu, &tokens, &targets, BATCH, SEQ)?;
        }
        let per_step = started.elapsed().as_secs_f64() / steps as f64;
        let peak = super::lm::peak_host_bytes().map_or("-".into(), |b| {
            format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
        });
        println!(
            "{:<14} {per_step:>10.3} {:>10.3} {peak:>14}",
            method.name(),
            1.0 / per_step
        );
        if method == Method::SparseMemory {
            // The forward and backward alone, on the same trainer: the rest of a step is
            // reading which rows the batch read, ranking them and updating them.
            let trainer: &mut Trainer = &mut teacher.trainer;
            let started = Instant::now();
            for _ in 0..steps {
                trainer.submit_gradients(&gpu, &tokens, &targets, BATCH, SEQ)?;
                trainer.take_gradients()?;
                trainer.last_loss_blocking(&gpu)?;
            }
            let fb = started.elapsed().as_secs_f64() / steps as f64;
            println!(
                "{:<14} {fb:>10.3}   ({:.0}% of a sparse-memory step; the rest: the rows read, ranked and updated)",
                "  fwd+bwd",
                100.0 * fb / per_step
            );
        }
    }
    Ok(())
}
