//! `memlayers slot-stats`: how often each memory slot of a model is read over a text file
//! (`slot_counts.safetensors`, the background statistics of sparse memory fine-tuning).

use memlayers::model::{Model, SlotCounts, SLOT_COUNTS_FILE};
use memlayers::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A memlayers checkpoint or a lingua consolidated folder with memory layers.
    #[arg(long)]
    pub model: PathBuf,
    /// The text to count over (tokenised with the model's tokenizer; bytes for memlayers'
    /// checkpoints).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokens counted, from the start of the text, in rows of the model's context [65536].
    #[arg(long, default_value_t = 65536)]
    pub tokens: usize,
    /// The file to write [MODEL/slot_counts.safetensors].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The tokenizer file of a lingua model (as `generate`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let model_dir = super::model_dir::load(&a.model)?;
    let text = std::fs::read(&a.data)
        .map_err(|e| Error::Format(format!("cannot read {}: {e}", a.data.display())))?;
    let ids: Vec<u32> = match model_dir.tokenizer(a.tokenizer.as_deref())? {
        Some(t) => t.encode(&String::from_utf8_lossy(&text), false, false)?,
        None => text.iter().map(|&b| u32::from(b)).collect(),
    };
    let seq = model_dir.config().max_seqlen.min(256);
    let rows = ids.len().min(a.tokens) / seq;
    if rows == 0 {
        return Err(Error::Config(format!(
            "{}: {} tokens, fewer than one row of {seq}",
            a.data.display(),
            ids.len()
        )));
    }
    let gpu = Gpu::new_blocking()?;
    let model = Model::new(&gpu, &model_dir.weights)?;
    let counts = pollster::block_on(SlotCounts::measure(
        &model,
        &gpu,
        &ids[..rows * seq],
        None,
        seq,
        16,
    ))?;
    let out = a.out.clone().unwrap_or_else(|| a.model.join(SLOT_COUNTS_FILE));
    counts.to_tensors().write(&out)?;
    eprintln!("{} tokens counted", counts.tokens);
    for line in counts.summary() {
        eprintln!("  {line}");
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}
