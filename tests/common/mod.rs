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
