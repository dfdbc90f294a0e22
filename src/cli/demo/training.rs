//! Training one model of the comparison on the facts (recall sampled along the way, over
//! every fact at the end), the best of several learning rates, and saving what `teach` and
//! `generate` read.

use super::super::progress::Progress;
use super::settings::Settings;
use memlayers::demo::{recall, train_config, training_batch_counted, Fact, KnowledgeBase};
use memlayers::io::write_atomic;
use memlayers::model::{LMTransformerArgs, ModelConfig, ModelWeights, SLOT_COUNTS_FILE};
use memlayers::rng::Rng;
use memlayers::train::Trainer;
use memlayers::{Error, Gpu, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// Facts in the recall sample evaluated during training (all facts at the end).
pub(super) const CURVE_SAMPLE: usize = 400;
pub(super) struct Run {
    pub(super) label: String,
    pub(super) config: ModelConfig,
    pub(super) args: LMTransformerArgs,
    pub(super) lr: f32,
    pub(super) value_lr: Option<f32>,
    pub(super) params: usize,
    pub(super) memory_params: usize,
    pub(super) flops: f64,
    pub(super) recall: f32,
    pub(super) loss: f32,
    pub(super) seconds: f64,
    pub(super) curve: Vec<(u32, f32)>,
}

impl Run {
    pub(super) fn json(&self, a: &Settings) -> Value {
        json!({
            "recall": self.recall,
            "flops_per_token": self.flops,
            "params": self.params,
            "memory_params": self.memory_params,
            "steps": a.steps,
            "lr": self.lr,
            "value_lr": self.value_lr,
            "final_loss": self.loss,
            "wall_seconds": self.seconds,
            "memory_values": self.config.memory.as_ref().map(|m| m.n_values()),
            "recall_curve": self.curve.iter().map(|&(s, r)| json!({"step": s, "recall": r})).collect::<Vec<_>>(),
            "model": serde_json::from_str::<Value>(&self.args.to_json()).unwrap_or(Value::Null),
        })
    }
}

/// Steps between two reads of the training loss (each read waits for the GPU).
const LOSS_EVERY: u32 = 10;

pub(super) fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

fn status(loss: f32, recall: Option<f32>) -> String {
    let recall = recall.map_or("-".into(), |r| format!("{r:.2}"));
    format!("loss {loss:>6.3} recall {recall:>4}")
}

#[allow(clippy::too_many_arguments)]
pub(super) fn train(
    gpu: &Gpu,
    a: &Settings,
    label: String,
    args: LMTransformerArgs,
    lr: f32,
    kb: &KnowledgeBase,
    sample: &[Fact],
) -> Result<(Run, Trainer)> {
    let config = args.resolve()?;
    let weights = ModelWeights::init(&config)?;
    let train = train_config(a.steps, lr, config.memory.is_some());
    let value_lr = config.memory.as_ref().map(|_| train.value_lr);
    let mut trainer = super::super::devices::trainer(gpu, a.devices.as_deref(), &weights, train)?;
    let mut rng = Rng::new(a.seed ^ 0xDA7A);
    let started = Instant::now();
    let (mut loss, mut curve, mut last_recall) = (f32::NAN, vec![(0, 0.0)], None);
    let mut progress = Progress::new(&label, a.steps as u64);
    let eval = |t: &Trainer, facts: &[Fact]| pollster::block_on(recall(&t.model, gpu, facts));
    curve[0].1 = eval(&trainer, sample)?;
    while trainer.step < a.steps {
        let (x, y, answers) = training_batch_counted(&kb.facts, &mut rng, (a.batch, a.seq), a.fact_ends);
        // Steps are submitted without waiting; the loss is read (and the GPU waited for)
        // every LOSS_EVERY steps, at evaluations and at the end. The answers weigh the same
        // with the facts' ends as without: the loss is over the answer bytes' count.
        trainer.submit_step_over(gpu, &x, &y, (a.batch, a.seq), Some(answers))?;
        let evaluate = trainer.step % a.eval_every == 0 && trainer.step < a.steps;
        if trainer.step % LOSS_EVERY == 0 || evaluate || trainer.step == a.steps {
            loss = trainer.last_loss_blocking(gpu)?;
            if !loss.is_finite() {
                return Err(Error::Config(format!(
                    "{label}: the loss diverged by step {} (lr {lr})",
                    trainer.step
                )));
            }
            if evaluate {
                let r = eval(&trainer, sample)?;
                curve.push((trainer.step, r));
                last_recall = Some(r);
            }
            progress.update(trainer.step as u64, status(loss, last_recall));
        }
    }
    let final_recall = eval(&trainer, &kb.facts)?;
    curve.push((trainer.step, final_recall));
    let seconds = started.elapsed().as_secs_f64();
    progress.finish(format!("{} | {seconds:.0}s", status(loss, Some(final_recall))));
    let run = Run {
        label,
        flops: config.flops_per_token(a.seq)?,
        params: weights.parameter_count(),
        memory_params: weights.memory_parameter_count(),
        config,
        args,
        lr,
        value_lr,
        recall: final_recall,
        loss,
        seconds,
        curve,
    };
    Ok((run, trainer))
}

/// The model, and the facts it learned (`teach` measures forgetting on them).
pub(super) fn save_model(
    gpu: &Gpu,
    dir: &Path,
    run: &Run,
    trainer: &Trainer,
    kb: &KnowledgeBase,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join("config.json"), run.args.to_json().as_bytes())?;
    write_atomic(
        &dir.join(super::super::model_dir::FACTS_FILE),
        kb.to_tsv().as_bytes(),
    )?;
    trainer
        .weights_blocking(gpu)?
        .write(&dir.join("weights.safetensors"))
}

