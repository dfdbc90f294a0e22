//! `adamw.wgsl`: gradient-norm clipping per parameter group and the AdamW update, dense or
//! on listed rows only (the lazy update of the value table).

use super::value_grads::SparseRows;
use super::LOOP_BUDGET;
use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::{grid, MAX_GRID_DIM};
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/adamw.wgsl");
/// Elements per partial sum of the gradient norm (`adamw.wgsl`'s BLOCK).
pub const CLIP_BLOCK: u64 = 1024;
const BLOCK: u64 = CLIP_BLOCK;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    row_len: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    max_norm: f32,
    partial_offset: u32,
    clip_index: u32,
}

/// One step's hyper-parameters (torch.optim.AdamW's, plus the group's clipping norm).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based.
    pub step: u32,
}

impl AdamWStep {
    fn params(&self) -> Params {
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.step as i32);
        Params {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
            ..Default::default()
        }
    }
}

/// One parameter group's clipping factor: element `group` of the buffer `record_clip`
/// returned.
#[derive(Clone, Copy)]
pub struct Clip<'a> {
    pub factors: &'a wgpu::Buffer,
    pub group: u32,
}

/// Records the clipping factor `min(1, max_norm / (norm + 1e-6))` of each parameter group,
/// whose gradients are `groups[g]` (buffer, element count); returns a buffer of one factor
/// per group. The partial sums of squares take one dispatch per two buffers, and all
/// groups' factors one more. A group of more 1024-element blocks than one loop may add (50M
/// values: a 100M-parameter model's weights) first has its partial sums added in runs of
/// 1024 (one more dispatch), and its factor adds those.
pub fn record_clip(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    groups: &[&[(&wgpu::Buffer, u64)]],
    max_norm: f32,
) -> Result<wgpu::Buffer> {
    if groups.is_empty() || groups.len() > MAX_GRID_DIM as usize {
        return Err(Error::Config(format!(
            "gradient clipping: {} groups",
            groups.len()
        )));
    }
    // Every non-empty buffer in group order, with where its partial sums start; and each
    // group's range of partial sums.
    let mut buffers = Vec::new();
    let mut bounds = Vec::with_capacity(groups.len() * 2);
    let mut total = 0u64;
    // Groups too long for one loop: (first partial, partials), summed in runs into `extra`.
    let mut long = Vec::new();
    for group in groups {
        let start = total;
        bounds.push(start as u32);
        for &(buffer, n) in group.iter() {
            if n == 0 {
                continue;
            }
            check_buffer(gpu, "gradient", buffer, n)?;
            buffers.push((buffer, n, total));
            total += n.div_ceil(BLOCK);
        }
        let blocks = total - start;
        if blocks > LOOP_BUDGET {
            check_loop_budget(
                "gradient clipping",
                blocks.div_ceil(BLOCK),
                "the number of 1024-element blocks / 1024",
            )?;
            long.push((bounds.len() - 1, start, blocks));
        }
        bounds.push(total as u32);
    }
    // The run sums go after every partial sum; a long group's bounds point at its runs.
    let mut extra = total;
    for &(at, _, blocks) in &long {
        bounds[at] = extra as u32;
        extra += blocks.div_ceil(BLOCK);
        bounds[at + 1] = extra as u32;
    }
    if extra > u32::MAX as u64 / 2 {
        return Err(Error::Config(format!("gradient clipping: {extra} blocks")));
    }
    let partials = gpu.storage("grad norm partials", extra.max(1) * 4);
    let clip = gpu.storage("clip factors", groups.len() as u64 * 4);
    let sum = gpu.pipeline_entry("adamw", SOURCE, "sum_squares", &[]);
    for pair in buffers.chunks(2) {
        let (a, a_len, offset) = pair[0];
        let (b, b_len) = pair.get(1).map_or((a, 0), |&(b, n, _)| (b, n));
        let params = Params {
            len: a_len as u32,
            row_len: b_len as u32,
            partial_offset: offset as u32,
            ..Default::default()
        };
        let params = gpu.uniform("sum squares params", &params);
        let bind = gpu.bind_at(&sum, &[(0, &params), (1, a), (9, b), (2, &partials)]);
        let blocks = a_len.div_ceil(BLOCK) + b_len.div_ceil(BLOCK);
        let (x, y) = grid((blocks as u32).div_ceil(64));
        gpu.run(encoder, "grad_sum_squares", &sum, &bind, (x, y, 1));
    }
    let runs = gpu.pipeline_entry("adamw", SOURCE, "sum_partials", &[]);
    let mut run_at = total;
    for &(_, start, blocks) in &long {
        let params = Params {
            len: blocks as u32,
            partial_offset: start as u32,
            row_len: run_at as u32,
            ..Default::default()
        };
        let params = gpu.uniform("sum partials params", &params);
        let bind = gpu.bind_at(&runs, &[(0, &params), (2, &partials)]);
        let (x, y) = grid((blocks.div_ceil(BLOCK) as u32).div_ceil(64));
        gpu.run(encoder, "grad_sum_partials", &runs, &bind, (x, y, 1));
        run_at += blocks.div_ceil(BLOCK);
    }
    let params = Params {
        max_norm,
        ..Default::default()
    };
    let params = gpu.uniform("clip params", &params);
    let bounds = gpu.upload("clip group bounds", &bounds);
    let finish = gpu.pipeline_entry("adamw", SOURCE, "clip", &[]);
    let bind = gpu.bind_at(&finish, &[(0, &params), (2, &partials), (3, &clip), (7, &bounds)]);
    gpu.run(encoder, "grad_clip", &finish, &bind, (groups.len() as u32, 1, 1));
    Ok(clip)
}

