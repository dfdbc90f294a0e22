//! Host-side parameters of the transformer under lingua's names (REFERENCE.md section 3).

use super::config::ModelConfig;
use crate::error::{Error, Result};
use crate::memory::{MemoryWeights, VALUES_NAME};
use crate::rng::Rng;

/// A layer's feed-forward block: SwiGLU, or a memory layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    /// `w1`, `w3` `[hidden, dim]`, `w2` `[dim, hidden]`: `w2(silu(w1 x) * w3 x)`.
    Dense {
        w1: Vec<f32>,
        w2: Vec<f32>,
        w3: Vec<f32>,
    },
    Memory(MemoryWeights),
}

#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attention_norm: Vec<f32>,
    /// `[n_heads * head_dim, dim]`
    pub wq: Vec<f32>,
    /// `[n_kv_heads * head_dim, dim]`
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    /// `[dim, n_heads * head_dim]`
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub feed_forward: FeedForward,
}

#[derive(Clone, Debug)]
pub struct ModelWeights {
    pub config: ModelConfig,
    /// `[vocab, dim]`
    pub tok_embeddings: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `[vocab, dim]`
    pub output: Vec<f32>,
    /// The value table all memory layers share, `[n_keys^2, v_dim]`.
    pub values: Option<Vec<f32>>,
}

