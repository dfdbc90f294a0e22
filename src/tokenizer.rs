//! lingua's three tokenizers (docs/reference.md, "lingua's files", `lingua/tokenizer.py`), with the same
//! ids, BOS and EOS:
//! - `bytes`: ids 0-255 are bytes, BOS 256, EOS 257, 258 ids; decoding drops ids >= 256.
//! - `tiktoken`: a rank file (`base64(token) rank` per line), lingua's split pattern, and 256
//!   special tokens after the ranks (`<|begin_of_text|>` BOS, `<|end_of_text|>` EOS).
//!   Encoded with tiktoken-rs's `CoreBPE` (ordinary encoding, as lingua's).
//! - `sp`: a SentencePiece `.model`; ids, BOS and EOS from the model. Encoded with
//!   sentencepiece-rs (a Rust reimplementation of SentencePiece's normalisation, encoding and
//!   decoding; the C++ library's binding does not build for wasm32).
//!
//! All three build for wasm32.

use crate::error::{Error, Result};
use base64::Engine;
use std::collections::{HashMap, HashSet};

/// lingua's `DEFAULT_TIKTOKEN_PATTERN`.
pub const TIKTOKEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The special tokens lingua appends after a tiktoken file's ranks (offset by the rank
/// count); the other ids below 256 are `<|reserved_special_token_{i}|>`.
const TIKTOKEN_SPECIALS: [(&str, u32); 7] = [
    ("<|begin_of_text|>", 0),
    ("<|end_of_text|>", 1),
    ("<|fim_prefix|>", 2),
    ("<|fim_middle|>", 3),
    ("<|fim_end_fill|>", 253),
    ("<|fim_pad|>", 254),
    ("<|fim_suffix|>", 255),
];

/// lingua encodes tiktoken text in pieces of this many characters.
const TIKTOKEN_MAX_ENCODE_CHARS: usize = 400_000;

/// Which of lingua's tokenizers (`data.tokenizer.name` in its params.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    Bytes,
    SentencePiece,
    Tiktoken,
}

impl TokenizerKind {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "bytes" => Ok(TokenizerKind::Bytes),
            "sp" => Ok(TokenizerKind::SentencePiece),
            "tiktoken" => Ok(TokenizerKind::Tiktoken),
            other => Err(Error::Config(format!(
                "tokenizer \"{other}\": lingua's tokenizers are \"bytes\", \"sp\" and \"tiktoken\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenizerKind::Bytes => "bytes",
            TokenizerKind::SentencePiece => "sp",
            TokenizerKind::Tiktoken => "tiktoken",
        }
    }
}

enum Inner {
    Bytes,
    Tiktoken(Box<tiktoken_rs::CoreBPE>),
    SentencePiece(Box<sentencepiece_rs::SentencePieceProcessor>),
}

/// A tokenizer with lingua's ids.
pub struct Tokenizer {
    inner: Inner,
    /// Ids in all (`n_words` in lingua).
    pub n_words: usize,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({}, {} ids, BOS {}, EOS {})",
            self.kind().name(),
            self.n_words,
            self.bos_id,
            self.eos_id
        )
    }
}

impl Tokenizer {
    /// lingua's byte tokenizer.
    pub fn bytes() -> Self {
        Tokenizer {
            inner: Inner::Bytes,
            n_words: 258,
            bos_id: 256,
            eos_id: 257,
        }
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.inner {
            Inner::Bytes => TokenizerKind::Bytes,
            Inner::Tiktoken(_) => TokenizerKind::Tiktoken,
            Inner::SentencePiece(_) => TokenizerKind::SentencePiece,
        }
    }

    /// A tokenizer of `kind` from its file's contents (`source` names the file in errors;
    /// `bytes` needs no file).
    pub fn from_bytes(kind: TokenizerKind, data: &[u8], source: &str) -> Result<Self> {
        match kind {
            TokenizerKind::Bytes => Ok(Tokenizer::bytes()),
            TokenizerKind::Tiktoken => Self::tiktoken(data, source),
            TokenizerKind::SentencePiece => Self::sentencepiece(data, source),
        }
    }

