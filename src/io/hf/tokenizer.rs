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
        // Llama 3.x templates write today's date.
        env.add_function("strftime_now", |format: String| strftime(&format, today()));
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

/// Today's (year, month, day) in UTC, from the system clock (`1970-01-01` when it is unset).
fn today() -> (i64, u32, u32) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `date` written with Python's strftime directives `%d %m %Y %y %b %B %%` (what chat
/// templates use); other directives stay as written.
fn strftime(format: &str, (year, month, day): (i64, u32, u32)) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month as usize).clamp(1, 12) - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_writes_the_directives_chat_templates_use() {
        assert_eq!(strftime("%d %b %Y", (2026, 12, 6)), "06 Dec 2026");
        assert_eq!(
            strftime("%B %d, %y (%m) 100%%", (2024, 2, 29)),
            "February 29, 24 (02) 100%"
        );
        let (y, m, d) = today();
        assert!(y >= 2024 && (1..=12).contains(&m) && (1..=31).contains(&d));
    }

    #[test]
    fn a_template_may_ask_for_the_date_and_raise() {
        let config = r#"{"chat_template": "{{ strftime_now('%Y') }}|{{ messages[0]['content'] }}", "bos_token": "<s>"}"#;
        let t = ChatTemplate::from_tokenizer_config(config).unwrap().unwrap();
        let text = t.render_user("hi").unwrap();
        assert!(text.ends_with("|hi") && text.len() == 7, "{text}");
        let raising = r#"{"chat_template": "{{ raise_exception('no system role') }}"}"#;
        let e = ChatTemplate::from_tokenizer_config(raising)
            .unwrap()
            .unwrap()
            .render_user("x")
            .unwrap_err();
        assert!(e.to_string().contains("no system role"), "{e}");
    }
}
