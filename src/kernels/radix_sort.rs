//! `radix_sort.wgsl`: a stable sort of (key, value) u32 pairs by key, and an exclusive scan.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/radix_sort.wgsl");
const BLOCK: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    num_blocks: u32,
    shift: u32,
    _pad: u32,
}

/// Sorted pairs (buffers of `n` u32 each).
pub struct SortedPairs {
    pub keys: wgpu::Buffer,
    pub values: wgpu::Buffer,
}

/// Records an exclusive prefix sum of `data[0, n)` in place; the sum of all goes to
/// `total[0]`. One workgroup, fixed order.
pub fn record_scan(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    data: &wgpu::Buffer,
    n: u32,
    total: &wgpu::Buffer,
) -> Result<()> {
    if n == 0 {
        return Err(Error::Config("scan: empty".into()));
    }
    check_buffer(gpu, "scan.data", data, n as u64)?;
    check_buffer(gpu, "scan.total", total, 1)?;
    check_loop_budget("scan", 2 * (n as u64).div_ceil(64) + 64, &format!("{n} elements"))?;
    let pipeline = gpu.pipeline_entry("radix_sort", SOURCE, "scan", &[]);
    let params = gpu.uniform(
        "scan params",
        &Params {
            n,
            num_blocks: 0,
            shift: 0,
            _pad: 0,
        },
    );
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (3, data), (6, total)]);
    gpu.run(encoder, "scan", &pipeline, &bind, (1, 1, 1));
    Ok(())
}

/// Records a stable sort of `n` pairs by the low `key_bits` bits of their keys (keys must
/// be below `2^key_bits`). The inputs are left as they are.
pub fn record_sort(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    keys: &wgpu::Buffer,
    values: &wgpu::Buffer,
    n: u32,
    key_bits: u32,
) -> Result<SortedPairs> {
    if n == 0 || key_bits > 32 {
        return Err(Error::Config(format!("sort: n = {n}, key_bits = {key_bits}")));
    }
    check_buffer(gpu, "sort.keys", keys, n as u64)?;
    check_buffer(gpu, "sort.values", values, n as u64)?;
    let num_blocks = n.div_ceil(BLOCK);
    // CPU adapters: an invocation per block (`*_serial`), 8 blocks a workgroup.
    let serial = gpu.tuning().sort_per_invocation;
    let (histogram, scatter, groups) = match serial {
        true => ("histogram_serial", "scatter_serial", num_blocks.div_ceil(8)),
        false => ("histogram", "scatter", num_blocks),
    };
    let histogram = gpu.pipeline_entry("radix_sort", SOURCE, histogram, &[]);
    let scatter = gpu.pipeline_entry("radix_sort", SOURCE, scatter, &[]);
    let counts = gpu.storage("sort counts", 256 * num_blocks as u64 * 4);
    let total = gpu.storage("sort total", 4);
    let bufs = [
        SortedPairs {
            keys: gpu.storage("sorted keys", n as u64 * 4),
            values: gpu.storage("sorted values", n as u64 * 4),
        },
        SortedPairs {
            keys: gpu.storage("sorted keys", n as u64 * 4),
            values: gpu.storage("sorted values", n as u64 * 4),
        },
    ];
    let passes = key_bits.div_ceil(8).max(1);
    let (x, y) = grid(groups);
    for pass_index in 0..passes {
        let (src_keys, src_values) = if pass_index == 0 {
            (keys, values)
        } else {
            let s = &bufs[(pass_index as usize + 1) % 2];
            (&s.keys, &s.values)
        };
        let dst = &bufs[pass_index as usize % 2];
        let params = gpu.uniform(
            "sort params",
            &Params {
                n,
                num_blocks,
                shift: 8 * pass_index,
                _pad: 0,
            },
        );
        let hist_bind = gpu.bind_at(&histogram, &[(0, &params), (1, src_keys), (3, &counts)]);
        {
            gpu.run(encoder, "sort_histogram", &histogram, &hist_bind, (x, y, 1));
        }
        record_scan(gpu, encoder, &counts, 256 * num_blocks, &total)?;
        let scatter_bind = gpu.bind_at(
            &scatter,
            &[
                (0, &params),
                (1, src_keys),
                (2, src_values),
                (3, &counts),
                (4, &dst.keys),
                (5, &dst.values),
            ],
        );
        gpu.run(encoder, "sort_scatter", &scatter, &scatter_bind, (x, y, 1));
    }
    let [a, b] = bufs;
    Ok(if passes % 2 == 1 { a } else { b })
}
