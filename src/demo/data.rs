//! Facts as training rows and as recall questions.
//!
//! Training rows pack whole sentences (`"{prompt}{answer}\n"`) drawn at random, starting at
//! position 0 and padded with newlines; only the answer's bytes are targets (the rest are
//! `IGNORE_TARGET`): subject names are arbitrary strings, and predicting them would spend
//! capacity on something recall does not measure.
//!
//! Recall is measured without sampling a token at a time: greedy decoding of a prompt yields
//! exactly the answer if and only if, fed the prompt and the answer, the model's argmax at
//! every answer position is the answer's next byte (the first wrong argmax is where greedy
//! decoding would leave the answer). So one forward pass over every fact at position 0
//! decides every prompt exactly.

use super::facts::{Fact, KnowledgeBase};
use crate::error::Result;
use crate::kernels::ops::IGNORE_TARGET;
use crate::kernels::Gpu;
use crate::model::Model;
use crate::rng::Rng;

const PAD: u32 = b'\n' as u32;

/// `batch` rows of `seq` tokens and their targets, packed with facts drawn from `facts`
/// (every fact must fit in `seq`).
/// A memory model's background slot counts on its facts: the reads at the answers of
/// `batches` training batches drawn from `seed` (what sparse-memory teaching ranks against).
pub async fn fact_slot_counts(
    model: &crate::model::Model,
    gpu: &Gpu,
    facts: &[Fact],
    (seed, batches): (u64, usize),
    (batch, seq): (usize, usize),
) -> crate::error::Result<crate::model::SlotCounts> {
    crate::model::SlotCounts::measure_sampled(model, gpu, (seed, batches), (batch, seq), |rng| {
        let (x, y) = training_batch(facts, rng, batch, seq);
        (x, Some(y))
    })
    .await
}

pub fn training_batch(facts: &[Fact], rng: &mut Rng, batch: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
    training_batch_with(facts, rng, (batch, seq), false)
}

/// `training_batch`; with `ends`, the space that ends each prompt and the newline that ends
/// each fact are targets too (the demo's default; `--answers-only` leaves them out): a prompt
/// typed without its trailing space is answered, and generation can stop where the fact ends.
/// Recall is measured the same way either way.
pub fn training_batch_with(
    facts: &[Fact],
    rng: &mut Rng,
    shape: (usize, usize),
    ends: bool,
) -> (Vec<u32>, Vec<u32>) {
    let (tokens, targets, _) = training_batch_counted(facts, rng, shape, ends);
    (tokens, targets)
}

