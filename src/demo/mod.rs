//! The facts demo's platform-independent parts: knowledge bases (synthetic or from TSV),
//! training rows with loss on the answers only, and exact greedy recall. The native command
//! (`memlayers demo`) and the web page drive training with these.

mod data;
mod facts;

pub use data::{argmax, recall, recall_rows, recalled, training_batch};
pub use facts::{Fact, KnowledgeBase};
