//! What the demo says and writes: the header, results.json, recall.png (and sweep.png), the
//! table and the ratios.

use super::super::plot::{line_chart, Series};
use super::models::{Other, FLOPS_TOLERANCE};
use super::plan::{Plan, VIEWS_FOR_CLAIM};
use super::settings::Settings;
use super::training::{duration, Run};
use memlayers::demo::KnowledgeBase;
use memlayers::io::write_atomic;
use memlayers::model::ModelConfig;
use memlayers::{Gpu, Result};
use serde_json::{json, Value};
use std::time::Instant;

/// One point of `--sweep`: (n_keys, memory parameters, FLOPs per token, recall).
pub(super) type SweepPoint = (usize, usize, f64, f32);

/// The facts, the adapter, the preset and every model's FLOPs per token.
pub(super) fn print_header(
    gpu: &Gpu,
    a: &Settings,
    kb: &KnowledgeBase,
    dense: &ModelConfig,
    others: &[Other],
) -> Result<()> {
    let questions = match kb.questions() {
        q if q == kb.facts.len() => String::new(),
        q => format!(" as {q} questions (a question's any answer counts)"),
    };
    println!(
        "{} facts{questions} ({} subjects), longest {} bytes; recall by guessing each relation's commonest object: {:.3}",
        kb.facts.len(),
        kb.facts.iter().map(|f| &f.subject).collect::<std::collections::BTreeSet<_>>().len(),
        kb.longest(),
        kb.guessing_recall()
    );
    let others_flops: String = others
        .iter()
        .map(|o| format!(", {} {:.0} ({:+.1}%)", o.name, o.flops, 100.0 * o.diff))
        .collect();
    println!(
        "adapter {}, preset {}; {} steps of {} x {} tokens per model; FLOPs/token dense {:.0}{others_flops}",
        gpu.adapter_name(),
        a.preset,
        a.steps,
        a.batch,
        a.seq,
        dense.flops_per_token(a.seq)?,
    );
    Ok(())
}

/// Everything a run produced, for the report.
pub(super) struct Outcome<'r> {
    pub dense: &'r Run,
    pub dense_lr_sweep: Vec<Value>,
    pub runs: &'r [(&'static str, Run)],
    pub sweep: &'r [SweepPoint],
    /// The plan of `--facts`, and when training started after it.
    pub plan: Option<(&'r Plan, Instant)>,
    pub started: Instant,
}

