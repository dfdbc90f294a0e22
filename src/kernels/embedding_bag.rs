//! `embedding_bag.wgsl`: out[r] = sum_j weights[r, j] * V[indices[r, j]] over a value table
//! stored as f32 or packed f16 and split across any number of buffers (four per dispatch).

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/embedding_bag.wgsl");

/// Table buffers one dispatch binds; larger tables take one dispatch per four buffers.
pub const CHUNKS_PER_DISPATCH: usize = 4;
/// Buffers a table may be split across.
pub const MAX_CHUNKS: usize = 64;
/// Largest bag (heads * knn) the kernel's workgroup arrays hold.
pub const MAX_BAG: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    bag: u32,
    v_dim: u32,
    row_words: u32,
    rows_per_chunk: u32,
    f16_values: u32,
    first_row: u32,
    accumulate: u32,
}

/// How a value table is laid out on the GPU: rows of `row_words` u32 words, `rows_per_chunk`
/// rows per buffer.
pub struct ValueChunks<'a> {
    pub buffers: &'a [wgpu::Buffer],
    pub n_rows: u32,
    pub v_dim: u32,
    pub f16: bool,
    pub rows_per_chunk: u32,
}

impl ValueChunks<'_> {
    /// u32 words per row: one per f32, one per pair of f16 (rows padded to whole words).
    pub fn row_words(v_dim: u32, f16: bool) -> u32 {
        if f16 {
            v_dim.div_ceil(2)
        } else {
            v_dim
        }
    }
}

/// `indices`, `weights`: `[rows, bag]`; `out`: `[rows, v_dim]` f32.
pub struct EmbeddingBag<'a> {
    pub rows: u32,
    pub bag: u32,
    pub indices: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    pub values: &'a ValueChunks<'a>,
    pub out: &'a wgpu::Buffer,
    /// Invocations per workgroup; `None` takes the adapter's tuning. Results do not depend on it.
    pub workgroup_size: Option<u32>,
    /// 16-byte columns per invocation where rows are whole 16-byte words: 4 (`main_vec4`),
    /// 1 (`main_column`), or `WHOLE_ROW` (`main_rows`, rows of at most `ROW_QUADS` 16-byte
    /// words); `None` takes the adapter's tuning. Results do not depend on it.
    pub columns_per_invocation: Option<u32>,
}

/// `columns_per_invocation` for one token row per invocation (`main_rows`).
pub const WHOLE_ROW: u32 = 0;
/// Most 16-byte words in a value row that `main_rows` takes (its `ROW_QUADS`): 64 f32 or
/// 128 f16 values.
pub const ROW_QUADS: u32 = 16;

