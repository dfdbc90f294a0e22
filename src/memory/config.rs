//! Hyper-parameters of one product-key memory layer (docs/reference.md, "The memory layer").

use super::LookupShape;
use crate::error::{Error, Result};
use crate::kernels::embedding_bag;

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryConfig {
    /// Model width `d` (input and output of the layer).
    pub d: usize,
    pub heads: usize,
    /// Sub-keys per half; the pool holds `n_keys^2` values.
    pub n_keys: usize,
    /// `knn`: values read per head.
    pub knn: usize,
    /// Full query/key width (each half is `k_dim / 2`).
    pub k_dim: usize,
    pub v_dim: usize,
    /// Memory+: `value_proj(bag * silu(swilu_projection(x)))`.
    pub swilu: bool,
    /// Whether `value_proj` exists (with swilu, or when the reference's mem_v_dim is given).
    pub value_proj: bool,
    /// lingua's `mem_gated`: the output times `sigmoid(gating(x))` (`gating.weight [1, d]`,
    /// `gating.bias [1]`).
    pub gated: bool,
    /// lingua's `peer_variant` (PEER): two tables `values_u`, `values_v` (`[n_values, d]`)
    /// and output `sum_i w_i * gelu(<x, u_i>) * v_i` over the selected rows; swilu and
    /// value_proj, when configured, exist but are not used (as in the reference).
    pub peer: bool,
    /// Normalise query and key halves before scoring (paper 3.1.4; not in the released code).
    pub qk_norm: bool,
}

impl MemoryConfig {
    /// Memory+ with the reference's defaults for everything but `d`.
    pub fn memory_plus(d: usize) -> Self {
        MemoryConfig {
            d,
            heads: 4,
            n_keys: 1024,
            knn: 32,
            k_dim: 512,
            v_dim: d,
            swilu: true,
            value_proj: true,
            gated: false,
            peer: false,
            qk_norm: false,
        }
    }

    pub fn n_values(&self) -> usize {
        self.n_keys * self.n_keys
    }

    /// Width of the layer's output: `d` with `value_proj`, else `v_dim`.
    pub fn out_dim(&self) -> usize {
        if self.value_proj {
            self.d
        } else {
            self.v_dim
        }
    }

    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::Config(m));
        if c.d == 0 || c.v_dim == 0 || c.heads == 0 {
            return bad(format!("d, v_dim and heads must be positive: {c:?}"));
        }
        if c.peer && c.v_dim != c.d {
            return bad(format!("PEER needs v_dim = d ({}), found {}", c.d, c.v_dim));
        }
        if c.swilu && !c.value_proj {
            return bad("swilu_projection needs value_proj".into());
        }
        if !c.value_proj && c.v_dim != c.d {
            return bad(format!(
                "without value_proj v_dim ({}) must equal d ({})",
                c.v_dim, c.d
            ));
        }
        if c.heads * c.knn > embedding_bag::MAX_BAG as usize {
            return bad(format!(
                "heads * knn must be at most {}, found {} * {}",
                embedding_bag::MAX_BAG,
                c.heads,
                c.knn
            ));
        }
        LookupShape {
            rows: 1,
            heads: c.heads as u32,
            n_keys: c.n_keys as u32,
            k_dim: c.k_dim as u32,
            knn: c.knn as u32,
            qk_norm: c.qk_norm,
        }
        .validate()
    }

    /// Multiply-adds x 2 per token of the forward: query projection, sub-key scoring, the bag,
    /// and the swilu/value projections.
    pub fn flops_per_token(&self) -> f64 {
        let (d, h, nk, kd, k, v) = (
            self.d as f64,
            self.heads as f64,
            self.n_keys as f64,
            self.k_dim as f64,
            self.knn as f64,
            self.v_dim as f64,
        );
        let mut f = 2.0 * d * h * kd + 2.0 * h * nk * kd + 2.0 * h * k * v;
        if self.peer {
            // <x, u_i> per selected row, then the bag of v rows: no projections.
            return f + 2.0 * h * k * d;
        }
        if self.swilu {
            f += 2.0 * d * v + v;
        }
        if self.value_proj {
            f += 2.0 * v * d;
        }
        f
    }
}
