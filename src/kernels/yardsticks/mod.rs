//! The yardsticks a benchmark sets beside the kernels on the same adapter: a plain copy (the
//! bandwidth one) and multiply-adds on registers (the arithmetic one).

pub mod copy;
pub mod fma_peak;

/// The yardsticks' WGSL files (validated with the kernels' in the test suite).
pub const SHADERS: &[(&str, &str)] = &[("copy.wgsl", copy::SOURCE), ("fma_peak.wgsl", fma_peak::SOURCE)];
