//! Adapters from the production types to the CPU oracle (`crate::reference`, which depends on
//! the standard library only), and the transformer composed from the oracle's ops: what the
//! tests compare the GPU against.

mod model;

pub use model::{forward_cpu, forward_cpu_with_selections};

use crate::memory::{MemoryConfig, MemoryWeights};
use crate::reference::{LookupDims, MemoryParamsRef};

/// The oracle's view of a memory layer's weights with the pool's `values`.
pub fn memory_params<'a>(w: &'a MemoryWeights, values: &'a [f32]) -> MemoryParamsRef<'a> {
    MemoryParamsRef {
        d: w.config.d,
        v_dim: w.config.v_dim,
        query_w: &w.query_w,
        query_b: &w.query_b,
        keys: &w.keys,
        values,
        // PEER's projections exist but are not used (as in the reference).
        swilu: w
            .swilu
            .as_ref()
            .filter(|_| !w.config.peer)
            .map(|(w, b)| (&w[..], &b[..])),
        value_proj: w
            .value_proj
            .as_ref()
            .filter(|_| !w.config.peer)
            .map(|(w, b)| (&w[..], &b[..])),
        gating: w.gating.as_ref().map(|(w, b)| (&w[..], &b[..])),
        values_u: None,
    }
}

/// The oracle's lookup shape for `rows` tokens of a layer of `c`.
pub fn lookup_dims(c: &MemoryConfig, rows: usize) -> LookupDims {
    LookupDims {
        rows,
        heads: c.heads,
        n_keys: c.n_keys,
        k_dim: c.k_dim,
        knn: c.knn,
        qk_norm: c.qk_norm,
    }
}