/// With memory layers: how often each slot is read over a sample of the training rows, at
/// the answer bytes (`slot_counts.safetensors` beside the model: what `teach` ranks slots
/// against).
pub(super) fn save_slot_counts(
    gpu: &Gpu,
    dir: &Path,
    a: &Settings,
    kb: &KnowledgeBase,
    trainer: &Trainer,
) -> Result<()> {
    if trainer.model.config.memory.is_none() {
        return Ok(());
    }
    let counts = pollster::block_on(memlayers::demo::fact_slot_counts(
        &trainer.model,
        gpu,
        &kb.facts,
        (a.seed ^ 0x5107, SLOT_COUNT_BATCHES),
        (a.batch, a.seq),
    ))?;
    counts.to_tensors().write(&dir.join(SLOT_COUNTS_FILE))
}

/// Training batches whose slot reads are counted for a saved memory model.
const SLOT_COUNT_BATCHES: usize = 32;

/// `args`' model trained at each of `lrs`, the best kept (by final recall, then loss): its run
/// and trainer, and each rate's recall and final loss.
pub(super) fn best_of(
    gpu: &Gpu,
    a: &Settings,
    name: &str,
    args: &LMTransformerArgs,
    lrs: &[f32],
    facts: (&KnowledgeBase, &[Fact]),
) -> Result<(Run, Trainer, Vec<Value>)> {
    let (kb, sample) = facts;
    let mut best: Option<(Run, Trainer)> = None;
    let mut sweep = Vec::new();
    for &lr in lrs {
        let (run, trainer) = train(
            gpu,
            a,
            format!("{name} lr {lr:.0e}"),
            args.clone(),
            lr,
            kb,
            sample,
        )?;
        sweep.push(json!({"lr": lr, "recall": run.recall, "final_loss": run.loss}));
        if best
            .as_ref()
            .is_none_or(|(b, _)| (run.recall, -run.loss) > (b.recall, -b.loss))
        {
            best = Some((run, trainer));
        }
    }
    let (run, trainer) = best.expect("at least one learning rate");
    Ok((run, trainer, sweep))
}

impl Run {
    /// How the summary names a model besides dense: its memory size, or its experts.
    pub(super) fn kind_label(&self, name: &str) -> String {
        match (&self.config.memory, &self.config.moe) {
            (Some(m), _) => {
                let values = m.n_values() * if m.peer { 2 } else { 1 };
                format!(
                    "{} ({}K values)",
                    if m.peer { "PEER" } else { "memory" },
                    (values + 512) / 1024
                )
            }
            (_, Some(m)) => format!("MoE ({} x top {}, lr {:.0e})", m.experts, m.top_k, self.lr),
            _ => name.to_string(),
        }
    }
}