/// Writes results.json, recall.png and (with a sweep) sweep.png into `a.out`.
pub(super) fn write(gpu: &Gpu, a: &Settings, kb: &KnowledgeBase, o: &Outcome) -> Result<()> {
    let dense = o.dense;
    let mut results = json!({
        "dense": dense.json(a),
        "dense_lr_sweep": o.dense_lr_sweep,
        "facts": kb.facts.len(),
        "questions": kb.questions(),
        "preset": a.preset,
        "guessing_recall": kb.guessing_recall(),
        "batch": a.batch,
        "seq": a.seq,
        "seed": a.seed,
        // Whether the loss also covered the prompts' trailing spaces and the facts' newlines.
        "fact_ends": a.fact_ends,
        "adapter": gpu.adapter_name(),
    });
    for (name, run) in o.runs {
        results[*name] = run.json(a);
    }
    let curves: Vec<Series> = all_runs(o)
        .iter()
        .map(|r| Series {
            label: format!("{} recall {:.2}", r.label, r.recall),
            points: r.curve.iter().map(|&(s, v)| (s as f64, v as f64)).collect(),
        })
        .collect();
    line_chart(
        &a.out.join("recall.png"),
        &format!("Facts recalled, {} facts, matched FLOPs/token", kb.facts.len()),
        "training step",
        "recall (exact greedy answer)",
        &curves,
        false,
        false,
    )?;
    if !o.sweep.is_empty() {
        results["sweep"] = Value::Array(
            o.sweep
                .iter()
                .map(|&(n, p, f, r)| json!({"n_keys": n, "values": n * n, "memory_params": p, "flops_per_token": f, "recall": r}))
                .collect(),
        );
        let points = o
            .sweep
            .iter()
            .map(|&(n, _, _, r)| ((n * n) as f64, r as f64))
            .collect();
        line_chart(
            &a.out.join("sweep.png"),
            "Recall against memory size at the same FLOPs/token",
            "memory values (log scale)",
            "recall",
            &[
                Series {
                    label: format!("dense {:.2}", dense.recall),
                    points: o
                        .sweep
                        .iter()
                        .map(|&(n, ..)| ((n * n) as f64, dense.recall as f64))
                        .collect(),
                },
                Series {
                    label: "memory".into(),
                    points,
                },
            ],
            true,
            false,
        )?;
    }
    if let Some((plan, after_plan)) = o.plan {
        results["plan"] = json!({
            "budget_seconds": plan.budget_seconds,
            "seconds_per_step": plan.seconds_per_step.iter().map(|(m, t)| json!({"model": m, "seconds": t})).collect::<Vec<_>>(),
            "steps": a.steps,
            "n_keys": a.n_keys,
            "mem_k_dim": a.mem_k_dim,
            "views_per_fact": plan.views_per_fact,
            "planning_seconds": plan.planning_seconds,
            "predicted_training_seconds": plan.predicted_training_seconds,
            "after_planning_seconds": after_plan.elapsed().as_secs_f64(),
            "views_for_claim": VIEWS_FOR_CLAIM,
            "claim_expected": plan.views_per_fact >= VIEWS_FOR_CLAIM,
            "budget_needed_seconds": plan.budget_needed_seconds,
        });
    }
    results["total_seconds"] = json!(o.started.elapsed().as_secs_f64());
    write_atomic(
        &a.out.join("results.json"),
        serde_json::to_string_pretty(&results)
            .unwrap_or_default()
            .as_bytes(),
    )
}

fn all_runs<'r>(o: &Outcome<'r>) -> Vec<&'r Run> {
    std::iter::once(o.dense)
        .chain(o.runs.iter().map(|(_, r)| r))
        .collect()
}

/// The table of every model, the sweep's points, and each model's recall against dense's.
pub(super) fn print_summary(a: &Settings, o: &Outcome) {
    table(&all_runs(o));
    if !o.sweep.is_empty() {
        println!(
            "\nmemory size sweep (same FLOPs/token within {:.0}%):",
            100.0 * FLOPS_TOLERANCE
        );
        for (n, p, f, r) in o.sweep {
            println!(
                "  {:>7} values  {:>9} memory params  {:>8.0} FLOPs/token  recall {:.3}",
                n * n,
                p,
                f,
                r
            );
        }
    }
    let dense = o.dense;
    let ratios: Vec<String> = o
        .runs
        .iter()
        .map(|(name, r)| match dense.recall > 0.0 {
            true => format!("{name} / dense recall: {:.1}x", r.recall / dense.recall),
            false => format!("{name} recall {:.3} (dense recalled nothing)", r.recall),
        })
        .collect();
    println!(
        "\n{}; total {}; wrote {}",
        if ratios.is_empty() {
            "dense only".into()
        } else {
            ratios.join(", ")
        },
        duration(o.started.elapsed().as_secs_f64()),
        a.out.display()
    );
}

fn table(runs: &[&Run]) {
    println!(
        "\n{:<24} {:>9} {:>11} {:>12} {:>6} {:>8} {:>7}",
        "model", "params", "memory par.", "FLOPs/token", "steps", "recall", "time"
    );
    for r in runs {
        println!(
            "{:<24} {:>9} {:>11} {:>12.0} {:>6} {:>8.3} {:>7}",
            r.label,
            r.params,
            r.memory_params,
            r.flops,
            r.curve.last().map_or(0, |c| c.0),
            r.recall,
            duration(r.seconds)
        );
    }
}
