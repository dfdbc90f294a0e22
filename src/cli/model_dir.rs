//! The model folders every command loads: a memlayers checkpoint (`config.json` and
//! `weights.safetensors`, or a `--out` dir holding `checkpoint/`), a lingua consolidated
//! folder (`consolidated.pth` and `params.json`, or a lingua step folder holding
//! `consolidated/`), or a Hugging Face folder (`config.json` naming its `architectures`,
//! safetensors weights, `tokenizer.json`). A lingua DCP folder gets a one-line error saying
//! how to consolidate it.

use memlayers::io::hf::{self, HfFolder};
use memlayers::io::lingua::{self, LinguaCheckpoint, LinguaParams, TokenizerSpec};
use memlayers::io::TensorFile;
use memlayers::model::{LMTransformerArgs, ModelConfig, ModelWeights};
use memlayers::tokenizer::{Tokenizer, TokenizerKind};
use memlayers::{Error, Result};
use std::path::{Path, PathBuf};

/// The facts file `memlayers demo` saves beside each model (the model's original facts).
pub const FACTS_FILE: &str = "facts.tsv";

/// The files of a memlayers checkpoint: `dir` itself when it holds `config.json`, else its
/// `checkpoint/` (a `train --out` or `demo` model folder).
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    if dir.join("config.json").exists() {
        dir.to_path_buf()
    } else {
        dir.join("checkpoint")
    }
}

/// A loaded model folder.
pub struct ModelDir {
    pub args: LMTransformerArgs,
    pub weights: ModelWeights,
    /// For lingua folders: their params.json and where they are.
    pub lingua: Option<(LinguaParams, PathBuf)>,
}

impl ModelDir {
    pub fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    /// The tokenizer: lingua's from params.json (file: `--tokenizer`, else params.json's
    /// path when it exists, else a file of that name beside the checkpoint); memlayers'
    /// checkpoints are byte-level.
    pub fn tokenizer(&self, file: Option<&Path>) -> Result<Option<Tokenizer>> {
        let Some((params, dir)) = &self.lingua else {
            return Ok(None);
        };
        let t = load_tokenizer(&params.tokenizer, dir, file)?;
        if t.n_words != self.config().vocab {
            return Err(Error::Config(format!(
                "the {} tokenizer has {} ids but the model's vocab_size is {}",
                t.kind().name(),
                t.n_words,
                self.config().vocab
            )));
        }
        Ok(Some(t))
    }
}

/// Loads `dir` (either format).
pub fn load(dir: &Path) -> Result<ModelDir> {
    if hf::is_hf_folder(dir) {
        let folder = HfFolder::open(dir)?;
        return Ok(ModelDir {
            args: folder.config.args.clone(),
            weights: folder.read_weights()?,
            lingua: None,
        });
    }
    if let Some(found) = lingua::consolidated_dir(dir) {
        let ckpt = LinguaCheckpoint::read(&found)?;
        let source = found.join(lingua::CONSOLIDATED).display().to_string();
        let weights = lingua::model_weights(&ckpt.params, ckpt.tensors, &source)?;
        return Ok(ModelDir {
            args: ckpt.params.model.clone(),
            weights,
            lingua: Some((ckpt.params, found)),
        });
    }
    lingua::check_not_dcp(dir)?;
    let (args, file) = load_memlayers(dir)?;
    let weights = ModelWeights::from_tensors(&args.resolve()?, &file)?;
    Ok(ModelDir {
        args,
        weights,
        lingua: None,
    })
}

/// A memlayers checkpoint folder's config and tensors.
pub fn load_memlayers(dir: &Path) -> Result<(LMTransformerArgs, TensorFile)> {
    let dir = checkpoint_dir(dir);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| {
        Error::Format(format!(
            "cannot read {}: {e} (a model folder holds config.json and weights.safetensors, or lingua's \
consolidated.pth and params.json)",
            config.display()
        ))
    })?;
    let args = LMTransformerArgs::from_json(&text).map_err(|e| {
        Error::Config(format!(
            "{}: {}",
            config.display(),
            e.to_string().trim_start_matches("config: ")
        ))
    })?;
    Ok((args, TensorFile::read(&dir.join("weights.safetensors"))?))
}

