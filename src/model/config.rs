//! lingua's `LMTransformerArgs` as JSON (`dataclasses.asdict(args)`), memory settings nested
//! under `productkey_args` (docs/reference.md, "The transformer"). Missing fields take lingua's defaults;
//! settings this crate does not implement are errors, never ignored.

use crate::error::{Error, Result};
use crate::memory::MemoryConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProductKeyArgs {
    pub is_enabled: bool,
    /// Comma-separated layer indices, e.g. "4,12,20".
    pub layers: String,
    pub mem_n_keys: usize,
    pub mem_heads: usize,
    pub mem_knn: usize,
    pub mem_share_values: bool,
    pub mem_k_dim: usize,
    /// -1: the model's dim.
    pub mem_v_dim: i64,
    pub swilu_projection: bool,
    /// Learning rate of the value table (the reference trains values at a fixed 1e-3).
    pub value_fixed_lr: Option<f64>,
    pub mem_gated: bool,
    pub peer_variant: bool,
}

impl Default for ProductKeyArgs {
    fn default() -> Self {
        ProductKeyArgs {
            is_enabled: false,
            layers: String::new(),
            mem_n_keys: 1024,
            mem_heads: 4,
            mem_knn: 32,
            mem_share_values: true,
            mem_k_dim: 512,
            mem_v_dim: -1,
            swilu_projection: true,
            value_fixed_lr: Some(1e-3),
            mem_gated: false,
            peer_variant: false,
        }
    }
}

impl ProductKeyArgs {
    /// The memory layers (ascending) and their configuration in a model of width `dim` and
    /// `n_layers` layers; none when disabled.
    pub fn resolve(&self, dim: usize, n_layers: usize) -> Result<(Vec<usize>, Option<MemoryConfig>)> {
        let pk = self;
        if !pk.is_enabled {
            return Ok((Vec::new(), None));
        }
        if pk.peer_variant && pk.mem_v_dim > 0 {
            return Err(bad(format!(
                "productkey_args.peer_variant needs mem_v_dim -1 (the model's dim), found {} (the reference asserts it)",
                pk.mem_v_dim
            )));
        }
        let layers = parse_layers("productkey_args.layers", &pk.layers, n_layers)?;
        if layers.is_empty() {
            return Err(bad(
                "productkey_args.layers is empty while is_enabled is true".into()
            ));
        }
        let v_dim = if pk.mem_v_dim < 0 {
            dim
        } else {
            pk.mem_v_dim as usize
        };
        let m = MemoryConfig {
            d: dim,
            heads: pk.mem_heads,
            n_keys: pk.mem_n_keys,
            knn: pk.mem_knn,
            k_dim: pk.mem_k_dim,
            v_dim,
            swilu: pk.swilu_projection,
            // As the reference: a value projection whenever mem_v_dim is given (> 0), even
            // equal to dim, or with the SwiLU gate.
            value_proj: pk.swilu_projection || pk.mem_v_dim > 0,
            gated: pk.mem_gated,
            peer: pk.peer_variant,
            qk_norm: false,
        };
        m.validate()?;
        Ok((layers, Some(m)))
    }
}

/// Where a model's memory layers sit in their layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryPlacement {
    /// In place of the feed-forward block (lingua's memory layers).
    #[default]
    Replace,
    /// Beside the feed-forward block, on the same normed input, their outputs added: `h +=
    /// ffn(x) + memory(x)` (a memory retrofitted into a pretrained model).
    Parallel,
}

/// Mixture-of-experts feed-forward blocks: a memlayers extension of lingua's arguments (lingua
/// has no MoE; `moe_args` is written only when `layers` is set). Each listed layer's
/// feed-forward block becomes `n_experts` SwiGLU experts of width `hidden_dim` behind a linear
/// router, `top_k` of them per token with renormalised weights, trained with the Switch
/// load-balancing loss times `aux_loss_coef`. Checkpoint names, per layer:
/// `layers.<l>.feed_forward.router.weight [n_experts, dim]`,
/// `layers.<l>.feed_forward.experts.w1 [n_experts, hidden_dim, dim]`, `experts.w3` (the same
/// shape) and `experts.w2 [n_experts, dim, hidden_dim]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoeArgs {
    /// Comma-separated layer indices; empty: no MoE.
    pub layers: String,
    pub n_experts: usize,
    pub top_k: usize,
    /// Each expert's hidden width; 0: the dense block's hidden width divided by top_k (the
    /// dense block's FLOPs per token).
    pub hidden_dim: usize,
    pub aux_loss_coef: f64,
}

