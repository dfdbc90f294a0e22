//! `moe.wgsl`: a mixture-of-experts feed-forward block, forward (routing, the chosen experts'
//! hidden activations, the gated combination) and backward (every weight's gradient, the
//! input's, and the load-balancing loss), checked against `reference::moe`. The backward
//! groups the token-expert assignments by expert with the stable radix sort, so each
//! expert's weight gradients sum its own assignments in order. The model's block is
//! `model::blocks::moe`.

use super::radix_sort::record_sort;
use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

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
    aux_coef: f32,
    accumulate: u32,
    _pad: u32,
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
            aux_coef: 0.0,
            accumulate: 0,
            _pad: 0,
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

/// `y [tokens, dim]` (added to it with `accumulate`): the gate-weighted sum over each token's
/// chosen experts, in order, of `w2[e] (silu(a1) * a3)`, with `w2 [experts, dim, hidden]`.
pub fn record_combine(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    d: MoeDims,
    (a1, a3, chosen, gates): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    w2: &wgpu::Buffer,
    (y, accumulate): (&wgpu::Buffer, bool),
) -> Result<()> {
    let p = Params {
        accumulate: accumulate as u32,
        ..d.check()?
    };
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

/// The forward's buffers the backward reads (`record_route`'s and `record_hidden`'s outputs).
#[derive(Clone, Copy)]
pub struct MoeActs<'a> {
    pub probs: &'a wgpu::Buffer,
    pub chosen: &'a wgpu::Buffer,
    pub gates: &'a wgpu::Buffer,
    pub a1: &'a wgpu::Buffer,
    pub a3: &'a wgpu::Buffer,
}

/// The block's weights: `router [experts, dim]`, `w1`, `w3 [experts, hidden, dim]`, `w2
/// [experts, dim, hidden]`.
#[derive(Clone, Copy)]
pub struct MoeWeightBuffers<'a> {
    pub router: &'a wgpu::Buffer,
    pub w1: &'a wgpu::Buffer,
    pub w3: &'a wgpu::Buffer,
    pub w2: &'a wgpu::Buffer,
}

/// The backward's results: the weights' gradients of `sum(dy * y) + aux_loss`, and the
/// load-balancing loss itself (`aux_loss`, one f32, already times its coefficient).
pub struct MoeGradBuffers {
    pub router: wgpu::Buffer,
    pub w1: wgpu::Buffer,
    pub w3: wgpu::Buffer,
    pub w2: wgpu::Buffer,
    pub aux_loss: wgpu::Buffer,
}

