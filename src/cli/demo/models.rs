//! The models the demo compares, each within `FLOPS_TOLERANCE` of the dense model's FLOPs per
//! token: dense, memory, PEER and MoE as lingua arguments.

use super::settings::Settings;
use memlayers::demo::{DemoModel, MemoryShape, MoeShape};
use memlayers::model::{LMTransformerArgs, ModelConfig};
use memlayers::{Error, Result};

/// The largest relative difference of FLOPs per token allowed between the two models.
pub(super) const FLOPS_TOLERANCE: f64 = 0.10;

pub(super) fn model_args(a: &Settings, n_keys: Option<usize>) -> LMTransformerArgs {
    shaped_args(a, n_keys, false)
}

/// PEER's sub-keys per half: its two tables hold about as many values as the memory's one
/// (and each head still finds its knn).
fn peer_n_keys(n_keys: usize, knn: usize) -> usize {
    (((n_keys as f64) / 2f64.sqrt()).round() as usize).max(knn).max(2)
}

fn shaped_args(a: &Settings, n_keys: Option<usize>, peer: bool) -> LMTransformerArgs {
    DemoModel {
        dim: a.dim,
        layers: a.layers,
        seq: a.seq,
        seed: a.seed,
        memory: n_keys.map(|n_keys| MemoryShape {
            n_keys,
            heads: a.mem_heads,
            knn: a.mem_knn,
            k_dim: a.mem_k_dim,
            peer,
        }),
        moe: None,
    }
    .args()
}

/// Experts a token reads in the MoE model.
const MOE_TOP_K: usize = 2;

/// The MoE model: the top 2 of experts half the dense block's width (so its active FLOPs per
/// token are the dense block's, plus the router), and as many experts as give its
/// feed-forward block the parameters of the memory model's (the memory layer's), fewer if the
/// router's FLOPs would break the tolerance.
fn moe_args(a: &Settings) -> Result<LMTransformerArgs> {
    let dense = model_args(a, None).resolve()?;
    let memory = model_args(a, Some(a.n_keys)).resolve()?;
    let count = |c: &ModelConfig| -> Result<usize> {
        Ok(memlayers::model::ModelLayout::new(c)?
            .registry
            .specs()
            .iter()
            .map(|s| s.len())
            .sum())
    };
    let target = count(&memory)?.saturating_sub(count(&dense)?) + 3 * dense.dim * dense.hidden;
    let hidden = dense.hidden.div_ceil(MOE_TOP_K);
    let per_expert = 3 * dense.dim * hidden + dense.dim;
    let mut experts = ((target as f64 / per_expert as f64).round() as usize).max(MOE_TOP_K);
    loop {
        let args = DemoModel {
            dim: a.dim,
            layers: a.layers,
            seq: a.seq,
            seed: a.seed,
            memory: None,
            moe: Some(MoeShape {
                experts,
                top_k: MOE_TOP_K,
                hidden,
            }),
        }
        .args();
        if experts <= MOE_TOP_K || check_flops(&dense, &args.resolve()?, a.seq).is_ok() {
            return Ok(args);
        }
        experts -= 1;
    }
}

/// The arguments of one of the models besides dense.
pub(super) fn other_args(a: &Settings, name: &str) -> Result<LMTransformerArgs> {
    Ok(match name {
        "peer" => shaped_args(a, Some(peer_n_keys(a.n_keys, a.mem_knn)), true),
        "moe" => moe_args(a)?,
        _ => model_args(a, Some(a.n_keys)),
    })
}

pub(super) fn check_flops(dense: &ModelConfig, memory: &ModelConfig, seq: usize) -> Result<f64> {
    let (fd, fm) = (dense.flops_per_token(seq)?, memory.flops_per_token(seq)?);
    let diff = (fm - fd) / fd;
    if diff.abs() > FLOPS_TOLERANCE {
        let kind = match (&memory.memory, &memory.moe) {
            (Some(m), _) if m.peer => "PEER",
            (_, Some(_)) => "MoE",
            _ => "memory",
        };
        return Err(Error::Config(format!(
            "FLOPs per token not matched: dense {:.0}, {kind} {:.0} ({:+.1}%, limit {:.0}%); \
             change --n-keys, --mem-heads, --mem-k-dim or --mem-knn",
            fd,
            fm,
            100.0 * diff,
            100.0 * FLOPS_TOLERANCE
        )));
    }
    Ok(diff)
}

/// A model besides dense: its name, arguments, FLOPs per token and relative difference from
/// the dense model's.
pub(super) struct Other {
    pub name: &'static str,
    pub args: LMTransformerArgs,
    pub flops: f64,
    pub diff: f64,
}

/// The models besides dense that `a` asks for, each checked against `dense`'s FLOPs.
pub(super) fn others(a: &Settings, dense: &ModelConfig) -> Result<Vec<Other>> {
    let mut others = Vec::new();
    for &name in &a.models {
        let args = other_args(a, name)?;
        let config = args.resolve()?;
        let diff = check_flops(dense, &config, a.seq)?;
        others.push(Other {
            name,
            args,
            flops: config.flops_per_token(a.seq)?,
            diff,
        });
    }
    Ok(others)
}

/// `--sweep`'s memory models (one a size of `--sweep-n-keys`), each checked against
/// `dense`'s FLOPs.
pub(super) fn sweep_args(a: &Settings, dense: &ModelConfig) -> Result<Vec<LMTransformerArgs>> {
    if a.sweep && !a.models.contains(&"memory") {
        return Err(Error::Config(
            "--sweep varies the memory model: include memory in --models".into(),
        ));
    }
    let sweep_args: Vec<LMTransformerArgs> = match a.sweep {
        true => a.sweep_n_keys.iter().map(|&n| model_args(a, Some(n))).collect(),
        false => Vec::new(),
    };
    for s in &sweep_args {
        check_flops(dense, &s.resolve()?, a.seq)?;
    }
    Ok(sweep_args)
}
