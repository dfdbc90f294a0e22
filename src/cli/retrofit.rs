//! `memlayers retrofit`: a Hugging Face folder with a memory added beside chosen feed-forward
//! blocks, written to a new folder (the original tensors untouched, the memory's beside them,
//! a `memory` section in config.json, the tokenizer files, the memory's background slot
//! counts). The retrofitted model computes exactly what the original did until it is taught.

use super::model_dir::{link_or_copy, write_new_folder};
use memlayers::io::hf::retrofit::{memory_tensors, retrofit_config, MemorySizes};
use memlayers::io::hf::weights::{model_files, MEMORY_FILE};
use memlayers::io::hf::{self, HfFolder};
use memlayers::io::write_atomic;
use memlayers::model::{SlotCounts, SLOT_COUNTS_FILE};
use memlayers::teach::{probe_lines, text_rows, DEFAULT_PROBE};
use memlayers::{Error, Gpu, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder (Llama, Qwen2, Qwen3, Mistral).
    #[arg(long)]
    pub model: PathBuf,
    /// The new folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated layer indices [the middle layer].
    #[arg(long)]
    pub layers: Option<String>,
    /// parallel: a memory beside each chosen feed-forward block, the original model's outputs
    /// unchanged until it is taught.
    #[arg(long, default_value = "parallel", value_parser = ["parallel", "replace"])]
    pub mode: String,
    /// Keys per half of the product keys (n_keys^2 value rows) [the largest power of two whose
    /// table holds at most a quarter of the model's parameters, at most 2^25 values].
    #[arg(long)]
    pub n_keys: Option<usize>,
    /// Memory heads [4].
    #[arg(long)]
    pub heads: Option<usize>,
    /// Slots each head reads [32, at most n_keys].
    #[arg(long)]
    pub knn: Option<usize>,
    /// Key width [half the model's width].
    #[arg(long)]
    pub k_dim: Option<usize>,
    /// Text whose lines the memory's background reads are counted on (what sparse-memory
    /// teaching ranks against) [the built-in probe prompts: 32 general-knowledge openings].
    #[arg(long)]
    pub background: Option<PathBuf>,
    /// Seed of the memory's keys and projections.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_layers(text: &str) -> Result<Vec<usize>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| Error::Config(format!("--layers: `{s}` is not a layer index")))
        })
        .collect()
}

pub fn run(a: &Args) -> Result<()> {
    if a.mode != "parallel" {
        return Err(Error::Config(
            "retrofit --mode replace (a memory in place of the feed-forward block, healed on text) is not \
available yet; use --mode parallel"
                .into(),
        ));
    }
    if !hf::is_hf_folder(&a.model) {
        return Err(Error::Config(format!(
            "{} is not a Hugging Face model folder (config.json naming its architectures)",
            a.model.display()
        )));
    }
    let folder = HfFolder::open(&a.model)?;
    let base = folder.config();
    let layers = match &a.layers {
        Some(text) => parse_layers(text)?,
        None => vec![base.n_layers / 2],
    };
    let params: usize = memlayers::model::ModelLayout::new(base)?
        .registry
        .specs()
        .iter()
        .map(|s| s.len())
        .sum();
    let default = MemorySizes::default_for(base, params);
    let n_keys = a.n_keys.unwrap_or(default.n_keys);
    let sizes = MemorySizes {
        n_keys,
        heads: a.heads.unwrap_or(default.heads),
        knn: a.knn.unwrap_or(default.knn.min(n_keys)),
        k_dim: a.k_dim.unwrap_or(default.k_dim),
    };
    let (memory, config) = retrofit_config(base, &layers, &sizes)?;
    let background_text = match &a.background {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?,
        None => DEFAULT_PROBE.to_string(),
    };
    let what = a
        .background
        .as_ref()
        .map_or("the built-in probe prompts".to_string(), |p| {
            p.display().to_string()
        });
    let background_lines = probe_lines(&background_text, &what)?;

    write_new_folder(&a.out, "retrofit", |tmp| {
        let originals = model_files(&a.model)?;
        for entry in std::fs::read_dir(&a.model)? {
            let path = entry?.path();
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if path.is_file() && file != "config.json" && file != MEMORY_FILE && file != SLOT_COUNTS_FILE {
                link_or_copy(&path, &tmp.join(&file))?;
            }
        }
        debug_assert!(originals.iter().all(|p| p.is_file()));
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(a.model.join("config.json"))?)
                .map_err(|e| Error::Format(format!("config.json: {e}")))?;
        json["memory"] = serde_json::to_value(&memory).expect("the memory section serialises");
        write_atomic(
            &tmp.join("config.json"),
            serde_json::to_string_pretty(&json).unwrap_or_default().as_bytes(),
        )?;
        memory_tensors(&config, a.seed)?.write(&tmp.join(MEMORY_FILE))?;

        // The background: the retrofitted model's reads on the text, at every position.
        let retrofitted = HfFolder::open(tmp)?;
        let gpu = Gpu::new_blocking()?;
        let model = retrofitted.upload(&gpu, false)?;
        let texts: Vec<Vec<u32>> = background_lines
            .iter()
            .map(|l| retrofitted.tokenizer.encode(l, true))
            .collect::<Result<_>>()?;
        let pad = retrofitted.eos_ids.first().copied().unwrap_or(0);
        let (tokens, _, seq) = text_rows(&texts, pad);
        let mut at_text = Vec::with_capacity(tokens.len());
        for ids in &texts {
            at_text.extend((0..seq).map(|i| {
                if i < ids.len() {
                    0
                } else {
                    memlayers::kernels::ops::IGNORE_TARGET
                }
            }));
        }
        let counts = pollster::block_on(SlotCounts::measure(&model, &gpu, &tokens, Some(&at_text), seq, 8))?;
        counts.to_tensors().write(&tmp.join(SLOT_COUNTS_FILE))?;
        let m = config.memory.as_ref().expect("a memory was added");
        println!(
            "memory beside the feed-forward blocks of layers {:?}: {} heads x {} slots of {} rows ({} keys squared), keys {} wide, values {} wide; {:.1}M parameters added",
            config.memory_layers,
            m.heads,
            m.knn,
            m.n_values(),
            m.n_keys,
            m.k_dim,
            m.v_dim,
            memory_tensors_len(&config)? as f64 / 1e6
        );
        println!(
            "background: {} reads over {} tokens of {what}",
            counts
                .layers
                .iter()
                .map(|l| l.reads.iter().sum::<u64>())
                .sum::<u64>(),
            counts.tokens
        );
        Ok(())
    })?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn memory_tensors_len(config: &memlayers::model::ModelConfig) -> Result<usize> {
    let layout = memlayers::model::ModelLayout::new(config)?;
    Ok(layout
        .registry
        .specs()
        .iter()
        .filter(|s| s.name.split('.').nth(2) == Some("memory"))
        .map(|s| s.len())
        .sum())
}