/// Records the sums of squares of `grad`'s first `len` elements in blocks of `CLIP_BLOCK`
/// (each in element order), the partial sums `record_clip` adds: a buffer of
/// `len.div_ceil(CLIP_BLOCK)` values (for a norm over buffers on several devices, added on
/// the host).
pub fn record_sum_squares(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    grad: &wgpu::Buffer,
    len: u64,
) -> Result<wgpu::Buffer> {
    check_buffer(gpu, "gradient", grad, len)?;
    let blocks = len.div_ceil(BLOCK);
    if blocks == 0 || blocks > u32::MAX as u64 / 2 {
        return Err(Error::Config(format!("sum of squares: {len} elements")));
    }
    let partials = gpu.storage("grad norm partials", blocks * 4);
    let params = Params {
        len: len as u32,
        row_len: 0,
        partial_offset: 0,
        ..Default::default()
    };
    let params = gpu.uniform("sum squares params", &params);
    let sum = gpu.pipeline_entry("adamw", SOURCE, "sum_squares", &[]);
    let bind = gpu.bind_at(&sum, &[(0, &params), (1, grad), (9, grad), (2, &partials)]);
    let (x, y) = grid((blocks as u32).div_ceil(64));
    gpu.run(encoder, "grad_sum_squares", &sum, &bind, (x, y, 1));
    Ok(partials)
}

/// A parameter with its AdamW moments.
pub struct AdamWState<'a> {
    pub param: &'a wgpu::Buffer,
    pub m: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
}

