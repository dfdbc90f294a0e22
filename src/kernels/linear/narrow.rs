//! `linear_narrow.wgsl`: one invocation per output column, for products of at most 4 rows
//! (decoding a token at a time) on CPU adapters, where the other kernels' 32- and 64-row
//! blocks would leave all but one row idle.

use super::flags::Flags;
use super::{vec4_view, Batched, Bindings, Linear, Variant, WeightFormat};
use crate::error::{Error, Result};
use crate::kernels::{Gpu, LOOP_BUDGET};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_narrow.wgsl")
);

/// Loop iterations per invocation.
pub(super) const fn iterations(k: u32) -> u64 {
    k as u64 / 4 * 5 + 16
}

/// The longest k range one dispatch may reduce within the loop budget.
pub(super) const fn max_k() -> u32 {
    ((LOOP_BUDGET as u32 - 16) / 5) * 4
}

/// Invocations per workgroup: 64, or 8 where 64 would leave fewer than 16 workgroups. A CPU
/// adapter runs a workgroup's SIMD batches on one thread, so the column sums of narrow
/// products (a norm's or bias's weight gradient: 32 columns over 1,536 rows) spread over the
/// cores only in small workgroups.
fn workgroup(n: u32, batch: u32) -> u32 {
    if n.div_ceil(64) * batch >= 16 {
        64
    } else {
        8
    }
}

pub(super) fn prepare(lin: &Linear, gpu: &Gpu, l: &Batched) -> Result<Variant> {
    if lin.m > 4 {
        return Err(Error::Config(format!(
            "linear: the narrow kernel takes at most 4 rows, not {}",
            lin.m
        )));
    }
    // f16 weights: 8 values a 16-byte load; q8 weights: 16 values (half a scale's group).
    let rows_aligned = |values_per_load: u32| {
        let aligned = |v: u32| v.is_multiple_of(values_per_load);
        aligned(l.w_offset) && aligned(l.w_batch) && aligned(l.w_row) && l.w_k == 1 && lin.w.size() >= 16
    };
    let w_quads = match lin.w_format {
        WeightFormat::F32 => super::tiled::quad_mode(lin.w, l.w_offset, l.w_batch, l.w_row, l.w_k),
        WeightFormat::F16 => 3 * rows_aligned(8) as u32,
        WeightFormat::Q8 { .. } => 3 * rows_aligned(16) as u32,
    };
    let wg = workgroup(lin.n, l.batch);
    let mut constants = lin.with_formats(vec![("WG", wg as f64)]);
    if lin.m == 1 {
        constants.push(("ONE_ROW", 1.0));
    }
    Ok(Variant {
        pipeline: gpu.pipeline("linear_narrow", SOURCE, &constants),
        grid: (lin.n.div_ceil(wg), 1),
        quads: Flags::quads(0, w_quads),
    })
}

/// The plain bindings plus the weights' vec4 view (`vec4_view`).
pub(super) fn bind(
    lin: &Linear,
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    b: &Bindings,
) -> wgpu::BindGroup {
    let w4 = vec4_view(gpu, lin.w);
    gpu.bind_at(
        pipeline,
        &[
            (0, b.params),
            (1, lin.x),
            (2, lin.w),
            (3, b.bias),
            (4, b.gate),
            (5, lin.y),
            (6, b.keep),
            (8, w4),
        ],
    )
}
