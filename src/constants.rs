//! Constants that both the GPU kernels and the CPU oracle (`crate::reference`) need: kept
//! here so that the oracle depends on nothing but the standard library and this module.

/// A target that counts for nothing in `CrossEntropy` (torch's `ignore_index`): zero loss and
/// zero gradient for its row.
pub const IGNORE_TARGET: u32 = u32::MAX;
