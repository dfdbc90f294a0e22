//! Teaching a trained model new facts without forgetting the old ones: sparse memory
//! fine-tuning (Lin et al., "Continual Learning via Sparse Memory Finetuning", 2025) and its
//! baselines. Platform-independent: `memlayers teach` drives it natively.
//!
//! Methods:
//! - `sparse-memory`: each step updates only the `slots` value rows the batch reads that rank
//!   highest by TF-IDF against the model's background reads (`slots.rs`); every other
//!   parameter is frozen.
//! - `memory`: every value row the batch reads; every other parameter frozen.
//! - `full`: every parameter (AdamW, the value tables at 10x the rate as in training): the
//!   baseline that forgets.
//! - `lora`: rank-8 adapters on every attention and dense feed-forward projection
//!   (`lora.rs`), everything else frozen: the practitioners' baseline.
//!
//! Reads are counted at the positions the loss is on (the answers' bytes), and by default for
//! `sparse-memory` only at those the model still gets wrong (`ReadsAt`): a row read only
//! elsewhere gets no gradient from a memory layer in the last block (the demo's), so ranking
//! it would spend the budget on a row that cannot move. No weight decay while teaching:
//! decaying the rows of old facts would be forgetting by regularisation, not by learning.

mod heal;
mod lora;
mod probe;
mod slots;
mod token_facts;

pub use heal::{block_samples, heal, BlockSamples, Healed};
pub use lora::{Lora, LoraConfig};
pub use probe::{
    greedy_continuations, kept_continuations, probe_lines, text_loss, text_rows, text_slot_counts,
    CONTINUATION_TOKENS, DEFAULT_PROBE,
};
pub use token_facts::{encode_facts, fact_batch, row_len, rows_per_pass, score_token_facts, TokenFact};

pub use slots::{rank_rows, rank_rows_by, table_readers, Background, RowWeights, SlotRanking};

/// The value rows' AdamW learning rate of sparse-memory and memory teaching, `memlayers
/// teach`'s default and the page's: of the sweep in `docs/results.md` ("Teaching"), the rate
/// at which new-fact recall passes 0.9 while keeping the most old facts (3e-2 learns all and
/// forgets more, 1e-2 learns half).
pub const VALUE_ROWS_ADAMW_LR: f32 = 2e-2;
/// The value rows' AdamW learning rate for a memory retrofitted into a pretrained model
/// (`memlayers retrofit`), whose value rows start at zero: on the exported demo model of
/// `docs/hugging-face.md` (100 new facts, 300 steps), 2e-2 learned 0.10 of the new facts,
/// 0.3 learned 0.72 keeping 0.986 of its own, 1.0 learned all keeping 0.90.
pub const RETROFIT_VALUE_ROWS_ADAMW_LR: f32 = 0.3;
/// The same for plain SGD on the value rows (`--optimizer sgd`).
pub const VALUE_ROWS_SGD_LR: f32 = 100.0;
/// Full fine-tuning's learning rate (the value tables at the usual 10x).
pub const FULL_LR: f32 = 1e-3;
/// LoRA's learning rate (on `A`; `B` as `lora.rs` says).
pub const LORA_LR: f32 = 1e-3;

use crate::demo::argmax;
use crate::error::{Error, Result};
use crate::kernels::ops::IGNORE_TARGET;
use crate::kernels::Gpu;
use crate::model::{ModelForward, ModelWeights, SlotCounts};
use crate::params::ParamId;
use crate::train::{TrainConfig, Trainer, ValueOptimizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    SparseMemory,
    Memory,
    Full,
    Lora,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::SparseMemory, Method::Memory, Method::Full, Method::Lora];

    pub fn name(self) -> &'static str {
        match self {
            Method::SparseMemory => "sparse-memory",
            Method::Memory => "memory",
            Method::Full => "full",
            Method::Lora => "lora",
        }
    }

    /// Whether the method teaches the memory's value rows (and needs a memory).
    pub fn uses_memory(self) -> bool {
        matches!(self, Method::SparseMemory | Method::Memory)
    }

    pub fn parse(name: &str) -> Result<Self> {
        Method::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            Error::Config(format!(
                "teaching method {name:?}: use sparse-memory, memory, full or lora"
            ))
        })
    }
}

