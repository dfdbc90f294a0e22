//! A Hugging Face `config.json` of the Llama family (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`, `MistralForCausalLM`), in either style transformers writes: version
//! 4's `rope_theta`, `rope_scaling` and `torch_dtype`, or version 5's `rope_parameters` and
//! `dtype`. Resolved into memlayers' `ModelConfig` (`docs/hugging-face.md`).

use crate::error::{Error, Result};
use crate::model::{LMTransformerArgs, MemoryPlacement, ModelConfig, ProductKeyArgs, TransformerVariant};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The architectures memlayers runs.
pub const ARCHITECTURES: [&str; 4] = [
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
];

/// The fields of `config.json` memlayers reads (others are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub hidden_act: Option<String>,
    pub sliding_window: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// transformers 4.
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub torch_dtype: Option<String>,
    /// transformers 5.
    pub rope_parameters: Option<Value>,
    pub dtype: Option<String>,
    pub bos_token_id: Option<Value>,
    pub eos_token_id: Option<Value>,
    /// memlayers' addition: a memory retrofitted into the model (`memlayers retrofit`).
    pub memory: Option<HfMemory>,
}

/// The `memory` section memlayers adds to a retrofitted folder's `config.json`: where the
/// memory layers sit and their sizes, as lingua's `productkey_args`; their tensors are in
/// `memory.safetensors` beside the original weights, as `model.layers.<l>.memory.<name>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HfMemory {
    /// `parallel`: beside the feed-forward block, outputs added; `replace`: in its place
    /// (the block's tensors stay in the original files, unread).
    pub placement: String,
    pub productkey_args: ProductKeyArgs,
    /// A folder that keeps only the memory (`teach --delta`): the folder with the model's
    /// weights and tokenizer, absolute or relative to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

impl HfMemory {
    pub fn placement(&self) -> Result<MemoryPlacement> {
        match self.placement.as_str() {
            "parallel" => Ok(MemoryPlacement::Parallel),
            "replace" => Ok(MemoryPlacement::Replace),
            other => Err(bad(format!(
                "memory.placement {other:?}: memlayers reads \"parallel\" and \"replace\""
            ))),
        }
    }
}

/// RoPE as the config gives it: the base and the scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    /// `default`, or `llama3` with its parameters.
    pub llama3: Option<Llama3Scaling>,
}

/// `rope_type: llama3`: long wavelengths slowed by `factor`, short ones kept, those between
/// blended (`docs/hugging-face.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

fn bad(what: String) -> Error {
    Error::Config(format!("config.json: {what}"))
}

