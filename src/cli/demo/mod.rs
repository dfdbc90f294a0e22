//! `memlayers demo`: the paper's central claim on any machine in minutes. A dense model and a
//! memory model with the same FLOPs per token learn the same facts; the memory model recalls
//! far more of them.
//!
//! Fairness: both models share everything but the replaced feed-forward block (same
//! embedding, attention, optimiser, schedule, data order and steps). The dense model's
//! learning rate is the best of a sweep (`--lrs`, by final recall); the memory model gets
//! that learning rate, untuned, with the value table at the reference's 10x (`docs/reference.md`,
//! "The training recipe").
//!
//! The rooms: `settings.rs` (presets and flags), `plan.rs` (`--facts`: memory and steps sized
//! to the budget), `models.rs` (the compared models at matched FLOPs), `training.rs` (a model
//! trained and saved, the best of several rates), `report.rs` (what is printed and written).

mod models;
mod plan;
mod report;
mod settings;
mod training;

use memlayers::demo::KnowledgeBase;
use memlayers::{Error, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Settings to start from: "cpu" (a 2-core machine through lavapipe: 1,000 facts, width 32,
    /// 800 steps of 32 rows, under 10 minutes), "gpu" (the capacity regime: 20,000 facts, width 64, 3,500 steps
    /// of 128 rows), or "auto": "gpu" on a GPU adapter, "cpu" on a CPU one. Flags below
    /// override single settings.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "gpu"])]
    pub preset: String,
    /// Your own facts instead of the built-in ones: one fact a line,
    /// subject<TAB>relation<TAB>object. Prompts are "subject relation ", answers "object.";
    /// a prompt with several objects is one question that any of them answers. The demo
    /// then sizes the memory to the facts and the steps to --budget (flags given
    /// explicitly are kept).
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// With --facts: minutes the whole run should take; the steps are planned from step times
    /// measured on this adapter in the first steps. `auto`: the budget that gives each fact
    /// the views the memory model needed in measured runs (VIEWS_FOR_CLAIM) [10].
    #[arg(long, default_value = "10")]
    pub budget: String,
    /// Output directory: results.json, recall.png, the trained models (dense/, memory/).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Fictional people in the built-in knowledge base (4 facts each) [cpu: 250, gpu: 5000].
    #[arg(long)]
    pub subjects: Option<usize>,
    /// Seed of the knowledge base, the initialisation and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training steps of every model [cpu: 800, gpu: 3500].
    #[arg(long)]
    pub steps: Option<u32>,
    /// Rows per training step [cpu: 32, gpu: 128].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per training row (facts are packed whole) [48].
    #[arg(long)]
    pub seq: Option<usize>,
    /// Learning rates tried for the dense model; the memory model gets the best one
    /// [3e-3,1e-2].
    #[arg(long, value_delimiter = ',')]
    pub lrs: Option<Vec<f32>>,
    /// Model width (both models) [cpu: 32, gpu: 64].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Transformer blocks (both models); the memory model's last block holds the memory [2].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Sub-keys per half of the memory: n_keys^2 values [cpu: 96, gpu: 128].
    #[arg(long)]
    pub n_keys: Option<usize>,
    /// Memory heads [cpu: 2, gpu: 4].
    #[arg(long)]
    pub mem_heads: Option<usize>,
    /// Slots read per memory head [16].
    #[arg(long)]
    pub mem_knn: Option<usize>,
    /// Query/key width of the memory [cpu: 20, gpu: 32]. The cpu preset's 96^2 values at width
    /// 20 cost 2.7% fewer FLOPs a token than the dense model; against 64^2 at width 32 (the
    /// same FLOPs as dense) they recalled 0.874 against 0.801 (seed 0) and 0.839 against 0.641
    /// (seed 1) with the answers alone trained, and leave sparse fine-tuning rows the old facts
    /// barely read (docs/results.md).
    #[arg(long)]
    pub mem_k_dim: Option<usize>,
    /// Recall on a sample of facts every this many steps (the curve in recall.png)
    /// [cpu: 100, gpu: 350].
    #[arg(long)]
    pub eval_every: Option<u32>,
    /// Also train memory models of several sizes (`--sweep-n-keys`) at the same FLOPs and
    /// plot recall against memory size (sweep.png, "sweep" in results.json).
    #[arg(long)]
    pub sweep: bool,
    /// [cpu: 32,64,96,120, gpu: 64,96,128,181]
    #[arg(long, value_delimiter = ',')]
    pub sweep_n_keys: Option<Vec<usize>>,
    /// The models compared, among dense, moe, peer and memory (or "all"); dense always runs
    /// (its learning-rate sweep sets the memory models' rate; moe gets the sweep too). PEER
    /// reads n_keys / sqrt(2) sub-keys per half (at least knn), so that its two tables hold as
    /// many values as the memory's one; MoE has top-2 experts of half the dense width, as many
    /// as give it the memory layer's parameters [cpu: dense,memory, gpu: all].
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Train the answers alone. By default the loss also covers the space that ends each
    /// prompt and the newline that ends each fact (and stays divided by the answer bytes'
    /// count), so that the models answer a prompt typed without its trailing space and end
    /// their answer with a newline (`generate --stop '\n'`; an exported model's EOS). Recall
    /// is measured the same way either way. cpu preset, seeds 0 / 1 / 2: memory 0.874 / 0.839
    /// / 0.934 with this flag (0.911 / 0.825 / 0.891 without), dense 0.305 / 0.639 / 0.520
    /// (0.484 / 0.669 / 0.572).
    #[arg(long)]
    pub answers_only: bool,
    /// Shard the memory models' value tables by columns over these adapters (indices as
    /// `memlayers info` lists them; one may repeat): the first runs everything else. The same
    /// results as one device, up to the rounding of the value group's clipping norm.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
}

pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    args.check_models()?;
    let gpu = super::devices::main(args.devices.as_deref())?;
    let mut settings = args.settings(gpu.adapter_info());
    let kb = match &settings.facts {
        Some(path) => KnowledgeBase::parse_tsv(
            &std::fs::read_to_string(path)
                .map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?,
        )?,
        None => KnowledgeBase::synthetic(settings.subjects, settings.seed),
    };
    if kb.facts.is_empty() {
        return Err(Error::Config("no facts: --subjects must be positive".into()));
    }
    plan::budget_minutes(&args.budget)?;
    if settings.lrs.is_empty() || settings.batch == 0 || settings.layers == 0 {
        return Err(Error::Config(
            "--lrs, --batch and --layers must be non-empty/positive".into(),
        ));
    }
    if kb.longest() + 1 > settings.seq {
        return Err(Error::Config(format!(
            "the longest fact has {} bytes; --seq must be at least {}",
            kb.longest(),
            kb.longest() + 1
        )));
    }
    let plan = match settings.facts.is_some() {
        true => Some(plan::plan_for_facts(&gpu, &mut settings, args, &kb, started)?),
        false => None,
    };
    // Training, evaluation and saving: what the plan's prediction is set against.
    let after_plan = Instant::now();
    let a = &settings;
    if a.lrs.is_empty() || a.steps == 0 || a.batch == 0 || a.layers == 0 || a.eval_every == 0 {
        return Err(Error::Config(
            "--lrs, --steps, --batch, --layers and --eval-every must be non-empty/positive".into(),
        ));
    }
    let dense_args = models::model_args(a, None);
    let dense_config = dense_args.resolve()?;
    let others = models::others(a, &dense_config)?;
    let sweep_args = models::sweep_args(a, &dense_config)?;
    std::fs::create_dir_all(&a.out)?;
    // A fixed sample for the recall curve (the final recall is over every fact).
    let sample = kb.sample_questions(training::CURVE_SAMPLE, a.seed ^ 0x5A3E);
    let facts = (&kb, &sample[..]);
    report::print_header(&gpu, a, &kb, &dense_config, &others)?;
    if let Some(plan) = &plan {
        plan::print(plan, a, kb.facts.len(), args.steps.is_some());
    }
    println!("dense learning-rate sweep: {:?}", a.lrs);
    let (mut dense, dense_trainer, dense_lr_sweep) =
        training::best_of(&gpu, a, "dense", &dense_args, &a.lrs, facts)?;
    dense.label = format!("dense (lr {:.0e})", dense.lr);
    training::save_model(&gpu, &a.out.join("dense"), &dense, &dense_trainer, &kb)?;
    drop(dense_trainer);
    // The memory models at the dense model's best rate (their value tables at 10x); the MoE
    // model gets the learning-rate sweep, as the dense one.
    let mut runs: Vec<(&str, training::Run)> = Vec::new();
    for other in others {
        let lrs = if other.name == "moe" {
            a.lrs.clone()
        } else {
            vec![dense.lr]
        };
        let (mut run, trainer, _) = training::best_of(&gpu, a, other.name, &other.args, &lrs, facts)?;
        run.label = run.kind_label(other.name);
        training::save_model(&gpu, &a.out.join(other.name), &run, &trainer, &kb)?;
        training::save_slot_counts(&gpu, &a.out.join(other.name), a, &kb, &trainer)?;
        runs.push((other.name, run));
    }
    let memory = runs.iter().find(|(n, _)| *n == "memory").map(|(_, r)| r);
    let mut sweep = Vec::new();
    for s in sweep_args {
        let n_keys = s.productkey_args.mem_n_keys;
        let label = format!("memory {}x{} values", n_keys, n_keys);
        let run = match memory.filter(|_| n_keys == a.n_keys) {
            Some(_) => None, // the main memory model is this point
            None => Some(training::train(&gpu, a, label, s, dense.lr, &kb, &sample)?.0),
        };
        let r = run
            .as_ref()
            .or(memory)
            .expect("the sweep trains or reuses a memory model");
        sweep.push((n_keys, r.memory_params, r.flops, r.recall));
    }
    let outcome = report::Outcome {
        dense: &dense,
        dense_lr_sweep,
        runs: &runs,
        sweep: &sweep,
        plan: plan.as_ref().map(|p| (p, after_plan)),
        started,
    };
    report::write(&gpu, a, &kb, &outcome)?;
    report::print_summary(a, &outcome);
    Ok(())
}