/// How a model is taught.
#[derive(Clone, Debug, PartialEq)]
pub struct TeachConfig {
    pub method: Method,
    /// Value rows updated per step per table (`sparse-memory`).
    pub slots: usize,
    pub steps: u32,
    /// The value rows' learning rate (memory methods); every parameter's (`full`, whose value
    /// tables get 10x it).
    pub lr: f32,
    /// The value rows' optimiser in the memory methods (`full` uses AdamW throughout).
    pub optimizer: ValueOptimizer,
    /// Where `sparse-memory` counts a batch's reads (`memory` updates every row read at the
    /// answers).
    pub reads_at: ReadsAt,
    /// The adapters' rank and alpha (`lora`).
    pub lora: LoraConfig,
    /// How `sparse-memory` ranks the rows read.
    pub ranking: SlotRanking,
}

/// The positions whose reads a teaching step counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadsAt {
    /// Every answer byte (the loss's positions).
    Answers,
    /// The answer bytes the model still gets wrong (its argmax is not the byte): rows read
    /// only where the answer is already right need no change, and leaving them alone
    /// spares the old facts that read them. A batch the model already answers updates
    /// nothing.
    Mistakes,
}

impl TeachConfig {
    /// The trainer's configuration: a constant learning rate, no weight decay, and for the
    /// memory methods frozen weights.
    pub fn train_config(&self) -> TrainConfig {
        let full = self.method == Method::Full;
        TrainConfig {
            steps: self.steps,
            lr: self.lr,
            warmup: 0,
            lr_min_ratio: 1.0,
            value_lr: if full { 10.0 * self.lr } else { self.lr },
            weight_decay: 0.0,
            freeze_weights: !full,
            value_optimizer: if full {
                ValueOptimizer::AdamW
            } else {
                self.optimizer
            },
            ..Default::default()
        }
    }
}

/// A model being taught.
pub struct Teacher {
    pub trainer: Trainer,
    pub config: TeachConfig,
    background: Option<Background>,
    readers: Vec<(ParamId, Vec<usize>)>,
    /// Value rows the last step updated, over every table (0 for `full` and `lora`).
    pub rows_updated: usize,
    /// The adapters (`lora`).
    pub lora: Option<Lora>,
}

impl Teacher {
    /// `background`: the model's slot counts over its original data (required by
    /// `sparse-memory`).
    pub fn new(
        gpu: &Gpu,
        weights: &ModelWeights,
        config: TeachConfig,
        background: Option<&SlotCounts>,
    ) -> Result<Self> {
        Self::check(&weights.config, &config, background)?;
        let trainer = Trainer::new(gpu, weights, config.train_config())?;
        Self::with_trainer(gpu, trainer, config, background)
    }

    /// `new` over a trainer the caller made from the model's weights with
    /// `config.train_config()` (`Trainer::new_sharded`: a model whose tables are sharded over
    /// devices).
    pub fn with_trainer(
        gpu: &Gpu,
        mut trainer: Trainer,
        config: TeachConfig,
        background: Option<&SlotCounts>,
    ) -> Result<Self> {
        Self::check(&trainer.model.config, &config, background)?;
        if trainer.config != config.train_config() {
            return Err(Error::Config(
                "teach: the trainer was not made with this teaching configuration".into(),
            ));
        }
        let layout = trainer.model.layout();
        let background = match (config.method, background) {
            (Method::SparseMemory, Some(counts)) => Some(Background::new(layout, counts)?),
            _ => None,
        };
        let readers = table_readers(layout);
        let lora = match config.method {
            Method::Lora => Some(Lora::new(gpu, &trainer.model, config.lora, 0x10AA)?),
            _ => None,
        };
        if let Some(lora) = &lora {
            trainer.need_gradients(&lora.targets());
        }
        Ok(Teacher {
            trainer,
            config,
            background,
            readers,
            rows_updated: 0,
            lora,
        })
    }

    /// What a teaching configuration needs of the model and of its inputs.
    fn check(
        model: &crate::model::ModelConfig,
        config: &TeachConfig,
        background: Option<&SlotCounts>,
    ) -> Result<()> {
        let memory = model.memory.is_some();
        if config.method.uses_memory() && !memory {
            return Err(Error::Config(format!(
                "teach --method {}: the model has no memory layers (use --method full)",
                config.method.name()
            )));
        }
        if config.method == Method::SparseMemory && background.is_none() {
            return Err(Error::Config(
                "teach --method sparse-memory ranks rows against the model's background slot counts \
(slot_counts.safetensors; make them with memlayers slot-stats)"
                    .into(),
            ));
        }
        if config.method == Method::SparseMemory && config.slots == 0 {
            return Err(Error::Config("teach: --slots must be positive".into()));
        }
        Ok(())
    }