impl Default for MoeArgs {
    fn default() -> Self {
        MoeArgs {
            layers: String::new(),
            n_experts: 8,
            top_k: 2,
            hidden_dim: 0,
            aux_loss_coef: 0.01,
        }
    }
}

impl MoeArgs {
    pub fn is_disabled(&self) -> bool {
        self.layers.trim().is_empty()
    }
}

/// A resolved mixture-of-experts block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    pub aux_loss_coef: f32,
}

impl MoeConfig {
    /// Multiply-adds x 2 per token: the router, and top_k SwiGLU experts.
    pub fn flops_per_token(&self, dim: usize) -> f64 {
        let (d, e, k, h) = (
            dim as f64,
            self.experts as f64,
            self.top_k as f64,
            self.hidden as f64,
        );
        2.0 * d * e + k * 2.0 * 3.0 * d * h
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LMTransformerArgs {
    pub dim: usize,
    pub n_layers: usize,
    pub head_dim: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_kv_heads: Option<usize>,
    pub ffn_dim_multiplier: Option<f64>,
    pub multiple_of: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub init_base_std: Option<f64>,
    pub init_std_factor: String,
    pub max_seqlen: usize,
    pub vocab_size: i64,
    pub weight_tying: bool,
    pub sliding_window: Option<usize>,
    pub seed: u64,
    pub productkey_args: ProductKeyArgs,
    #[serde(skip_serializing_if = "MoeArgs::is_disabled")]
    pub moe_args: MoeArgs,
}

impl Default for LMTransformerArgs {
    fn default() -> Self {
        LMTransformerArgs {
            dim: 512,
            n_layers: 8,
            head_dim: None,
            n_heads: None,
            n_kv_heads: None,
            ffn_dim_multiplier: None,
            multiple_of: 256,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            init_base_std: None,
            init_std_factor: "disabled".into(),
            max_seqlen: 1024,
            vocab_size: -1,
            weight_tying: false,
            sliding_window: None,
            seed: 42,
            productkey_args: ProductKeyArgs::default(),
            moe_args: MoeArgs::default(),
        }
    }
}

/// A validated configuration with every derived size resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub args: LMTransformerArgs,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_seqlen: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    /// Layers whose feed-forward block is a memory layer, ascending.
    pub memory_layers: Vec<usize>,
    /// The memory layers' configuration (all share one value table).
    pub memory: Option<MemoryConfig>,
    /// Whether the memory layers replace the feed-forward blocks or sit beside them.
    pub memory_placement: MemoryPlacement,
    /// Layers whose feed-forward block is a mixture of experts, in order.
    pub moe_layers: Vec<usize>,
    pub moe: Option<MoeConfig>,
    /// What a Hugging Face Llama-family model adds to lingua's transformer (nothing for
    /// lingua's and memlayers' own models).
    pub variant: TransformerVariant,
}

/// The Hugging Face Llama-family additions to lingua's transformer (`docs/hugging-face.md`).
/// The default is lingua's transformer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransformerVariant {
    /// Biases on the query, key and value projections (Qwen2).
    pub qkv_bias: bool,
    /// An RMSNorm over each query and key head (`head_dim` wide, one weight for all heads)
    /// before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The output layer is the embedding (`tie_word_embeddings`): no `output.weight`.
    pub tied_output: bool,
    /// RoPE's inverse frequencies, `head_dim / 2` of them, where they are not
    /// `rope_theta^(-2m / head_dim)` (llama3 scaling).
    pub rope_inv_freq: Option<Vec<f32>>,
}

impl TransformerVariant {
    /// Whether training can run this variant: the backward covers lingua's transformer only.
    pub fn is_lingua(&self) -> bool {
        *self == TransformerVariant::default()
    }
}

fn bad(m: String) -> Error {
    Error::Config(m)
}

