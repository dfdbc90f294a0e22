//! A memory layer's weights under the reference names (docs/reference.md, "The memory layer"), with or
//! without the module prefix of a full model (`layers.1.feed_forward.`).

use crate::error::{Error, Result};
use crate::memory::{self, MemoryConfig, MemoryWeights};
use crate::tensor_file::{HostTensor, TensorFile};

/// A memory layer read from a file: its weights, the value table, and the name prefix found.
pub struct MemoryCheckpoint {
    pub weights: MemoryWeights,
    pub values: Vec<f32>,
    pub prefix: String,
}

fn find_prefix(file: &TensorFile) -> Result<String> {
    if file.tensors.contains_key(memory::KEYS) {
        return Ok(String::new());
    }
    let suffix = format!(".{}", memory::KEYS);
    let found: Vec<&String> = file.tensors.keys().filter(|n| n.ends_with(&suffix)).collect();
    match found.as_slice() {
        [] => Err(Error::MissingTensor(memory::KEYS.into())),
        [one] => Ok(one[..one.len() - memory::KEYS.len()].to_string()),
        many => Err(Error::Format(format!(
            "the file holds several memory layers ({}); give one layer's tensors",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn check_finite(name: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::tensor(
            name,
            "finite values",
            format!("{} at flat index {i}", v[i]),
        )),
    }
}

/// Reads one memory layer. heads, n_keys, k_dim, v_dim and d come from the tensor shapes;
/// `knn` and `qk_norm` are not stored in checkpoints and are given.
pub fn load_memory(file: &TensorFile, knn: usize, qk_norm: bool) -> Result<MemoryCheckpoint> {
    let prefix = find_prefix(file)?;
    let name = |n: &str| format!("{prefix}{n}");
    let get = |n: &str, shape: &[Option<usize>]| -> Result<Vec<f32>> {
        let full = name(n);
        let (_, data) = file.f32_with_shape(&full, shape)?;
        check_finite(&full, data)?;
        Ok(data.to_vec())
    };
    let shape_of = |n: &str, rank: usize| -> Result<Vec<usize>> {
        let t = file.get(&name(n))?;
        if t.shape.len() != rank {
            return Err(Error::tensor(
                name(n),
                format!("a rank-{rank} tensor"),
                format!("{:?}", t.shape),
            ));
        }
        Ok(t.shape.clone())
    };
    let qs = shape_of(memory::QUERY_W, 2)?;
    let ks = shape_of(memory::KEYS, 2)?;
    let vs = shape_of(memory::VALUES_NAME, 2)?;
    let (q_out, d) = (qs[0], qs[1]);
    let (k_rows, half) = (ks[0], ks[1]);
    let k_dim = 2 * half;
    if k_dim == 0 || q_out % k_dim != 0 {
        return Err(Error::tensor(
            name(memory::QUERY_W),
            format!("[heads * k_dim, d] with k_dim = 2 * keys.shape[1] = {k_dim}"),
            format!("{qs:?}"),
        ));
    }
    let heads = q_out / k_dim;
    if k_rows % (2 * heads) != 0 || k_rows == 0 {
        return Err(Error::tensor(
            name(memory::KEYS),
            format!("[2 * heads * n_keys, k_dim / 2] with heads = {heads}"),
            format!("{ks:?}"),
        ));
    }
    let n_keys = k_rows / (2 * heads);
    let (n_values, v_dim) = (vs[0], vs[1]);
    let root = (n_values as f64).sqrt().round() as usize;
    if root * root != n_values {
        return Err(Error::tensor(
            name(memory::VALUES_NAME),
            "a square number of rows (n_keys^2)",
            format!("{vs:?} ({n_values} rows is not a square)"),
        ));
    }
    if n_values != n_keys * n_keys {
        return Err(Error::tensor(
            name(memory::VALUES_NAME),
            format!(
                "[n_keys^2 = {}, v_dim] (n_keys = {n_keys} from keys)",
                n_keys * n_keys
            ),
            format!("{vs:?}"),
        ));
    }
    let has = |n: &str| file.tensors.contains_key(&name(n));
    let swilu = if has(memory::SWILU_W) {
        Some((
            get(memory::SWILU_W, &[Some(v_dim), Some(d)])?,
            get(memory::SWILU_B, &[Some(v_dim)])?,
        ))
    } else {
        None
    };
    let value_proj = if has(memory::VALUE_PROJ_W) {
        Some((
            get(memory::VALUE_PROJ_W, &[Some(d), Some(v_dim)])?,
            get(memory::VALUE_PROJ_B, &[Some(d)])?,
        ))
    } else {
        None
    };
    let gating = if has(memory::GATING_W) {
        Some((
            get(memory::GATING_W, &[Some(1), Some(d)])?,
            get(memory::GATING_B, &[Some(1)])?,
        ))
    } else {
        None
    };
    let config = MemoryConfig {
        d,
        heads,
        n_keys,
        knn,
        k_dim,
        v_dim,
        swilu: swilu.is_some(),
        value_proj: value_proj.is_some(),
        gated: gating.is_some(),
        peer: false,
        qk_norm,
    };
    config.validate()?;
    let weights = MemoryWeights {
        query_w: get(memory::QUERY_W, &[Some(q_out), Some(d)])?,
        query_b: get(memory::QUERY_B, &[Some(q_out)])?,
        keys: get(memory::KEYS, &[Some(k_rows), Some(half)])?,
        swilu,
        value_proj,
        gating,
        config,
    };
    let values = get(memory::VALUES_NAME, &[Some(n_values), Some(v_dim)])?;
    Ok(MemoryCheckpoint {
        weights,
        values,
        prefix,
    })
}

/// The tensors of one layer and its values under the reference names.
pub fn memory_tensors(weights: &MemoryWeights, values: &[f32]) -> TensorFile {
    let mut file = TensorFile::default();
    for (name, shape, data) in weights.named_tensors() {
        file.insert(name, HostTensor::f32(shape, data.to_vec()));
    }
    let c = &weights.config;
    file.insert(
        memory::VALUES_NAME,
        HostTensor::f32(vec![c.n_values(), c.v_dim], values.to_vec()),
    );
    file
}