    /// How often each row of each value table is read at the positions `at` says
    /// (`tokens`, `targets`: `[batch, seq]`).
    pub async fn rows_read(
        &self,
        gpu: &Gpu,
        (tokens, targets): (&[u32], &[u32]),
        (batch, seq): (usize, usize),
        at: ReadsAt,
    ) -> Result<Vec<(ParamId, Vec<u32>)>> {
        let model = &self.trainer.model;
        model.config.check_ids("tokens", tokens)?;
        if tokens.len() != batch * seq || targets.len() != batch * seq {
            return Err(Error::tensor(
                "tokens",
                format!("[{batch}, {seq}]"),
                format!("{} ids", tokens.len()),
            ));
        }
        let tb = gpu.upload("teach tokens", tokens);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let fwd = model.record_forward(gpu, &mut encoder, &tb, batch as u32, seq as u32)?;
        gpu.queue.submit([encoder.finish()]);
        self.count_reads(gpu, &fwd, targets, at).await
    }

    /// `rows_read` from a forward already submitted (`fwd`, over the rows `targets` belong to).
    async fn count_reads(
        &self,
        gpu: &Gpu,
        fwd: &ModelForward,
        targets: &[u32],
        at: ReadsAt,
    ) -> Result<Vec<(ParamId, Vec<u32>)>> {
        let model = &self.trainer.model;
        let m = model
            .config
            .memory
            .as_ref()
            .ok_or_else(|| Error::Config("rows read: the model has no memory layers".into()))?;
        let per_position = m.heads * m.knn;
        let positions = targets.len();
        let counted: Vec<bool> = match at {
            ReadsAt::Answers => targets.iter().map(|&t| t != IGNORE_TARGET).collect(),
            ReadsAt::Mistakes => {
                let vocab = model.config.vocab;
                let logits = gpu.read_f32(&fwd.logits, positions * vocab).await?;
                (0..positions)
                    .map(|i| {
                        targets[i] != IGNORE_TARGET
                            && argmax(&logits[i * vocab..(i + 1) * vocab]) != targets[i]
                    })
                    .collect()
            }
        };
        let mut reads: Vec<(ParamId, Vec<u32>)> = self
            .readers
            .iter()
            .map(|(id, _)| (*id, vec![0u32; m.n_values()]))
            .collect();
        for (layer, acts) in fwd.memory_lookups() {
            let slots = gpu.read_u32(&acts.indices, positions * per_position).await?;
            for (position, read) in slots.chunks(per_position).enumerate() {
                if !counted[position] {
                    continue;
                }
                for ((_, readers), (_, counts)) in self.readers.iter().zip(reads.iter_mut()) {
                    if readers.contains(&layer) {
                        for &slot in read {
                            counts[slot as usize] += 1;
                        }
                    }
                }
            }
        }
        Ok(reads)
    }

    /// One teaching step on `tokens`/`targets` (`[batch, seq]`, loss on the targets that are
    /// not `IGNORE_TARGET`); returns the step's loss. The memory methods submit the forward
    /// and backward, read which rows the forward read, and then submit the update of the
    /// chosen rows.
    pub async fn step(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f32> {
        if self.config.method == Method::Full {
            return self.trainer.step(gpu, tokens, targets, batch, seq).await;
        }
        if let Some(lora) = &mut self.lora {
            self.trainer.submit_gradients(gpu, tokens, targets, batch, seq)?;
            let grads = self.trainer.take_gradients()?;
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            lora.record_step(gpu, &mut encoder, &self.trainer.model, &grads, self.config.lr)?;
            gpu.queue.submit([encoder.finish()]);
            return self.trainer.last_loss(gpu).await;
        }
        let sparse = self.config.method == Method::SparseMemory;
        let top = sparse.then_some(self.config.slots);
        let at = if sparse {
            self.config.reads_at
        } else {
            ReadsAt::Answers
        };
        let fwd = self.trainer.submit_gradients(gpu, tokens, targets, batch, seq)?;
        let masks: Vec<(ParamId, Vec<u32>)> = self
            .count_reads(gpu, &fwd, targets, at)
            .await?
            .into_iter()
            .map(|(id, reads)| {
                let weights = self
                    .background
                    .as_ref()
                    .and_then(|b| b.weights(id, self.config.ranking));
                (id, rank_rows_by(&reads, weights, top))
            })
            .collect();
        self.rows_updated = masks
            .iter()
            .map(|(_, m)| m.iter().filter(|&&x| x != 0).count())
            .sum();
        self.trainer.set_value_rows(Some(masks))?;
        self.trainer.submit_update(gpu)?;
        self.trainer.last_loss(gpu).await
    }

    /// `step`, waited for (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step_blocking(
        &mut self,
        gpu: &Gpu,
        tokens: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f32> {
        pollster::block_on(self.step(gpu, tokens, targets, batch, seq))
    }
}