impl EmbeddingBag<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let v = self.values;
        if self.rows == 0 || self.bag == 0 || v.v_dim == 0 {
            return Err(Error::Config("embedding bag: empty shape".into()));
        }
        if self.bag > MAX_BAG {
            return Err(Error::Config(format!(
                "heads * knn must be at most {MAX_BAG}, found {}",
                self.bag
            )));
        }
        if v.buffers.is_empty() || v.buffers.len() > MAX_CHUNKS {
            return Err(Error::Config(format!(
                "value table must be in 1..={MAX_CHUNKS} buffers, found {}",
                v.buffers.len()
            )));
        }
        let row_words = ValueChunks::row_words(v.v_dim, v.f16);
        if v.rows_per_chunk as u64 * row_words as u64 > 1 << 29 {
            return Err(Error::Config(format!(
                "value buffers hold at most 2^29 words (2 GiB); {} rows of {row_words} words is more",
                v.rows_per_chunk
            )));
        }
        let (rows, bag) = (self.rows as u64, self.bag as u64);
        check_buffer(gpu, "bag.indices", self.indices, rows * bag)?;
        check_buffer(gpu, "bag.weights", self.weights, rows * bag)?;
        check_buffer(gpu, "bag.out", self.out, rows * v.v_dim as u64)?;
        for (i, b) in v.buffers.iter().enumerate() {
            let chunk_rows = (v.n_rows - (i as u32 * v.rows_per_chunk).min(v.n_rows)).min(v.rows_per_chunk);
            check_buffer(gpu, "values.weight", b, chunk_rows as u64 * row_words as u64)?;
        }
        // 16-byte loads when every row is a whole number of them (see the WGSL header).
        let vec4 = if v.f16 {
            v.v_dim.is_multiple_of(8)
        } else {
            v.v_dim.is_multiple_of(4)
        };
        let quads = row_words / 4;
        let tuning = gpu.tuning();
        let per_invocation =
            self.columns_per_invocation
                .unwrap_or(if tuning.bag_rows && vec4 && quads <= ROW_QUADS {
                    WHOLE_ROW
                } else {
                    tuning.bag_columns_per_invocation
                });
        let entry = match (vec4, per_invocation) {
            (false, _) => "main",
            (true, WHOLE_ROW) if quads <= ROW_QUADS => "main_rows",
            (true, WHOLE_ROW) => {
                return Err(Error::Config(format!(
                    "embedding bag: one row per invocation takes rows of at most {ROW_QUADS} 16-byte words, \
found {quads}"
                )))
            }
            (true, 4) => "main_vec4",
            (true, 1) => "main_column",
            (true, n) => {
                return Err(Error::Config(format!(
                    "embedding bag: {n} columns per invocation; 1 or 4 are implemented"
                )))
            }
        };
        // The adapter's workgroup size, except for `main_vec4` (CPU adapters), whose workgroup
        // spans one whole row where it can, up to 64 invocations (a 4 KiB f32 row: one core
        // then reads all of a random row while its lines are in its cache), and never wider
        // than the row (the rest would compute on column 0 and store nothing). GPU variants
        // keep their size: there the workgroup also shares loading the bag.
        let wg = self.workgroup_size.unwrap_or(if entry == "main_vec4" {
            quads.div_ceil(4).next_power_of_two().clamp(8, 64)
        } else {
            tuning.bag_workgroup
        });
        if !(1..=256).contains(&wg) {
            return Err(Error::Config(format!(
                "embedding bag: workgroup size {wg} not in 1..=256"
            )));
        }
        let cap = self.bag.next_power_of_two().clamp(16, MAX_BAG);
        let pipeline = gpu.pipeline_entry(
            "embedding_bag",
            SOURCE,
            entry,
            &[("WG", wg as f64), ("BAG_CAP", cap as f64)],
        );
        let binds: Vec<wgpu::BindGroup> = (0..v.buffers.len().div_ceil(CHUNKS_PER_DISPATCH))
            .map(|d| {
                let first = d * CHUNKS_PER_DISPATCH;
                let params = gpu.uniform(
                    "bag params",
                    &Params {
                        rows: self.rows,
                        bag: self.bag,
                        v_dim: v.v_dim,
                        row_words,
                        rows_per_chunk: v.rows_per_chunk,
                        f16_values: v.f16 as u32,
                        first_row: first as u32 * v.rows_per_chunk,
                        accumulate: (d > 0) as u32,
                    },
                );
                // Past the table's end, bind its last buffer again; no slot selects it.
                let chunk = |i: usize| &v.buffers[(first + i).min(v.buffers.len() - 1)];
                let (i, w, o) = (self.indices, self.weights, self.out);
                gpu.bind(
                    &pipeline,
                    &[&params, i, w, o, chunk(0), chunk(1), chunk(2), chunk(3)],
                )
            })
            .collect();
        let rows_per_invocation = entry == "main_rows";
        let columns_per_block = if vec4 { per_invocation.max(1) * wg } else { wg };
        let columns = if vec4 { row_words / 4 } else { row_words };
        let blocks = if rows_per_invocation {
            1
        } else {
            columns.div_ceil(columns_per_block)
        };
        if blocks > crate::gpu::MAX_GRID_DIM {
            return Err(Error::Config(format!(
                "embedding bag: v_dim {} needs too many column blocks",
                v.v_dim
            )));
        }
        // load_bag's share of the bag, then one pass over the whole bag.
        let iterations = if rows_per_invocation {
            self.bag as u64 * (1 + quads as u64) + 2 * quads as u64 * 2
        } else {
            self.bag.div_ceil(wg) as u64 + self.bag as u64
        };
        check_loop_budget("embedding bag", iterations, "the bag")?;
        let (x, y) = grid(if rows_per_invocation {
            self.rows.div_ceil(wg)
        } else {
            self.rows
        });
        // Column blocks in x, the fastest-varying dimension; rows in y and z (see the shader).
        gpu.run_each(encoder, "embedding_bag", &pipeline, &binds, (blocks, x, y));
        Ok(())
    }
}

