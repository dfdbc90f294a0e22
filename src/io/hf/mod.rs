//! Hugging Face model folders of the Llama family (Llama, Qwen2, Qwen3, Mistral): the
//! configuration, the weights (one file or shards), the tokenizer, the chat template and the
//! end-of-sequence ids, read into memlayers' model (`docs/hugging-face.md`).

pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
pub mod names;
pub mod retrofit;
pub mod tokenizer;
#[cfg(not(target_arch = "wasm32"))]
pub mod weights;

pub use config::HfConfig;
pub use tokenizer::{ChatTemplate, HfTokenizer, TextStream};

use crate::error::{Error, Result};
use crate::model::ModelConfig;
#[cfg(not(target_arch = "wasm32"))]
use crate::model::ModelWeights;
use std::path::Path;

/// Longest context a Hugging Face model gets here (the attention kernel's limit): its KV
/// cache and RoPE tables are sized by it.
pub const MAX_CONTEXT: usize = crate::kernels::ops::MAX_SEQ as usize;

/// The shard files `model.safetensors.index.json` (its text; `what` names it in errors) lists
/// in its `weight_map`, each once, in order of first mention: plain file names, no paths.
pub fn index_files(text: &str, what: &str) -> Result<Vec<String>> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::Format(format!("{what}: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Format(format!("{what}: no `weight_map` object")))?;
    let mut files: Vec<String> = Vec::new();
    for file in map.values() {
        let name = file
            .as_str()
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains('\\') && *n != "..")
            .ok_or_else(|| Error::Format(format!("{what}: {file} is not a file name")))?;
        if !files.iter().any(|f| f == name) {
            files.push(name.to_string());
        }
    }
    if files.is_empty() {
        return Err(Error::Format(format!("{what}: the weight_map names no file")));
    }
    Ok(files)
}

/// The folder holding the model of `dir` where `dir` keeps only a memory beside it (its
/// config's `memory.base`), checked to be the same model: a Hugging Face folder of the same
/// architecture and sizes, without a memory or with one laid out as this one (which replaces
/// it).
#[cfg(not(target_arch = "wasm32"))]
fn base_folder(dir: &Path, hf: &HfConfig) -> Result<Option<std::path::PathBuf>> {
    let Some(base) = hf.memory.as_ref().and_then(|m| m.base.as_ref()) else {
        return Ok(None);
    };
    let base = dir.join(base);
    let text = read_text(&base.join("config.json"))
        .map_err(|e| Error::Config(format!("{}: the memory's base model: {e}", dir.display())))?;
    let theirs = HfConfig::from_json(&text)?;
    // The base may be the retrofitted folder the memory was taught from (its memory is
    // replaced by this one's, so it must be laid out alike), not another delta.
    let memory_alike = match (&theirs.memory, &hf.memory) {
        (None, _) => true,
        (Some(t), Some(m)) => {
            t.base.is_none() && t.productkey_args == m.productkey_args && t.placement == m.placement
        }
        (Some(_), None) => false,
    };
    let same = memory_alike
        && theirs.architectures == hf.architectures
        && (
            theirs.hidden_size,
            theirs.num_hidden_layers,
            theirs.vocab_size,
            theirs.intermediate_size,
        ) == (
            hf.hidden_size,
            hf.num_hidden_layers,
            hf.vocab_size,
            hf.intermediate_size,
        );
    if !same {
        return Err(Error::Config(format!(
            "{}: the memory's base model {} is not the model it was taught on (another architecture or size, or a memory laid out otherwise)",
            dir.display(),
            base.display()
        )));
    }
    Ok(Some(base))
}

/// Whether `dir` is a Hugging Face model folder: a `config.json` naming `architectures`.
pub fn is_hf_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("architectures").is_some())
}

