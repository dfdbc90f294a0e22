//! `memlayers export-lingua`: a model folder as a lingua consolidated folder
//! (`consolidated.pth` with `{"model": state_dict}` in torch's format, `params.json` with the
//! model section, the tokenizer and the dtype), which lingua's
//! `load_consolidated_model_and_tokenizer` loads. The shared value table is written once,
//! under the first memory layer (what a freshly built lingua model's state dict holds).

use memlayers::io::lingua::{LinguaParams, TokenizerSpec, CONSOLIDATED, PARAMS};
use memlayers::io::torch_zip::write_state_dict;
use memlayers::io::write_atomic;
use memlayers::tokenizer::TokenizerKind;
use memlayers::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A memlayers checkpoint or a lingua consolidated folder.
    #[arg(long)]
    pub model: PathBuf,
    /// The folder to write (created; its consolidated.pth and params.json are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &Args) -> Result<()> {
    let model_dir = super::model_dir::load(&a.model)?;
    if !model_dir.args.moe_args.is_disabled() {
        return Err(Error::Config(
            "export-lingua: this model has mixture-of-experts layers (moe_args, a memlayers extension), which lingua cannot load"
                .into(),
        ));
    }
    let mut params = match &model_dir.lingua {
        Some((params, _)) => params.clone(),
        // memlayers' checkpoints read bytes as ids 0-255: lingua's bytes tokenizer.
        None => LinguaParams {
            model: model_dir.args.clone(),
            tokenizer: TokenizerSpec {
                kind: TokenizerKind::Bytes,
                path: None,
            },
            model_dtype: "fp32".into(),
        },
    };
    params.model = model_dir.args.clone();
    std::fs::create_dir_all(&a.out)?;
    // The tokenizer file goes beside the checkpoint, where `memlayers` looks for it.
    if let (Some((_, dir)), Some(path)) = (&model_dir.lingua, &params.tokenizer.path) {
        if params.tokenizer.kind != TokenizerKind::Bytes {
            let name = PathBuf::from(path);
            let name = name
                .file_name()
                .ok_or_else(|| Error::Config(format!("tokenizer path {path} names no file")))?;
            let source = [PathBuf::from(path), dir.join(name)]
                .into_iter()
                .find(|p| p.is_file());
            match source {
                Some(s) => {
                    std::fs::copy(&s, a.out.join(name))?;
                }
                None => eprintln!("warning: tokenizer file {path} not found; not copied"),
            }
        }
    }
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = model_dir.weights.named_tensors();
    // lingua's bytes tokenizer has 258 ids (BOS 256, EOS 257); a memlayers byte model reads
    // 256. Its embedding and output get two zero rows, so lingua can feed BOS.
    let padded: Vec<(usize, Vec<f32>)>;
    if model_dir.lingua.is_none() && model_dir.config().vocab == 256 {
        let dim = model_dir.config().dim;
        padded = tensors
            .iter()
            .enumerate()
            .filter(|(_, (name, _, _))| name == "tok_embeddings.weight" || name == "output.weight")
            .map(|(i, (_, _, data))| {
                let mut v = data.to_vec();
                v.resize(258 * dim, 0.0);
                (i, v)
            })
            .collect();
        for (i, v) in &padded {
            tensors[*i].1 = vec![258, dim];
            tensors[*i].2 = v;
        }
        params.model.vocab_size = 258;
        eprintln!("vocabulary 256 -> 258 for lingua's bytes tokenizer (BOS and EOS rows are zero)");
    }
    let tmp = a.out.join(format!(".{CONSOLIDATED}.tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .map_err(Error::from)
        .and_then(|f| write_state_dict(std::io::BufWriter::new(f), "consolidated", "model", &tensors));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, a.out.join(CONSOLIDATED))?;
    write_atomic(&a.out.join(PARAMS), params.to_json().as_bytes())?;
    eprintln!(
        "wrote {} ({} tensors) and {} to {}",
        CONSOLIDATED,
        tensors.len(),
        PARAMS,
        a.out.display()
    );
    Ok(())
}
