//! Model folders and checkpoints: the reference name mapping of memory layers, lingua's
//! consolidated folders (torch zip + pickle, params.json), Hugging Face folders; the
//! safetensors files and atomic writes underneath are `tensor_file`'s (re-exported here).

mod checkpoint;
pub mod hf;
pub mod lingua;
mod pickle_globals;
pub mod torch_zip;

pub use crate::tensor_file::{write_atomic, HostTensor, TensorData, TensorFile};
pub use checkpoint::{load_memory, memory_tensors, MemoryCheckpoint};
