//! Plain-Rust CPU implementation of every kernel and of the whole memory layer: the oracle
//! the GPU is tested against. Straightforward loops, f32 throughout (f64 nowhere, so the
//! oracle rounds like the GPU up to summation order). Depends on nothing but std.

pub mod adamw;
mod backward;
pub mod moe;
pub mod ops;
pub use backward::{l2_normalize_backward, memory_backward, silu_grad, MemoryGradsRef};

/// `y[m, n] = x[m, k] w[n, k]^T + bias[n]` (nn.Linear).
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wc = &w[c * k..(c + 1) * k];
            let mut acc = 0f32;
            for i in 0..k {
                acc = xr[i].mul_add(wc[i], acc);
            }
            y[r * n + c] = acc + bias.map_or(0.0, |b| b[c]);
        }
    }
    y
}

pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// `gate * silu(pre)`, elementwise (Memory+'s gating, given the pre-activation).
pub fn silu_gate(gate: &[f32], pre: &[f32]) -> Vec<f32> {
    gate.iter().zip(pre).map(|(&g, &p)| g * silu(p)).collect()
}

/// Rank order of the whole project: higher score first, equal scores by lower index.
pub fn ranks_before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// `ranks_before` as an ordering, for sorting.
pub fn rank_cmp(a: (f32, u32), b: (f32, u32)) -> std::cmp::Ordering {
    if ranks_before(a, b) {
        std::cmp::Ordering::Less
    } else if ranks_before(b, a) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// The `k` best (score, index) pairs of `scores`, in rank order.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut all: Vec<(f32, u32)> = scores.iter().enumerate().map(|(i, &s)| (s, i as u32)).collect();
    all.sort_by(|&a, &b| rank_cmp(a, b));
    all.truncate(k);
    all
}

/// Dimensions of a product-key lookup.
#[derive(Clone, Copy, Debug)]
pub struct LookupDims {
    pub rows: usize,
    pub heads: usize,
    pub n_keys: usize,
    pub k_dim: usize,
    pub knn: usize,
    pub qk_norm: bool,
}

/// Output of a lookup, each `[rows, heads, knn]`.
#[derive(Clone, Debug, Default)]
pub struct LookupOut {
    pub indices: Vec<u32>,
    pub scores: Vec<f32>,
    pub weights: Vec<f32>,
}

const NORM_EPS: f32 = 1e-12;

/// `v * (1 / max(|v|, 1e-12))` (torch.nn.functional.normalize), sum of squares in index order.
pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let mut ss = 0f32;
    for &x in v {
        ss = x.mul_add(x, ss);
    }
    let scale = 1.0 / ss.sqrt().max(NORM_EPS);
    v.iter().map(|x| x * scale).collect()
}

/// Sub-key scores of one query half against one table `[n_keys, half]`; with qk-norm both
/// sides are normalised before the dot product.
pub fn subkey_scores(q: &[f32], table: &[f32], n_keys: usize, qk_norm: bool) -> Vec<f32> {
    let half = q.len();
    let q = if qk_norm { l2_normalize(q) } else { q.to_vec() };
    (0..n_keys)
        .map(|i| {
            let raw = &table[i * half..(i + 1) * half];
            let key = if qk_norm { l2_normalize(raw) } else { raw.to_vec() };
            let mut dot = 0f32;
            for d in 0..half {
                dot = q[d].mul_add(key[d], dot);
            }
            dot
        })
        .collect()
}

/// Softmax in f32 over one head's sorted scores.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// The product-key lookup exactly as docs/reference.md, "The memory layer" steps 2-6 state it, with the full
/// k x k candidate set: `query [rows, heads * k_dim]`, `keys [heads, 2, n_keys, k_dim / 2]`.
pub fn lookup(query: &[f32], keys: &[f32], d: LookupDims) -> LookupOut {
    let half = d.k_dim / 2;
    let mut out = LookupOut::default();
    for r in 0..d.rows {
        for h in 0..d.heads {
            let q = &query[(r * d.heads + h) * d.k_dim..(r * d.heads + h + 1) * d.k_dim];
            let table = |p: usize| &keys[(h * 2 + p) * d.n_keys * half..(h * 2 + p + 1) * d.n_keys * half];
            let s1 = subkey_scores(&q[..half], table(0), d.n_keys, d.qk_norm);
            let s2 = subkey_scores(&q[half..], table(1), d.n_keys, d.qk_norm);
            let best = product_top_k(&s1, &s2, d.n_keys, d.knn);
            let s: Vec<f32> = best.iter().map(|b| b.0).collect();
            out.weights.extend(softmax(&s));
            out.scores.extend(&s);
            out.indices.extend(best.iter().map(|b| b.1));
        }
    }
    out
}

