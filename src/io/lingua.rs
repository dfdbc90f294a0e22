//! lingua's consolidated checkpoint folders (docs/reference.md, "lingua's files"): `consolidated.pth`
//! (torch's zip + pickle, `{"model": state_dict, ...}`) and `params.json` (the whole training
//! config: `model` is `LMTransformerArgs`, `data.tokenizer` names the tokenizer,
//! `distributed.model_dtype` the dtype). Read without executing anything in the pickle
//! (pytorch-reader); written by `torch_zip` so that lingua's
//! `load_consolidated_model_and_tokenizer` loads the result.

use crate::error::{Error, Result};
use crate::model::LMTransformerArgs;
use crate::tensor_file::TensorFile;
use crate::tokenizer::TokenizerKind;
use std::path::{Path, PathBuf};

pub const CONSOLIDATED: &str = "consolidated.pth";
pub const PARAMS: &str = "params.json";

/// What `params.json` says about the tokenizer (`data.tokenizer`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerSpec {
    pub kind: TokenizerKind,
    /// As written in params.json (often a path on the training cluster).
    pub path: Option<String>,
}

/// The parts of a lingua `params.json` that a model needs.
#[derive(Clone, Debug)]
pub struct LinguaParams {
    pub model: LMTransformerArgs,
    pub tokenizer: TokenizerSpec,
    /// `distributed.model_dtype`: "fp32", "bf16" or "fp16" (lingua's default "bf16").
    pub model_dtype: String,
}

impl LinguaParams {
    /// Parses params.json text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let bad = |what: String| Error::Format(format!("{source}: {what}"));
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let model = v
            .get("model")
            .ok_or_else(|| bad("no \"model\" section (lingua's LMTransformerArgs)".into()))?;
        let model: LMTransformerArgs =
            serde_json::from_value(model.clone()).map_err(|e| bad(format!("\"model\" section: {e}")))?;
        let tokenizer = v.pointer("/data/tokenizer");
        let name = tokenizer
            .and_then(|t| t.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("bytes");
        let kind = TokenizerKind::from_name(name).map_err(|e| bad(e.to_string()))?;
        let path = tokenizer
            .and_then(|t| t.get("path"))
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let model_dtype = v
            .pointer("/distributed/model_dtype")
            .and_then(|d| d.as_str())
            .unwrap_or("bf16")
            .to_string();
        if !["fp32", "bf16", "fp16"].contains(&model_dtype.as_str()) {
            return Err(bad(format!(
                "distributed.model_dtype \"{model_dtype}\": lingua's are fp32, bf16 and fp16"
            )));
        }
        Ok(LinguaParams {
            model,
            tokenizer: TokenizerSpec { kind, path },
            model_dtype,
        })
    }

    /// A params.json lingua's generator loads: the model section, the tokenizer and the
    /// dtype (the rest of lingua's training config is not needed to load a model).
    pub fn to_json(&self) -> String {
        let model = serde_json::to_value(&self.model).expect("model args serialise");
        let v = serde_json::json!({
            "model": model,
            "data": {"tokenizer": {"name": self.tokenizer.kind.name(), "path": self.tokenizer.path}},
            "distributed": {"model_dtype": self.model_dtype},
        });
        serde_json::to_string_pretty(&v).expect("JSON serialises")
    }
}

/// Where a lingua consolidated folder is for `dir`: `dir` itself, or `dir/consolidated`
/// (a lingua step folder that was consolidated). `None` when neither holds
/// `consolidated.pth`.
pub fn consolidated_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("consolidated")]
        .into_iter()
        .find(|d| d.join(CONSOLIDATED).is_file())
}

