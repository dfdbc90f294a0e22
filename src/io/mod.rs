//! Files: safetensors read/write with any float dtype on load, the reference name mapping of
//! memory layers, lingua's consolidated folders (torch zip + pickle, params.json), and atomic
//! writes (temporary name, then rename).

mod checkpoint;
pub mod hf;
pub mod lingua;
mod tensors;
pub mod torch_zip;

pub use checkpoint::{load_memory, memory_tensors, MemoryCheckpoint};
pub use tensors::{write_atomic, HostTensor, TensorData, TensorFile};
