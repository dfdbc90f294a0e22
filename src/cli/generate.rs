//! `memlayers generate`: continue a prompt. memlayers' byte-level checkpoints stream bytes;
//! lingua folders generate as lingua's generator does: the prompt encoded with BOS by the
//! model's tokenizer, then decoding until EOS or `--max-tokens` new tokens, the text printed
//! to stdout. Hugging Face folders generate as transformers does: the prompt tokenized as
//! `tokenizer(prompt)` (or rendered by the chat template with `--chat`), decoding until any
//! EOS id, the text printed as it is produced.

use super::stop_text::StopPrinter;
use memlayers::io::hf::HfFolder;
use memlayers::model::{KvCache, Model, ModelConfig, WeightPrecision};
use memlayers::rng::Rng;
use memlayers::tokenizer::Tokenizer;
use memlayers::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint directory written by `memlayers train` (or its parent, the --out dir), or
    /// a lingua consolidated folder (consolidated.pth and params.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The tokenizer file of a lingua model (default: params.json's path, else a file of that
    /// name beside the checkpoint).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
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
    /// Store the attention, feed-forward and output weights as f16 (half their memory and
    /// traffic; sums stay f32; memory layers keep f32).
    #[arg(long, conflicts_with = "q8_weights")]
    pub f16_weights: bool,
    /// Store the attention, feed-forward and output weights as 8-bit integers with one f16
    /// scale per 32 values (q8_0: about a quarter of f32's memory and traffic; sums stay f32;
    /// memory layers' projections keep f16).
    #[arg(long)]
    pub q8_weights: bool,
    /// Linear layers with f16 inputs on the adapter's matrix units, where it has them.
    #[arg(long)]
    pub f16_gemm_inputs: bool,
    /// Keep the KV cache's keys and values as f16 (half its memory and traffic; attention
    /// computes in f32).
    #[arg(long)]
    pub f16_kv_cache: bool,
    /// Store the feed-forward blocks' hidden activations as f16 (half their memory and
    /// traffic; sums stay f32).
    #[arg(long)]
    pub f16_activations: bool,
    /// End generation where the output would contain this text (left out of it); may be
    /// given several times. `\n`, `\t` and `\\` read as a newline, a tab and a backslash:
    /// `--stop '\n'` ends a demo model's answer at the end of its fact.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Shard the memory's value tables by columns over these adapters (indices as
    /// `memlayers info` lists them; one may repeat): the first holds the rest of the model.
    /// `MEMLAYERS_MAX_DEVICE_BYTES` caps each device's share.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["f16_weights", "q8_weights", "f16_gemm_inputs"])]
    pub devices: Option<Vec<usize>>,
    /// Hugging Face instruct models: the prompt is one user message, rendered by the
    /// tokenizer_config.json chat template.
    #[arg(long)]
    pub chat: bool,
}

/// An empty KV cache of the kind `a` asks for.
fn empty_cache(a: &Args, gpu: &Gpu, model: &Model) -> KvCache {
    if a.f16_kv_cache {
        model.new_cache_f16(gpu)
    } else {
        model.new_cache(gpu)
    }
}

/// The device as `a` asks for it (the first of `--devices`).
fn device(a: &Args) -> Result<Gpu> {
    let mut gpu = match a.devices.as_deref() {
        Some([first, ..]) => Gpu::on_adapter_blocking(*first)?,
        _ => Gpu::new_blocking()?,
    };
    if a.f16_gemm_inputs {
        gpu.set_gemm_precision(memlayers::kernels::linear::GemmPrecision::F16Inputs);
    }
    Ok(gpu)
}

/// The device and the model as `a` asks for them.
fn load(a: &Args, weights: &memlayers::model::ModelWeights) -> Result<(Gpu, Model)> {
    let gpu = device(a)?;
    let mut model = super::devices::model(&gpu, a.devices.as_deref(), weights)?;
    model.use_f16_activations(a.f16_activations);
    if a.precision() != WeightPrecision::F32 {
        model.use_compact_weights(&gpu, weights, a.precision())?;
    }
    Ok((gpu, model))
}

