//! `value_grads.wgsl`: the value table's gradient as sparse rows, reduced per slot in entry
//! order through a stable sort (no float atomics).

use super::radix_sort::{record_scan, record_sort};
use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::{grid, MAX_GRID_DIM};
use crate::kernels::Gpu;

pub const SOURCE: &str = include_str!("../../shaders/value_grads.wgsl");

/// Sorted entries per workgroup of `reduce` (its `ENTRIES_PER_GROUP`).
const ENTRIES_PER_GROUP: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    bag: u32,
    v_dim: u32,
    _pad: u32,
}

/// Gradient rows of the distinct slots read in one step: `slots[0, count)` ascending and
/// `rows[count, v_dim]`; `count` (one u32 on the GPU) is at most `capacity`.
#[derive(Clone)]
pub struct SparseRows {
    pub slots: wgpu::Buffer,
    pub rows: wgpu::Buffer,
    pub count: wgpu::Buffer,
    pub capacity: u32,
    pub v_dim: u32,
}

impl SparseRows {
    /// Records `dense[slot] += row` for every listed row (`dense` is `[n_rows, v_dim]`).
    pub fn record_scatter_add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        dense: &wgpu::Buffer,
        n_rows: u64,
    ) -> Result<()> {
        check_buffer(gpu, "dense gradient", dense, n_rows * self.v_dim as u64)?;
        // Rows of whole 16-byte words: four elements an invocation (`scatter_add_vec4`).
        let quads = self.v_dim.is_multiple_of(4);
        let per_invocation = if quads { 4 } else { 1 };
        let elements = self.capacity as u64 * (self.v_dim / per_invocation) as u64;
        // At most `Tuning::scatter_workgroups` workgroups, striding through the rows actually
        // listed (their count is on the GPU; the dispatch covers the capacity).
        // (and more where the loop budget needs them).
        let groups = elements
            .div_ceil(64)
            .min(gpu.tuning().scatter_workgroups as u64)
            .max(elements.div_ceil(64 * (super::LOOP_BUDGET / 2))) as u32;
        check_loop_budget(
            "scatter rows",
            elements.div_ceil(groups as u64 * 64),
            "gradient rows x v_dim",
        )?;
        let params = Params {
            n: self.capacity,
            bag: 1,
            v_dim: self.v_dim,
            _pad: 0,
        };
        let params = gpu.uniform("scatter params", &params);
        let entry = if quads { "scatter_add_vec4" } else { "scatter_add" };
        let pipeline = gpu.pipeline_entry("value_grads", SOURCE, entry, &[]);
        let (rows_at, dense_at) = if quads { (12, 13) } else { (7, 9) };
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (6, &self.slots),
                (rows_at, &self.rows),
                (8, &self.count),
                (dense_at, dense),
            ],
        );
        let (x, y) = grid(groups);
        gpu.run(encoder, "scatter_rows", &pipeline, &bind, (x, y, 1));
        Ok(())
    }

    /// Records `mask[slot] = 1` for every listed slot (`mask` is `[n_rows]` u32).
    pub fn record_mark(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        mask: &wgpu::Buffer,
        n_rows: u64,
    ) -> Result<()> {
        check_buffer(gpu, "row mask", mask, n_rows)?;
        let params = Params {
            n: self.capacity,
            bag: 1,
            v_dim: self.v_dim,
            _pad: 0,
        };
        let params = gpu.uniform("mark params", &params);
        let pipeline = gpu.pipeline_entry("value_grads", SOURCE, "mark_rows", &[]);
        let bind = gpu.bind_at(
            &pipeline,
            &[(0, &params), (6, &self.slots), (8, &self.count), (10, mask)],
        );
        let (x, y) = grid(self.capacity.div_ceil(64));
        gpu.run(encoder, "mark_rows", &pipeline, &bind, (x, y, 1));
        Ok(())
    }

    /// The gradient as a dense `[n_rows, v_dim]` table (zero rows where nothing was read).
    pub async fn to_dense(&self, gpu: &Gpu, n_rows: usize) -> Result<Vec<f32>> {
        let count = gpu.read_u32(&self.count, 1).await?[0] as usize;
        let slots = gpu.read_u32(&self.slots, count).await?;
        let rows = gpu.read_f32(&self.rows, count * self.v_dim as usize).await?;
        let v = self.v_dim as usize;
        let mut dense = vec![0f32; n_rows * v];
        for (i, &s) in slots.iter().enumerate() {
            let s = s as usize;
            if s >= n_rows {
                return Err(Error::Device(format!(
                    "value gradient names slot {s} of {n_rows}"
                )));
            }
            dense[s * v..(s + 1) * v].copy_from_slice(&rows[i * v..(i + 1) * v]);
        }
        Ok(dense)
    }
}

