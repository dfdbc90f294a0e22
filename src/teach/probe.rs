//! What a model knew before it was taught, measured on probe prompts: their greedy
//! continuations (kept or changed) and the model's loss on them.

use crate::demo::{argmax, score_rows};
use crate::error::{Error, Result};
use crate::kernels::ops::IGNORE_TARGET;
use crate::kernels::Gpu;
use crate::model::{Model, SlotCounts};

/// The probe prompts used when none are given: 32 one-line openings of general-knowledge
/// sentences in English (history, science, geography, literature, daily life), written for
/// memlayers. Also the background text a retrofit counts its memory's reads on by default.
pub const DEFAULT_PROBE: &str = include_str!("default_probe.txt");

/// The non-empty lines of a probe text (`what` names it in errors); an error when there are
/// none.
pub fn probe_lines(text: &str, what: &str) -> Result<Vec<String>> {
    let lines: Vec<String> = text
        .lines()
        // Trailing spaces are kept: a prompt may end where a model expects its answer.
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(Error::Config(format!("{what} has no prompt (one a line)")));
    }
    Ok(lines)
}

/// Rows of token ids, one a text, padded with `pad` to the longest, and their next-token
/// targets (`IGNORE_TARGET` past each text's end): `(tokens, targets, seq)`.
pub fn text_rows(texts: &[Vec<u32>], pad: u32) -> (Vec<u32>, Vec<u32>, usize) {
    let seq = texts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let (mut tokens, mut targets) = (
        Vec::with_capacity(texts.len() * seq),
        Vec::with_capacity(texts.len() * seq),
    );
    for ids in texts {
        for i in 0..seq {
            tokens.push(ids.get(i).copied().unwrap_or(pad));
            targets.push(match ids.get(i + 1) {
                Some(&next) => next,
                None => IGNORE_TARGET,
            });
        }
    }
    (tokens, targets, seq)
}

/// The background slot counts of `model`'s memory on `texts` (token ids, padded with `pad`):
/// the reads at every position of every text, in batches of 8 rows (what `retrofit` records
/// for a new memory, and the page for one it adds).
pub async fn text_slot_counts(model: &Model, gpu: &Gpu, texts: &[Vec<u32>], pad: u32) -> Result<SlotCounts> {
    let (tokens, _, seq) = text_rows(texts, pad);
    let at_text: Vec<u32> = texts
        .iter()
        .flat_map(|ids| (0..seq).map(move |i| if i < ids.len() { 0 } else { IGNORE_TARGET }))
        .collect();
    SlotCounts::measure(model, gpu, &tokens, Some(&at_text), seq, 8).await
}

/// Tokens each probe prompt's greedy continuation runs for (`kept_continuations`).
pub const CONTINUATION_TOKENS: usize = 16;

/// The greedy continuation of each prompt as generation produces it: up to `n` tokens, ending
/// with the first of `eos` where one comes (included: a continuation that stopped is kept only
/// if it still stops there).
pub async fn greedy_continuations(
    model: &Model,
    gpu: &Gpu,
    prompts: &[Vec<u32>],
    n: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let mut all = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        if prompt.len() + n > model.config.max_seqlen {
            return Err(Error::Config(format!(
                "a probe prompt of {} tokens and its {n}-token continuation exceed the context ({})",
                prompt.len(),
                model.config.max_seqlen
            )));
        }
        let mut cache = model.new_cache(gpu);
        let (mut feed, mut out) = (prompt.clone(), Vec::with_capacity(n));
        while out.len() < n {
            let logits = model.forward_last_with_cache(gpu, &feed, &mut cache).await?;
            let next = argmax(&logits);
            out.push(next);
            if eos.contains(&next) {
                break;
            }
            feed = vec![next];
        }
        all.push(out);
    }
    Ok(all)
}

/// The share of prompts whose greedy continuation is still `continuations` (each prompt's):
/// exact without decoding, one forward over prompt and continuation (greedy decoding repeats
/// the continuation iff the argmax at each of its positions is its next token).
pub async fn kept_continuations(
    model: &Model,
    gpu: &Gpu,
    prompts: &[Vec<u32>],
    continuations: &[Vec<u32>],
    pad: u32,
) -> Result<f32> {
    let rows: Vec<(Vec<u32>, usize)> = prompts
        .iter()
        .zip(continuations)
        .map(|(p, c)| (p.iter().chain(c).copied().collect(), p.len()))
        .collect();
    let seq = rows
        .iter()
        .map(|(ids, _)| ids.len() - 1)
        .max()
        .unwrap_or(1)
        .max(1);
    let mut kept = 0;
    for chunk in rows.chunks(super::token_facts::rows_per_pass(seq, model.config.vocab)) {
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        for (ids, prompt_len) in chunk {
            for i in 0..seq {
                tokens.push(ids.get(i).copied().unwrap_or(pad));
                targets.push(match ids.get(i + 1) {
                    Some(&t) if i + 1 >= *prompt_len => t,
                    _ => IGNORE_TARGET,
                });
            }
        }
        let (logits, _) = model.forward(gpu, &tokens, None, chunk.len(), seq).await?;
        let (hits, _, _) = score_rows(&logits, &targets, seq, model.config.vocab);
        kept += hits.iter().filter(|&&h| h).count();
    }
    Ok(kept as f32 / rows.len().max(1) as f32)
}

/// The model's mean next-token loss over `texts` (each from its first token).
pub async fn text_loss(model: &Model, gpu: &Gpu, texts: &[Vec<u32>], pad: u32) -> Result<f32> {
    let longest = texts.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let (mut sum, mut counted) = (0f64, 0usize);
    for chunk in texts.chunks(super::token_facts::rows_per_pass(longest, model.config.vocab)) {
        let (tokens, targets, seq) = text_rows(chunk, pad);
        let (logits, _) = model.forward(gpu, &tokens, None, chunk.len(), seq).await?;
        let (_, s, n) = score_rows(&logits, &targets, seq, model.config.vocab);
        sum += s;
        counted += n;
    }
    Ok((sum / counted.max(1) as f64) as f32)
}
