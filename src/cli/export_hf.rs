//! `memlayers export-hf`: a byte-level memlayers model (`memlayers demo` or `train`) as a
//! Hugging Face Llama folder: transformers loads it, and `memlayers retrofit` gives it a memory.

use memlayers::io::hf::export::{byte_tokenizer_json, export_llama, BYTE_LEVEL_EOS};
use memlayers::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A dense byte-level model folder (`memlayers demo`'s dense/, or `train --out`).
    #[arg(long)]
    pub model: PathBuf,
    /// The new folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &Args) -> Result<()> {
    let dir = super::model_dir::load(&a.model)?;
    if dir.lingua.is_some() || memlayers::io::hf::is_hf_folder(&a.model) || dir.config().vocab != 256 {
        return Err(Error::Config(
            "export-hf writes memlayers' byte-level models (vocab_size 256, ids the bytes), whose tokenizer it can write"
                .into(),
        ));
    }
    let tokenizer = byte_tokenizer_json()?;
    let facts = super::model_dir::checkpoint_dir(&a.model).join(super::model_dir::FACTS_FILE);
    super::model_dir::write_new_folder(&a.out, "export-hf", |tmp| {
        export_llama(&dir.weights, tmp, Some(&tokenizer), Some(BYTE_LEVEL_EOS))?;
        if facts.is_file() {
            std::fs::copy(&facts, tmp.join(super::model_dir::FACTS_FILE))?;
        }
        Ok(())
    })?;
    println!(
        "wrote {} (LlamaForCausalLM, {} layers of width {}, byte-level tokenizer, generation stops at a newline)",
        a.out.display(),
        dir.config().n_layers,
        dir.config().dim
    );
    Ok(())
}