/// Steps 3-5: top-k of each half's sub-key scores, then the top-k of all k x k sums
/// `s1[i] + s2[j]` with slot `i * n_keys + j`, in rank order.
pub fn product_top_k(s1: &[f32], s2: &[f32], n_keys: usize, knn: usize) -> Vec<(f32, u32)> {
    let (t1, t2) = (top_k(s1, knn), top_k(s2, knn));
    let mut cand = Vec::with_capacity(knn * knn);
    for &(a, i) in &t1 {
        for &(b, j) in &t2 {
            cand.push((a + b, i * n_keys as u32 + j));
        }
    }
    cand.sort_by(|&a, &b| rank_cmp(a, b));
    cand.truncate(knn);
    cand
}

/// `out[r, :] = sum_j weights[r, j] * values[indices[r, j], :]`, in bag order.
pub fn embedding_bag(
    indices: &[u32],
    weights: &[f32],
    values: &[f32],
    rows: usize,
    bag: usize,
    v_dim: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * v_dim];
    for r in 0..rows {
        let o = &mut out[r * v_dim..(r + 1) * v_dim];
        for j in 0..bag {
            let slot = indices[r * bag + j] as usize;
            let w = weights[r * bag + j];
            let v = &values[slot * v_dim..(slot + 1) * v_dim];
            for c in 0..v_dim {
                o[c] = w.mul_add(v[c], o[c]);
            }
        }
    }
    out
}

/// Parameters of one memory layer (reference names in comments), all row-major f32.
pub struct MemoryParamsRef<'a> {
    pub d: usize,
    pub v_dim: usize,
    /// `query_proj.query_mlps.0.weight [heads * k_dim, d]` and `.bias`.
    pub query_w: &'a [f32],
    pub query_b: &'a [f32],
    /// `keys [2 * heads * n_keys, k_dim / 2]`.
    pub keys: &'a [f32],
    /// `values.weight [n_keys^2, v_dim]` (the shared pool).
    pub values: &'a [f32],
    /// `swilu_projection.weight [v_dim, d]`, `.bias`: Memory+ when present.
    pub swilu: Option<(&'a [f32], &'a [f32])>,
    /// `value_proj.weight [d, v_dim]`, `.bias`.
    pub value_proj: Option<(&'a [f32], &'a [f32])>,
    /// `gating.weight [1, d]`, `.bias [1]` (mem_gated): the output times sigmoid(gating(x)).
    pub gating: Option<(&'a [f32], &'a [f32])>,
    /// PEER (`peer_variant`): `values_u.weight [n_values, d]`; `values` is then `values_v`,
    /// and the output `sum_i w_i gelu(<x, u_i>) v_i` (no projections).
    pub values_u: Option<&'a [f32]>,
}

/// PEER's activation per bag entry: `w_e * gelu(<x_row, u_slot>)`, with the dots.
pub fn peer_activations(
    x: &[f32],
    u: &[f32],
    lk: &LookupOut,
    rows: usize,
    bag: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dots: Vec<f32> = (0..rows * bag)
        .map(|e| {
            let (r, slot) = (e / bag, lk.indices[e] as usize);
            (0..d).map(|c| x[r * d + c] * u[slot * d + c]).sum()
        })
        .collect();
    let act = dots
        .iter()
        .zip(&lk.weights)
        .map(|(&s, &w)| w * ops::gelu(s))
        .collect();
    (dots, act)
}

/// The whole layer on `x [rows, d]`: returns `(out [rows, d'], lookup)`.
pub fn memory_forward(x: &[f32], p: &MemoryParamsRef, dims: LookupDims) -> (Vec<f32>, LookupOut) {
    let (rows, d, v_dim) = (dims.rows, p.d, p.v_dim);
    let q = linear(x, p.query_w, Some(p.query_b), rows, dims.heads * dims.k_dim, d);
    let lk = lookup(&q, p.keys, dims);
    let bag_len = dims.heads * dims.knn;
    let weights = match p.values_u {
        Some(u) => peer_activations(x, u, &lk, rows, bag_len, d).1,
        None => lk.weights.clone(),
    };
    let bag = embedding_bag(&lk.indices, &weights, p.values, rows, bag_len, v_dim);
    let hidden = match p.swilu {
        Some((w1, b1)) => silu_gate(&bag, &linear(x, w1, Some(b1), rows, v_dim, d)),
        None => bag,
    };
    let out = match p.value_proj {
        Some((wo, bo)) => linear(&hidden, wo, Some(bo), rows, bo.len(), v_dim),
        None => hidden,
    };
    let out = match p.gating {
        Some((gw, gb)) => ops::row_gate(&linear(x, gw, Some(gb), rows, 1, d), &out, out.len() / rows),
        None => out,
    };
    (out, lk)
}