/// `dV[slot] = sum over entries e with indices[e] == slot of weights[e] * dy[e / bag]`, for
/// `rows * bag` entries; `max_per_slot` bounds how many entries can share a slot (one per
/// (row, head): a head's top-k slots are distinct).
pub struct ValueGrads<'a> {
    pub rows: u32,
    pub bag: u32,
    pub v_dim: u32,
    pub n_values: u32,
    pub max_per_slot: u32,
    pub indices: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    pub dy: &'a wgpu::Buffer,
}

impl ValueGrads<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<SparseRows> {
        let n64 = self.rows as u64 * self.bag as u64;
        if n64 == 0 || n64 > u32::MAX as u64 || self.v_dim == 0 || self.n_values == 0 {
            return Err(Error::Config(format!(
                "value gradient: {n64} entries, v_dim {}",
                self.v_dim
            )));
        }
        let n = n64 as u32;
        check_buffer(gpu, "bag.indices", self.indices, n64)?;
        check_buffer(gpu, "bag.weights", self.weights, n64)?;
        check_buffer(gpu, "bag.dy", self.dy, self.rows as u64 * self.v_dim as u64)?;
        check_loop_budget(
            "value gradient",
            2 * ENTRIES_PER_GROUP as u64 + self.max_per_slot as u64,
            "entries sharing a slot (rows x heads)",
        )?;
        let column_blocks = self.v_dim.div_ceil(64);
        if column_blocks > MAX_GRID_DIM {
            return Err(Error::Config(format!(
                "value gradient: v_dim {} is too wide",
                self.v_dim
            )));
        }
        let entries: Vec<u32> = (0..n).collect();
        let entries = gpu.upload("bag entries", &entries);
        let key_bits = 32 - (self.n_values - 1).leading_zeros();
        let sorted = record_sort(gpu, encoder, self.indices, &entries, n, key_bits)?;
        let out = SparseRows {
            slots: gpu.storage("grad values slots", n64 * 4),
            rows: gpu.storage("grad values rows", n64 * self.v_dim as u64 * 4),
            count: gpu.storage("grad values count", 4),
            capacity: n,
            v_dim: self.v_dim,
        };
        check_buffer(gpu, "grad values rows", &out.rows, n64 * self.v_dim as u64)?;
        let run_ids = gpu.storage("run ids", n64 * 4);
        let params = gpu.uniform(
            "value grad params",
            &Params {
                n,
                bag: self.bag,
                v_dim: self.v_dim,
                _pad: 0,
            },
        );
        let starts = gpu.pipeline_entry("value_grads", SOURCE, "run_starts", &[]);
        let bind = gpu.bind_at(&starts, &[(0, &params), (1, &sorted.keys), (3, &run_ids)]);
        {
            let (x, y) = grid(n.div_ceil(64));
            gpu.run(encoder, "value_grad_runs", &starts, &bind, (x, y, 1));
        }
        record_scan(gpu, encoder, &run_ids, n, &out.count)?;
        // CPU adapters: 4 columns an invocation, 16-byte loads of dy (`reduce_quads`).
        let quads = gpu.tuning().value_grad_quads && self.v_dim.is_multiple_of(4);
        let (entry, column_blocks) = match quads {
            true => ("reduce_quads", self.v_dim.div_ceil(32)),
            false => ("reduce", column_blocks),
        };
        let reduce = gpu.pipeline_entry("value_grads", SOURCE, entry, &[]);
        let mut bindings = vec![
            (0, &params),
            (1, &sorted.keys),
            (2, &sorted.values),
            (3, &run_ids),
            (4, self.weights),
            (6, &out.slots),
            (7, &out.rows),
        ];
        bindings.push(if quads { (11, self.dy) } else { (5, self.dy) });
        let bind = gpu.bind_at(&reduce, &bindings);
        let (x, y) = grid(n.div_ceil(ENTRIES_PER_GROUP));
        gpu.run(
            encoder,
            "value_grad_reduce",
            &reduce,
            &bind,
            (x, y, column_blocks),
        );
        Ok(out)
    }
}
