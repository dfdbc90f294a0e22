//! A Hugging Face folder's weights: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists (and a retrofitted memory's `memory.safetensors`),
//! read through memory maps one tensor at a time into memlayers' parameters (lingua's names,
//! `names.rs`), f32, f16 or bf16 widened exactly. In the browser the files' bytes are given
//! (`WeightFiles::from_bytes`) and read alike.

use super::config::HfConfig;
use super::names::{hf_name, to_rope_pairs, Order};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::tensor_file::{to_f32, TensorData};
use safetensors::SafeTensors;
use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

/// The single-file weights' name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index's name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// A retrofitted memory's tensors, beside the original weights (`memlayers retrofit`).
pub const MEMORY_FILE: &str = "memory.safetensors";

#[cfg(not(target_arch = "wasm32"))]
/// The weight files of `dir`: the shards its index lists (each once, in order of first
/// mention), else `model.safetensors` (in `base` instead, for a folder that keeps only a
/// memory beside another's model); then `memory.safetensors` where there is one.
pub fn weight_files(dir: &Path, base: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut files = model_files(base.unwrap_or(dir))?;
    if dir.join(MEMORY_FILE).is_file() {
        files.push(dir.join(MEMORY_FILE));
    }
    Ok(files)
}

#[cfg(not(target_arch = "wasm32"))]
/// The original model's weight files of `dir`: the shards or `model.safetensors`.
pub fn model_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", index.display())))?;
        return Ok(super::index_files(&text, &index.display().to_string())?
            .into_iter()
            .map(|name| dir.join(name))
            .collect());
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        Ok(vec![single])
    } else {
        Err(Error::Format(format!(
            "{}: neither {WEIGHTS_FILE} nor {INDEX_FILE} is there",
            dir.display()
        )))
    }
}

/// A weight file's bytes: mapped into memory (read-only; nothing is copied until a tensor is
/// asked for), or given (the browser's files).
enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A weight file: its name in messages and its bytes.
struct Mapped {
    name: String,
    bytes: Bytes,
}

impl Mapped {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(map) => map,
            Bytes::Owned(v) => v,
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn map_file(path: &Path) -> Result<Mapped> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Format(format!("cannot open {}: {e}", path.display())))?;
    // Safety: the map is read-only and lives while the tensors are copied out of it; a file
    // changed by another process meanwhile gives wrong values, not memory unsafety in Rust's
    // sense beyond what every memory-mapped reader accepts.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::Format(format!("cannot map {}: {e}", path.display())))?;
    Ok(Mapped {
        name: path.display().to_string(),
        bytes: Bytes::Mapped(map),
    })
}

/// The folder's weight files, mapped into memory: tensors are read from them one at a time,
/// by memlayers' names.
pub struct WeightFiles {
    /// The folder, as messages name it.
    dir: String,
    mapped: Vec<Mapped>,
    tie_word_embeddings: bool,
}

impl WeightFiles {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &Path, base: Option<&Path>, hf: &HfConfig) -> Result<Self> {
        Ok(WeightFiles {
            dir: dir.display().to_string(),
            mapped: weight_files(dir, base)?
                .iter()
                .map(|p| map_file(p))
                .collect::<Result<_>>()?,
            tie_word_embeddings: hf.tie_word_embeddings,
        })
    }

    /// The tensors of other safetensors files laid out as a folder's weights (transformers'
    /// names; e.g. gradients saved beside them), read as `read` reads weights.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn of_files(dir: &Path, files: &[PathBuf], hf: &HfConfig) -> Result<Self> {
        Ok(WeightFiles {
            dir: dir.display().to_string(),
            mapped: files.iter().map(|p| map_file(p)).collect::<Result<_>>()?,
            tie_word_embeddings: hf.tie_word_embeddings,
        })
    }

    /// Weight files given as (name, bytes), in the order the folder's would be read (the
    /// shards, then a memory's file); `folder` names them in messages.
    pub fn from_bytes(folder: &str, files: Vec<(String, Vec<u8>)>, hf: &HfConfig) -> Self {
        WeightFiles {
            dir: folder.to_string(),
            mapped: files
                .into_iter()
                .map(|(name, bytes)| Mapped {
                    name,
                    bytes: Bytes::Owned(bytes),
                })
                .collect(),
            tie_word_embeddings: hf.tie_word_embeddings,
        }
    }

    /// Runs `f` with a reader of memlayers' parameters of `config` (name and shape in, f32
    /// values out, in memlayers' row order), then checks that every tensor of the folder was
    /// read (`lm_head.weight` beside tied embeddings excepted: some checkpoints keep a copy).
    pub fn read<R>(
        &self,
        config: &ModelConfig,
        f: impl FnOnce(&mut dyn FnMut(&str, &[usize]) -> Result<Vec<f32>>) -> Result<R>,
    ) -> Result<R> {
        let parsed: Vec<SafeTensors> = self
            .mapped
            .iter()
            .map(|m| {
                SafeTensors::deserialize(m.bytes())
                    .map_err(|e| Error::Format(format!("{} is not a valid safetensors file: {e}", m.name)))
            })
            .collect::<Result<_>>()?;
        let mut found: HashMap<String, usize> = HashMap::new();
        for (i, st) in parsed.iter().enumerate() {
            for name in st.names() {
                found.insert(name.to_string(), i);
            }
        }
        let head_dim = config.head_dim;
        let mut used: std::collections::HashSet<String> = Default::default();
        let mut load = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (hf_name, order) = hf_name(name)
                .ok_or_else(|| Error::Config(format!("{name} has no Hugging Face counterpart")))?;
            let file = *found
                .get(&hf_name)
                .ok_or_else(|| Error::MissingTensor(format!("{hf_name} (for {name}) in {}", self.dir)))?;
            let view = parsed[file]
                .tensor(&hf_name)
                .map_err(|e| Error::Format(format!("{hf_name}: {e}")))?;
            if view.shape() != shape {
                return Err(Error::tensor(
                    &hf_name,
                    format!("shape {shape:?}"),
                    format!("{:?}", view.shape()),
                ));
            }
            let TensorData::F32(data) = to_f32(&hf_name, view.dtype(), view.data())? else {
                return Err(Error::tensor(
                    &hf_name,
                    "a float dtype",
                    format!("{:?}", view.dtype()),
                ));
            };
            if let Some(at) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::tensor(
                    &hf_name,
                    "finite values",
                    format!("{} at flat index {at}", data[at]),
                ));
            }
            used.insert(hf_name);
            Ok(match order {
                Order::Same => data,
                Order::RopePairs => to_rope_pairs(&data, shape.get(1).copied().unwrap_or(1), head_dim),
            })
        };
        let result = f(&mut load)?;
        // A memory in place of a feed-forward block leaves that block's tensors in the
        // original files, unread.
        let replaced: Vec<String> = match config.memory_placement {
            crate::model::MemoryPlacement::Replace => config
                .memory_layers
                .iter()
                .map(|l| format!("model.layers.{l}.mlp."))
                .collect(),
            crate::model::MemoryPlacement::Parallel => Vec::new(),
        };
        let mut unused: Vec<&String> = found
            .keys()
            .filter(|k| {
                !(used.contains(*k)
                    || self.tie_word_embeddings && k.as_str() == "lm_head.weight"
                    || replaced.iter().any(|p| k.starts_with(p.as_str())))
            })
            .collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(Error::Format(format!(
                "{}: tensors the configuration does not use: {}",
                self.dir,
                unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(result)
    }
}
