//! `moe.wgsl`: a mixture-of-experts feed-forward block's forward (routing, the chosen
//! experts' hidden activations, the gated combination), checked against
//! `reference::moe::moe_forward`. The model does not use it yet (issue 15): the backward and
//! the block come next.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::{grid, Gpu};

pub const SOURCE: &str = include_str!("../../shaders/moe.wgsl");

/// The block's shape for `tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeDims {
    pub tokens: u32,
    pub dim: u32,
    pub hidden: u32,
    pub experts: u32,
    pub top_k: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    dim: u32,
    hidden: u32,
    experts: u32,
    top_k: u32,
    _pad: [u32; 3],
}

impl MoeDims {
    fn check(&self) -> Result<Params> {
        let MoeDims {
            tokens,
            dim,
            hidden,
            experts,
            top_k,
        } = *self;
        if tokens == 0 || dim == 0 || hidden == 0 || experts == 0 || top_k == 0 || top_k > experts {
            return Err(Error::Config(format!(
                "moe: {self:?} (top_k must be in 1..=experts)"
            )));
        }
        let assignments = tokens as u64 * top_k as u64;
        for (what, n) in [
            ("tokens x top_k x hidden", assignments * hidden as u64),
            ("tokens x dim", tokens as u64 * dim as u64),
            (
                "experts x hidden x dim",
                experts as u64 * hidden as u64 * dim as u64,
            ),
        ] {
            if n > u32::MAX as u64 {
                return Err(Error::Config(format!("moe: {what} = {n} elements")));
            }
        }
        check_loop_budget(
            "moe route",
            experts as u64 * (3 + top_k as u64),
            "experts x (3 + top_k)",
        )?;
        check_loop_budget("moe hidden", dim as u64, "dim")?;
        check_loop_budget("moe combine", top_k as u64 * hidden as u64, "top_k x hidden")?;
        Ok(Params {
            tokens,
            dim,
            hidden,
            experts,
            top_k,
            _pad: [0; 3],
        })
    }
}

fn run(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (entry, label): (&str, &'static str),
    params: &Params,
    bindings: &[(u32, &wgpu::Buffer)],
    invocations: u64,
) {
    let uniform = gpu.uniform("moe params", params);
    let pipeline = gpu.pipeline_entry("moe", SOURCE, entry, &[]);
    let mut all = vec![(0, &uniform)];
    all.extend_from_slice(bindings);
    let bind = gpu.bind_at(&pipeline, &all);
    let (x, y) = grid((invocations as u32).div_ceil(64));
    gpu.run(encoder, label, &pipeline, &bind, (x, y, 1));
}

/// From the router's `logits [tokens, experts]`: `probs` (softmax, same shape), `chosen`
/// (`[tokens, top_k]` u32, most probable first) and `gates` (their renormalised
/// probabilities).
pub fn record_route(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    d: MoeDims,
    logits: &wgpu::Buffer,
    (probs, chosen, gates): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
) -> Result<()> {
    let p = d.check()?;
    let (scores, picks) = (
        d.tokens as u64 * d.experts as u64,
        d.tokens as u64 * d.top_k as u64,
    );
    check_buffer(gpu, "router logits", logits, scores)?;
    check_buffer(gpu, "router probabilities", probs, scores)?;
    check_buffer(gpu, "chosen experts", chosen, picks)?;
    check_buffer(gpu, "expert gates", gates, picks)?;
    run(
        gpu,
        encoder,
        ("route", "moe_route"),
        &p,
        &[(1, logits), (2, probs), (3, chosen), (4, gates)],
        d.tokens as u64,
    );
    Ok(())
}

/// `a1`, `a3 [tokens, top_k, hidden]`: `w1[e] x` and `w3[e] x` of each chosen expert `e`,
/// from `x [tokens, dim]` and `w1`, `w3 [experts, hidden, dim]`.
pub fn record_hidden(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    d: MoeDims,
    (x, w1, w3, chosen): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    (a1, a3): (&wgpu::Buffer, &wgpu::Buffer),
) -> Result<()> {
    let p = d.check()?;
    let acts = d.tokens as u64 * d.top_k as u64 * d.hidden as u64;
    let weights = d.experts as u64 * d.hidden as u64 * d.dim as u64;
    check_buffer(gpu, "moe input", x, d.tokens as u64 * d.dim as u64)?;
    check_buffer(gpu, "w1", w1, weights)?;
    check_buffer(gpu, "w3", w3, weights)?;
    check_buffer(gpu, "chosen experts", chosen, d.tokens as u64 * d.top_k as u64)?;
    check_buffer(gpu, "a1", a1, acts)?;
    check_buffer(gpu, "a3", a3, acts)?;
    run(
        gpu,
        encoder,
        ("hidden", "moe_hidden"),
        &p,
        &[(3, chosen), (5, x), (6, w1), (7, w3), (8, a1), (9, a3)],
        acts,
    );
    Ok(())
}

/// `y [tokens, dim]`: the gate-weighted sum over each token's chosen experts, in order, of
/// `w2[e] (silu(a1) * a3)`, with `w2 [experts, dim, hidden]`.
pub fn record_combine(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    d: MoeDims,
    (a1, a3, chosen, gates): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    w2: &wgpu::Buffer,
    y: &wgpu::Buffer,
) -> Result<()> {
    let p = d.check()?;
    let picks = d.tokens as u64 * d.top_k as u64;
    check_buffer(gpu, "a1", a1, picks * d.hidden as u64)?;
    check_buffer(gpu, "a3", a3, picks * d.hidden as u64)?;
    check_buffer(gpu, "chosen experts", chosen, picks)?;
    check_buffer(gpu, "expert gates", gates, picks)?;
    check_buffer(gpu, "w2", w2, d.experts as u64 * d.dim as u64 * d.hidden as u64)?;
    check_buffer(gpu, "moe output", y, d.tokens as u64 * d.dim as u64)?;
    run(
        gpu,
        encoder,
        ("combine", "moe_combine"),
        &p,
        &[(3, chosen), (4, gates), (8, a1), (9, a3), (10, w2), (11, y)],
        d.tokens as u64 * d.dim as u64,
    );
    Ok(())
}
