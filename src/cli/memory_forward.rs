//! `memlayers memory-forward`: a reference checkpoint's memory layer on the GPU.

use memlayers::io::{load_memory, HostTensor, TensorData, TensorFile};
use memlayers::memory::{self, ShardedValues};
use memlayers::{Error, Gpu, MemoryLayer, Result, ValueDtype, ValuePool};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The layer's tensors (safetensors, f32/f16/bf16).
    #[arg(long)]
    pub weights: PathBuf,
    /// `input` [rows, d] or [batch, seq, d].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write `output`, `indices` and `scores` (written atomically); when INPUT also
    /// holds `grad_output` (the shape of `output`), also `grad.input` and `grad.<name>` for
    /// every parameter, under the weights file's names.
    #[arg(long)]
    pub output: PathBuf,
    /// Values read per head (not stored in checkpoints).
    #[arg(long, default_value_t = 32)]
    pub knn: usize,
    /// Normalise query and key halves before scoring (paper 3.1.4; off in the reference code).
    #[arg(long)]
    pub qk_norm: bool,
    /// Keep the value table in f16 on the GPU (half the memory; accumulation stays f32).
    #[arg(long)]
    pub f16_values: bool,
    /// Shard the value table by columns over these adapters (indices as `memlayers info`
    /// lists them; an index may repeat: another device on the same adapter). The first holds
    /// the rest of the layer. `MEMLAYERS_MAX_DEVICE_BYTES` caps each device's share.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<usize>>,
}

/// Rows per GPU submission, bounding the activations' memory for large inputs.
const ROWS_PER_BATCH: usize = 16384;

pub fn run(a: &Args) -> Result<()> {
    let checkpoint = load_memory(&TensorFile::read(&a.weights)?, a.knn, a.qk_norm)?;
    let c = checkpoint.weights.config.clone();
    let inputs = TensorFile::read(&a.input)?;
    let x = inputs.get("input")?;
    let expected = format!("[rows, {d}] or [batch, seq, {d}] (float)", d = c.d);
    let data = match &x.data {
        TensorData::F32(v) if (x.shape.len() == 2 || x.shape.len() == 3) && x.shape.last() == Some(&c.d) => v,
        TensorData::F32(_) => return Err(Error::tensor("input", expected, format!("{:?}", x.shape))),
        TensorData::I64(_) => return Err(Error::tensor("input", expected, format!("dtype {}", x.stored_as))),
    };
    let rows = data.len() / c.d;
    if rows == 0 {
        return Err(Error::tensor(
            "input",
            expected,
            format!("{:?} (no rows)", x.shape),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(
            "input",
            "finite values",
            format!("{} at flat index {i}", data[i]),
        ));
    }

    let grad_output = match inputs.tensors.get("grad_output") {
        None => None,
        Some(g) => {
            let mut want = x.shape.clone();
            *want.last_mut().unwrap() = c.out_dim();
            let found = format!("{:?} ({})", g.shape, g.stored_as);
            match &g.data {
                TensorData::F32(v) if g.shape == want => {
                    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                        return Err(Error::tensor(
                            "grad_output",
                            "finite values",
                            format!("{} at flat index {i}", v[i]),
                        ));
                    }
                    Some(v.clone())
                }
                _ => {
                    return Err(Error::tensor(
                        "grad_output",
                        format!("float {want:?} (the shape of output)"),
                        found,
                    ))
                }
            }
        }
    };

    let gpus = super::devices::open(a.devices.as_deref())?;
    let gpu = &gpus[0];
    let layer = MemoryLayer::new(gpu, &checkpoint.weights)?;
    let dtype = if a.f16_values {
        ValueDtype::F16
    } else {
        ValueDtype::F32
    };
    let values = Values::upload(
        &gpus,
        a.devices.is_some(),
        &checkpoint.values,
        (c.n_values(), c.v_dim),
        dtype,
    )?;
    let lookups = c.heads * c.knn;
    let mut out = TensorFile::default();
    let (output, indices, scores) = match &grad_output {
        // With gradients, one pass over all rows (parameter gradients sum over every row).
        Some(g) => {
            let r = forward_backward(&gpus, &layer, &values, data, rows, g)?;
            out.insert("grad.input", HostTensor::f32(x.shape.clone(), r.grad_input));
            for (name, shape, values) in r.grads {
                out.insert(
                    format!("grad.{}{name}", checkpoint.prefix),
                    HostTensor::f32(shape, values),
                );
            }
            (r.forward.out, r.forward.indices, r.forward.scores)
        }
        None => {
            let (mut output, mut indices, mut scores) = (
                Vec::with_capacity(rows * c.out_dim()),
                Vec::with_capacity(rows * lookups),
                Vec::with_capacity(rows * lookups),
            );
            for start in (0..rows).step_by(ROWS_PER_BATCH) {
                let n = ROWS_PER_BATCH.min(rows - start);
                let r = values.forward(&gpus, &layer, &data[start * c.d..(start + n) * c.d], n)?;
                output.extend(r.out);
                indices.extend(r.indices);
                scores.extend(r.scores);
            }
            (output, indices, scores)
        }
    };
    let mut out_shape = x.shape.clone();
    *out_shape.last_mut().unwrap() = c.out_dim();
    out.insert("output", HostTensor::f32(out_shape, output));
    let indices = indices.iter().map(|&i| i as i64).collect();
    out.insert("indices", HostTensor::i64(vec![rows, c.heads, c.knn], indices));
    out.insert("scores", HostTensor::f32(vec![rows, c.heads, c.knn], scores));
    out.write(&a.output)
}