    fn tiktoken(data: &[u8], source: &str) -> Result<Self> {
        let bad = |line: usize, what: &str| {
            Error::Format(format!(
                "{source}: line {line}: {what} (a tiktoken file has `base64(token) rank` lines)"
            ))
        };
        let text = std::str::from_utf8(data).map_err(|_| bad(0, "not UTF-8 text"))?;
        let mut ranks: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut seen: HashSet<u32> = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(token), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(i + 1, "not two fields"));
            };
            let token = base64::engine::general_purpose::STANDARD
                .decode(token)
                .map_err(|e| bad(i + 1, &format!("bad base64 ({e})")))?;
            let rank: u32 = rank.parse().map_err(|_| bad(i + 1, "rank is not a number"))?;
            if !seen.insert(rank) || ranks.insert(token, rank).is_some() {
                return Err(bad(i + 1, "repeated token or rank"));
            }
        }
        let n = ranks.len() as u32;
        if n == 0 {
            return Err(Error::Format(format!("{source}: no ranks")));
        }
        // Byte-pair encoding starts from single bytes: each needs a rank (found by fuzzing:
        // tiktoken-rs panics without them).
        if let Some(b) = (0..=255u8).find(|b| !ranks.contains_key(&vec![*b])) {
            return Err(Error::Format(format!(
                "{source}: byte 0x{b:02x} has no rank; a tiktoken file ranks all 256 single bytes"
            )));
        }
        if let Some(&max) = seen.iter().max() {
            if max >= n {
                return Err(Error::Format(format!(
                    "{source}: ranks are not 0..{n} (largest {max}); lingua numbers specials after the ranks"
                )));
            }
        }
        let mut specials: HashMap<String, u32> = TIKTOKEN_SPECIALS
            .iter()
            .map(|&(name, i)| (name.to_string(), n + i))
            .collect();
        for i in 0..256u32 {
            if !TIKTOKEN_SPECIALS.iter().any(|&(_, j)| j == i) {
                specials.insert(format!("<|reserved_special_token_{i}|>"), n + i);
            }
        }
        let bpe = tiktoken_rs::CoreBPE::new(
            ranks.into_iter().collect(),
            specials.into_iter().collect(),
            TIKTOKEN_PATTERN,
        )
        .map_err(|e| Error::Format(format!("{source}: {e}")))?;
        Ok(Tokenizer {
            inner: Inner::Tiktoken(Box::new(bpe)),
            n_words: n as usize + 256,
            bos_id: n,
            eos_id: n + 1,
        })
    }

    fn sentencepiece(data: &[u8], source: &str) -> Result<Self> {
        let bad = |what: String| Error::Format(format!("{source}: {what}"));
        let sp = sentencepiece_rs::SentencePieceProcessor::from_serialized_model(data)
            .map_err(|e| bad(format!("not a SentencePiece model ({e})")))?;
        let n_words = sp.model().pieces().len();
        let id = |v: Option<usize>, what: &str| -> Result<u32> {
            match v {
                Some(i) if i < n_words => Ok(i as u32),
                _ => Err(bad(format!(
                    "the model has no {what} piece (lingua adds BOS and EOS)"
                ))),
            }
        };
        let (bos_id, eos_id) = (id(sp.bos_id(), "BOS")?, id(sp.eos_id(), "EOS")?);
        Ok(Tokenizer {
            inner: Inner::SentencePiece(Box::new(sp)),
            n_words,
            bos_id,
            eos_id,
        })
    }

    /// `text`'s ids, with BOS first and EOS last when asked (lingua's `encode`).
    pub fn encode(&self, text: &str, add_bos: bool, add_eos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos_id);
        }
        match &self.inner {
            Inner::Bytes => ids.extend(text.bytes().map(u32::from)),
            Inner::Tiktoken(bpe) => {
                // lingua splits at character counts, never inside a character.
                let chars: Vec<(usize, char)> = text.char_indices().collect();
                for chunk in chars.chunks(TIKTOKEN_MAX_ENCODE_CHARS) {
                    let start = chunk[0].0;
                    let end = chunk.last().map_or(start, |&(i, c)| i + c.len_utf8());
                    ids.extend(bpe.encode_ordinary(&text[start..end]));
                }
            }
            Inner::SentencePiece(sp) => ids.extend(
                sp.encode_to_ids(text)
                    .map_err(|e| Error::Format(format!("SentencePiece encoding: {e}")))?
                    .into_iter()
                    .map(|i| i as u32),
            ),
        }
        if add_eos {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// The bytes of `ids` (what lingua's `decode` turns into text): bytes drops ids >= 256;
    /// tiktoken writes special tokens' names; SentencePiece drops control tokens.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.n_words) {
            return Err(Error::Config(format!(
                "token id {bad} is outside the tokenizer's {} ids",
                self.n_words
            )));
        }
        match &self.inner {
            Inner::Bytes => Ok(ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect()),
            Inner::Tiktoken(bpe) => bpe
                .decode_bytes(ids)
                .map_err(|e| Error::Format(format!("tiktoken decoding: {e}"))),
            Inner::SentencePiece(sp) => {
                let ids: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
                sp.decode_ids(&ids)
                    .map(String::into_bytes)
                    .map_err(|e| Error::Format(format!("SentencePiece decoding: {e}")))
            }
        }
    }

    /// `ids` as text, as lingua decodes: the bytes tokenizer writes bytes that are not UTF-8
    /// as `\xNN` (Python's `backslashreplace`); tiktoken and SentencePiece replace them with
    /// U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match self.inner {
            Inner::Bytes => backslash_replace(&bytes),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// UTF-8 text from `bytes`, each byte of an invalid sequence written as `\xNN`.
pub fn backslash_replace(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}
