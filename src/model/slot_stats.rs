//! How often each memory slot is read over some text: the background statistics that sparse
//! memory fine-tuning ranks slots against (Lin et al., "Continual Learning via Sparse Memory
//! Finetuning", 2025), saved beside a model as `slot_counts.safetensors`. Per memory layer:
//! `layers.<l>.feed_forward.slot_counts` (`[n_values]`, i64: reads by any position counted and
//! any head) and `layers.<l>.feed_forward.slot_batches` (`[n_values]`, i64: in how many of the
//! background batches the slot was read: its document frequency, which the paper's IDF uses);
//! and `tokens`, `batches` (`[1]`: the positions and batches counted). The positions counted
//! are those the training loss is on: every position of text, the answers of the demo's facts.

use super::gpu::Model;
use crate::error::{Error, Result};
use crate::kernels::Gpu;
use crate::tensor_file::{HostTensor, TensorData, TensorFile};

/// The file name beside a model's weights.
pub const SLOT_COUNTS_FILE: &str = "slot_counts.safetensors";

/// Reads per slot of each memory layer over the positions counted.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotCounts {
    pub tokens: u64,
    /// Background batches (forward passes of `measure`'s `batch` rows).
    pub batches: u64,
    /// In layer order.
    pub layers: Vec<LayerSlotCounts>,
}

/// One memory layer's counts.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSlotCounts {
    pub layer: usize,
    /// Reads per slot.
    pub reads: Vec<u64>,
    /// Batches that read the slot at least once.
    pub batches: Vec<u64>,
}

impl SlotCounts {
    /// The background counts of a memory model, measured once for every caller: the slots
    /// `model` reads on `batches` batches of `[batch, seq]` that `sample` draws from an `Rng`
    /// seeded with `seed` (tokens and, to count only the reads at the answers, targets).
    pub async fn measure_sampled(
        model: &Model,
        gpu: &Gpu,
        (seed, batches): (u64, usize),
        (batch, seq): (usize, usize),
        mut sample: impl FnMut(&mut crate::rng::Rng) -> (Vec<u32>, Option<Vec<u32>>),
    ) -> Result<Self> {
        let mut rng = crate::rng::Rng::new(seed);
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        let mut with_targets = true;
        for _ in 0..batches {
            let (x, y) = sample(&mut rng);
            tokens.extend(x);
            match y {
                Some(y) => targets.extend(y),
                None => with_targets = false,
            }
        }
        let targets = with_targets.then_some(targets.as_slice());
        Self::measure(model, gpu, &tokens, targets, seq, batch).await
    }

    /// Counts the slots `model` reads on `tokens` (`rows * seq` ids, rows of `seq`), `batch`
    /// rows per forward, at every position, or with `targets` (as many) at the positions whose
    /// target is not `IGNORE_TARGET`.
    pub async fn measure(
        model: &Model,
        gpu: &Gpu,
        tokens: &[u32],
        targets: Option<&[u32]>,
        seq: usize,
        batch: usize,
    ) -> Result<Self> {
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
        if targets.is_some_and(|t| t.len() != tokens.len()) {
            return Err(Error::Config(format!(
                "slot counts: {} tokens but {} targets",
                tokens.len(),
                targets.map_or(0, <[u32]>::len)
            )));
        }
        let counted = |i: usize| targets.is_none_or(|t| t[i] != crate::kernels::ops::IGNORE_TARGET);
        let per_row = m.heads * m.knn;
        let mut counts = SlotCounts {
            tokens: (0..tokens.len()).filter(|&i| counted(i)).count() as u64,
            batches: tokens.len().div_ceil(batch * seq) as u64,
            layers: c
                .memory_layers
                .iter()
                .map(|&layer| LayerSlotCounts {
                    layer,
                    reads: vec![0; m.n_values()],
                    batches: vec![0; m.n_values()],
                })
                .collect(),
        };
        for (k, chunk) in tokens.chunks(batch * seq).enumerate() {
            let first = k * batch * seq;
            let rows = chunk.len() / seq;
            let tb = gpu.upload("slot count tokens", chunk);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let fwd = model.record_forward(gpu, &mut encoder, &tb, rows as u32, seq as u32)?;
            gpu.queue.submit([encoder.finish()]);
            for ((_, acts), layer) in fwd.memory_lookups().into_iter().zip(&mut counts.layers) {
                let slots = gpu.read_u32(&acts.indices, chunk.len() * per_row).await?;
                let mut in_batch = vec![false; m.n_values()];
                for (i, read) in slots.chunks(per_row).enumerate() {
                    if counted(first + i) {
                        for &slot in read {
                            layer.reads[slot as usize] += 1;
                            in_batch[slot as usize] = true;
                        }
                    }
                }
                for (b, read) in layer.batches.iter_mut().zip(in_batch) {
                    *b += read as u64;
                }
            }
        }
        Ok(counts)
    }

    pub fn to_tensors(&self) -> TensorFile {
        let mut file = TensorFile::default();
        let ints = |v: &[u64]| HostTensor::i64(vec![v.len()], v.iter().map(|&c| c as i64).collect());
        file.insert("tokens", ints(&[self.tokens]));
        file.insert("batches", ints(&[self.batches]));
        for l in &self.layers {
            let prefix = format!("layers.{}.feed_forward.", l.layer);
            file.insert(format!("{prefix}slot_counts"), ints(&l.reads));
            file.insert(format!("{prefix}slot_batches"), ints(&l.batches));
        }
        file
    }

    /// Reads the counts `to_tensors` wrote for a model whose memory layers are `layers`, each
    /// with `n_values` slots.
    pub fn from_tensors(file: &TensorFile, layers: &[usize], n_values: usize) -> Result<Self> {
        let ints = |name: &str, len: usize| -> Result<Vec<u64>> {
            let t = file.get(name)?;
            match &t.data {
                TensorData::I64(v) if t.shape == [len] && v.iter().all(|&c| c >= 0) => {
                    Ok(v.iter().map(|&c| c as u64).collect())
                }
                _ => Err(Error::tensor(
                    name,
                    format!("[{len}] non-negative i64"),
                    format!("{:?} {}", t.shape, t.stored_as),
                )),
            }
        };
        Ok(SlotCounts {
            tokens: ints("tokens", 1)?[0],
            batches: ints("batches", 1)?[0],
            layers: layers
                .iter()
                .map(|&layer| {
                    let prefix = format!("layers.{layer}.feed_forward.");
                    Ok(LayerSlotCounts {
                        layer,
                        reads: ints(&format!("{prefix}slot_counts"), n_values)?,
                        batches: ints(&format!("{prefix}slot_batches"), n_values)?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    /// One line per layer: slots read at least once, and the most-read slot's share.
    pub fn summary(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| {
                let (layer, c) = (l.layer, &l.reads);
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
