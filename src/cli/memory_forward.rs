//! `memlayers memory-forward`: a reference checkpoint's memory layer on the GPU.

use memlayers::io::{load_memory, HostTensor, TensorData, TensorFile};
use memlayers::memory::{self, MemoryWeights};
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

    let gpu = Gpu::new_blocking()?;
    let layer = MemoryLayer::new(&gpu, &checkpoint.weights)?;
    let dtype = if a.f16_values {
        ValueDtype::F16
    } else {
        ValueDtype::F32
    };
    let pool = ValuePool::new(&gpu, &checkpoint.values, c.n_values(), c.v_dim, dtype)?;
    let lookups = c.heads * c.knn;
    let mut out = TensorFile::default();
    let (output, indices, scores) = match &grad_output {
        // With gradients, one pass over all rows (parameter gradients sum over every row).
        Some(g) => {
            let r = forward_backward(&gpu, &layer, &pool, data, rows, g, &checkpoint.weights)?;
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
                let r = layer.forward_blocking(&gpu, &pool, &data[start * c.d..(start + n) * c.d], n)?;
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

fn forward_backward(
    gpu: &Gpu,
    layer: &MemoryLayer,
    pool: &ValuePool,
    x: &[f32],
    rows: usize,
    d_out: &[f32],
    weights: &MemoryWeights,
) -> Result<WithGrads> {
    let c = &layer.config;
    let (xb, db) = (gpu.upload("input", x), gpu.upload("grad_output", d_out));
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let acts = layer.record_forward(gpu, &mut encoder, pool, &xb, rows as u32)?;
    let grads = layer.record_backward(gpu, &mut encoder, pool, &xb, &acts, &db)?;
    gpu.queue.submit([encoder.finish()]);
    let mut params = Vec::new();
    for (name, shape, _) in weights.named_tensors() {
        let buffer = match name {
            memory::QUERY_W => &grads.query_w,
            memory::QUERY_B => &grads.query_b,
            memory::KEYS => &grads.keys,
            memory::SWILU_W => &grads.swilu.as_ref().unwrap().0,
            memory::SWILU_B => &grads.swilu.as_ref().unwrap().1,
            memory::VALUE_PROJ_W => &grads.value_proj.as_ref().unwrap().0,
            memory::VALUE_PROJ_B => &grads.value_proj.as_ref().unwrap().1,
            other => return Err(Error::Format(format!("no gradient for `{other}`"))),
        };
        let len = shape.iter().product();
        params.push((name, shape, gpu.read_f32_blocking(buffer, len)?));
    }
    let values = pollster::block_on(grads.values.to_dense(gpu, c.n_values()))?;
    params.push((memory::VALUES_NAME, vec![c.n_values(), c.v_dim], values));
    let n = rows * c.heads * c.knn;
    Ok(WithGrads {
        forward: memory::ForwardResult {
            out: gpu.read_f32_blocking(&acts.out, rows * c.out_dim())?,
            indices: gpu.read_u32_blocking(&acts.indices, n)?,
            scores: gpu.read_f32_blocking(&acts.scores, n)?,
            weights: gpu.read_f32_blocking(&acts.weights, n)?,
        },
        grad_input: gpu.read_f32_blocking(&grads.x, rows * c.d)?,
        grads: params,
    })
}
