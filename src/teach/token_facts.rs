//! Facts for a model with its own tokenizer (a Hugging Face folder's): each fact's sentence
//! encoded as the model reads it, with the tokenizer's special tokens (a BOS where it adds
//! one), and split into prompt and answer tokens (`encode_facts`). One fact a row, padded; the
//! loss is on the answer's tokens. Recall is exact, as for bytes
//! (`demo::data`): greedy decoding of the prompt yields the answer iff, fed prompt and answer,
//! the argmax at every answer position is the answer's next token.

use crate::demo::{score_rows, Fact, FactScores, KnowledgeBase};
use crate::error::{Error, Result};
use crate::io::hf::HfTokenizer;
use crate::kernels::ops::IGNORE_TARGET;
use crate::kernels::Gpu;
use crate::model::Model;
use crate::rng::Rng;

/// A fact's prompt and answer as token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFact {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

impl TokenFact {
    pub fn len(&self) -> usize {
        self.prompt.len() + self.answer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `facts` encoded by `tokenizer`: each sentence `"{subject} {relation} {object}."` encoded
/// whole (with the tokenizer's special tokens), split where its tokens leave the prompt text
/// `"{subject} {relation} "`: BPE vocabularies attach the space to the object's first token
/// (answer `" {object}."`), byte-level ones keep it in the prompt (answer `"{object}."`). An
/// error names the first fact whose sentence does not decode back to itself (a character the
/// tokenizer cannot encode).
pub fn encode_facts(facts: &[Fact], tokenizer: &HfTokenizer) -> Result<Vec<TokenFact>> {
    facts
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (prompt, answer) = (f.prompt(), f.answer());
            let sentence = format!("{prompt}{answer}");
            let ids = tokenizer.encode(&sentence, true)?;
            let back = tokenizer.decode(&ids, true)?;
            if back != sentence {
                return Err(Error::Config(format!(
                    "fact {} ({} {} {}): the tokenizer cannot encode {sentence:?} (it decodes back as {back:?})",
                    i + 1,
                    f.subject,
                    f.relation,
                    f.object
                )));
            }
            let mut split = ids.len();
            while split > 0 && !prompt.starts_with(tokenizer.decode(&ids[..split], true)?.as_str()) {
                split -= 1;
            }
            if ids.len() < 2 {
                return Err(Error::Config(format!(
                    "fact {}: {sentence:?} is a single token; there is no prompt to answer",
                    i + 1
                )));
            }
            // At least one answer token and at least one prompt token to predict it from.
            let split = split.clamp(1, ids.len() - 1);
            Ok(TokenFact {
                prompt: ids[..split].to_vec(),
                answer: ids[split..].to_vec(),
            })
        })
        .collect()
}

/// One row of `seq` inputs and targets: the fact from position 0, `pad` after it; targets on
/// the answer's tokens only.
fn push_row(fact: &TokenFact, seq: usize, pad: u32, tokens: &mut Vec<u32>, targets: &mut Vec<u32>) {
    let ids: Vec<u32> = fact.prompt.iter().chain(&fact.answer).copied().collect();
    let first_answer = fact.prompt.len();
    for i in 0..seq {
        tokens.push(ids.get(i).copied().unwrap_or(pad));
        // Position i predicts id i + 1.
        targets.push(match ids.get(i + 1) {
            Some(&t) if i + 1 >= first_answer => t,
            _ => IGNORE_TARGET,
        });
    }
}

/// The row length a set of facts needs: the longest fact less one (the last token is only a
/// target).
pub fn row_len(facts: &[TokenFact]) -> usize {
    facts
        .iter()
        .map(|f| f.len().saturating_sub(1))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// `batch` facts drawn from `facts`, one a row of `seq`.
pub fn fact_batch(
    facts: &[TokenFact],
    rng: &mut Rng,
    batch: usize,
    seq: usize,
    pad: u32,
) -> (Vec<u32>, Vec<u32>) {
    let (mut tokens, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
    for _ in 0..batch {
        let fact = &facts[rng.below(facts.len() as u64) as usize];
        push_row(fact, seq, pad, &mut tokens, &mut targets);
    }
    (tokens, targets)
}

/// Rows a forward takes so that its logits stay within one storage binding (2^25 f32).
pub fn rows_per_pass(seq: usize, vocab: usize) -> usize {
    ((1usize << 25) / (seq * vocab).max(1)).max(1)
}

/// Scores `facts` (`encoded` their encodings, in the same order) as `demo::score` does bytes.
pub async fn score_token_facts(
    model: &Model,
    gpu: &Gpu,
    facts: &[Fact],
    encoded: &[TokenFact],
    pad: u32,
) -> Result<FactScores> {
    let seq = row_len(encoded);
    let vocab = model.config.vocab;
    let (mut recalled, mut loss, mut counted) = (Vec::with_capacity(encoded.len()), 0f64, 0usize);
    for chunk in encoded.chunks(rows_per_pass(seq, vocab)) {
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        for fact in chunk {
            push_row(fact, seq, pad, &mut tokens, &mut targets);
        }
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
