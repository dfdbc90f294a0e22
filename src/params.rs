//! The parameter registry: every parameter of a model declared once, with its reference name,
//! shape, initialisation, optimiser group and dtype. Host weights, the GPU copy, gradients,
//! checkpoints and the optimiser all index it by `ParamId`; names are looked up only at the
//! edges (files, the CLI).

use crate::rng::Rng;

/// A parameter's place in its model's registry: the identity gradients and optimiser state
/// are matched by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) usize);

/// The optimiser group a parameter belongs to (docs/reference.md, "The training recipe"): value tables have
/// their own learning rate, clipping norm and (optionally) lazy row updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Weights,
    Values,
}

/// How a parameter is initialised (drawn from the model's seed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal with this standard deviation.
    Normal(f32),
    /// Uniform on `[-a, a]`.
    Symmetric(f32),
    Ones,
    Zeros,
}

impl Init {
    pub fn draw(self, len: usize, rng: &mut Rng) -> Vec<f32> {
        match self {
            Init::Normal(std) => rng.vec_normal(len, std),
            Init::Symmetric(a) => rng.vec_symmetric(len, a),
            Init::Ones => vec![1.0; len],
            Init::Zeros => vec![0.0; len],
        }
    }
}

/// Element type of a parameter as the model stores it for training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// The reference (lingua) name, e.g. `layers.0.attention.wq.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    pub group: Group,
    pub dtype: Dtype,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every parameter of a model, in declaration order (a model declares lingua's state-dict
/// order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    specs: Vec<ParamSpec>,
}

impl Registry {
    pub fn declare(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        init: Init,
        group: Group,
    ) -> ParamId {
        self.specs.push(ParamSpec {
            name: name.into(),
            shape,
            init,
            group,
            dtype: Dtype::F32,
        });
        ParamId(self.specs.len() - 1)
    }

    /// A weight matrix of the `Weights` group drawn normal with standard deviation `std`.
    pub fn normal_weight(&mut self, name: impl Into<String>, shape: Vec<usize>, std: f32) -> ParamId {
        self.declare(name, shape, Init::Normal(std), Group::Weights)
    }

    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Every parameter with its id, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &ParamSpec)> {
        self.specs.iter().enumerate().map(|(i, s)| (ParamId(i), s))
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.specs.iter().position(|s| s.name == name).map(ParamId)
    }
}