/// Backward of the bag's weights: `grad_weights[r, j] = <dy[r, :], V[indices[r, j], :]>`,
/// `indices` and `grad_weights` `[rows, bag]`, `dy` `[rows, v_dim]`.
pub struct WeightGrads<'a> {
    pub rows: u32,
    pub bag: u32,
    pub indices: &'a wgpu::Buffer,
    pub values: &'a ValueChunks<'a>,
    pub dy: &'a wgpu::Buffer,
    pub grad_weights: &'a wgpu::Buffer,
    /// `grad_weights` already holds each entry's dot over columns that come before these
    /// (a column shard's predecessors): the sum goes on from it in the same order, so a dot
    /// taken shard after shard has the bits of one taken over the whole row.
    pub continues: bool,
}

impl WeightGrads<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let v = self.values;
        let entries = self.rows as u64 * self.bag as u64;
        if entries == 0 || entries > u32::MAX as u64 {
            return Err(Error::Config(format!("bag weight gradients: {entries} entries")));
        }
        let row_words = ValueChunks::row_words(v.v_dim, v.f16);
        check_buffer(gpu, "bag.indices", self.indices, entries)?;
        check_buffer(gpu, "bag.grad_weights", self.grad_weights, entries)?;
        check_buffer(gpu, "bag.dy", self.dy, self.rows as u64 * v.v_dim as u64)?;
        check_loop_budget("bag weight gradients", v.v_dim as u64, "v_dim")?;
        // f32 rows of whole 16-byte words: 16-byte loads (`weight_grads_vec4`).
        let vec4 = !v.f16 && v.v_dim.is_multiple_of(4);
        let entry = if vec4 { "weight_grads_vec4" } else { "weight_grads" };
        let pipeline = gpu.pipeline_entry("embedding_bag", SOURCE, entry, &[]);
        let (x, y) = grid((entries as u32).div_ceil(64));
        let binds: Vec<wgpu::BindGroup> = (0..v.buffers.len().div_ceil(CHUNKS_PER_DISPATCH))
            .map(|d| {
                let first = d * CHUNKS_PER_DISPATCH;
                let params = gpu.uniform(
                    "bag weight-grad params",
                    &Params {
                        rows: self.rows,
                        bag: self.bag,
                        v_dim: v.v_dim,
                        row_words,
                        rows_per_chunk: v.rows_per_chunk,
                        f16_values: v.f16 as u32,
                        first_row: first as u32 * v.rows_per_chunk,
                        accumulate: self.continues as u32,
                    },
                );
                let chunk = |i: usize| &v.buffers[(first + i).min(v.buffers.len() - 1)];
                gpu.bind_at(
                    &pipeline,
                    &[
                        (0, &params),
                        (1, self.indices),
                        (3, self.dy),
                        (4, chunk(0)),
                        (5, chunk(1)),
                        (6, chunk(2)),
                        (7, chunk(3)),
                        (8, self.grad_weights),
                    ],
                )
            })
            .collect();
        gpu.run_each(encoder, "bag_weight_grads", &pipeline, &binds, (x, y, 1));
        Ok(())
    }
}
