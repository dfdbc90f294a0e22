//! `columns.wgsl`: a block of columns copied from one row-major matrix into another (a
//! sharded table's bag joined from its column shards, a gradient's columns taken out for a
//! shard).

use super::check_buffer;
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/columns.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    src_stride: u32,
    src_first: u32,
    dst_stride: u32,
    dst_first: u32,
    _pad: [u32; 2],
}

/// Columns `[first, first + width)` of a row-major matrix whose rows are `stride` words.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub stride: u32,
    pub first: u32,
}

impl Columns<'_> {
    /// Words a matrix of `rows` rows needs for these columns to exist.
    fn words(&self, rows: u32, width: u32) -> Result<u64> {
        if self.first as u64 + width as u64 > self.stride as u64 {
            return Err(Error::Config(format!(
                "columns {}..{} of rows {} wide",
                self.first,
                self.first as u64 + width as u64,
                self.stride
            )));
        }
        Ok(rows.saturating_sub(1) as u64 * self.stride as u64 + self.first as u64 + width as u64)
    }
}

/// Records `dst[r, dst.first + c] = src[r, src.first + c]` for `r < rows`, `c < width`
/// (32-bit words, copied bit for bit). The two matrices must be different buffers.
pub fn record_copy(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    src: Columns,
    dst: Columns,
    (rows, width): (u32, u32),
) -> Result<()> {
    let words = rows as u64 * width as u64;
    if words == 0 {
        return Ok(());
    }
    if words > u32::MAX as u64 {
        return Err(Error::Config(format!(
            "copy columns: {rows} rows of {width} columns exceed 2^32 words"
        )));
    }
    check_buffer(gpu, "columns.src", src.buffer, src.words(rows, width)?)?;
    check_buffer(gpu, "columns.dst", dst.buffer, dst.words(rows, width)?)?;
    let params = Params {
        rows,
        width,
        src_stride: src.stride,
        src_first: src.first,
        dst_stride: dst.stride,
        dst_first: dst.first,
        _pad: [0; 2],
    };
    let params = gpu.uniform("columns params", &params);
    let pipeline = gpu.pipeline_entry("columns", SOURCE, "copy_columns", &[]);
    let bind = gpu.bind(&pipeline, &[&params, src.buffer, dst.buffer]);
    let (x, y) = grid((words as u32).div_ceil(64));
    gpu.run(encoder, "copy_columns", &pipeline, &bind, (x, y, 1));
    Ok(())
}

/// The CPU reference of `record_copy`, on host slices.
pub fn copy_reference(
    src: &[f32],
    (src_stride, src_first): (usize, usize),
    dst: &mut [f32],
    (dst_stride, dst_first): (usize, usize),
    (rows, width): (usize, usize),
) {
    for r in 0..rows {
        let from = r * src_stride + src_first;
        let to = r * dst_stride + dst_first;
        dst[to..to + width].copy_from_slice(&src[from..from + width]);
    }
}
