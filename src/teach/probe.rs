//! What a model knew before it was taught, measured on probe prompts: their greedy
//! continuations (kept or changed) and the model's loss on them.

use crate::error::{Error, Result};

/// The probe prompts used when none are given: 32 one-line openings of general-knowledge
/// sentences in English (history, science, geography, literature, daily life), written for
/// memlayers. Also the background text a retrofit counts its memory's reads on by default.
pub const DEFAULT_PROBE: &str = include_str!("default_probe.txt");

/// The non-empty lines of a probe text (`what` names it in errors); an error when there are
/// none.
pub fn probe_lines(text: &str, what: &str) -> Result<Vec<String>> {
    let lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
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
                None => crate::kernels::ops::IGNORE_TARGET,
            });
        }
    }
    (tokens, targets, seq)
}
