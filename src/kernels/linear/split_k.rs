//! Split-K: a product with few output tiles (weight gradients such as dW = dY^T X: a small
//! output and a reduction over every row) splits its reduction into k ranges computed by
//! separate workgroups, one batched product of partial sums, then sums the partials in order
//! (`linear.wgsl`'s `reduce_split`). Reductions longer than one dispatch's loop budget split
//! always.

use super::flags::Flags;
use super::{max_k_per_dispatch, Batched, GemmKernel, Linear, Params, SOURCE};
use crate::error::Result;
use crate::gpu::MAX_GRID_DIM;
use crate::kernels::{check_buffer, Gpu};

/// Output tile edge that split-K counts tiles in, and `reduce_split`'s workgroup width.
const TILE: u32 = 64;
/// Split until about this many workgroups run (one workgroup would do all the work on one
/// core or SM).
const TARGET_WORKGROUPS: u32 = 64;
/// The shortest k range worth a workgroup of its own.
const MIN_K: u32 = 256;

/// How many k ranges `lin`'s reduction is split into (1: not split). Only single products
/// without bias or gate split.
pub(super) fn splits(lin: &Linear, gpu: &Gpu, kernel: GemmKernel) -> u32 {
    let l = lin.layout();
    if l.batch != 1 || lin.bias.is_some() || lin.gate.is_some() || lin.m > MAX_GRID_DIM {
        return 1;
    }
    let tiles = lin.m.div_ceil(TILE) * lin.n.div_ceil(TILE);
    let for_parallelism = if gpu.tuning().split_k {
        (TARGET_WORKGROUPS / tiles).min(lin.k / MIN_K)
    } else {
        1
    };
    for_parallelism
        .max(lin.k.div_ceil(max_k_per_dispatch(kernel)))
        .max(1)
}

/// Records `lin` as `splits` partial products on `kernel` and their ordered sum.
pub(super) fn record(
    lin: &Linear,
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    kernel: GemmKernel,
    splits: u32,
) -> Result<()> {
    let l = lin.layout();
    lin.check_f16_output(&l)?;
    let y_elems = l.y_offset as u64 + (lin.m as u64 - 1) * l.y_row as u64 + lin.n as u64;
    check_buffer(
        gpu,
        "linear.y",
        lin.y,
        if lin.y_f16 { y_elems.div_ceil(2) } else { y_elems },
    )?;
    // `full` ranges of `chunk` k values as one batched product, then the remainder.
    let chunk = lin.k.div_ceil(splits);
    let full = lin.k / chunk;
    let rest = lin.k - full * chunk;
    let parts = full + (rest > 0) as u32;
    let mn = lin.m * lin.n;
    let partial = gpu.storage("linear split-k partials", parts as u64 * mn as u64 * 4);
    let part = |batch: u32, k: u32, skip: u32, y_offset: u32| Linear {
        w_format: lin.w_format,
        x_f16: lin.x_f16,
        batched: Some(Batched {
            batch,
            x_offset: l.x_offset + skip * l.x_k,
            x_batch: chunk * l.x_k,
            w_offset: l.w_offset + skip * l.w_k,
            w_batch: chunk * l.w_k,
            y_offset,
            y_batch: mn,
            y_row: lin.n,
            ..l
        }),
        ..Linear::new(lin.label, lin.x, lin.w, &partial, (lin.m, lin.n, k))
    };
    part(full, chunk, 0, 0).record_unsplit(gpu, encoder, kernel)?;
    if rest > 0 {
        part(1, rest, full * chunk, full * mn).record_unsplit(gpu, encoder, kernel)?;
    }
    let pipeline = gpu.pipeline_entry("linear_reduce_split", SOURCE, "reduce_split", &[]);
    let params = gpu.uniform(
        "linear split-k params",
        &Params {
            m: lin.m,
            n: lin.n,
            k_len: parts,
            flags: Flags::default()
                .with(Flags::ACCUMULATE, lin.accumulate)
                .with(Flags::Y_F16, lin.y_f16)
                .bits(),
            y_offset: l.y_offset,
            y_row: l.y_row,
            ..bytemuck::Zeroable::zeroed()
        },
    );
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, &partial), (5, lin.y)]);
    let per_workgroup = if lin.y_f16 { 2 * TILE } else { TILE };
    gpu.run(
        encoder,
        lin.label,
        &pipeline,
        &bind,
        (lin.n.div_ceil(per_workgroup), lin.m, 1),
    );
    Ok(())
}
