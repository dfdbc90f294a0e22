//! Decoding with f32 and with compact (f16) weights and KV caches, and a prefill with f32
//! and with f16 activations, each pair in the same run.

use memlayers::kernels::Gpu;
use memlayers::Result;
use std::time::Instant;

/// Tokens/s of `timed` decoding steps (one token each) into `cache`, after `warm` untimed.
fn decoding_rate(
    gpu: &Gpu,
    model: &memlayers::model::Model,
    cache: &mut memlayers::model::KvCache,
    warm: usize,
    timed: usize,
) -> Result<f64> {
    let mut start = Instant::now();
    for i in 0..warm + timed {
        if i == warm {
            start = Instant::now();
        }
        pollster::block_on(model.forward_with_cache(gpu, &[(i * 37 % 256) as u32], cache))?;
    }
    Ok(timed as f64 / start.elapsed().as_secs_f64())
}

/// Decoding one token at a time (batch 1, KV cache) with a dense transformer of 4 layers of
/// width 1024 (50 MB of f32 weights, each read once a token): f32 weights against f16
/// (`Model::use_f16_weights`), in the same run.
pub(super) fn f16_weights_decoding(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 64}"#;
    let config = memlayers::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = memlayers::model::ModelWeights::init(&config)?;
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut model = memlayers::model::Model::new(gpu, &weights)?;
        if f16 {
            model.use_f16_weights(gpu, &weights)?;
        }
        let mut cache = model.new_cache(gpu);
        rates.push(decoding_rate(gpu, &model, &mut cache, 4, 24)?);
    }
    println!(
        "decoding, 4 x 1024 dense model, batch 1: f32 weights {:.1} tokens/s, f16 weights {:.1} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

/// Decoding one token at a time late in a long sequence (positions 960-983 of 1,024), where
/// every step reads the whole KV cache (32 MB in f32 for this 4 x 1024 model, next to 50 MB
/// of weights): an f32 cache against an f16 one (`Model::new_cache_f16`), in the same run.
pub(super) fn f16_cache_decoding(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 1024}"#;
    let config = memlayers::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = memlayers::model::ModelWeights::init(&config)?;
    let model = memlayers::model::Model::new(gpu, &weights)?;
    let prompt: Vec<u32> = (0..960u32).map(|i| i * 37 % 256).collect();
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut cache = if f16 {
            model.new_cache_f16(gpu)
        } else {
            model.new_cache(gpu)
        };
        pollster::block_on(model.forward_with_cache(gpu, &prompt, &mut cache))?;
        rates.push(decoding_rate(gpu, &model, &mut cache, 2, 16)?);
    }
    println!(
        "decoding at positions 960-983, 4 x 1024 dense model, batch 1: f32 KV cache {:.1} tokens/s, f16 KV cache {:.1} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}

/// A forward of 2 x 64 tokens (prefill) through the 4 x 1024 dense model with f16 weights:
/// its feed-forward hidden activations in f32 against f16 (`Model::use_f16_activations`),
/// in the same run. The f16 forward also leaves out `w1 x`, which the f32 one keeps for a
/// backward (forwards do not know whether one follows): 3 stores of `[rows, hidden]` f32
/// against 2 of f16 per dense block, plus the reads.
pub(super) fn f16_activations_prefill(gpu: &Gpu) -> Result<()> {
    let json = r#"{"dim": 1024, "n_layers": 4, "n_heads": 8, "vocab_size": 256, "multiple_of": 256, "max_seqlen": 64}"#;
    let config = memlayers::model::LMTransformerArgs::from_json(json)?.resolve()?;
    let weights = memlayers::model::ModelWeights::init(&config)?;
    let (batch, seq) = (2, 64);
    let tokens: Vec<u32> = (0..(batch * seq) as u32).map(|i| i * 37 % 256).collect();
    let mut rates = Vec::new();
    for f16 in [false, true] {
        let mut model = memlayers::model::Model::new(gpu, &weights)?;
        model.use_f16_weights(gpu, &weights)?;
        model.use_f16_activations(f16);
        pollster::block_on(model.forward(gpu, &tokens, None, batch, seq))?;
        let (repeats, start) = (3, Instant::now());
        for _ in 0..repeats {
            pollster::block_on(model.forward(gpu, &tokens, None, batch, seq))?;
        }
        rates.push((repeats * tokens.len()) as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "prefill of 2 x 64 tokens, 4 x 1024 dense model, f16 weights: f32 activations {:.0} tokens/s, f16 activations {:.0} tokens/s ({:.2}x)\n",
        rates[0],
        rates[1],
        rates[1] / rates[0]
    );
    Ok(())
}
