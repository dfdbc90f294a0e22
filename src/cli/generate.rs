//! `memlayers generate`: continue a prompt with a trained model, streaming bytes.

use memlayers::model::{Model, ModelWeights};
use memlayers::rng::Rng;
use memlayers::{Error, Gpu, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory written by `memlayers train` (or its parent, the --out dir).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The next token from `logits`: argmax (lowest id on ties) at temperature 0, else a draw
/// from the softmax at `temperature` restricted to the top-p nucleus.
pub fn pick(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    if temperature <= 0.0 {
        return memlayers::demo::argmax(logits);
    }
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(f32, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (((l - m) / temperature).exp(), i as u32))
        .collect();
    let total: f32 = probs.iter().map(|p| p.0).sum();
    probs.iter_mut().for_each(|p| p.0 /= total);
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut kept = 0.0;
    let mut n = 0;
    while n < probs.len() && (n == 0 || kept < top_p) {
        kept += probs[n].0;
        n += 1;
    }
    let mut r = rng.uniform() * kept;
    for &(p, i) in &probs[..n] {
        if r < p {
            return i;
        }
        r -= p;
    }
    probs[n - 1].1
}

pub fn run(a: &Args) -> Result<()> {
    let (args, file) = super::train::load_model_args(&a.model)?;
    let config = args.resolve()?;
    let weights = ModelWeights::from_tensors(&config, &file)?;
    if config.vocab < 256 {
        return Err(Error::Config(
            "generate works on byte-level models (vocab_size >= 256)".into(),
        ));
    }
    let gpu = Gpu::new_blocking()?;
    let model = Model::new(&gpu, &weights)?;
    let mut tokens: Vec<u32> = a.prompt.bytes().map(|b| b as u32).collect();
    if tokens.is_empty() {
        return Err(Error::Config("--prompt is empty".into()));
    }
    let mut rng = Rng::new(a.seed);
    let mut out = std::io::stdout();
    let mut pending: Vec<u8> = Vec::new();
    // Prefill the KV cache with the prompt (its last max_seqlen - 1 tokens), then decode one
    // token at a time. When the cache is full, start a new one from the last half window.
    let keep = |tokens: &[u32], n: usize| tokens[tokens.len().saturating_sub(n)..].to_vec();
    let mut cache = model.new_cache(&gpu);
    let mut feed = keep(&tokens, config.max_seqlen - 1);
    for _ in 0..a.max_tokens {
        if cache.len as usize + feed.len() > config.max_seqlen {
            cache = model.new_cache(&gpu);
            feed = keep(&tokens, config.max_seqlen / 2);
        }
        let logits = pollster::block_on(model.forward_with_cache(&gpu, &feed, &mut cache))?;
        let last = &logits[(feed.len() - 1) * config.vocab..feed.len() * config.vocab];
        let next = pick(&last[..256], a.temperature, a.top_p, &mut rng);
        tokens.push(next);
        feed = vec![next];
        pending.push(next as u8);
        // Stream whole UTF-8 characters as they complete.
        if let Ok(s) = std::str::from_utf8(&pending) {
            write!(out, "{s}").ok();
            out.flush().ok();
            pending.clear();
        } else if pending.len() >= 4 {
            write!(out, "{}", String::from_utf8_lossy(&pending)).ok();
            pending.clear();
        }
    }
    writeln!(out).ok();
    Ok(())
}
