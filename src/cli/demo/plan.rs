//! `--facts`: the plan that sizes the memory to the facts and the steps to `--budget`, from
//! step times measured on this adapter, and what the budget buys (whether the claim can be
//! expected), said before training.

use super::models::{check_flops, model_args, other_args};
use super::settings::Settings;
use super::Args;
use memlayers::demo::{train_config, training_batch_with, KnowledgeBase};
use memlayers::model::{LMTransformerArgs, ModelWeights};
use memlayers::rng::Rng;
use memlayers::{Error, Gpu, Result};
use std::time::Instant;

/// Memory values per fact that `--facts` plans for: the cpu preset's 4,096 values hold 1,000
/// facts at recall 0.8.
const VALUES_PER_FACT: f64 = 4.0;
/// Facts a training row holds (on average) when `--facts` plans the row length.
const FACTS_PER_ROW: f64 = 3.0;
/// Steps timed per model when planning (after `PLAN_WARMUP` untimed ones).
const PLAN_TIMED: u32 = 8;
const PLAN_WARMUP: u32 = 3;
/// The share of the budget left after planning that the training steps get; the rest is
/// evaluation and saving. Measured on 4,500 facts: with 85% of the whole budget a 3-minute run
/// ended at 89% of it; with 95% of what planning leaves, three 10-minute runs ended at 92-94%
/// (training, evaluation and saving took 97-99% of the steps' predicted time).
pub(super) const PLAN_TRAINING_SHARE: f64 = 0.99;

/// Views of each fact (times it is trained on) that the memory model needed to pass the
/// claim (recall >= 0.5) in measured runs: on 4,500 facts (`scripts/make_people.py 1500 7`,
/// cpu preset) its recall was 0.12 at 22 views, 0.30 at about 40, 0.57 at about 47 and 0.77
/// at 54 (docs/results.md); the built-in 1,000 facts get about 50 by default and pass.
pub(super) const VIEWS_FOR_CLAIM: f64 = 50.0;

/// `--budget`: minutes, or `auto` (None).
pub(super) fn budget_minutes(text: &str) -> Result<Option<f64>> {
    if text == "auto" {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 => Ok(Some(m)),
        _ => Err(Error::Config(format!(
            "--budget {text}: a positive number of minutes, or auto"
        ))),
    }
}

/// What `--facts` planned, printed before training and saved in results.json.
pub(super) struct Plan {
    pub(super) seconds_per_step: Vec<(String, f64)>,
    pub(super) budget_seconds: f64,
    pub(super) views_per_fact: f64,
    /// Seconds the planning took (the run's time before training).
    pub(super) planning_seconds: f64,
    /// The training steps' seconds the plan expects (every model, the learning-rate sweep
    /// included).
    pub(super) predicted_training_seconds: f64,
    /// The budget that gives each fact `VIEWS_FOR_CLAIM` views on this adapter.
    pub(super) budget_needed_seconds: f64,
}

