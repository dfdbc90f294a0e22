//! `embedding_grad.wgsl`: the gradient of an embedding lookup over a small vocabulary (each
//! id's rows of the output gradient summed in row order), with no sort and no atomics.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::MAX_GRID_DIM;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/embedding_grad.wgsl");

/// Ids per workgroup (`embedding_grad.wgsl`'s IDS).
const IDS: u32 = 32;
/// Columns per workgroup.
const COLUMNS: u32 = 64;

/// Records `grad [vocab, dim]` (every element written): row `v` is the sum, in row order, of
/// the rows of `dy [rows, dim]` whose id in `ids [rows]` (u32) is `v`. Each invocation walks
/// all `rows`, so this suits batches of a few thousand rows; longer ones take the sort.
pub fn record_embedding_grad(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    ids: &wgpu::Buffer,
    dy: &wgpu::Buffer,
    grad: &wgpu::Buffer,
    (rows, vocab, dim): (u32, u32, u32),
) -> Result<()> {
    if rows == 0 || vocab == 0 || dim == 0 {
        return Err(Error::Config(format!(
            "embedding gradient: empty shape {rows} rows, vocabulary {vocab}, dim {dim}"
        )));
    }
    let (x, y) = (vocab.div_ceil(IDS), dim.div_ceil(COLUMNS));
    if x > MAX_GRID_DIM || y > MAX_GRID_DIM {
        return Err(Error::Config(format!(
            "embedding gradient: vocabulary {vocab} x dim {dim} exceeds one dispatch"
        )));
    }
    check_loop_budget(
        "embedding gradient",
        rows as u64 + 2 * IDS as u64,
        "the batch's rows",
    )?;
    check_buffer(gpu, "embedding gradient ids", ids, rows as u64)?;
    check_buffer(gpu, "embedding gradient dy", dy, rows as u64 * dim as u64)?;
    check_buffer(gpu, "embedding gradient", grad, vocab as u64 * dim as u64)?;
    let params = gpu.uniform("embedding gradient params", &[rows, vocab, dim, 0]);
    let pipeline = gpu.pipeline("embedding_grad", SOURCE, &[]);
    let bind = gpu.bind(&pipeline, &[&params, ids, dy, grad]);
    gpu.run(encoder, "embedding_grad", &pipeline, &bind, (x, y, 1));
    Ok(())
}