impl ModelWeights {
    /// Normal initialisation with std `init_base_std` (default dim^-1/2), norms at one; memory
    /// layers take the reference's memory initialisation. Deterministic from `args.seed`.
    pub fn init(config: &ModelConfig) -> Result<Self> {
        let c = config;
        let mut rng = Rng::new(c.args.seed);
        let std = c
            .args
            .init_base_std
            .map(|s| s as f32)
            .unwrap_or(1.0 / (c.dim as f32).sqrt());
        let (d, qd, kvd) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let feed_forward = match (&c.memory, c.is_memory_layer(l)) {
                (Some(m), true) => FeedForward::Memory(MemoryWeights::init(m, &mut rng)?),
                _ => FeedForward::Dense {
                    w1: rng.vec_normal(c.hidden * d, std),
                    w2: rng.vec_normal(d * c.hidden, std),
                    w3: rng.vec_normal(c.hidden * d, std),
                },
            };
            layers.push(LayerWeights {
                attention_norm: vec![1.0; d],
                wq: rng.vec_normal(qd * d, std),
                wk: rng.vec_normal(kvd * d, std),
                wv: rng.vec_normal(kvd * d, std),
                wo: rng.vec_normal(d * qd, std),
                ffn_norm: vec![1.0; d],
                feed_forward,
            });
        }
        let values = c.memory.as_ref().map(|m| MemoryWeights::init_values(m, &mut rng));
        Ok(ModelWeights {
            config: c.clone(),
            tok_embeddings: rng.vec_normal(c.vocab * d, std),
            layers,
            norm: vec![1.0; d],
            output: rng.vec_normal(c.vocab * d, std),
            values,
        })
    }

    /// Every parameter under its lingua name with its shape; the shared value table once,
    /// under the first memory layer (`layers.<first>.feed_forward.values.weight`).
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let c = &self.config;
        let (d, qd, kvd) = (c.dim, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let mut t: Vec<(String, Vec<usize>, &[f32])> = vec![(
            "tok_embeddings.weight".into(),
            vec![c.vocab, d],
            &self.tok_embeddings,
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |n: &str| format!("layers.{i}.{n}");
            t.push((p("attention.wq.weight"), vec![qd, d], &l.wq));
            t.push((p("attention.wk.weight"), vec![kvd, d], &l.wk));
            t.push((p("attention.wv.weight"), vec![kvd, d], &l.wv));
            t.push((p("attention.wo.weight"), vec![d, qd], &l.wo));
            t.push((p("attention_norm.weight"), vec![d], &l.attention_norm));
            t.push((p("ffn_norm.weight"), vec![d], &l.ffn_norm));
            match &l.feed_forward {
                FeedForward::Dense { w1, w2, w3 } => {
                    t.push((p("feed_forward.w1.weight"), vec![c.hidden, d], w1));
                    t.push((p("feed_forward.w2.weight"), vec![d, c.hidden], w2));
                    t.push((p("feed_forward.w3.weight"), vec![c.hidden, d], w3));
                }
                FeedForward::Memory(m) => {
                    for (name, shape, data) in m.named_tensors() {
                        t.push((p(&format!("feed_forward.{name}")), shape, data));
                    }
                    if Some(i) == c.memory_layers.first().copied() {
                        let mc = &m.config;
                        let values = self.values.as_deref().unwrap_or(&[]);
                        t.push((
                            p(&format!("feed_forward.{VALUES_NAME}")),
                            vec![mc.n_values(), mc.v_dim],
                            values,
                        ));
                    }
                }
            }
        }
        t.push(("norm.weight".into(), vec![d], &self.norm));
        t.push(("output.weight".into(), vec![c.vocab, d], &self.output));
        t
    }

    /// The parameter called `name` (a name of `named_tensors`), mutably.
    pub fn tensor_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        match name {
            "tok_embeddings.weight" => return Some(&mut self.tok_embeddings),
            "norm.weight" => return Some(&mut self.norm),
            "output.weight" => return Some(&mut self.output),
            _ => {}
        }
        let rest = name.strip_prefix("layers.")?;
        let (i, field) = rest.split_once('.')?;
        let layer = self.layers.get_mut(i.parse::<usize>().ok()?)?;
        Some(match field {
            "attention.wq.weight" => &mut layer.wq,
            "attention.wk.weight" => &mut layer.wk,
            "attention.wv.weight" => &mut layer.wv,
            "attention.wo.weight" => &mut layer.wo,
            "attention_norm.weight" => &mut layer.attention_norm,
            "ffn_norm.weight" => &mut layer.ffn_norm,
            _ => {
                let f = field.strip_prefix("feed_forward.")?;
                if f == VALUES_NAME {
                    return self.values.as_mut();
                }
                match (&mut layer.feed_forward, f) {
                    (FeedForward::Dense { w1, .. }, "w1.weight") => w1,
                    (FeedForward::Dense { w2, .. }, "w2.weight") => w2,
                    (FeedForward::Dense { w3, .. }, "w3.weight") => w3,
                    (FeedForward::Memory(m), crate::memory::QUERY_W) => &mut m.query_w,
                    (FeedForward::Memory(m), crate::memory::QUERY_B) => &mut m.query_b,
                    (FeedForward::Memory(m), crate::memory::KEYS) => &mut m.keys,
                    (FeedForward::Memory(m), crate::memory::SWILU_W) => &mut m.swilu.as_mut()?.0,
                    (FeedForward::Memory(m), crate::memory::SWILU_B) => &mut m.swilu.as_mut()?.1,
                    (FeedForward::Memory(m), crate::memory::VALUE_PROJ_W) => &mut m.value_proj.as_mut()?.0,
                    (FeedForward::Memory(m), crate::memory::VALUE_PROJ_B) => &mut m.value_proj.as_mut()?.1,
                    _ => return None,
                }
            }
        })
    }

    /// Weights for `config` read from `file` (lingua names, any float dtype); every tensor
    /// the configuration needs must be there with its shape. Tensors the configuration does
    /// not use are reported, not silently ignored.
    pub fn from_tensors(config: &ModelConfig, file: &crate::io::TensorFile) -> Result<Self> {
        let mut w = ModelWeights::init(config)?;
        let wanted: Vec<(String, Vec<usize>)> =
            w.named_tensors().into_iter().map(|(n, s, _)| (n, s)).collect();
        for (name, shape) in &wanted {
            let dims: Vec<Option<usize>> = shape.iter().map(|&d| Some(d)).collect();
            let (_, data) = file.f32_with_shape(name, &dims)?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::tensor(
                    name,
                    "finite values",
                    format!("{} at flat index {i}", data[i]),
                ));
            }
            *w.tensor_mut(name).expect("named_tensors names resolve") = data.to_vec();
        }
        let unused: Vec<&String> = file
            .tensors
            .keys()
            .filter(|k| !wanted.iter().any(|(n, _)| n == *k))
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
    pub fn to_tensors(&self) -> crate::io::TensorFile {
        let mut file = crate::io::TensorFile::default();
        for (name, shape, data) in self.named_tensors() {
            file.insert(name, crate::io::HostTensor::f32(shape, data.to_vec()));
        }
        file
    }

    /// Parameter count (the value table counted once).
    pub fn parameter_count(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }

    /// Parameters of the memory layers: the value table, keys, query, swilu and value
    /// projections.
    pub fn memory_parameter_count(&self) -> usize {
        let prefixes: Vec<String> = self
            .config
            .memory_layers
            .iter()
            .map(|l| format!("layers.{l}.feed_forward."))
            .collect();
        self.named_tensors()
            .iter()
            .filter(|(n, _, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum()
    }
}
