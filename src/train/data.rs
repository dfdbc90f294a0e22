//! Byte-level data: every byte of the text is a token (vocab_size must be at least 256), the
//! last tenth is held out, batches are random windows drawn from a seeded generator.

use crate::error::{Error, Result};
use crate::rng::Rng;

pub struct ByteData {
    pub train: Vec<u32>,
    pub held_out: Vec<u32>,
}

impl ByteData {
    /// Splits `text`'s bytes 90/10 into training and held-out tokens.
    pub fn new(text: &[u8], seq: usize) -> Result<Self> {
        let tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
        let split = tokens.len() * 9 / 10;
        if split < seq + 2 || tokens.len() - split < seq + 2 {
            return Err(Error::Config(format!(
                "the data has {} bytes; windows of {} tokens need at least {}",
                tokens.len(),
                seq + 1,
                10 * (seq + 2)
            )));
        }
        Ok(ByteData {
            held_out: tokens[split..].to_vec(),
            train: tokens[..split].to_vec(),
        })
    }

    /// `batch` random windows of `seq + 1` tokens from `from`: (inputs, next-token targets).
    pub fn sample(from: &[u32], rng: &mut Rng, batch: usize, seq: usize) -> (Vec<u32>, Vec<u32>) {
        let (mut tokens, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        for _ in 0..batch {
            let start = rng.below((from.len() - seq) as u64) as usize;
            tokens.extend_from_slice(&from[start..start + seq]);
            targets.extend_from_slice(&from[start + 1..start + seq + 1]);
        }
        (tokens, targets)
    }
}
