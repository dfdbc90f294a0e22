//! Files: safetensors read/write with any float dtype on load, the reference name mapping of
//! memory layers, and atomic writes (temporary name, then rename).

mod checkpoint;
mod tensors;

pub use checkpoint::{load_memory, memory_tensors, MemoryCheckpoint};
pub use tensors::{write_atomic, HostTensor, TensorData, TensorFile};
