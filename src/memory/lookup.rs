//! The product-key lookup of docs/reference.md, "The memory layer" steps 2-6, as three kernels:
//! (qk-norm only) normalise query halves and sub-keys; score every sub-key of every
//! (head, half) with one batched GEMM; then the fused product top-k with softmax.
//!
//! Why the scores go through memory: a GEMM reads each sub-key once per 64 tokens (the
//! tile) where a fused per-token scorer reads every sub-key once per token, and the scores of
//! a block of tokens are small (512 tokens at the reference configuration: 16 MiB, written
//! and read once). Rows are processed in blocks so that this buffer stays bounded.

use crate::error::{Error, Result};
use crate::kernels::linear::{Batched, Linear};
use crate::kernels::product_topk::{ProductTopK, TopKKernel, MAX_KNN};
use crate::kernels::Gpu;
use crate::kernels::{normalize, MAX_GRID_ROWS};

/// Largest query/key half the GEMM and the u32 index arithmetic comfortably handle.
pub const MAX_HALF_DIM: usize = 4096;
/// Bytes of sub-key scores per block of rows.
pub(super) const SCORE_BLOCK_BYTES: u64 = 32 << 20;

/// Shape of a lookup.
#[derive(Clone, Copy, Debug)]
pub struct LookupShape {
    pub rows: u32,
    pub heads: u32,
    pub n_keys: u32,
    /// Full query/key width; each half is `k_dim / 2`.
    pub k_dim: u32,
    pub knn: u32,
    pub qk_norm: bool,
}

impl LookupShape {
    pub fn validate(&self) -> Result<()> {
        let s = self;
        if s.rows == 0 || s.heads == 0 || s.n_keys == 0 || s.knn == 0 {
            return Err(Error::Config(format!("lookup: empty shape {s:?}")));
        }
        if s.k_dim < 2 || !s.k_dim.is_multiple_of(2) || s.k_dim as usize / 2 > MAX_HALF_DIM {
            return Err(Error::Config(format!(
                "k_dim must be even and in [2, {}], found {}",
                2 * MAX_HALF_DIM,
                s.k_dim
            )));
        }
        if s.knn > MAX_KNN || s.knn > s.n_keys {
            return Err(Error::Config(format!(
                "knn must be at most {MAX_KNN} and at most n_keys ({}), found {}",
                s.n_keys, s.knn
            )));
        }
        if s.n_keys > 65535 {
            return Err(Error::Config(format!(
                "n_keys must be at most 65535 (slots are u32), found {}",
                s.n_keys
            )));
        }
        Ok(())
    }

    /// Entries of the indices/scores/weights outputs.
    pub fn out_len(&self) -> u64 {
        self.rows as u64 * self.heads as u64 * self.knn as u64
    }
}

/// Outputs of a lookup, each `[rows, heads, knn]`: u32 slots, pre-softmax scores, weights.
pub struct LookupBuffers {
    pub indices: wgpu::Buffer,
    pub scores: wgpu::Buffer,
    pub weights: wgpu::Buffer,
}

/// Records the lookup of `query [rows, heads * k_dim]` against `keys [heads, 2, n_keys,
/// k_dim / 2]`. Nothing is submitted.
pub fn record_lookup(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    s: LookupShape,
    query: &wgpu::Buffer,
    keys: &wgpu::Buffer,
) -> Result<LookupBuffers> {
    s.validate()?;
    let half = s.k_dim / 2;
    let halves = 2 * s.heads;
    let out = LookupBuffers {
        indices: gpu.scratch("lookup.indices", s.out_len() * 4),
        scores: gpu.scratch("lookup.scores", s.out_len() * 4),
        weights: gpu.scratch("lookup.weights", s.out_len() * 4),
    };
    let normalized;
    let (query, keys) = if s.qk_norm {
        let q = gpu.scratch("query (normalised)", query.size());
        let k = gpu.scratch("keys (normalised)", keys.size());
        normalize::record(gpu, encoder, query, &q, s.rows * halves, half)?;
        normalize::record(gpu, encoder, keys, &k, halves * s.n_keys, half)?;
        normalized = (q, k);
        (&normalized.0, &normalized.1)
    } else {
        (query, keys)
    };
    let row_bytes = halves as u64 * s.n_keys as u64 * 4;
    let block = (SCORE_BLOCK_BYTES.min(gpu.max_binding_bytes()) / row_bytes)
        .clamp(1, MAX_GRID_ROWS as u64)
        .min(s.rows as u64) as u32;
    let scores = gpu.scratch("sub-key scores", block as u64 * row_bytes);
    for row0 in (0..s.rows).step_by(block as usize) {
        let rows = block.min(s.rows - row0);
        Linear {
            batched: Some(Batched {
                batch: halves,
                x_offset: row0 * s.heads * s.k_dim,
                x_batch: half,
                x_row: s.heads * s.k_dim,
                x_k: 1,
                w_offset: 0,
                w_batch: s.n_keys * half,
                w_row: half,
                w_k: 1,
                y_offset: 0,
                y_batch: s.n_keys,
                y_row: halves * s.n_keys,
            }),
            ..Linear::new("subkey_scores", query, keys, &scores, (rows, s.n_keys, half))
        }
        .record(gpu, encoder)?;
        ProductTopK {
            rows,
            row0,
            heads: s.heads,
            n_keys: s.n_keys,
            knn: s.knn,
            scores: &scores,
            indices: &out.indices,
            out_scores: &out.scores,
            weights: &out.weights,
            kernel: TopKKernel::Auto,
        }
        .record(gpu, encoder)?;
    }
    Ok(out)
}
