//! Shared test helpers: one GPU per test binary, the tolerance rule, random data.
#![allow(dead_code)]

use memlayers::Gpu;
use std::sync::OnceLock;

/// The adapter every GPU test runs on. No adapter is a failure with install instructions,
/// never a skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new_blocking() {
        Ok(g) => {
            eprintln!("GPU tests on {}", g.adapter_name());
            g
        }
        Err(e) => panic!("GPU tests need a wgpu adapter: {e}"),
    })
}

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