/// With `--facts`: a memory of about `VALUES_PER_FACT` values a fact (n_keys, and the widest
/// key width in 32, 16, 8 that keeps the FLOPs matched), then as many steps as the budget
/// allows at the step times measured here, the same for every model. Settings the user gave
/// explicitly stay.
pub(super) fn plan_for_facts(
    gpu: &Gpu,
    a: &mut Settings,
    args: &Args,
    kb: &KnowledgeBase,
    started: Instant,
) -> Result<Plan> {
    // Rows of about three facts (fewer pad bytes than one or two long facts in 48), at the
    // same tokens per step.
    let mean = kb.facts.iter().map(|f| f.sentence_len() + 1).sum::<usize>() as f64 / kb.facts.len() as f64;
    if args.seq.is_none() {
        let seq = ((FACTS_PER_ROW * mean).ceil() as usize)
            .max(kb.longest() + 1)
            .max(a.seq)
            .next_multiple_of(16);
        if args.batch.is_none() {
            a.batch = (a.batch * a.seq / seq).max(1);
        }
        a.seq = seq;
    }
    let dense = model_args(a, None).resolve()?;
    if args.n_keys.is_none() {
        let want = (VALUES_PER_FACT * kb.facts.len() as f64).sqrt().ceil() as usize;
        a.n_keys = want.clamp(a.mem_knn.max(16), 1024);
        let widths: Vec<usize> = match args.mem_k_dim {
            Some(k) => vec![k],
            None => vec![32, 16, 8],
        };
        'fit: loop {
            for &k in &widths {
                a.mem_k_dim = k;
                if check_flops(&dense, &model_args(a, Some(a.n_keys)).resolve()?, a.seq).is_ok() {
                    break 'fit;
                }
            }
            if a.n_keys <= a.mem_knn.max(16) {
                break; // the FLOPs check below says what to change
            }
            a.n_keys -= a.n_keys.div_ceil(16);
        }
    }
    let mut rng = Rng::new(a.seed ^ 0x71E);
    let mut seconds_per_step = Vec::new();
    let mut time = |label: String, args: LMTransformerArgs, lr: f32| -> Result<f64> {
        let config = args.resolve()?;
        let mut trainer = super::super::devices::trainer(
            gpu,
            a.devices.as_deref(),
            &ModelWeights::init(&config)?,
            train_config(100, lr, config.memory.is_some()),
        )?;
        let mut started = Instant::now();
        for step in 0..PLAN_WARMUP + PLAN_TIMED {
            if step == PLAN_WARMUP {
                trainer.last_loss_blocking(gpu)?;
                started = Instant::now();
            }
            let (x, y) = training_batch_with(&kb.facts, &mut rng, (a.batch, a.seq), a.fact_ends);
            trainer.submit_step(gpu, &x, &y, a.batch, a.seq)?;
        }
        trainer.last_loss_blocking(gpu)?;
        let t = started.elapsed().as_secs_f64() / PLAN_TIMED as f64;
        seconds_per_step.push((label, t));
        Ok(t)
    };
    let mut per_step = time("dense".into(), model_args(a, None), a.lrs[0])? * a.lrs.len() as f64;
    for &name in &a.models {
        let sweeps = if name == "moe" { a.lrs.len() as f64 } else { 1.0 };
        per_step += time(name.into(), other_args(a, name)?, a.lrs[0])? * sweeps;
    }
    let planning_seconds = started.elapsed().as_secs_f64();
    // Facts packed per row: the row's length over the mean sentence and its newline.
    let views_per_step = a.batch as f64 * (a.seq as f64 / mean).floor().max(1.0) / kb.facts.len() as f64;
    let steps_needed = ((VIEWS_FOR_CLAIM / views_per_step).ceil().min(1e9) as u32).next_multiple_of(10);
    let budget_needed_seconds = planning_seconds + steps_needed as f64 * per_step / PLAN_TRAINING_SHARE;
    let minutes = budget_minutes(&args.budget)?;
    let budget_seconds = minutes.map_or(budget_needed_seconds, |m| m * 60.0);
    if args.steps.is_none() {
        let left = (budget_seconds - planning_seconds).max(0.0);
        let steps = match minutes {
            Some(_) => (left * PLAN_TRAINING_SHARE / per_step) as u32 / 10 * 10,
            None => steps_needed,
        };
        a.steps = steps.max(10);
    }
    if args.eval_every.is_none() {
        a.eval_every = (a.steps / 8).max(1);
    }
    let views_per_fact = a.steps as f64 * views_per_step;
    Ok(Plan {
        seconds_per_step,
        budget_seconds,
        views_per_fact,
        planning_seconds,
        predicted_training_seconds: a.steps as f64 * per_step,
        budget_needed_seconds,
    })
}

/// Says what the plan chose and whether the claim can be expected (`steps_given`: the user's
/// `--steps` fixed the steps).
pub(super) fn print(plan: &Plan, a: &Settings, facts: usize, steps_given: bool) {
    let times: Vec<String> = plan
        .seconds_per_step
        .iter()
        .map(|(m, t)| format!("{m} {:.0} ms", 1e3 * t))
        .collect();
    println!(
        "plan for {} facts in {:.1} min: memory {}^2 = {} values (key width {}), {} steps of {} rows of {} (each fact seen about {:.0} times); measured per step: {}",
        facts,
        plan.budget_seconds / 60.0,
        a.n_keys,
        a.n_keys * a.n_keys,
        a.mem_k_dim,
        a.steps,
        a.batch,
        a.seq,
        plan.views_per_fact,
        times.join(", ")
    );
    let needed = format!(
        "the memory model needed about {VIEWS_FOR_CLAIM:.0} views a fact to reach recall 0.5 in measured runs"
    );
    let minutes = (plan.budget_needed_seconds / 60.0).ceil().max(1.0);
    match (plan.views_per_fact >= VIEWS_FOR_CLAIM, steps_given) {
        (true, _) => println!("expected: the claim ({needed}, and this run gives them)"),
        (false, true) => println!(
            "not expected: {needed}; these --steps give {:.0}",
            plan.views_per_fact
        ),
        (false, false) => println!(
            "not expected: {needed}; this budget gives {:.0}. About {minutes:.0} minutes would give them on this adapter (--budget {minutes:.0}, or --budget auto)",
            plan.views_per_fact,
        ),
    }
}