/// An error when `dir` is a lingua DCP checkpoint (`.distcp` files), which must be
/// consolidated first.
pub fn check_not_dcp(dir: &Path) -> Result<()> {
    let dcp = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "distcp"))
        })
        .unwrap_or(false);
    if dcp {
        return Err(Error::Format(format!(
            "{} is a lingua DCP checkpoint (.distcp shards); consolidate it first: in lingua, \
python -c \"from lingua.checkpoint import consolidate_checkpoints; consolidate_checkpoints('{}')\" \
writes {}/consolidated/",
            dir.display(),
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// A lingua consolidated folder read into memory.
pub struct LinguaCheckpoint {
    pub dir: PathBuf,
    pub params: LinguaParams,
    /// `model` of the state dict under lingua's names, as f32.
    pub tensors: TensorFile,
}

impl LinguaCheckpoint {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(dir: &Path) -> Result<Self> {
        let params_path = dir.join(PARAMS);
        let text = std::fs::read_to_string(&params_path)
            .map_err(|e| Error::Format(format!("cannot read {}: {e}", params_path.display())))?;
        let params = LinguaParams::parse(&text, &params_path.display().to_string())?;
        let tensors = read_consolidated(&dir.join(CONSOLIDATED))?;
        Ok(LinguaCheckpoint {
            dir: dir.to_path_buf(),
            params,
            tensors,
        })
    }
}

/// The `model` state dict of a `consolidated.pth` as f32 tensors (f32, f16, bf16 and f64
/// storages; strided views gathered by the reader). Tensors are read from the file one at a
/// time.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_consolidated(path: &Path) -> Result<TensorFile> {
    let source = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::Format(format!("cannot read {source}: {e}")))?;
    super::pickle_globals::check_torch_zip(file, &source)?;
    let reader = pytorch_reader::PytorchReader::with_top_level_key(path, "model");
    state_dict(reader, &source)
}

/// `read_consolidated` of a file's bytes (the web page, which has no file system).
pub fn read_consolidated_bytes(bytes: Vec<u8>, source: &str) -> Result<TensorFile> {
    super::pickle_globals::check_torch_zip(std::io::Cursor::new(&bytes), source)?;
    state_dict(
        pytorch_reader::PytorchReader::from_bytes(bytes, Some("model")),
        source,
    )
}

fn state_dict(
    reader: std::result::Result<pytorch_reader::PytorchReader, pytorch_reader::PytorchError>,
    source: &str,
) -> Result<TensorFile> {
    use crate::tensor_file::{HostTensor, TensorData};
    use pytorch_reader::DType;
    let bad = |what: String| Error::Format(format!("{source}: {what}"));
    let reader = reader.map_err(|e| {
        bad(format!(
            "not a readable torch checkpoint with a \"model\" state dict ({e})"
        ))
    })?;
    let mut file = TensorFile::default();
    let mut names: Vec<String> = reader.keys();
    names.sort();
    for name in names {
        let t = reader.get(&name).expect("listed");
        let bytes = t.read().map_err(|e| bad(e.to_string()))?;
        let chunks = |n: usize| bytes.chunks_exact(n);
        let data: Vec<f32> = match t.dtype() {
            DType::F32 => chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DType::F16 => chunks(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            DType::BF16 => chunks(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            DType::F64 => chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor `{name}` is {other:?}; a model's tensors are float (f32, f16, bf16)"
                )))
            }
        };
        if data.len() != t.num_elements() {
            return Err(bad(format!(
                "tensor `{name}`: {} bytes for shape {:?}",
                bytes.len(),
                t.shape()
            )));
        }
        file.insert(
            name,
            HostTensor {
                shape: t.shape().to_vec(),
                data: TensorData::F32(data),
                stored_as: format!("{:?}", t.dtype()),
            },
        );
    }
    if file.tensors.is_empty() {
        return Err(bad(
            "the \"model\" state dict holds no tensors (only tensors in dicts are read; other objects are refused)".into(),
        ));
    }
    Ok(file)
}

/// Removes the repeats of a shared value table (`table`: `values.weight`, or PEER's
/// `values_u.weight` / `values_v.weight`) from `file`, keeping it under memory layer
/// `first` and checking that each repeat equals it (a lingua run aliases one table into
/// every memory layer).
pub fn merge_aliased_values(file: &mut TensorFile, first: usize, table: &str) -> Result<()> {
    let kept = format!("layers.{first}.feed_forward.{table}");
    let suffix = format!(".feed_forward.{table}");
    let repeats: Vec<String> = file
        .tensors
        .keys()
        .filter(|k| k.ends_with(&suffix) && **k != kept)
        .cloned()
        .collect();
    for name in repeats {
        let same = match (file.tensors.get(&kept), file.tensors.get(&name)) {
            (Some(a), Some(b)) => a.shape == b.shape && a.data == b.data,
            _ => false,
        };
        if !same {
            return Err(Error::tensor(
                &name,
                format!(
                    "the same table as `{kept}` (mem_share_values: one pool shared by every memory layer)"
                ),
                "a different table",
            ));
        }
        file.tensors.remove(&name);
    }
    Ok(())
}

/// The model weights of a lingua state dict: the configuration from params.json's model
/// section, a shared value table that lingua repeats under every memory layer read as one
/// pool. `source` names the checkpoint in errors.
pub fn model_weights(
    params: &LinguaParams,
    mut tensors: TensorFile,
    source: &str,
) -> Result<crate::model::ModelWeights> {
    let config = params.model.resolve()?;
    if let (Some(&first), true) = (
        config.memory_layers.first(),
        params.model.productkey_args.mem_share_values,
    ) {
        use crate::memory::{VALUES_NAME, VALUES_U_NAME, VALUES_V_NAME};
        for table in [VALUES_NAME, VALUES_U_NAME, VALUES_V_NAME] {
            merge_aliased_values(&mut tensors, first, table)?;
        }
    }
    crate::model::ModelWeights::from_tensors(&config, &tensors)
        .map_err(|e| Error::Format(format!("{source}: {e}")))
}