impl LMTransformerArgs {
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| bad(format!("model config JSON: {e}")))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serialises")
    }

    /// Resolves derived sizes and rejects what is not supported.
    pub fn resolve(&self) -> Result<ModelConfig> {
        let a = self;
        if a.dim == 0 || a.n_layers == 0 {
            return Err(bad(format!(
                "dim ({}) and n_layers ({}) must be positive",
                a.dim, a.n_layers
            )));
        }
        if a.vocab_size <= 0 {
            return Err(bad(format!(
                "vocab_size must be set (positive), found {}",
                a.vocab_size
            )));
        }
        if let Some(w) = a.sliding_window {
            return Err(bad(format!(
                "sliding_window ({w}) is not supported: the reference runs it only with xformers attention, \
which lingua's generator does not use; use null"
            )));
        }
        if a.weight_tying {
            return Err(bad(
                "weight_tying: true is not supported: the reference's own code path fails with it \
(LMTransformer has no `embeddings`); use false"
                    .into(),
            ));
        }
        let n_heads = match (a.n_heads, a.head_dim) {
            (Some(h), _) => h,
            (None, Some(hd)) if hd > 0 && a.dim.is_multiple_of(hd) => a.dim / hd,
            _ => return Err(bad("set n_heads (or head_dim dividing dim)".into())),
        };
        let head_dim = a.head_dim.unwrap_or(a.dim / n_heads.max(1));
        if n_heads == 0 || head_dim == 0 || n_heads * head_dim != a.dim || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "n_heads ({n_heads}) x head_dim ({head_dim}) must equal dim ({}), head_dim even",
                a.dim
            )));
        }
        let n_kv_heads = a.n_kv_heads.unwrap_or(n_heads);
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(format!(
                "n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})"
            )));
        }
        if a.max_seqlen == 0 || a.max_seqlen > crate::kernels::ops::MAX_SEQ as usize {
            return Err(bad(format!(
                "max_seqlen must be in 1..={}, found {}",
                crate::kernels::ops::MAX_SEQ,
                a.max_seqlen
            )));
        }
        if a.multiple_of == 0 {
            return Err(bad("multiple_of must be positive".into()));
        }
        // lingua: hidden = multiple_of * ceil(int(multiplier * int(2 * 4d / 3)) / multiple_of)
        let mut hidden = (2 * 4 * a.dim) / 3;
        if let Some(m) = a.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as usize;
        }
        let hidden = a.multiple_of * hidden.div_ceil(a.multiple_of);
        let (memory_layers, memory) = a.productkey_args.resolve(a.dim, a.n_layers)?;
        let moe_args = &a.moe_args;
        let (moe_layers, moe) = if moe_args.is_disabled() {
            (Vec::new(), None)
        } else {
            let layers = parse_layers("moe_args.layers", &moe_args.layers, a.n_layers)?;
            if let Some(l) = layers.iter().find(|l| memory_layers.contains(l)) {
                return Err(bad(format!(
                    "layer {l} is in both productkey_args.layers and moe_args.layers"
                )));
            }
            let (e, k) = (moe_args.n_experts, moe_args.top_k);
            if e == 0 || k == 0 || k > e {
                return Err(bad(format!(
                    "moe_args: top_k ({k}) must be in 1..=n_experts ({e})"
                )));
            }
            if !(moe_args.aux_loss_coef.is_finite() && moe_args.aux_loss_coef >= 0.0) {
                return Err(bad(format!(
                    "moe_args.aux_loss_coef must be a non-negative number, found {}",
                    moe_args.aux_loss_coef
                )));
            }
            let width = match moe_args.hidden_dim {
                0 => hidden.div_ceil(k),
                h => h,
            };
            let m = MoeConfig {
                experts: e,
                top_k: k,
                hidden: width,
                aux_loss_coef: moe_args.aux_loss_coef as f32,
            };
            (layers, Some(m))
        };
        Ok(ModelConfig {
            args: a.clone(),
            dim: a.dim,
            n_layers: a.n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            vocab: a.vocab_size as usize,
            max_seqlen: a.max_seqlen,
            norm_eps: a.norm_eps as f32,
            rope_theta: a.rope_theta as f32,
            memory_layers,
            memory,
            memory_placement: MemoryPlacement::Replace,
            moe_layers,
            moe,
            variant: TransformerVariant::default(),
        })
    }
}

