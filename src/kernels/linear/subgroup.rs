//! `linear_subgroup.wgsl`: 32 rows x 4 columns an invocation, the rows of x shared through
//! subgroup broadcasts (subgroups of 8 or more lanes), no workgroup memory: the kernel of CPU
//! adapters, which run a subgroup as one SIMD stream.

use super::flags::Flags;
use super::{Linear, Variant};
use crate::kernels::{Gpu, LOOP_BUDGET};

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_subgroup.wgsl")
);

/// Rows, and columns, per invocation.
pub(super) const ROWS: u32 = 32;
pub(super) const COLUMNS: u32 = 4;

/// Loop iterations per invocation: 17 per 8 k values, plus the stores.
pub(super) const fn iterations(k: u32) -> u64 {
    k.div_ceil(8) as u64 * 17 + 64
}

/// The longest k range one dispatch may reduce within the loop budget.
pub(super) const fn max_k() -> u32 {
    ((LOOP_BUDGET as u32 - 64) / 17) * 8
}

/// Invocations per workgroup for `n` output columns: of 8, 16, 32 and 64 (a workgroup covers
/// 4 columns an invocation), the largest that computes the fewest columns past n. Lanes past
/// the last column compute on zeros, so 96 columns take three workgroups of 8, not one of 32
/// with a quarter idle.
fn workgroup(n: u32) -> u32 {
    let computed = |wg: u32| n.div_ceil(wg * COLUMNS) * wg * COLUMNS;
    [64, 32, 16, 8]
        .into_iter()
        .min_by_key(|&wg| computed(wg))
        .unwrap_or(8)
}

/// 8 to 64 invocations per workgroup (fewer for narrow outputs, so that small products still
/// spread over the cores; a power of two, so few pipelines get compiled, and at least 8, the
/// lanes that share x).
pub(super) fn prepare(lin: &Linear, gpu: &Gpu, batch: u32) -> Variant {
    let wg = workgroup(lin.n);
    let column_blocks = lin.n.div_ceil(wg * COLUMNS);
    // A product that 32-row blocks would leave in one workgroup (on one core) takes 16-row
    // blocks.
    let rows = match column_blocks * lin.m.div_ceil(ROWS) * batch {
        1 => ROWS / 2,
        _ => ROWS,
    };
    let mut constants = lin.with_formats(vec![("WG", wg as f64)]);
    if rows != ROWS {
        constants.push(("ROWS", rows as f64));
    }
    if lin.y_f16 {
        constants.push(("PAIRED", 1.0));
    }
    Variant {
        pipeline: gpu.pipeline(
            "linear_subgroup",
            &crate::kernels::with_subgroups(SOURCE),
            &constants,
        ),
        grid: (column_blocks, lin.m.div_ceil(rows)),
        quads: Flags::default(),
    }
}
