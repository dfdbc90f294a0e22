//! Host-side parameters of the transformer under lingua's names (docs/reference.md, "The transformer"): one
//! tensor per entry of the model's parameter registry.

use super::blocks::MemoryParams;
use super::config::ModelConfig;
use super::layout::ModelLayout;
use crate::error::{Error, Result};
use crate::memory::MemoryWeights;
use crate::params::ParamId;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub config: ModelConfig,
    pub layout: ModelLayout,
    /// Row-major f32, one per registry entry (`ParamId` order).
    tensors: Vec<Vec<f32>>,
}

impl ModelWeights {
    /// Every parameter drawn as its registry entry says (normal with std `init_base_std`,
    /// default dim^-1/2; norms at one; memory layers as the reference), in the reference's
    /// order of draws (`ModelLayout::init_order`), from `args.seed`.
    pub fn init(config: &ModelConfig) -> Result<Self> {
        let layout = ModelLayout::new(config)?;
        let mut rng = Rng::new(config.args.seed);
        let mut tensors = vec![Vec::new(); layout.registry.len()];
        for id in layout.init_order() {
            let s = layout.registry.spec(id);
            tensors[id.0] = s.init.draw(s.len(), &mut rng);
        }
        Ok(ModelWeights {
            config: config.clone(),
            layout,
            tensors,
        })
    }

    /// Weights for `config` with each parameter from `load(name, shape)` (its lingua name and
    /// shape), which must give that many finite values: weights kept under other names, such
    /// as a Hugging Face folder's, read one tensor at a time.
    pub fn from_loader(
        config: &ModelConfig,
        mut load: impl FnMut(&str, &[usize]) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        let layout = ModelLayout::new(config)?;
        let mut tensors = Vec::with_capacity(layout.registry.len());
        for spec in layout.registry.specs() {
            let data = load(&spec.name, &spec.shape)?;
            if data.len() != spec.len() {
                return Err(Error::tensor(
                    &spec.name,
                    format!("{} values", spec.len()),
                    format!("{}", data.len()),
                ));
            }
            if let Some(at) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::tensor(
                    &spec.name,
                    "finite values",
                    format!("{} at flat index {at}", data[at]),
                ));
            }
            tensors.push(data);
        }
        Ok(ModelWeights {
            config: config.clone(),
            layout,
            tensors,
        })
    }

    pub fn get(&self, id: ParamId) -> &[f32] {
        &self.tensors[id.0]
    }

    /// Every parameter under its lingua name with its shape, in registry order; a shared
    /// value table once, under the first memory layer (`layers.<first>.feed_forward.values.weight`).
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        self.layout
            .registry
            .iter()
            .map(|(id, s)| (s.name.clone(), s.shape.clone(), self.get(id)))
            .collect()
    }

    /// The parameter called `name` (a name of `named_tensors`), mutably.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        let id = self.layout.registry.id(name)?;
        Some(&mut self.tensors[id.0])
    }

    /// A memory layer's weights (the value table excluded), copied out for the layer types.
    pub fn memory_weights(&self, p: &MemoryParams) -> Result<MemoryWeights> {
        let m = self
            .config
            .memory
            .as_ref()
            .ok_or_else(|| Error::Config("the model has no memory layers".into()))?;
        let tensors = p.local().map(|(name, id)| (name, self.get(id).to_vec()));
        Ok(MemoryWeights::from_named(m, tensors))
    }

    /// The value table the memory layers share (the first one, when each has its own).
    pub fn values(&self) -> Option<&[f32]> {
        self.layout.values.first().map(|&id| self.get(id))
    }

    /// Weights for `config` read from `file` (lingua names, any float dtype); every tensor
    /// the configuration needs must be there with its shape. Tensors the configuration does
    /// not use are reported, not silently ignored.
    pub fn from_tensors(config: &ModelConfig, file: &crate::tensor_file::TensorFile) -> Result<Self> {
        let mut w = ModelWeights::init(config)?;
        for (i, spec) in w.layout.registry.specs().iter().enumerate() {
            let dims: Vec<Option<usize>> = spec.shape.iter().map(|&d| Some(d)).collect();
            let (_, data) = file.f32_with_shape(&spec.name, &dims)?;
            if let Some(at) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::tensor(
                    &spec.name,
                    "finite values",
                    format!("{} at flat index {at}", data[at]),
                ));
            }
            w.tensors[i] = data.to_vec();
        }
        let unused: Vec<&String> = file
            .tensors
            .keys()
            .filter(|k| w.layout.registry.id(k).is_none())
            .collect();
        if !unused.is_empty() {
            return Err(Error::Format(format!(
                "tensors the configuration does not use: {} (check the config against the checkpoint)",
                unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(w)
    }

    /// The weights as a safetensors file under lingua's names.
    pub fn to_tensors(&self) -> crate::tensor_file::TensorFile {
        let mut file = crate::tensor_file::TensorFile::default();
        for (name, shape, data) in self.named_tensors() {
            file.insert(name, crate::tensor_file::HostTensor::f32(shape, data.to_vec()));
        }
        file
    }

    /// Parameter count (a shared value table counted once).
    pub fn parameter_count(&self) -> usize {
        self.layout.registry.specs().iter().map(|s| s.len()).sum()
    }

    /// Parameters of the memory layers: the value table, keys, query, swilu and value
    /// projections.
    pub fn memory_parameter_count(&self) -> usize {
        let r = &self.layout.registry;
        let mut ids: Vec<ParamId> = self.layout.values.clone();
        for l in &self.layout.layers {
            if let Some(m) = l.feed_forward.memory() {
                ids.extend(m.local().map(|(_, id)| id));
            }
        }
        ids.iter().map(|&id| r.spec(id).len()).sum()
    }
}
