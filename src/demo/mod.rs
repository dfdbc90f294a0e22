//! The facts demo's platform-independent parts: knowledge bases (synthetic or from TSV),
//! training rows with loss on the answers only, and exact greedy recall, and asking one question (with the memory reads behind the answer). The native command
//! (`memlayers demo`) and the web page drive training with these.

mod ask;
mod data;
mod facts;
mod models;

pub use ask::{ask, Answer, MemoryRead};
pub use data::{
    argmax, fact_slot_counts, recall, recall_rows, recalled, score, score_rows, training_batch,
    training_batch_counted, training_batch_with, FactScores,
};
pub use facts::{Fact, KnowledgeBase};
pub use models::{train_config, DemoModel, MemoryShape, MoeShape, VOCAB};
