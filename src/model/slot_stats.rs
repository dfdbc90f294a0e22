//! How often each memory slot is read over some text: the background statistics that sparse
//! memory fine-tuning ranks slots against (Lin et al., "Continual Learning via Sparse Memory
//! Finetuning", 2025), saved beside a model as `slot_counts.safetensors`: per memory layer
//! `layers.<l>.feed_forward.slot_counts` (`[n_values]`, i64: reads by any position and head),
//! and `tokens` (`[1]`: the positions counted). Sum the layers of a shared pool for its counts.

use super::gpu::Model;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::{HostTensor, TensorFile};

/// The file name beside a model's weights.
pub const SLOT_COUNTS_FILE: &str = "slot_counts.safetensors";

/// Reads per slot of each memory layer over the positions counted.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotCounts {
    pub tokens: u64,
    /// `(layer, reads per slot)`, in layer order.
    pub layers: Vec<(usize, Vec<u64>)>,
}

impl SlotCounts {
    /// Counts the slots `model` reads on `tokens` (`rows * seq` ids, rows of `seq`), `batch`
    /// rows per forward.
    pub async fn measure(model: &Model, gpu: &Gpu, tokens: &[u32], seq: usize, batch: usize) -> Result<Self> {
        let c = &model.config;
        let m = c
            .memory
            .as_ref()
            .ok_or_else(|| Error::Config("slot counts: the model has no memory layers".into()))?;
        if seq == 0 || seq > c.max_seqlen || batch == 0 || !tokens.len().is_multiple_of(seq) {
            return Err(Error::Config(format!(
                "slot counts: {} tokens in rows of {seq} (at most {}), {batch} rows a pass",
                tokens.len(),
                c.max_seqlen
            )));
        }
        c.check_ids("tokens", tokens)?;
        let per_row = m.heads * m.knn;
        let mut counts = SlotCounts {
            tokens: tokens.len() as u64,
            layers: c
                .memory_layers
                .iter()
                .map(|&l| (l, vec![0u64; m.n_values()]))
                .collect(),
        };
        for chunk in tokens.chunks(batch * seq) {
            let rows = chunk.len() / seq;
            let tb = gpu.upload("slot count tokens", chunk);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let fwd = model.record_forward(gpu, &mut encoder, &tb, rows as u32, seq as u32)?;
            gpu.queue.submit([encoder.finish()]);
            for ((_, acts), (_, layer_counts)) in fwd.memory_lookups().into_iter().zip(&mut counts.layers) {
                for slot in gpu.read_u32(&acts.indices, chunk.len() * per_row).await? {
                    layer_counts[slot as usize] += 1;
                }
            }
        }
        Ok(counts)
    }

    pub fn to_tensors(&self) -> TensorFile {
        let mut file = TensorFile::default();
        file.insert("tokens", HostTensor::i64(vec![1], vec![self.tokens as i64]));
        for (layer, c) in &self.layers {
            file.insert(
                format!("layers.{layer}.feed_forward.slot_counts"),
                HostTensor::i64(vec![c.len()], c.iter().map(|&v| v as i64).collect()),
            );
        }
        file
    }

    /// One line per layer: slots read at least once, and the most-read slot's share.
    pub fn summary(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|(layer, c)| {
                let (read, total) = (c.iter().filter(|&&v| v > 0).count(), c.iter().sum::<u64>());
                let top = c.iter().max().copied().unwrap_or(0);
                format!(
                    "layer {layer}: {read} of {} slots read ({:.1}%), the most-read slot {:.2}% of {total} reads",
                    c.len(),
                    100.0 * read as f64 / c.len().max(1) as f64,
                    100.0 * top as f64 / total.max(1) as f64
                )
            })
            .collect()
    }
}
