//! Every loader the command line and the web page expose, by name, for the fuzz targets
//! (`fuzz/`) and for the test that replays their corpora (`tests/fuzz_corpora.rs`). A loader
//! may reject its input with an error; it must never panic.

use crate::demo::KnowledgeBase;
use crate::io::lingua::LinguaParams;
use crate::io::TensorFile;
use crate::model::LMTransformerArgs;
use crate::tokenizer::{Tokenizer, TokenizerKind};

/// The loaders, each with a folder of seeds under `fuzz/corpus/<name>`.
pub const TARGETS: [&str; 9] = [
    "safetensors",
    "model_json",
    "facts_tsv",
    "consolidated_pth",
    "tiktoken",
    "sentencepiece",
    "hf_config",
    "hf_index",
    "hf_tokenizer",
];

/// Runs loader `target` on `data`, discarding the result. Unknown names panic (a bug in the
/// caller, not an input).
pub fn load(target: &str, data: &[u8]) {
    match target {
        "safetensors" => {
            let _ = TensorFile::from_bytes(data, "input");
        }
        "model_json" => {
            let text = String::from_utf8_lossy(data);
            if let Ok(args) = LMTransformerArgs::from_json(&text) {
                let _ = args.resolve();
            }
            if let Ok(params) = LinguaParams::parse(&text, "input") {
                let _ = params.model.resolve();
            }
        }
        "facts_tsv" => {
            let _ = KnowledgeBase::parse_tsv(&String::from_utf8_lossy(data));
        }
        "consolidated_pth" => consolidated(data),
        "tiktoken" => tokenize(TokenizerKind::Tiktoken, data),
        "sentencepiece" => tokenize(TokenizerKind::SentencePiece, data),
        "hf_config" => {
            if let Ok(c) = crate::io::hf::HfConfig::from_json(&String::from_utf8_lossy(data)) {
                if let Ok(config) = c.model_config(crate::io::hf::MAX_CONTEXT) {
                    let _ = config.rope_inv_freq();
                }
            }
        }
        "hf_index" => {
            let _ = crate::io::hf::index_files(&String::from_utf8_lossy(data), "input");
        }
        "hf_tokenizer" => {
            if let Ok(t) = crate::io::hf::HfTokenizer::from_bytes(data, "input") {
                if let Ok(ids) = t.encode("Hello, world! 12345 naïve 東京 🙂\n\tx<|im_end|>", true) {
                    let _ = t.decode(&ids, false);
                }
                let _ = t.decode(&[0, 1, u32::MAX], true);
            }
        }
        other => panic!("no fuzz target {other}"),
    }
}

fn consolidated(data: &[u8]) {
    let _ = crate::io::lingua::read_consolidated_bytes(data.to_vec(), "input");
}

fn tokenize(kind: TokenizerKind, data: &[u8]) {
    if let Ok(t) = Tokenizer::from_bytes(kind, data, "input") {
        if let Ok(ids) = t.encode("Hello, world! 12345 naïve 東京 🙂\n\tx", true, true) {
            let _ = t.decode(&ids);
        }
        let _ = t.decode(&[0, 1, 2, (t.n_words - 1) as u32]);
    }
}
