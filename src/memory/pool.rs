//! The shared value pool: one table of `n_keys^2` rows that every memory layer reads. Stored
//! as f32 or packed f16, split by rows across buffers when it exceeds one storage binding.

use crate::error::{Error, Result};
use crate::kernels::embedding_bag::{ValueChunks, MAX_CHUNKS};
use crate::kernels::Gpu;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDtype {
    F32,
    /// IEEE half, two per u32 word, unpacked in the shader (no shader-f16 feature needed).
    F16,
}

pub struct ValuePool {
    buffers: Vec<wgpu::Buffer>,
    n_rows: u32,
    v_dim: u32,
    dtype: ValueDtype,
    rows_per_chunk: u32,
}

impl ValuePool {
    /// Uploads `values [n_rows, v_dim]`, split into as few buffers as the adapter allows.
    pub fn new(gpu: &Gpu, values: &[f32], n_rows: usize, v_dim: usize, dtype: ValueDtype) -> Result<Self> {
        Self::from_slice(gpu, values, n_rows, v_dim, dtype, None)
    }

    /// As `new`, with at most `rows_per_chunk` rows per buffer (to exercise splitting).
    pub fn with_rows_per_chunk(
        gpu: &Gpu,
        values: &[f32],
        n_rows: usize,
        v_dim: usize,
        dtype: ValueDtype,
        rows_per_chunk: usize,
    ) -> Result<Self> {
        Self::from_slice(gpu, values, n_rows, v_dim, dtype, Some(rows_per_chunk))
    }

    fn from_slice(
        gpu: &Gpu,
        values: &[f32],
        n_rows: usize,
        v_dim: usize,
        dtype: ValueDtype,
        rows_per_chunk: Option<usize>,
    ) -> Result<Self> {
        if values.len() != n_rows * v_dim {
            return Err(Error::tensor(
                "values.weight",
                format!("{} elements ([{n_rows}, {v_dim}])", n_rows * v_dim),
                format!("{}", values.len()),
            ));
        }
        Self::filled(gpu, n_rows, v_dim, dtype, rows_per_chunk, |first_row, rows| {
            rows.copy_from_slice(&values[first_row * v_dim..first_row * v_dim + rows.len()])
        })
    }

    /// A table whose rows `fill(first_row, rows)` writes one buffer's worth at a time, so a
    /// table never needs a second full copy on the host. `rows_per_chunk: None` packs as many
    /// rows per buffer as the adapter binds.
    pub fn filled(
        gpu: &Gpu,
        n_rows: usize,
        v_dim: usize,
        dtype: ValueDtype,
        rows_per_chunk: Option<usize>,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> Result<Self> {
        let row_words = ValueChunks::row_words(v_dim as u32, dtype == ValueDtype::F16) as usize;
        let rows_per_chunk = rows_per_chunk.unwrap_or(
            (gpu.max_binding_bytes() / (row_words as u64 * 4).max(1)).min(u32::MAX as u64) as usize,
        );
        if rows_per_chunk == 0 {
            return Err(Error::Config(format!(
                "one value row ({v_dim} wide) exceeds the adapter's largest binding"
            )));
        }
        let chunks = n_rows.div_ceil(rows_per_chunk).max(1);
        if chunks > MAX_CHUNKS {
            return Err(Error::Config(format!(
                "value table [{n_rows}, {v_dim}] needs {chunks} buffers of {rows_per_chunk} rows; at most \
{MAX_CHUNKS} (use f16 values or a smaller table)"
            )));
        }
        let mut rows = Vec::new();
        let buffers = (0..chunks)
            .map(|c| {
                let first = c * rows_per_chunk;
                let count = rows_per_chunk.min(n_rows - first);
                rows.resize(count * v_dim, 0.0);
                fill(first, &mut rows);
                gpu.upload("values.weight", &encode_rows(&rows, v_dim, row_words, dtype))
            })
            .collect();
        Ok(ValuePool {
            buffers,
            n_rows: n_rows as u32,
            v_dim: v_dim as u32,
            dtype,
            rows_per_chunk: rows_per_chunk as u32,
        })
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows as usize
    }

    pub fn v_dim(&self) -> usize {
        self.v_dim as usize
    }

    pub fn dtype(&self) -> ValueDtype {
        self.dtype
    }

    /// The buffers holding the table (rows split by `chunks().rows_per_chunk`).
    pub fn buffers(&self) -> &[wgpu::Buffer] {
        &self.buffers
    }

    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// Bytes the table occupies on the GPU.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.size()).sum()
    }

    pub fn chunks(&self) -> ValueChunks<'_> {
        ValueChunks {
            buffers: &self.buffers,
            n_rows: self.n_rows,
            v_dim: self.v_dim,
            f16: self.dtype == ValueDtype::F16,
            rows_per_chunk: self.rows_per_chunk,
        }
    }
}

impl ValuePool {
    /// The whole table back on the host, `[n_rows, v_dim]` (f16 values widened to f32).
    pub async fn read(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let v = self.v_dim as usize;
        let row_words = ValueChunks::row_words(self.v_dim, self.dtype == ValueDtype::F16) as usize;
        let mut out = Vec::with_capacity(self.n_rows() * v);
        for (c, buffer) in self.buffers.iter().enumerate() {
            let first = c * self.rows_per_chunk as usize;
            let rows = (self.rows_per_chunk as usize).min(self.n_rows() - first);
            let words = gpu.read_u32(buffer, rows * row_words).await?;
            match self.dtype {
                ValueDtype::F32 => out.extend(words.iter().map(|&w| f32::from_bits(w))),
                ValueDtype::F16 => {
                    for row in words.chunks(row_words) {
                        out.extend(
                            (0..v).map(|i| {
                                half::f16::from_bits((row[i / 2] >> (16 * (i % 2))) as u16).to_f32()
                            }),
                        );
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Rows as the GPU stores them: f32 bits, or f16 pairs packed low-first, rows padded to whole
/// words.
fn encode_rows(rows: &[f32], v_dim: usize, row_words: usize, dtype: ValueDtype) -> Vec<u32> {
    match dtype {
        ValueDtype::F32 => rows.iter().map(|v| v.to_bits()).collect(),
        ValueDtype::F16 => {
            let n = rows.len() / v_dim;
            let mut out = vec![0u32; n * row_words];
            for r in 0..n {
                for (c, &v) in rows[r * v_dim..(r + 1) * v_dim].iter().enumerate() {
                    let bits = half::f16::from_f32(v).to_bits() as u32;
                    out[r * row_words + c / 2] |= bits << (16 * (c % 2));
                }
            }
            out
        }
    }
}

/// The values as the GPU sees them (rounded to f16 when stored so), for the CPU oracle.
pub fn as_stored(values: &[f32], dtype: ValueDtype) -> Vec<f32> {
    match dtype {
        ValueDtype::F32 => values.to_vec(),
        ValueDtype::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
    }
}