/// The layer indices of a comma-separated list (`field` names it in errors), each below
/// `n_layers`, sorted and without repeats.
fn parse_layers(field: &str, text: &str, n_layers: usize) -> Result<Vec<usize>> {
    let mut layers = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let l: usize = part
            .parse()
            .map_err(|_| bad(format!("{field}: `{part}` is not a layer index")))?;
        if l >= n_layers {
            return Err(bad(format!("{field}: {l} is not below n_layers ({n_layers})")));
        }
        if !layers.contains(&l) {
            layers.push(l);
        }
    }
    layers.sort();
    Ok(layers)
}

impl ModelConfig {
    /// A dense model of `args`' sizes (every one given: `n_heads`, `head_dim`, `n_kv_heads`;
    /// `n_heads * head_dim` may differ from `dim`) with `hidden`-wide feed-forward blocks and
    /// the additions of `variant`: a Hugging Face model's configuration
    /// (`io::hf::HfConfig::model_config` checks the sizes).
    pub fn with_variant(args: &LMTransformerArgs, hidden: usize, variant: TransformerVariant) -> Self {
        let n_heads = args.n_heads.unwrap_or(1);
        ModelConfig {
            args: args.clone(),
            dim: args.dim,
            n_layers: args.n_layers,
            n_heads,
            n_kv_heads: args.n_kv_heads.unwrap_or(n_heads),
            head_dim: args.head_dim.unwrap_or(args.dim / n_heads),
            hidden,
            vocab: args.vocab_size as usize,
            max_seqlen: args.max_seqlen,
            norm_eps: args.norm_eps as f32,
            rope_theta: args.rope_theta as f32,
            memory_layers: Vec::new(),
            memory: None,
            memory_placement: MemoryPlacement::Replace,
            moe_layers: Vec::new(),
            moe: None,
            variant,
        }
    }

    /// This model with the memory layers `memory` describes (`is_enabled`), placed as
    /// `placement` says: a memory added to a model that has none (a retrofit).
    pub fn with_memory(&self, memory: &ProductKeyArgs, placement: MemoryPlacement) -> Result<Self> {
        if self.memory.is_some() || !self.moe_layers.is_empty() {
            return Err(bad(
                "the model already has memory or mixture-of-experts layers".into()
            ));
        }
        let (layers, config) = memory.resolve(self.dim, self.n_layers)?;
        let mut c = self.clone();
        c.args.productkey_args = memory.clone();
        c.memory_layers = layers;
        c.memory = config;
        c.memory_placement = placement;
        Ok(c)
    }

    /// RoPE's inverse frequency of each of the `head_dim / 2` pairs of a head.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        match &self.variant.rope_inv_freq {
            Some(f) => f.clone(),
            None => crate::kernels::ops::rope_inv_freq(self.head_dim, self.rope_theta),
        }
    }

    pub fn is_memory_layer(&self, layer: usize) -> bool {
        self.memory_layers.contains(&layer)
    }

    /// The mixture-of-experts configuration of `layer`, if its block is one.
    pub fn moe_at(&self, layer: usize) -> Option<&MoeConfig> {
        self.moe.as_ref().filter(|_| self.moe_layers.contains(&layer))
    }

    /// Errors unless every id in `ids` (the tensor called `name`) is below vocab_size.
    pub fn check_ids(&self, name: &str, ids: &[u32]) -> Result<()> {
        self.check_ids_allowing(name, ids, None)
    }

    /// As `check_ids`, also allowing `IGNORE_TARGET` (a target that counts for nothing).
    pub fn check_targets(&self, name: &str, ids: &[u32]) -> Result<()> {
        self.check_ids_allowing(name, ids, Some(crate::kernels::ops::IGNORE_TARGET))
    }

    fn check_ids_allowing(&self, name: &str, ids: &[u32], allowed: Option<u32>) -> Result<()> {
        match ids
            .iter()
            .position(|&t| t as usize >= self.vocab && Some(t) != allowed)
        {
            None => Ok(()),
            Some(i) => Err(Error::tensor(
                name,
                format!("ids below vocab_size {}", self.vocab),
                format!("{} at flat index {i}", ids[i]),
            )),
        }
    }
}
