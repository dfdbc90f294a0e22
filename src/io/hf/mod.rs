//! Hugging Face model folders of the Llama family (Llama, Qwen2, Qwen3, Mistral): the
//! configuration, the weights (one file or shards), the tokenizer, the chat template and the
//! end-of-sequence ids, read into memlayers' model (`docs/hugging-face.md`).

pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod export;
pub mod names;
pub mod retrofit;
pub mod tokenizer;
pub mod weights;

pub use config::HfConfig;
pub use tokenizer::{ChatTemplate, HfTokenizer, TextStream};

use crate::error::{Error, Result};
use crate::model::ModelConfig;
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

    /// The tokens of a prompt as transformers makes them: `text` with the tokenizer's own
    /// special tokens (a BOS where it adds one), or with `chat`, `text` as one user message
    /// rendered by the chat template and tokenized without them.
    pub fn prompt_ids(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if !chat {
            return self.tokenizer.encode(text, true);
        }
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::Config("chat: the model's tokenizer_config.json has no chat_template".into())
        })?;
        self.tokenizer.encode(&template.render_user(text)?, false)
    }

    /// Every weight on the host, under memlayers' names (for training, export and the
    /// commands that take `ModelWeights`).
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
    pub fn upload(
        &self,
        gpu: &crate::Gpu,
        precision: crate::model::WeightPrecision,
    ) -> Result<crate::model::Model> {
        self.stream(|config, tensor| crate::model::Model::from_source(gpu, config, precision, tensor))
    }

    /// `upload` in f32 with the memory's value tables sharded by columns over `gpu` and
    /// `others` (`Model::new_sharded`).
    pub fn upload_sharded(
        &self,
        gpu: &crate::Gpu,
        others: Vec<crate::Gpu>,
        options: crate::memory::ShardOptions,
    ) -> Result<crate::model::Model> {
        self.stream(|config, tensor| {
            crate::model::Model::from_source_sharded(gpu, others, config, options, tensor)
        })
    }

    /// `build` given the configuration and the folder's tensors one at a time, in the
    /// registry's order and shapes.
    fn stream(
        &self,
        build: impl FnOnce(
            &crate::model::ModelConfig,
            &mut dyn FnMut(crate::params::ParamId) -> Result<std::borrow::Cow<'static, [f32]>>,
        ) -> Result<crate::model::Model>,
    ) -> Result<crate::model::Model> {
        let registry = crate::model::ModelLayout::new(&self.config)?.registry;
        self.files.read(&self.config, |load| {
            let mut tensor = |id: crate::params::ParamId| {
                let spec = registry.spec(id);
                load(&spec.name, &spec.shape).map(std::borrow::Cow::Owned)
            };
            build(&self.config, &mut tensor)
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
        let tokenizer = std::fs::read(&tokenizer_file)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", tokenizer_file.display())))?;
        let optional_text = |name: &str| -> Result<Option<(String, String)>> {
            let path = own(name);
            Ok(match path.is_file() {
                true => Some((path.display().to_string(), read_text(&path)?)),
                false => None,
            })
        };
        let texts = TextFiles {
            tokenizer: (tokenizer_file.display().to_string(), tokenizer),
            generation_config: optional_text("generation_config.json")?,
            tokenizer_config: optional_text("tokenizer_config.json")?,
        };
        let files = weights::WeightFiles::open(dir, base.as_deref(), &hf)?;
        Self::assemble(hf, config, texts, files)
    }

    /// A folder's files given as (file name, bytes), as a browser's folder picker gives them
    /// (`folder` names them in messages): `config.json`, `tokenizer.json`, the weights
    /// (`model.safetensors`, or the index and every shard it lists; a retrofitted memory's
    /// `memory.safetensors`), and where given `generation_config.json` and
    /// `tokenizer_config.json`; other files are ignored. A folder that keeps only a memory
    /// beside its base model's files is not accepted (open its taught copy saved whole).
    pub fn from_files(folder: &str, files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        let mut files: std::collections::HashMap<String, Vec<u8>> = files.into_iter().collect();
        let text = |files: &mut std::collections::HashMap<String, Vec<u8>>, name: &str| {
            files.remove(name).map(|bytes| {
                String::from_utf8(bytes)
                    .map(|t| (format!("{folder}/{name}"), t))
                    .map_err(|_| Error::Format(format!("{folder}/{name} is not UTF-8 text")))
            })
        };
        let (_, config_text) = text(&mut files, "config.json")
            .ok_or_else(|| Error::Format(format!("{folder}: no config.json among the files")))??;
        let hf = HfConfig::from_json(&config_text)?;
        if hf.memory.as_ref().is_some_and(|m| m.base.is_some()) {
            return Err(Error::Config(format!(
                "{folder}: this folder keeps only a memory beside its base model's files; give a taught folder saved whole"
            )));
        }
        let config = hf.model_config(MAX_CONTEXT)?;
        let tokenizer = files
            .remove("tokenizer.json")
            .ok_or_else(|| Error::Format(format!("{folder}: no tokenizer.json among the files")))?;
        let generation_config = text(&mut files, "generation_config.json").transpose()?;
        let tokenizer_config = text(&mut files, "tokenizer_config.json").transpose()?;
        let mut names = match text(&mut files, weights::INDEX_FILE).transpose()? {
            Some((what, index)) => index_files(&index, &what)?,
            None => vec![weights::WEIGHTS_FILE.to_string()],
        };
        if files.contains_key(weights::MEMORY_FILE) {
            names.push(weights::MEMORY_FILE.to_string());
        }
        let weight_files = names
            .into_iter()
            .map(|name| match files.remove(&name) {
                Some(bytes) => Ok((format!("{folder}/{name}"), bytes)),
                None => Err(Error::Format(format!("{folder}: {name} is not among the files"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let texts = TextFiles {
            tokenizer: (format!("{folder}/tokenizer.json"), tokenizer),
            generation_config,
            tokenizer_config,
        };
        let files = weights::WeightFiles::from_bytes(folder, weight_files, &hf);
        Self::assemble(hf, config, texts, files)
    }

    /// The folder from its configuration, its text files and its weight files: the
    /// tokenizer checked against the vocabulary, the EOS ids (`generation_config.json`'s, else
    /// `config.json`'s) and the chat template.
    fn assemble(
        hf: HfConfig,
        config: ModelConfig,
        texts: TextFiles,
        files: weights::WeightFiles,
    ) -> Result<Self> {
        let (tokenizer_name, tokenizer_bytes) = &texts.tokenizer;
        let tokenizer = HfTokenizer::from_bytes(tokenizer_bytes, tokenizer_name)?;
        if tokenizer.vocab_size() > config.vocab {
            return Err(Error::Config(format!(
                "the tokenizer has {} ids but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab
            )));
        }
        let mut eos_ids = match &texts.generation_config {
            Some((name, text)) => {
                let json: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| Error::Format(format!("{name}: {e}")))?;
                config::token_ids(json.get("eos_token_id"))
            }
            None => Vec::new(),
        };
        if eos_ids.is_empty() {
            eos_ids = config::token_ids(hf.eos_token_id.as_ref());
        }
        let chat_template = match &texts.tokenizer_config {
            Some((_, text)) => ChatTemplate::from_tokenizer_config(text)?,
            None => None,
        };
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

/// A folder's text side, each file with the name messages give it: the tokenizer's bytes,
/// and the generation and tokenizer configurations' texts where there are some.
struct TextFiles {
    tokenizer: (String, Vec<u8>),
    generation_config: Option<(String, String)>,
    tokenizer_config: Option<(String, String)>,
}
