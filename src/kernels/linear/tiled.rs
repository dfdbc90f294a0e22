//! `linear.wgsl`: the register-tiled GEMM with a tile shape (`GemmTile`), double-buffered
//! workgroup stages, and 16-byte loads of operands laid out for them.

use super::flags::Flags;
use super::{vec4_view, Batched, Bindings, GemmTile, Linear, Variant, WeightFormat};
use crate::kernels::{Gpu, LOOP_BUDGET};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear.wgsl")
);

/// Loop iterations per invocation, from above: per stage of `depth` k values, each quad's
/// load and store (a loop of 4 each), and the multiply loop; then the stores.
pub(super) const fn iterations(tile: GemmTile, k: u32) -> u64 {
    let quads = 2 * tile.depth / tile.wg_n + 2 * tile.depth / tile.wg_m;
    let per_stage = 10 * quads + tile.depth + 1;
    (k.div_ceil(tile.depth) + 1) as u64 * per_stage as u64 + 64
}

/// The longest k range one dispatch may reduce within the loop budget.
pub(super) const fn max_k(tile: GemmTile) -> u32 {
    let quads = 2 * tile.depth / tile.wg_n + 2 * tile.depth / tile.wg_m;
    let per_stage = 10 * quads + tile.depth + 1;
    ((LOOP_BUDGET as u32 - 64) / per_stage - 1) * tile.depth
}

/// How an operand's quads are loaded (`linear.wgsl`'s QUAD_*): one 16-byte load where the
/// operand runs contiguously along k (1) or along its rows (2) and every offset is a multiple
/// of 4 elements, else element by element (0). The vec4 view of a buffer needs at least 16
/// bytes.
pub(super) fn quad_mode(buffer: &wgpu::Buffer, offset: u32, batch: u32, row: u32, k: u32) -> u32 {
    let aligned = |v: u32| v.is_multiple_of(4);
    if buffer.size() < 16 || !aligned(offset) || !aligned(batch) {
        0
    } else if k == 1 && aligned(row) {
        1
    } else if row == 1 && aligned(k) {
        2
    } else {
        0
    }
}

pub(super) fn prepare(lin: &Linear, gpu: &Gpu, l: &Batched, tile: GemmTile) -> Variant {
    // f16 weights load element by element; q8 weights a word of 4 along k (one scale).
    let w_quads = match lin.w_format {
        WeightFormat::F16 => 0,
        WeightFormat::F32 => quad_mode(lin.w, l.w_offset, l.w_batch, l.w_row, l.w_k),
        WeightFormat::Q8 { .. } => match quad_mode(lin.w, l.w_offset, l.w_batch, l.w_row, l.w_k) {
            1 => 1,
            _ => 0,
        },
    };
    let x_quads = if lin.x_f16 {
        0
    } else {
        quad_mode(lin.x, l.x_offset, l.x_batch, l.x_row, l.x_k)
    };
    let constants = lin.with_formats(vec![
        ("WG_M", tile.wg_m as f64),
        ("WG_N", tile.wg_n as f64),
        ("TK", tile.depth as f64),
    ]);
    Variant {
        pipeline: gpu.pipeline("linear", SOURCE, &constants),
        grid: (lin.n.div_ceil(tile.columns()), lin.m.div_ceil(tile.rows())),
        quads: Flags::quads(x_quads, w_quads),
    }
}

/// The plain bindings plus the operands' vec4 views (`vec4_view`).
pub(super) fn bind(
    lin: &Linear,
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    b: &Bindings,
) -> wgpu::BindGroup {
    let (x4, w4) = (vec4_view(gpu, lin.x), vec4_view(gpu, lin.w));
    gpu.bind(
        pipeline,
        &[b.params, lin.x, lin.w, b.bias, b.gate, lin.y, b.keep, x4, w4],
    )
}
