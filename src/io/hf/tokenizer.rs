//! A Hugging Face folder's tokenizer: `tokenizer.json` through the `tokenizers` crate, with
//! its normaliser, pre-tokeniser, model, post-processor (which decides whether a BOS is
//! added) and added tokens, exactly as transformers' fast tokenizers read it; and
//! `tokenizer_config.json`'s chat template rendered with minijinja.

use crate::error::{Error, Result};
use serde_json::Value;

/// The tokenizer of a Hugging Face folder.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HfTokenizer({} ids)", self.vocab_size())
    }
}

impl HfTokenizer {
    /// From `tokenizer.json`'s contents (`source` names the file in errors).
    pub fn from_bytes(data: &[u8], source: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(data).map_err(|e| {
            Error::Format(format!(
                "{source}: not a tokenizer.json the tokenizers crate reads: {e}"
            ))
        })?;
        Ok(HfTokenizer { inner })
    }

    /// Ids in all, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `text`'s ids; with `special`, as transformers' `tokenizer(text)` gives them (the
    /// post-processor's BOS or none, as the tokenizer says).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Format(format!("tokenizing: {e}")))
    }

    /// `ids` as text, special tokens written out unless `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Format(format!("decoding: {e}")))
    }

    /// The id of token `text` (an added token such as `<|im_end|>`), if it has one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}

/// Text decoded a token at a time, as it becomes whole characters: each `push` returns what
/// the new token adds (nothing while it ends inside a character).
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    shown: usize,
}

impl TextStream {
    pub fn push(&mut self, tokenizer: &HfTokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, false)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.shown || !text.is_char_boundary(self.shown) {
            return Ok(String::new());
        }
        let new = text[self.shown..].to_string();
        self.shown = text.len();
        Ok(new)
    }
}

/// A chat template (`tokenizer_config.json`'s `chat_template`: a string, or a list of named
/// templates of which `default` is used).
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// A special token's text in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.get("content").and_then(Value::as_str).unwrap_or("").to_string(),
        None => String::new(),
    }
}

impl ChatTemplate {
    /// The template of `tokenizer_config.json` (its text), if it has one.
    pub fn from_tokenizer_config(text: &str) -> Result<Option<Self>> {
        let json: Value =
            serde_json::from_str(text).map_err(|e| Error::Format(format!("tokenizer_config.json: {e}")))?;
        let source = match json.get("chat_template") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(named)) => match named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
            {
                Some(s) => s.to_string(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(ChatTemplate {
            source,
            bos_token: token_text(json.get("bos_token")),
            eos_token: token_text(json.get("eos_token")),
        }))
    }

    /// The prompt for one user message, ready for the assistant's reply
    /// (`add_generation_prompt`).
    pub fn render_user(&self, message: &str) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Format(format!("chat_template: {e}")))?;
        let messages = vec![minijinja::context! { role => "user", content => message }];
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
            .map_err(|e| Error::Format(format!("chat_template: {e}")))
    }
}