/// The ids of a `bos_token_id`/`eos_token_id` field: a number, a list of them, or null.
pub fn token_ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|i| i as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl HfConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| bad(format!("{e}")))
    }

    /// The one architecture of `architectures`, if memlayers runs it.
    pub fn architecture(&self) -> Result<&str> {
        match self.architectures.as_slice() {
            [a] if ARCHITECTURES.contains(&a.as_str()) => Ok(a),
            other => Err(bad(format!(
                "architectures {other:?}: memlayers runs one of {}",
                ARCHITECTURES.join(", ")
            ))),
        }
    }

    /// The stored dtype (`torch_dtype` or `dtype`), as written.
    pub fn stored_dtype(&self) -> Option<&str> {
        self.dtype.as_deref().or(self.torch_dtype.as_deref())
    }

    /// RoPE's base and scaling from either style. Errors on a rope type other than
    /// `default` and `llama3`.
    pub fn rope(&self) -> Result<RopeSpec> {
        // v5 keeps the base and the scaling together; v4 has the base beside them.
        let params = self
            .rope_parameters
            .as_ref()
            .or(self.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let field = |name: &str| params.and_then(|p| p.get(name));
        let theta = field("rope_theta")
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let kind = field("rope_type")
            .or_else(|| field("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |name: &str| {
            field(name)
                .and_then(Value::as_f64)
                .ok_or_else(|| bad(format!("rope_type llama3 needs a number `{name}`")))
        };
        let llama3 = match kind {
            "default" => None,
            "llama3" => Some(Llama3Scaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            }),
            other => {
                return Err(bad(format!(
                    "rope_type \"{other}\" is not supported (memlayers runs \"default\" and \"llama3\")"
                )))
            }
        };
        Ok(RopeSpec { theta, llama3 })
    }

    /// memlayers' configuration of this model, its context capped at `max_seqlen` positions
    /// (the KV cache and RoPE tables are sized by it).
    pub fn model_config(&self, max_seqlen: usize) -> Result<ModelConfig> {
        let arch = self.architecture()?;
        if self.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(bad(format!(
                "hidden_act {:?}: memlayers runs SwiGLU feed-forward blocks (silu)",
                self.hidden_act
            )));
        }
        if self.mlp_bias {
            return Err(bad("mlp_bias: true is not supported".into()));
        }
        let sliding = self.sliding_window.as_ref().is_some_and(|v| !v.is_null());
        // Qwen2 and Qwen3 write a window but use it only with use_sliding_window.
        let uses_window = match arch {
            "MistralForCausalLM" => sliding,
            "Qwen2ForCausalLM" | "Qwen3ForCausalLM" => self.use_sliding_window && sliding,
            _ => false,
        };
        if uses_window {
            return Err(bad(
                "a sliding attention window is not supported (memlayers attends to every earlier position)"
                    .into(),
            ));
        }
        // Llama's attention_bias puts biases on q, k, v and o; Qwen2 has q/k/v biases always.
        let qkv_bias = match arch {
            "Qwen2ForCausalLM" => true,
            "LlamaForCausalLM" | "Qwen3ForCausalLM" if self.attention_bias => {
                return Err(bad(
                    "attention_bias: true (a bias on the output projection too) is not supported".into(),
                ))
            }
            _ => false,
        };
        let (dim, n_heads) = (self.hidden_size, self.num_attention_heads);
        if dim == 0 || n_heads == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return Err(bad(
                "hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive".into(),
            ));
        }
        let head_dim = self.head_dim.unwrap_or(dim / n_heads);
        let n_kv_heads = self.num_key_value_heads.unwrap_or(n_heads);
        if head_dim == 0
            || !head_dim.is_multiple_of(2)
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
        {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and num_key_value_heads {n_kv_heads} must divide num_attention_heads {n_heads}"
            )));
        }
        let max_seqlen = self.max_position_embeddings.unwrap_or(max_seqlen).min(max_seqlen);
        let rope = self.rope()?;
        let variant = TransformerVariant {
            qkv_bias,
            qk_norm: arch == "Qwen3ForCausalLM",
            tied_output: self.tie_word_embeddings,
            rope_inv_freq: rope.llama3.map(|s| llama3_inv_freq(head_dim, rope.theta, s)),
        };
        let args = LMTransformerArgs {
            dim,
            n_layers: self.num_hidden_layers,
            head_dim: Some(head_dim),
            n_heads: Some(n_heads),
            n_kv_heads: Some(n_kv_heads),
            norm_eps: self.rms_norm_eps,
            rope_theta: rope.theta,
            max_seqlen,
            vocab_size: self.vocab_size as i64,
            ..LMTransformerArgs::default()
        };
        let config = ModelConfig::with_variant(&args, self.intermediate_size, variant);
        match &self.memory {
            None => Ok(config),
            Some(m) => config
                .with_memory(&m.productkey_args, m.placement()?)
                .map_err(|e| bad(format!("memory: {e}"))),
        }
    }
}

/// The default inverse frequencies of a head of `head_dim` at base `theta`, rescaled as
/// `rope_type: llama3` does (each step in f32, as transformers computes them).
pub fn llama3_inv_freq(head_dim: usize, theta: f64, s: Llama3Scaling) -> Vec<f32> {
    let (factor, low, high, context) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
        s.original_max_position_embeddings as f32,
    );
    let (low_wavelen, high_wavelen) = (context / low, context / high);
    crate::kernels::ops::rope_inv_freq(head_dim, theta as f32)
        .into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (context / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}
