//! `memlayers retrofit`: a Hugging Face folder with a memory added beside chosen feed-forward
//! blocks (or in their place, healed), written to a new folder (the original tensors
//! untouched, the memory's beside them, a `memory` section in config.json, the tokenizer
//! files, the memory's background slot counts). Beside the blocks, the retrofitted model
//! computes exactly what the original did until it is taught.

use super::model_dir::{lines_or_probe, link_or_copy, write_new_folder};
use memlayers::io::hf::names::hf_tensors;
use memlayers::io::hf::retrofit::{memory_tensors, retrofit_config, MemorySizes};
use memlayers::io::hf::weights::{model_files, MEMORY_FILE};
use memlayers::io::hf::{self, HfFolder};
use memlayers::io::write_atomic;
use memlayers::model::{MemoryPlacement, ModelConfig, WeightPrecision, SLOT_COUNTS_FILE};
use memlayers::teach::{block_samples, heal, text_loss, text_rows};
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
    /// unchanged until it is taught; replace: a memory in each block's place, healed to
    /// reproduce it (--heal-data, --heal-steps).
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
    /// --mode replace: the text the memory is healed on (one passage a line; every tenth line
    /// held out for the loss printed before and after) [the built-in probe prompts].
    #[arg(long)]
    pub heal_data: Option<PathBuf>,
    /// --mode replace: healing steps (256 positions each).
    #[arg(long, default_value_t = 200)]
    pub heal_steps: u32,
    /// --mode replace: healing's AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub heal_lr: f32,
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
    let placement = match a.mode.as_str() {
        "replace" => MemoryPlacement::Replace,
        _ => MemoryPlacement::Parallel,
    };
    if placement == MemoryPlacement::Parallel && a.heal_data.is_some() {
        return Err(Error::Config(
            "retrofit: --heal-data heals a memory that replaced a feed-forward block (--mode replace); a memory beside one starts silent"
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
        knn: a
            .knn
            .unwrap_or(memlayers::io::hf::retrofit::DEFAULT_KNN.min(n_keys)),
        k_dim: a.k_dim.unwrap_or(default.k_dim),
    };
    let (memory, config) = retrofit_config(base, &layers, &sizes, placement)?;
    let (background_lines, what) = lines_or_probe(a.background.as_deref())?;

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
        let tensors = memory_tensors(&config, a.seed)?;
        tensors.write(&tmp.join(MEMORY_FILE))?;
        let gpu = Gpu::new_blocking()?;
        if placement == MemoryPlacement::Replace {
            heal_replaced(a, &gpu, &folder, tmp, &config)?;
        }

        // The background: the retrofitted model's reads on the text, at every position.
        let retrofitted = HfFolder::open(tmp)?;
        let model = retrofitted.upload(&gpu, WeightPrecision::F32)?;
        let texts = token_texts(&retrofitted, &background_lines)?;
        let pad = retrofitted.eos_ids.first().copied().unwrap_or(0);
        let counts = pollster::block_on(memlayers::teach::text_slot_counts(&model, &gpu, &texts, pad))?;
        counts.to_tensors().write(&tmp.join(SLOT_COUNTS_FILE))?;
        let m = config.memory.as_ref().expect("a memory was added");
        println!(
            "memory {} the feed-forward blocks of layers {:?}: {} heads x {} slots of {} rows ({} keys squared), keys {} wide, values {} wide; {:.1}M parameters added",
            match placement {
                MemoryPlacement::Parallel => "beside",
                MemoryPlacement::Replace => "in place of",
            },
            config.memory_layers,
            m.heads,
            m.knn,
            m.n_values(),
            m.n_keys,
            m.k_dim,
            m.v_dim,
            tensors.tensors.values().map(|t| t.shape.iter().product::<usize>()).sum::<usize>() as f64 / 1e6
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

/// `lines` as `folder`'s tokenizer encodes them (its specials included), each cut to the
/// model's context.
fn token_texts(folder: &HfFolder, lines: &[String]) -> Result<Vec<Vec<u32>>> {
    let max = folder.config().max_seqlen;
    lines
        .iter()
        .map(|l| Ok(folder.tokenizer.encode(l, true)?.into_iter().take(max).collect()))
        .collect()
}

/// The token rows of `lines` (`token_texts`), padded to the longest: `(tokens, at_text,
/// seq)`, `at_text` marking the positions that hold a text's tokens.
fn token_rows(folder: &HfFolder, lines: &[String]) -> Result<(Vec<u32>, Vec<bool>, usize)> {
    let texts = token_texts(folder, lines)?;
    let pad = folder.eos_ids.first().copied().unwrap_or(0);
    let (tokens, _, seq) = text_rows(&texts, pad);
    let at_text = texts
        .iter()
        .flat_map(|ids| (0..seq).map(move |i| i < ids.len()))
        .collect();
    Ok((tokens, at_text, seq))
}

/// Heals the memory of the retrofitted folder `tmp` (in place of `folder`'s feed-forward
/// blocks): each memory layer trained to reproduce the block it replaced on the heal text,
/// the model's loss on held-out lines (every tenth) printed for the original, the retrofit
/// before healing and after.
fn heal_replaced(
    a: &Args,
    gpu: &Gpu,
    folder: &HfFolder,
    tmp: &std::path::Path,
    config: &ModelConfig,
) -> Result<()> {
    let (lines, what) = lines_or_probe(a.heal_data.as_deref())?;
    let (held, train): (Vec<_>, Vec<_>) = lines.iter().cloned().enumerate().partition(|(i, _)| i % 10 == 9);
    let text_of = |v: Vec<(usize, String)>| v.into_iter().map(|(_, l)| l).collect::<Vec<String>>();
    let (held, train) = (text_of(held), text_of(train));
    let held = if held.is_empty() { lines.clone() } else { held };
    let pad = folder.eos_ids.first().copied().unwrap_or(0);
    let held_ids: Vec<Vec<u32>> = held
        .iter()
        .map(|l| {
            Ok(folder
                .tokenizer
                .encode(l, true)?
                .into_iter()
                .take(config.max_seqlen)
                .collect())
        })
        .collect::<Result<_>>()?;
    let original = folder.upload(gpu, WeightPrecision::F32)?;
    let loss = |model: &memlayers::model::Model| pollster::block_on(text_loss(model, gpu, &held_ids, pad));
    let loss_original = loss(&original)?;
    let loss_unhealed = loss(&HfFolder::open(tmp)?.upload(gpu, WeightPrecision::F32)?)?;
    let (tokens, keep, seq) = token_rows(folder, &train)?;
    let mut weights = HfFolder::open(tmp)?.read_weights()?;
    let m = config.memory.as_ref().expect("a memory was added");
    for &layer in &config.memory_layers {
        let samples = pollster::block_on(block_samples(&original, gpu, layer, (&tokens, &keep), (seq, 8)))?;
        let params = weights.layout.layers[layer]
            .feed_forward
            .memory()
            .expect("a memory layer")
            .clone();
        let named: Vec<(&'static str, Vec<f32>)> = weights
            .memory_weights(&params)?
            .named_tensors()
            .into_iter()
            .map(|(name, _, data)| (name, data.to_vec()))
            .collect();
        let values = weights.get(params.values).to_vec();
        let healed = pollster::block_on(heal(
            gpu,
            m,
            named,
            values,
            &samples,
            (a.heal_steps, a.heal_lr, 256),
            a.seed ^ layer as u64,
        ))?;
        println!(
            "layer {layer}: healed on {} positions of {what}: squared error against the replaced block {:.5} -> {:.5}",
            samples.rows, healed.error_before, healed.error_after
        );
        let prefix = format!("layers.{layer}.feed_forward.");
        for (name, data) in healed.tensors {
            *weights
                .tensor_mut(&format!("{prefix}{name}"))
                .ok_or_else(|| Error::MissingTensor(format!("{prefix}{name}")))? = data;
        }
        let values_name = weights.layout.registry.spec(params.values).name.clone();
        *weights
            .tensor_mut(&values_name)
            .ok_or_else(|| Error::MissingTensor(values_name.clone()))? = healed.values;
    }
    hf_tensors(&weights)?.1.write(&tmp.join(MEMORY_FILE))?;
    let loss_healed = loss(&HfFolder::open(tmp)?.upload(gpu, WeightPrecision::F32)?)?;
    println!(
        "loss on {} held-out lines: original {loss_original:.4}, replaced {loss_unhealed:.4}, healed {loss_healed:.4}",
        held_ids.len()
    );
    Ok(())
}
