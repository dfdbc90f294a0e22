//! Checks shared by the native tests and the browser tests (web/wasm/tests include this
//! file): the tolerance rule, selection comparison, and the memory layer's forward against
//! the CPU oracle over a list of shapes. Async, so the browser can await the GPU.
#![allow(dead_code)]

use memlayers::memory::{as_stored, MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
use memlayers::reference;
use memlayers::rng::Rng;
use memlayers::Gpu;

/// The one comparison rule of the test suite: `|a - b| <= atol + rtol * |b|`, b the oracle.
///
/// Why these numbers: GPU and oracle both accumulate in f32 in the same order with fused
/// multiply-adds, but drivers may contract or split differently, and exp/sqrt differ by a few
/// ulp across implementations. Sums here run over at most a few thousand terms of size ~1,
/// whose rounding differences stay far below 1e-4 absolute; 1e-3 relative covers the larger
/// outputs. f16 tables are compared against the oracle fed the same f16-rounded values, so
/// the same tolerance holds.
pub const ATOL: f32 = 1e-4;
pub const RTOL: f32 = 1e-3;

pub fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= ATOL + RTOL * b.abs(),
            "{what}[{i}]: gpu {a} vs cpu {b} (|diff| {} > {ATOL} + {RTOL} * |cpu|)",
            (a - b).abs()
        );
    }
}

/// Selected slots must equal the oracle's. The one allowed difference is a near-tie: two
/// different pairs whose scores differ by rounding alone (qk-norm bounds scores to [-2, 2],
/// so among millions of pairs some land within an ulp of each other, and sqrt/fma rounding
/// differs between drivers). A differing slot passes only if (a) the GPU's score matches the
/// oracle's at that position within the tolerance, (b) the oracle gives the GPU's slot that
/// same score (the slot really is that pair), and (c) such swaps are rare (<= 1%).
pub fn assert_same_selection(
    got: &memlayers::reference::LookupOut,
    want: &memlayers::reference::LookupOut,
    query: &[f32],
    keys: &[f32],
    d: memlayers::reference::LookupDims,
) {
    use memlayers::reference::subkey_scores;
    assert_eq!(got.indices.len(), want.indices.len());
    let half = d.k_dim / 2;
    let mut swaps = 0;
    for (i, (&g, &w)) in got.indices.iter().zip(&want.indices).enumerate() {
        if g == w {
            continue;
        }
        swaps += 1;
        let item = i / d.knn;
        let (row, head) = (item / d.heads, item % d.heads);
        let q = &query[(row * d.heads + head) * d.k_dim..(row * d.heads + head + 1) * d.k_dim];
        let table = |p: usize| &keys[(head * 2 + p) * d.n_keys * half..(head * 2 + p + 1) * d.n_keys * half];
        let (a, b) = (g as usize / d.n_keys, g as usize % d.n_keys);
        let s1 = subkey_scores(&q[..half], table(0), d.n_keys, d.qk_norm)[a];
        let s2 = subkey_scores(&q[half..], table(1), d.n_keys, d.qk_norm)[b];
        let close = |x: f32, y: f32| (x - y).abs() <= ATOL + RTOL * y.abs();
        assert!(
            close(got.scores[i], want.scores[i]) && close(got.scores[i], s1 + s2),
            "{d:?}: position {i} selects slot {g} (score {}, oracle says {}) where the oracle selects {w} \
             (score {}): not a near-tie",
            got.scores[i],
            s1 + s2,
            want.scores[i]
        );
    }
    assert!(
        swaps * 100 <= got.indices.len().max(100),
        "{d:?}: {swaps} near-tie swaps of {} selections",
        got.indices.len()
    );
}

pub struct Case {
    pub config: MemoryConfig,
    pub rows: usize,
    pub dtype: ValueDtype,
}

/// The memory layer's forward on the GPU against the oracle: the same slots, and scores,
/// softmax weights and outputs within the tolerance.
pub async fn check_memory_layer(g: &Gpu, case: &Case, seed: u64) {
    let c = &case.config;
    let mut rng = Rng::new(seed);
    let weights = MemoryWeights::init(c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(c, &mut rng);
    let x = rng.vec_normal(case.rows * c.d, 1.0);
    let layer = MemoryLayer::new(g, &weights).unwrap();
    let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, case.dtype).unwrap();
    let got = layer.forward(g, &pool, &x, case.rows).await.unwrap();
    let stored = as_stored(&values, case.dtype);
    let (want, lk) = reference::memory_forward(
        &x,
        &memlayers::oracle::memory_params(&weights, &stored),
        memlayers::oracle::lookup_dims(&weights.config, case.rows),
    );
    let what = format!("{c:?} rows={} {:?}", case.rows, case.dtype);
    assert_eq!(got.indices, lk.indices, "selected slots differ: {what}");
    assert_close(&format!("scores {what}"), &got.scores, &lk.scores);
    assert_close(&format!("weights {what}"), &got.weights, &lk.weights);
    assert_close(&format!("output {what}"), &got.out, &want);
}

pub fn config(
    d: usize,
    heads: usize,
    n_keys: usize,
    knn: usize,
    k_dim: usize,
    v_dim: usize,
    swilu: bool,
) -> MemoryConfig {
    MemoryConfig {
        d,
        heads,
        n_keys,
        knn,
        k_dim,
        v_dim,
        swilu,
        value_proj: swilu || v_dim != d,
        gated: false,
        peer: false,
        qk_norm: false,
    }
}

/// Shapes that exercise every path of the forward kernels: n_keys not a power of two, odd
/// half-widths, plain PKM, value projection, 1 to 8 heads, knn 1 to 64, f32 and f16 values,
/// with and without qk-norm; with a (seed, case) per run.
pub fn memory_layer_cases() -> Vec<(u64, Case)> {
    let configs = [
        config(8, 1, 4, 1, 2, 8, true),
        config(24, 2, 50, 8, 6, 24, true), // n_keys not a power of two, k_dim/2 odd
        config(33, 4, 64, 32, 18, 33, false), // plain PKM, odd d
        config(32, 3, 40, 16, 10, 20, false), // plain PKM with value_proj (v_dim != d)
        config(64, 8, 128, 64, 64, 64, true),
        config(48, 1, 300, 5, 14, 48, true),
    ];
    let mut cases = Vec::new();
    let mut seed = 0;
    for c in configs {
        // With half-width 1 (k_dim 2), qk-norm makes every score +-1: the ranking would be
        // decided by ulp differences of sqrt between drivers, not by the semantics.
        let norms: &[bool] = if c.k_dim == 2 { &[false] } else { &[false, true] };
        for &qk_norm in norms {
            for dtype in [ValueDtype::F32, ValueDtype::F16] {
                seed += 1;
                let config = MemoryConfig { qk_norm, ..c.clone() };
                let rows = 1 + (seed as usize * 7) % 37;
                cases.push((seed, Case { config, rows, dtype }));
            }
        }
    }
    cases
}
