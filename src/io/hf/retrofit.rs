//! A memory retrofitted into a Hugging Face model (`memlayers retrofit`): Memory+ layers added
//! beside chosen feed-forward blocks, their value rows zero so that the model computes exactly
//! what it did until it is taught (`docs/hugging-face.md`, "Retrofitting a memory").
//!
//! Why the value rows: a zero value table makes every bag zero, so the layer's output (the
//! output projection of the gated bag, plus its bias, also zero) is zero whatever its keys,
//! query and projection weights hold, while the gradient reaching the value rows
//! (score times the output projection's transpose of the loss gradient, gated) is not zero:
//! teaching the value rows alone works from the first step. A zero output projection would
//! also silence the layer, but it would block those gradients.

use super::config::HfMemory;
use crate::error::{Error, Result};
use crate::model::{MemoryPlacement, ModelConfig, ModelLayout, ModelWeights, ProductKeyArgs};
use crate::rng::Rng;
use crate::tensor_file::{HostTensor, TensorFile};

/// The sizes of a retrofitted memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemorySizes {
    /// Keys per half of the product key set: `n_keys^2` value rows.
    pub n_keys: usize,
    pub heads: usize,
    pub knn: usize,
    pub k_dim: usize,
}

/// Slots each head reads by default (at most `n_keys`).
pub const DEFAULT_KNN: usize = 32;

/// The largest value table a retrofit picks by default, in f32 values: 2^25 (128 MiB), what
/// one storage binding holds under WebGPU's default limits, so that it trains anywhere.
pub const DEFAULT_MAX_TABLE_VALUES: usize = 1 << 25;

impl MemorySizes {
    /// The default for a model of `config`'s width with `params` parameters: 4 heads, 32
    /// slots each (at most `n_keys`), keys half the width (even, at least 16); `n_keys` the largest power of
    /// two (at least 16) whose table, `n_keys^2` rows of the width, holds at most a quarter
    /// of the model's parameters and at most `DEFAULT_MAX_TABLE_VALUES` values. SmolLM2-135M
    /// (width 576): 128 keys, 16,384 rows, 9.4M values.
    pub fn default_for(config: &ModelConfig, params: usize) -> Self {
        let dim = config.dim.max(1);
        let budget = (params / 4).min(DEFAULT_MAX_TABLE_VALUES);
        let mut n_keys = 16;
        while (2 * n_keys) * (2 * n_keys) * dim <= budget {
            n_keys *= 2;
        }
        MemorySizes {
            n_keys,
            heads: 4,
            knn: DEFAULT_KNN.min(n_keys),
            k_dim: (config.dim / 2).max(16) & !1,
        }
    }

    /// lingua's arguments of a Memory+ layer (SwiLU projection, one shared value table) of
    /// these sizes at `layers`.
    pub fn product_key_args(&self, layers: &[usize]) -> ProductKeyArgs {
        ProductKeyArgs {
            is_enabled: true,
            layers: layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(","),
            mem_n_keys: self.n_keys,
            mem_heads: self.heads,
            mem_knn: self.knn,
            mem_k_dim: self.k_dim,
            ..ProductKeyArgs::default()
        }
    }
}

/// The configuration section and the configuration of `base` with a memory of `sizes` at
/// `layers`, beside their feed-forward blocks or in their place (`placement`; in place, each
/// layer gets a value table of its own, healed alone).
pub fn retrofit_config(
    base: &ModelConfig,
    layers: &[usize],
    sizes: &MemorySizes,
    placement: MemoryPlacement,
) -> Result<(HfMemory, ModelConfig)> {
    if base.memory.is_some() {
        return Err(Error::Config(format!(
            "the model already has a memory (at layers {:?}); retrofit a folder without one",
            base.memory_layers
        )));
    }
    if layers.is_empty() {
        return Err(Error::Config("retrofit: no layer given".into()));
    }
    if let Some(l) = layers.iter().find(|&&l| l >= base.n_layers) {
        return Err(Error::Config(format!(
            "retrofit: layer {l} is out of range (the model has layers 0 to {})",
            base.n_layers - 1
        )));
    }
    let mut productkey_args = sizes.product_key_args(layers);
    productkey_args.mem_share_values = placement == MemoryPlacement::Parallel;
    let memory = HfMemory {
        placement: match placement {
            MemoryPlacement::Parallel => "parallel",
            MemoryPlacement::Replace => "replace",
        }
        .into(),
        productkey_args,
        base: None,
    };
    let config = base.with_memory(&memory.productkey_args, placement)?;
    Ok((memory, config))
}

/// The new memory's parameters of `config` (a retrofitted configuration), drawn as lingua
/// initialises them from `seed` in its order; beside a feed-forward block, the value rows and
/// the output projection's bias zero.
fn memory_params(config: &ModelConfig, seed: u64) -> Result<Vec<(crate::params::ParamId, Vec<f32>)>> {
    let layout = ModelLayout::new(config)?;
    let memory: Vec<crate::params::ParamId> = layout
        .layers
        .iter()
        .filter_map(|l| l.feed_forward.memory())
        .flat_map(|m| m.local().map(|(_, id)| id))
        .chain(layout.values.iter().copied())
        .collect();
    let silent = config.memory_placement == MemoryPlacement::Parallel;
    let mut rng = Rng::new(seed);
    let mut params = Vec::new();
    for id in layout.init_order() {
        if !memory.contains(&id) {
            continue;
        }
        let spec = layout.registry.spec(id);
        let zero = silent && (layout.values.contains(&id) || spec.name.ends_with("value_proj.bias"));
        let data = match zero {
            true => vec![0.0; spec.len()],
            false => spec.init.draw(spec.len(), &mut rng),
        };
        params.push((id, data));
    }
    Ok(params)
}

/// The new memory's tensors under the folder's names (`model.layers.<l>.memory.<name>`)
/// (`memory_params`).
pub fn memory_tensors(config: &ModelConfig, seed: u64) -> Result<TensorFile> {
    let layout = ModelLayout::new(config)?;
    let mut file = TensorFile::default();
    for (id, data) in memory_params(config, seed)? {
        let spec = layout.registry.spec(id);
        let (name, _) = super::names::hf_name_and_order(&spec.name)
            .ok_or_else(|| Error::Config(format!("{} has no Hugging Face name", spec.name)))?;
        file.insert(name, HostTensor::f32(spec.shape.clone(), data));
    }
    Ok(file)
}

/// The whole retrofitted model on the host: `base`'s weights (a model without a memory) and
/// the new memory of `config` (`retrofit_config` of `base`'s configuration), the same values
/// `memory_tensors` writes for `seed`. What `retrofit` writes as a folder, for a model that
/// lives in memory (the page's).
pub fn retrofitted_weights(base: &ModelWeights, config: &ModelConfig, seed: u64) -> Result<ModelWeights> {
    let layout = ModelLayout::new(config)?;
    let mut memory: std::collections::HashMap<String, Vec<f32>> = memory_params(config, seed)?
        .into_iter()
        .map(|(id, data)| (layout.registry.spec(id).name.clone(), data))
        .collect();
    ModelWeights::from_loader(config, |name, _| {
        if let Some(data) = memory.remove(name) {
            return Ok(data);
        }
        match base.layout.registry.id(name) {
            Some(id) => Ok(base.get(id).to_vec()),
            None => Err(Error::MissingTensor(format!("{name} in the base model"))),
        }
    })
}