/// Records AdamW on all `len` elements of `state` with gradient `grad` times its group's clip factor.
pub fn record_dense_step(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    state: &AdamWState,
    grad: &wgpu::Buffer,
    len: u64,
    clip: Clip,
    step: AdamWStep,
) -> Result<()> {
    if len == 0 || len > u32::MAX as u64 {
        return Err(Error::Config(format!("adamw: {len} elements")));
    }
    for (name, b) in [
        ("param", state.param),
        ("adam m", state.m),
        ("adam v", state.v),
        ("grad", grad),
    ] {
        check_buffer(gpu, name, b, len)?;
    }
    let params = Params {
        len: len as u32,
        clip_index: clip.group,
        ..step.params()
    };
    let params = gpu.uniform("adamw params", &params);
    // Four elements an invocation where the length allows (the same bits).
    // The bindings of grad, param, m and v in each entry point.
    let (entry, [g, x, m, v], per_invocation) = match len.is_multiple_of(4) {
        true => ("dense_step_vec4", [10, 11, 12, 13], 4),
        false => ("dense_step", [1, 4, 5, 6], 1),
    };
    let pipeline = gpu.pipeline_entry("adamw", SOURCE, entry, &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[
            (0, &params),
            (g, grad),
            (3, clip.factors),
            (x, state.param),
            (m, state.m),
            (v, state.v),
        ],
    );
    let (x, y) = grid((len as u32).div_ceil(64 * per_invocation));
    gpu.run(encoder, "adamw", &pipeline, &bind, (x, y, 1));
    Ok(())
}

/// Records AdamW on the rows that `grad` lists only (lazy: other rows and their moments are
/// left as they are), for a table of rows of `grad.v_dim` in `state`.
pub fn record_sparse_step(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    state: &AdamWState,
    table_rows: u64,
    grad: &SparseRows,
    clip: Clip,
    step: AdamWStep,
) -> Result<()> {
    let n = table_rows * grad.v_dim as u64;
    for (name, b) in [("param", state.param), ("adam m", state.m), ("adam v", state.v)] {
        check_buffer(gpu, name, b, n)?;
    }
    check_loop_budget("adamw rows", (grad.v_dim as u64).div_ceil(64), "v_dim")?;
    let params = Params {
        len: grad.capacity,
        row_len: grad.v_dim,
        clip_index: clip.group,
        ..step.params()
    };
    let params = gpu.uniform("adamw sparse params", &params);
    let pipeline = gpu.pipeline_entry("adamw", SOURCE, "sparse_step", &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[
            (0, &params),
            (1, &grad.rows),
            (3, clip.factors),
            (4, state.param),
            (5, state.m),
            (6, state.v),
            (7, &grad.slots),
            (8, &grad.count),
        ],
    );
    let (x, y) = grid(grad.capacity);
    gpu.run(encoder, "adamw_rows", &pipeline, &bind, (x, y, 1));
    Ok(())
}

/// Records AdamW on the rows of a `[rows, row_len]` table whose `mask` entry (u32) is set,
/// from the dense gradient `grad`; other rows and their moments are left as they are.
#[allow(clippy::too_many_arguments)]
pub fn record_masked_step(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    state: &AdamWState,
    grad: &wgpu::Buffer,
    mask: &wgpu::Buffer,
    (rows, row_len): (u32, u32),
    clip: Clip,
    step: AdamWStep,
) -> Result<()> {
    let n = rows as u64 * row_len as u64;
    for (name, b) in [
        ("param", state.param),
        ("adam m", state.m),
        ("adam v", state.v),
        ("grad", grad),
    ] {
        check_buffer(gpu, name, b, n)?;
    }
    check_buffer(gpu, "row mask", mask, rows as u64)?;
    check_loop_budget("adamw rows", (row_len as u64).div_ceil(64), "row length")?;
    let params = Params {
        len: rows,
        row_len,
        clip_index: clip.group,
        ..step.params()
    };
    let params = gpu.uniform("adamw masked params", &params);
    let pipeline = gpu.pipeline_entry("adamw", SOURCE, "masked_step", &[]);
    let bind = gpu.bind_at(
        &pipeline,
        &[
            (0, &params),
            (1, grad),
            (3, clip.factors),
            (4, state.param),
            (5, state.m),
            (6, state.v),
            (7, mask),
        ],
    );
    let (x, y) = grid(rows);
    gpu.run(encoder, "adamw_masked_rows", &pipeline, &bind, (x, y, 1));
    Ok(())
}