/// The tokenizer file for `spec`: `file` if given, else the params.json path when it exists,
/// else a file of that name in `dir`.
pub fn load_tokenizer(spec: &TokenizerSpec, dir: &Path, file: Option<&Path>) -> Result<Tokenizer> {
    if spec.kind == TokenizerKind::Bytes {
        return Ok(Tokenizer::bytes());
    }
    let from_params = spec.path.as_ref().map(PathBuf::from);
    let beside = from_params
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|name| dir.join(name));
    let candidates: Vec<PathBuf> = match file {
        Some(f) => vec![f.to_path_buf()],
        None => from_params.iter().chain(beside.iter()).cloned().collect(),
    };
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        return Err(Error::Config(format!(
            "the model's {} tokenizer file was not found: looked for --tokenizer ({}), params.json's \
data.tokenizer.path ({}), and a file of that name beside the checkpoint ({})",
            spec.kind.name(),
            file.map_or("not given".into(), |f| f.display().to_string()),
            spec.path.as_deref().unwrap_or("not set"),
            beside.map_or("no name to look for".into(), |b| b.display().to_string()),
        )));
    };
    let data =
        std::fs::read(path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?;
    Tokenizer::from_bytes(spec.kind, &data, &path.display().to_string())
}

/// Writes a new folder at `out` through `fill`, which writes into a temporary folder beside
/// it; renamed to `out` when `fill` succeeds, removed when it or the rename fails, so that
/// nothing is left half-written. `out` must not exist (`command` names who asks, in the error).
pub fn write_new_folder<T>(out: &Path, command: &str, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    if out.exists() {
        return Err(Error::Config(format!(
            "{} exists: {command} writes a new folder",
            out.display()
        )));
    }
    let name = out
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().to_string());
    let tmp = out.with_file_name(format!(".{name}.{command}-{}", std::process::id()));
    let filled = std::fs::create_dir_all(&tmp)
        .map_err(Error::from)
        .and_then(|()| fill(&tmp));
    match filled {
        Ok(value) => match std::fs::rename(&tmp, out) {
            Ok(()) => Ok(value),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(Error::Format(format!(
                    "cannot move the finished folder to {}: {e}",
                    out.display()
                )))
            }
        },
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Hard-links `from` to `to` where it is a weight file (large, and never edited in place),
/// copies it otherwise (an editor writing a linked config would change the original too) or
/// where links are not possible (another file system).
pub fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let weights = from.extension().is_some_and(|e| e == "safetensors");
    if !weights || std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(|e| Error::Format(format!("cannot copy {}: {e}", from.display())))?;
    }
    Ok(())
}

/// The non-empty lines of the text at `path`, or of the built-in probe prompts without one,
/// and what they are (for messages and teach.json).
pub fn lines_or_probe(path: Option<&Path>) -> Result<(Vec<String>, String)> {
    let (text, what) = match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        None => (
            memlayers::teach::DEFAULT_PROBE.to_string(),
            "the built-in probe prompts (32 general-knowledge openings)".to_string(),
        ),
    };
    Ok((memlayers::teach::probe_lines(&text, &what)?, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder that cannot take the finished one's place (another process made it meanwhile)
    /// is an error, and the temporary folder goes.
    #[test]
    fn a_failed_rename_leaves_no_temporary_folder() {
        let parent = std::env::temp_dir().join(format!("memlayers-rename-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir_all(&parent).unwrap();
        let out = parent.join("out");
        let result = write_new_folder(&out, "test", |tmp| {
            std::fs::write(tmp.join("a"), b"a")?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("theirs"), b"b")?;
            Ok(())
        });
        assert!(result.is_err());
        let left: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(left, vec!["out".to_string()]);
        assert!(out.join("theirs").is_file() && !out.join("a").exists());
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