/// A forward pass with the gradients of its input and of every parameter (reference names,
/// values included) for `d_out`.
struct WithGrads {
    forward: memory::ForwardResult,
    grad_input: Vec<f32>,
    grads: Vec<(&'static str, Vec<usize>, Vec<f32>)>,
}

/// The value table on one device, or sharded over several (`--devices`).
enum Values {
    One(ValuePool),
    Sharded(ShardedValues),
}

impl Values {
    fn upload(
        gpus: &[Gpu],
        sharded: bool,
        table: &[f32],
        shape: (usize, usize),
        dtype: ValueDtype,
    ) -> Result<Self> {
        if !sharded {
            return Ok(Values::One(ValuePool::new(
                &gpus[0], table, shape.0, shape.1, dtype,
            )?));
        }
        let options = super::devices::shard_options()?;
        let refs: Vec<&Gpu> = gpus.iter().collect();
        Ok(Values::Sharded(ShardedValues::new(
            &refs, table, shape, dtype, options,
        )?))
    }

    fn forward(
        &self,
        gpus: &[Gpu],
        layer: &MemoryLayer,
        x: &[f32],
        rows: usize,
    ) -> Result<memory::ForwardResult> {
        let gpu = &gpus[0];
        match self {
            Values::One(pool) => layer.forward_blocking(gpu, pool, x, rows),
            Values::Sharded(values) => {
                let xb = gpu.upload("input", x);
                let refs: Vec<&Gpu> = gpus.iter().collect();
                let (sharded, _) =
                    pollster::block_on(layer.forward_sharded(&refs, values, &xb, rows as u32, None))?;
                read_forward(gpu, &layer.config, &sharded.acts)
            }
        }
    }
}

fn read_forward(
    gpu: &Gpu,
    c: &memory::MemoryConfig,
    acts: &memory::MemoryActivations,
) -> Result<memory::ForwardResult> {
    let rows = acts.rows as usize;
    let n = rows * c.heads * c.knn;
    Ok(memory::ForwardResult {
        out: gpu.read_f32_blocking(&acts.out, rows * c.out_dim())?,
        indices: gpu.read_u32_blocking(&acts.indices, n)?,
        scores: gpu.read_f32_blocking(&acts.scores, n)?,
        weights: gpu.read_f32_blocking(&acts.weights, n)?,
    })
}

fn forward_backward(
    gpus: &[Gpu],
    layer: &MemoryLayer,
    values: &Values,
    x: &[f32],
    rows: usize,
    d_out: &[f32],
) -> Result<WithGrads> {
    let (c, gpu) = (&layer.config, &gpus[0]);
    let (xb, db) = (gpu.upload("input", x), gpu.upload("grad_output", d_out));
    let (forward, grads, value_grad) = match values {
        Values::One(pool) => {
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let acts = layer.record_forward(gpu, &mut encoder, pool, &xb, rows as u32)?;
            let grads = layer.record_backward(gpu, &mut encoder, pool, &xb, &acts, &db)?;
            gpu.queue.submit([encoder.finish()]);
            let value_grad = pollster::block_on(grads.values.to_dense(gpu, c.n_values()))?;
            (read_forward(gpu, c, &acts)?, grads, value_grad)
        }
        Values::Sharded(values) => {
            let refs: Vec<&Gpu> = gpus.iter().collect();
            let (acts, _) = pollster::block_on(layer.forward_sharded(&refs, values, &xb, rows as u32, None))?;
            let (sharded, _) = pollster::block_on(layer.backward_sharded(&refs, values, &xb, &acts, &db))?;
            let mut value_grad = vec![0f32; c.n_values() * c.v_dim];
            for (s, cols) in values.columns().iter().enumerate() {
                let part = pollster::block_on(sharded.values[s].to_dense(&gpus[s], c.n_values()))?;
                memory::put_shard(&mut value_grad, (c.n_values(), c.v_dim), cols, &part);
            }
            (read_forward(gpu, c, &acts.acts)?, sharded.grads, value_grad)
        }
    };
    let mut params = Vec::new();
    let shapes = memory::parameters(c);
    for (name, buffer) in grads.named(c) {
        let shape = shapes
            .iter()
            .find(|p| p.0 == name)
            .expect("a parameter")
            .1
            .clone();
        let len = shape.iter().product();
        params.push((name, shape, gpu.read_f32_blocking(buffer, len)?));
    }
    params.push((memory::VALUES_NAME, vec![c.n_values(), c.v_dim], value_grad));
    Ok(WithGrads {
        forward,
        grad_input: gpu.read_f32_blocking(&grads.x, rows * c.d)?,
        grads: params,
    })
}
