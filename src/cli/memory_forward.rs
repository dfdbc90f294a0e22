//! `memlayers memory-forward`: a reference checkpoint's memory layer on the GPU.

use memlayers::io::{load_memory, HostTensor, TensorData, TensorFile};
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
    /// Where to write `output`, `indices` and `scores` (written atomically).
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

    let gpu = Gpu::new_blocking()?;
    let layer = MemoryLayer::new(&gpu, &checkpoint.weights)?;
    let dtype = if a.f16_values {
        ValueDtype::F16
    } else {
        ValueDtype::F32
    };
    let pool = ValuePool::new(&gpu, &checkpoint.values, c.n_values(), c.v_dim, dtype)?;
    let lookups = c.heads * c.knn;
    let (mut output, mut indices, mut scores) = (
        Vec::with_capacity(rows * c.out_dim()),
        Vec::with_capacity(rows * lookups),
        Vec::with_capacity(rows * lookups),
    );
    for start in (0..rows).step_by(ROWS_PER_BATCH) {
        let n = ROWS_PER_BATCH.min(rows - start);
        let r = layer.forward_blocking(&gpu, &pool, &data[start * c.d..(start + n) * c.d], n)?;
        output.extend(r.out);
        indices.extend(r.indices.iter().map(|&i| i as i64));
        scores.extend(r.scores);
    }
    let mut out_shape = x.shape.clone();
    *out_shape.last_mut().unwrap() = c.out_dim();
    let mut out = TensorFile::default();
    out.insert("output", HostTensor::f32(out_shape, output));
    out.insert("indices", HostTensor::i64(vec![rows, c.heads, c.knn], indices));
    out.insert("scores", HostTensor::f32(vec![rows, c.heads, c.knn], scores));
    out.write(&a.output)
}