/// An opened Hugging Face folder: its configuration and text side read, its weights mapped
/// (read by `read_weights` or `upload`).
pub struct HfFolder {
    pub hf: HfConfig,
    pub config: ModelConfig,
    #[cfg(not(target_arch = "wasm32"))]
    files: weights::WeightFiles,
    pub tokenizer: HfTokenizer,
    /// Generation stops at any of these (`generation_config.json`'s `eos_token_id`, else
    /// `config.json`'s).
    pub eos_ids: Vec<u32>,
    pub chat_template: Option<ChatTemplate>,
}

#[cfg(not(target_arch = "wasm32"))]
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))
}

impl HfFolder {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every weight on the host, under memlayers' names (for training, export and the
    /// commands that take `ModelWeights`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_weights(&self) -> Result<ModelWeights> {
        self.files
            .read(&self.config, |load| ModelWeights::from_loader(&self.config, load))
    }

    /// The tensors of `file`, a safetensors file under transformers' names with the folder's
    /// tensors (gradients, say), as memlayers' parameters: renamed and reordered as the
    /// weights are.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_tensors_of(&self, file: &Path) -> Result<ModelWeights> {
        weights::WeightFiles::of_files(
            file.parent().unwrap_or(Path::new(".")),
            &[file.to_path_buf()],
            &self.hf,
        )?
        .read(&self.config, |load| ModelWeights::from_loader(&self.config, load))
    }

    /// The model on `gpu`, each tensor uploaded as it is read from the mapped files (the host
    /// holds one tensor at a time), the GEMM weights read in `precision`
    /// (`Model::use_f16_weights`, `use_q8_weights`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn upload(
        &self,
        gpu: &crate::Gpu,
        precision: crate::model::WeightPrecision,
    ) -> Result<crate::model::Model> {
        let registry = crate::model::ModelLayout::new(&self.config)?.registry;
        self.files.read(&self.config, |load| {
            let mut tensor = |id: crate::params::ParamId| {
                let spec = registry.spec(id);
                load(&spec.name, &spec.shape).map(std::borrow::Cow::Owned)
            };
            crate::model::Model::from_source(gpu, &self.config, precision, &mut tensor)
        })
    }

    /// Reads `dir`: `config.json`, the weights, `tokenizer.json`, and where they exist
    /// `generation_config.json` and `tokenizer_config.json`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &Path) -> Result<Self> {
        let hf = HfConfig::from_json(&read_text(&dir.join("config.json"))?)?;
        let config = hf.model_config(MAX_CONTEXT)?;
        let base = base_folder(dir, &hf)?;
        // The model's own files: in the base folder where this one keeps only a memory.
        let own = |name: &str| match (&base, dir.join(name)) {
            (Some(b), here) if !here.is_file() => b.join(name),
            (_, here) => here,
        };
        let tokenizer_file = own("tokenizer.json");
        let tokenizer = HfTokenizer::from_bytes(
            &std::fs::read(&tokenizer_file)
                .map_err(|e| Error::Format(format!("cannot read {}: {e}", tokenizer_file.display())))?,
            &tokenizer_file.display().to_string(),
        )?;
        if tokenizer.vocab_size() > config.vocab {
            return Err(Error::Config(format!(
                "the tokenizer has {} ids but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab
            )));
        }
        let generation = own("generation_config.json");
        let mut eos_ids = if generation.is_file() {
            let json: serde_json::Value = serde_json::from_str(&read_text(&generation)?)
                .map_err(|e| Error::Format(format!("{}: {e}", generation.display())))?;
            config::token_ids(json.get("eos_token_id"))
        } else {
            Vec::new()
        };
        if eos_ids.is_empty() {
            eos_ids = config::token_ids(hf.eos_token_id.as_ref());
        }
        let tokenizer_config = own("tokenizer_config.json");
        let chat_template = if tokenizer_config.is_file() {
            ChatTemplate::from_tokenizer_config(&read_text(&tokenizer_config)?)?
        } else {
            None
        };
        let files = weights::WeightFiles::open(dir, base.as_deref(), &hf)?;
        Ok(HfFolder {
            hf,
            config,
            files,
            tokenizer,
            eos_ids,
            chat_template,
        })
    }
}