/// Records the backward of the block on `x [tokens, dim]` given its output's gradient `dy`
/// and the load-balancing coefficient `aux_coef`: the input's gradient into `dx`, and the
/// weights' (returned).
#[allow(clippy::too_many_arguments)]
pub fn record_backward(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    d: MoeDims,
    aux_coef: f32,
    (x, dy): (&wgpu::Buffer, &wgpu::Buffer),
    acts: MoeActs,
    w: MoeWeightBuffers,
    dx: &wgpu::Buffer,
) -> Result<MoeGradBuffers> {
    let p = Params {
        aux_coef,
        ..d.check()?
    };
    let (tokens, dim, hidden, experts, k) = (
        d.tokens as u64,
        d.dim as u64,
        d.hidden as u64,
        d.experts as u64,
        d.top_k as u64,
    );
    let picks = tokens * k;
    for (what, n) in [
        ("moe grad_gate", dim * hidden),
        ("moe expert gradients", picks),
        ("moe grad_logits", experts * (2 * k + 4)),
        ("moe grad_x", k * hidden + experts),
        ("moe grad_router", tokens),
        ("moe aux_parts", tokens),
        ("moe aux_loss", experts),
    ] {
        check_loop_budget(what, n, "its loop")?;
    }
    check_buffer(gpu, "moe input", x, tokens * dim)?;
    check_buffer(gpu, "moe output gradient", dy, tokens * dim)?;
    check_buffer(gpu, "moe input gradient", dx, tokens * dim)?;
    check_buffer(gpu, "router probabilities", acts.probs, tokens * experts)?;
    check_buffer(gpu, "chosen experts", acts.chosen, picks)?;
    check_buffer(gpu, "expert gates", acts.gates, picks)?;
    check_buffer(gpu, "a1", acts.a1, picks * hidden)?;
    check_buffer(gpu, "a3", acts.a3, picks * hidden)?;
    check_buffer(gpu, "router", w.router, experts * dim)?;
    for (name, b) in [("w1", w.w1), ("w3", w.w3), ("w2", w.w2)] {
        check_buffer(gpu, name, b, experts * hidden * dim)?;
    }
    let f32s = |label: &str, n: u64| gpu.storage(label, n * 4);
    let (da1, da3) = (f32s("moe da1", picks * hidden), f32s("moe da3", picks * hidden));
    run(
        gpu,
        encoder,
        ("grad_act", "moe_grad_act"),
        &p,
        &[
            (3, acts.chosen),
            (4, acts.gates),
            (8, acts.a1),
            (9, acts.a3),
            (10, w.w2),
            (12, dy),
            (13, &da1),
            (14, &da3),
        ],
        picks * hidden,
    );
    let d_gate = f32s("moe gate gradients", picks);
    run(
        gpu,
        encoder,
        ("grad_gate", "moe_grad_gate"),
        &p,
        &[
            (3, acts.chosen),
            (8, acts.a1),
            (9, acts.a3),
            (10, w.w2),
            (12, dy),
            (15, &d_gate),
        ],
        picks,
    );
    // The assignments grouped by expert, in assignment order within each.
    let ids: Vec<u32> = (0..picks as u32).collect();
    let ids = gpu.upload("moe assignment ids", &ids);
    let key_bits = (u32::BITS - (d.experts - 1).leading_zeros()).max(1);
    let sorted = record_sort(gpu, encoder, acts.chosen, &ids, picks as u32, key_bits)?;
    let offsets = gpu.storage("moe expert offsets", (experts + 1) * 4);
    run(
        gpu,
        encoder,
        ("segments", "moe_segments"),
        &p,
        &[(17, &sorted.keys), (18, &offsets)],
        experts + 1,
    );
    let weights = experts * hidden * dim;
    let (dw1, dw3, dw2) = (
        f32s("grad w1", weights),
        f32s("grad w3", weights),
        f32s("grad w2", weights),
    );
    run(
        gpu,
        encoder,
        ("grad_w13", "moe_grad_w13"),
        &p,
        &[
            (5, x),
            (13, &da1),
            (14, &da3),
            (16, &sorted.values),
            (18, &offsets),
            (19, &dw1),
            (20, &dw3),
        ],
        weights,
    );
    run(
        gpu,
        encoder,
        ("grad_w2", "moe_grad_w2"),
        &p,
        &[
            (4, acts.gates),
            (8, acts.a1),
            (9, acts.a3),
            (12, dy),
            (16, &sorted.values),
            (18, &offsets),
            (21, &dw2),
        ],
        weights,
    );
    let dlogits = f32s("router logit gradients", tokens * experts);
    run(
        gpu,
        encoder,
        ("grad_logits", "moe_grad_logits"),
        &p,
        &[
            (2, acts.probs),
            (3, acts.chosen),
            (4, acts.gates),
            (15, &d_gate),
            (18, &offsets),
            (22, &dlogits),
        ],
        tokens,
    );
    run(
        gpu,
        encoder,
        ("grad_x", "moe_grad_x"),
        &p,
        &[
            (3, acts.chosen),
            (6, w.w1),
            (7, w.w3),
            (13, &da1),
            (14, &da3),
            (22, &dlogits),
            (23, w.router),
            (24, dx),
        ],
        tokens * dim,
    );
    let router = f32s("grad router", experts * dim);
    run(
        gpu,
        encoder,
        ("grad_router", "moe_grad_router"),
        &p,
        &[(5, x), (22, &dlogits), (25, &router)],
        experts * dim,
    );
    let (aux_parts, aux_loss) = (
        f32s("moe load-balancing loss by expert", experts),
        f32s("moe load-balancing loss", 1),
    );
    run(
        gpu,
        encoder,
        ("aux_parts", "moe_aux_loss"),
        &p,
        &[(2, acts.probs), (18, &offsets), (27, &aux_parts)],
        experts,
    );
    run(
        gpu,
        encoder,
        ("aux_loss", "moe_aux_loss"),
        &p,
        &[(26, &aux_loss), (27, &aux_parts)],
        1,
    );
    Ok(MoeGradBuffers {
        router,
        w1: dw1,
        w3: dw3,
        w2: dw2,
        aux_loss,
    })
}