/// `training_batch_with`, and how many of the targets are answer bytes (the others: the ends
/// `ends` adds). A loss divided by that count weighs the answers as without the ends.
pub fn training_batch_counted(
    facts: &[Fact],
    rng: &mut Rng,
    (batch, seq): (usize, usize),
    ends: bool,
) -> (Vec<u32>, Vec<u32>, usize) {
    let (mut tokens, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
    let mut answers = 0;
    for _ in 0..batch {
        let (mut row, mut row_targets) = (Vec::with_capacity(seq + 1), Vec::with_capacity(seq + 1));
        let mut answer_targets = 0;
        loop {
            let fact = &facts[rng.below(facts.len() as u64) as usize];
            let (prompt, answer) = (fact.prompt(), fact.answer());
            if !row.is_empty() && row.len() + prompt.len() + answer.len() + 1 > seq + 1 {
                break;
            }
            let start = row.len();
            push_sentence(&mut row, &mut row_targets, &prompt, &answer);
            answer_targets += answer.len();
            if ends && prompt.ends_with(' ') {
                row_targets[start + prompt.len() - 1] = b' ' as u32;
            }
            row.push(PAD);
            row_targets.push(if ends { PAD } else { IGNORE_TARGET });
        }
        row.resize(seq + 1, PAD);
        row_targets.resize(seq + 1, IGNORE_TARGET);
        // Inputs are positions 0..seq; the target of position i is the byte at i + 1.
        tokens.extend_from_slice(&row[..seq]);
        targets.extend_from_slice(&row_targets[1..seq + 1]);
        answers += answer_targets;
    }
    (tokens, targets, answers)
}

/// Appends `prompt` and `answer` to `row`; `row_targets[i]` is the byte at `i` when that byte
/// is part of the answer (the target of position `i - 1`), else `IGNORE_TARGET`.
fn push_sentence(row: &mut Vec<u32>, row_targets: &mut Vec<u32>, prompt: &str, answer: &str) {
    for b in prompt.bytes() {
        row.push(b as u32);
        row_targets.push(IGNORE_TARGET);
    }
    for b in answer.bytes() {
        row.push(b as u32);
        row_targets.push(b as u32);
    }
}

/// The facts as recall questions: one row each, the sentence at position 0 padded to the
/// longest; targets only on the answer.
pub fn recall_rows(facts: &[Fact]) -> (Vec<u32>, Vec<u32>, usize) {
    let seq = facts.iter().map(Fact::sentence_len).max().unwrap_or(1).max(1);
    let (mut tokens, mut targets) = (Vec::with_capacity(facts.len() * seq), Vec::new());
    for fact in facts {
        let (mut row, mut row_targets) = (Vec::new(), Vec::new());
        push_sentence(&mut row, &mut row_targets, &fact.prompt(), &fact.answer());
        row.resize(seq + 1, PAD);
        row_targets.resize(seq + 1, IGNORE_TARGET);
        tokens.extend_from_slice(&row[..seq]);
        targets.extend_from_slice(&row_targets[1..seq + 1]);
    }
    (tokens, targets, seq)
}

/// The index of the largest logit, the lowest on ties (greedy decoding).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// What a model makes of some facts: for each, whether greedy decoding of its prompt yields
/// exactly its answer, and its question (`KnowledgeBase::question_ids`); and the mean
/// cross-entropy over every answer byte.
#[derive(Clone, Debug, PartialEq)]
pub struct FactScores {
    pub recalled: Vec<bool>,
    pub question: Vec<usize>,
    pub loss: f32,
}

impl FactScores {
    /// The fraction of questions answered right: greedy decoding yields one of the question's
    /// answers (filtered Hits@1 in knowledge-graph terms). With one answer per question, the
    /// fraction of facts recalled exactly.
    pub fn recall(&self) -> f32 {
        self.recall_of(0..self.recalled.len())
    }

    /// `recall` over the questions of the facts in `range` (the facts of a question must not
    /// straddle its ends).
    pub fn recall_of(&self, range: std::ops::Range<usize>) -> f32 {
        let mut answered = std::collections::HashMap::<usize, bool>::new();
        for i in range {
            *answered.entry(self.question[i]).or_default() |= self.recalled[i];
        }
        answered.values().filter(|&&h| h).count() as f32 / answered.len().max(1) as f32
    }
}

/// Scores `facts` (see `FactScores`), one forward pass per 256 facts.
pub async fn score(model: &Model, gpu: &Gpu, facts: &[Fact]) -> Result<FactScores> {
    const CHUNK: usize = 256;
    let vocab = model.config.vocab;
    let mut recalled = Vec::with_capacity(facts.len());
    let (mut loss, mut counted) = (0f64, 0usize);
    for chunk in facts.chunks(CHUNK) {
        let (tokens, targets, seq) = recall_rows(chunk);
        let (logits, _) = model.forward(gpu, &tokens, None, chunk.len(), seq).await?;
        let (hits, sum, n) = score_rows(&logits, &targets, seq, vocab);
        recalled.extend(hits);
        loss += sum;
        counted += n;
    }
    Ok(FactScores {
        recalled,
        question: KnowledgeBase::question_ids(facts),
        loss: (loss / counted.max(1) as f64) as f32,
    })
}

/// Per row of `seq` positions (`logits [rows * seq, vocab]`, `targets [rows * seq]`): whether
/// the argmax is the target at every position that has one; and the sum and count of the
/// cross-entropies there.
pub fn score_rows(logits: &[f32], targets: &[u32], seq: usize, vocab: usize) -> (Vec<bool>, f64, usize) {
    let rows = targets.len() / seq.max(1);
    let (mut hits, mut loss, mut counted) = (Vec::with_capacity(rows), 0f64, 0usize);
    for r in 0..rows {
        let mut hit = true;
        for i in 0..seq {
            let t = targets[r * seq + i];
            if t == IGNORE_TARGET {
                continue;
            }
            let at = (r * seq + i) * vocab;
            let row = &logits[at..at + vocab];
            hit &= argmax(row) == t;
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
            let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
            loss += max + sum.ln() - row[t as usize] as f64;
            counted += 1;
        }
        hits.push(hit);
    }
    (hits, loss, counted)
}

/// For each fact, whether greedy decoding of its prompt yields exactly its answer.
pub async fn recalled(model: &Model, gpu: &Gpu, facts: &[Fact]) -> Result<Vec<bool>> {
    Ok(score(model, gpu, facts).await?.recalled)
}

/// The fraction of the questions of `facts` answered right (see `FactScores::recall`).
pub async fn recall(model: &Model, gpu: &Gpu, facts: &[Fact]) -> Result<f32> {
    Ok(score(model, gpu, facts).await?.recall())
}
