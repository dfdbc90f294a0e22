//! memlayers: trainable product-key memory layers ("Memory Layers at Scale", Berges et al.
//! 2024) on any GPU through WebGPU.
//!
//! Layers, bottom up (nothing calls upward):
//! - [`gpu`]: the device, buffers, pipelines, readback, timing;
//! - [`kernels`]: one module per WGSL file, recording into a caller's encoder;
//! - [`memory`]: the memory layer and its shared value pool;
//! - [`model`]: the lingua-compatible transformer around it;
//! - [`train`]: AdamW, data and the training step;
//! - [`demo`]: facts as training data and exact greedy recall (the demo's core);
//! - [`io`]: safetensors checkpoints under the reference names;
//! - [`reference`]: the plain-Rust CPU oracle of every kernel.

pub mod constants;
pub mod demo;
pub mod error;
pub mod fuzz;
pub mod gpu;
pub mod io;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod oracle;
pub mod params;
pub mod reference;
pub mod rng;
pub mod teach;
pub mod tensor_file;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use kernels::Gpu;
pub use memory::{MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