impl Args {
    /// The weights' precision the flags ask for.
    fn precision(&self) -> WeightPrecision {
        if self.q8_weights {
            WeightPrecision::Q8
        } else if self.f16_weights {
            WeightPrecision::F16
        } else {
            WeightPrecision::F32
        }
    }
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

/// lingua's generation: `tokens` (the prompt with BOS) are prefilled into `cache` (empty),
/// then one token at a time until EOS, `max_new` tokens or `done` (given the new tokens so
/// far) says so; returns the new tokens without the EOS.
#[allow(clippy::too_many_arguments)]
pub fn generate_ids(
    gpu: &Gpu,
    model: &Model,
    mut cache: KvCache,
    config: &ModelConfig,
    prompt: &[u32],
    max_new: usize,
    eos: u32,
    pick_next: &mut dyn FnMut(&[f32]) -> u32,
    done: &mut dyn FnMut(&[u32]) -> Result<bool>,
) -> Result<Vec<u32>> {
    if max_new >= config.max_seqlen {
        return Err(Error::Config(format!(
            "--max-tokens {max_new} leaves no room for the prompt in max_seqlen {}",
            config.max_seqlen
        )));
    }
    // As lingua: the prompt's last max_seqlen - max_new tokens.
    let keep = config.max_seqlen - max_new;
    let mut feed = prompt[prompt.len().saturating_sub(keep)..].to_vec();
    let mut out = Vec::new();
    while out.len() < max_new {
        let logits = pollster::block_on(model.forward_last_with_cache(gpu, &feed, &mut cache))?;
        let next = pick_next(&logits);
        if next == eos {
            break;
        }
        out.push(next);
        if done(&out)? {
            break;
        }
        feed = vec![next];
    }
    Ok(out)
}

fn run_lingua(a: &Args, model_dir: &super::model_dir::ModelDir, tokenizer: &Tokenizer) -> Result<()> {
    let config = model_dir.config();
    let prompt = tokenizer.encode(&a.prompt, true, false)?;
    let (gpu, model) = load(a, &model_dir.weights)?;
    let mut rng = Rng::new(a.seed);
    let mut pick_next = |logits: &[f32]| pick(logits, a.temperature, a.top_p, &mut rng);
    let stops = super::stop_text::parse(&a.stop)?;
    let mut done = |ids: &[u32]| -> Result<bool> {
        Ok(!stops.is_empty() && super::stop_text::cut(&stops, &tokenizer.decode(ids)?).1)
    };
    let ids = generate_ids(
        &gpu,
        &model,
        empty_cache(a, &gpu, &model),
        config,
        &prompt,
        a.max_tokens,
        tokenizer.eos_id,
        &mut pick_next,
        &mut done,
    )?;
    eprintln!(
        "{} tokenizer: prompt {} tokens (with BOS), {} new",
        tokenizer.kind().name(),
        prompt.len(),
        ids.len()
    );
    let text = tokenizer.decode(&ids)?;
    println!("{}", super::stop_text::cut(&stops, &text).0);
    Ok(())
}

/// Generation as transformers does it: the prompt tokenized with the tokenizer's own special
/// tokens (or the chat template's rendering, tokenized without them), then tokens until any
/// EOS id or `--max-tokens`, each printed as soon as it completes a character.
fn run_hf(a: &Args, folder: &HfFolder) -> Result<()> {
    let config = folder.config();
    let prompt = folder.prompt_ids(&a.prompt, a.chat)?;
    if prompt.is_empty() {
        return Err(Error::Config("--prompt gives no tokens".into()));
    }
    if prompt.len() + a.max_tokens > config.max_seqlen {
        return Err(Error::Config(format!(
            "the prompt's {} tokens and --max-tokens {} pass the context of {} positions",
            prompt.len(),
            a.max_tokens,
            config.max_seqlen
        )));
    }
    let gpu = device(a)?;
    // Each tensor uploaded as it is read: the host never holds the whole model.
    let mut model = match super::devices::others(a.devices.as_deref(), config)? {
        Some(others) => folder.upload_sharded(&gpu, others, super::devices::shard_options()?)?,
        None => folder.upload(&gpu, a.precision())?,
    };
    model.use_f16_activations(a.f16_activations);
    let mut rng = Rng::new(a.seed);
    let mut cache = empty_cache(a, &gpu, &model);
    let mut stream = memlayers::io::hf::TextStream::default();
    let mut out = StopPrinter::new(super::stop_text::parse(&a.stop)?, std::io::stdout());
    let (mut feed, mut produced) = (prompt.clone(), 0);
    while produced < a.max_tokens {
        let logits = pollster::block_on(model.forward_last_with_cache(&gpu, &feed, &mut cache))?;
        let next = pick(&logits, a.temperature, a.top_p, &mut rng);
        produced += 1;
        if folder.eos_ids.contains(&next) {
            break;
        }
        if out.push(stream.push(&folder.tokenizer, next)?.as_bytes()) {
            break;
        }
        feed = vec![next];
    }
    out.finish();
    eprintln!("prompt {} tokens, {produced} new", prompt.len());
    Ok(())
}

pub fn run(a: &Args) -> Result<()> {
    if memlayers::io::hf::is_hf_folder(&a.model) {
        return run_hf(a, &HfFolder::open(&a.model)?);
    }
    let model_dir = super::model_dir::load(&a.model)?;
    if a.chat {
        return Err(Error::Config("--chat is for Hugging Face folders".into()));
    }
    if let Some(tokenizer) = model_dir.tokenizer(a.tokenizer.as_deref())? {
        return run_lingua(a, &model_dir, &tokenizer);
    }
    if a.tokenizer.is_some() {
        return Err(Error::Config(
            "--tokenizer is for lingua folders; memlayers checkpoints are byte-level".into(),
        ));
    }
    let weights = &model_dir.weights;
    let config = weights.config.clone();
    if config.vocab < 256 {
        return Err(Error::Config(
            "generate works on byte-level models (vocab_size >= 256)".into(),
        ));
    }
    let (gpu, model) = load(a, weights)?;
    let mut tokens: Vec<u32> = a.prompt.bytes().map(|b| b as u32).collect();
    if tokens.is_empty() {
        return Err(Error::Config("--prompt is empty".into()));
    }
    let mut rng = Rng::new(a.seed);
    let mut out = StopPrinter::new(super::stop_text::parse(&a.stop)?, std::io::stdout());
    // Prefill the KV cache with the prompt (its last max_seqlen - 1 tokens), then decode one
    // token at a time. When the cache is full, start a new one from the last half window.
    let keep = |tokens: &[u32], n: usize| tokens[tokens.len().saturating_sub(n)..].to_vec();
    let mut cache = empty_cache(a, &gpu, &model);
    let mut feed = keep(&tokens, config.max_seqlen - 1);
    for _ in 0..a.max_tokens {
        if cache.len as usize + feed.len() > config.max_seqlen {
            cache = empty_cache(a, &gpu, &model);
            feed = keep(&tokens, config.max_seqlen / 2);
        }
        let logits = pollster::block_on(model.forward_last_with_cache(&gpu, &feed, &mut cache))?;
        let next = pick(&logits[..256], a.temperature, a.top_p, &mut rng);
        tokens.push(next);
        feed = vec![next];
        // Streamed as whole UTF-8 characters as they complete.
        if out.push(&[next as u8]) {
            break;
        }
    }
    out.finish();
    Ok(())
}
