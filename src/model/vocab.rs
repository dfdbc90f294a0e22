//! The vocabulary-sized tables: the embedding and the output layer's weight (the embedding
//! itself when tied), each split by rows over as many buffers as one storage binding needs
//! (a 151,936 x 896 f32 embedding is 545 MB; WebGPU binds 128 MiB), with the output's f16
//! copy alike. The embedding is read as a bag of one row a token; the output layer runs one
//! product per chunk of rows, each writing its columns of the logits.

use super::context::CompactWeight;
use crate::error::Result;
use crate::kernels::embedding_bag::EmbeddingBag;
use crate::kernels::linear::{Batched, Linear, WeightFormat};
use crate::kernels::Gpu;
use crate::memory::{ValueDtype, ValuePool};

pub(crate) struct VocabTables {
    pub embedding: ValuePool,
    /// The output layer's weight where it is not the embedding.
    pub output: Option<ValuePool>,
    /// The output weight's f16 or 8-bit copy (`Model::use_f16_weights`, `use_q8_weights`).
    pub output_compact: Option<CompactTable>,
    /// At most this many rows a buffer (`None`: as many as one binding holds).
    pub rows_per_chunk: Option<usize>,
}

/// The output layer's compact copy (f16 or 8-bit): its rows in chunks of `rows_per_chunk`,
/// each chunk in one buffer of its format.
pub(crate) struct CompactTable {
    pub chunks: Vec<CompactWeight>,
    pub rows_per_chunk: u32,
}

impl VocabTables {
    /// A `[vocab, dim]` table of `data` in buffers of at most `rows_per_chunk` rows.
    pub fn table(
        gpu: &Gpu,
        data: &[f32],
        (vocab, dim): (usize, usize),
        dtype: ValueDtype,
        rows_per_chunk: Option<usize>,
    ) -> Result<ValuePool> {
        match rows_per_chunk {
            Some(rows) => ValuePool::with_rows_per_chunk(gpu, data, vocab, dim, dtype, rows),
            None => ValuePool::new(gpu, data, vocab, dim, dtype),
        }
    }

    /// The output layer's f32 weight.
    fn output_f32(&self) -> &ValuePool {
        self.output.as_ref().unwrap_or(&self.embedding)
    }

    /// Whether each table is one buffer (what training's kernels bind).
    pub fn is_whole(&self) -> bool {
        self.embedding.buffer_count() == 1 && self.output.as_ref().is_none_or(|p| p.buffer_count() == 1)
    }

    /// `out [rows, dim]` = the embedding rows of `tokens`.
    pub fn record_embedding(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        tokens: &wgpu::Buffer,
        rows: u32,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let ones = gpu.upload("ones", &vec![1f32; rows as usize]);
        EmbeddingBag {
            rows,
            bag: 1,
            indices: tokens,
            weights: &ones,
            values: &self.embedding.chunks(),
            out,
            workgroup_size: None,
            columns_per_invocation: None,
        }
        .record(gpu, encoder)
    }

    /// `logits [rows, vocab] = x[first..first + rows] W^T` (`x` is `[_, dim]`), a product per
    /// chunk of W's rows (the compact copy where there is one).
    pub fn record_output(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (x, first): (&wgpu::Buffer, u32),
        rows: u32,
        logits: &wgpu::Buffer,
    ) -> Result<()> {
        let f32_table = self.output_f32();
        let (vocab, dim) = (f32_table.n_rows() as u32, f32_table.v_dim() as u32);
        let (chunks, rows_per_chunk): (Vec<(&wgpu::Buffer, WeightFormat)>, u32) = match &self.output_compact {
            Some(t) => (t.chunks.iter().map(|(b, f)| (b, *f)).collect(), t.rows_per_chunk),
            None => (
                f32_table
                    .buffers()
                    .iter()
                    .map(|b| (b, WeightFormat::F32))
                    .collect(),
                f32_table.chunks().rows_per_chunk,
            ),
        };
        let split = chunks.len() > 1;
        for (i, (w, w_format)) in chunks.into_iter().enumerate() {
            let row0 = i as u32 * rows_per_chunk;
            let n = rows_per_chunk.min(vocab - row0);
            // One chunk of all rows is the plain product; more write their columns of the
            // logits, or start at a later row of x.
            let batched = (split || first > 0).then(|| Batched {
                x_offset: first * dim,
                y_offset: row0,
                y_row: vocab,
                ..Batched::dense(rows, n, dim, false, false)
            });
            Linear {
                w_format,
                batched,
                ..Linear::new("linear", x, w, logits, (rows, n, dim))
            }
            .record(gpu, encoder)?;
        }
        Ok(())
    }
}
