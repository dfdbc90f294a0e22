//! Healing a memory that took a feed-forward block's place (`memlayers retrofit --mode
//! replace`): the memory layer is trained alone to reproduce what the block it replaced
//! computed, on the block's own inputs over a text (mean squared error, AdamW on every one of
//! its parameters and its value table, gradients clipped at norm 1). Goyal et al. heal a
//! replaced block by training the whole model on general data; matching the block's outputs
//! asks for the same thing locally, one layer at a time, without the language-model head.

use crate::error::{Error, Result};
use crate::kernels::adamw::{record_clip, record_dense_step, AdamWState, AdamWStep, Clip};
use crate::kernels::Gpu;
use crate::memory::{parameters, MemoryConfig, MemoryLayer, ValueDtype, ValuePool};
use crate::model::Model;
use crate::rng::Rng;

/// A feed-forward block's inputs and outputs, row by row (`[rows, dim]` each).
pub struct BlockSamples {
    pub inputs: Vec<f32>,
    pub outputs: Vec<f32>,
    pub rows: usize,
}

/// The inputs and outputs of `layer`'s feed-forward block of `model` over `tokens` (rows of
/// `seq`, `batch` rows a forward), at the positions `keep` marks.
pub async fn block_samples(
    model: &Model,
    gpu: &Gpu,
    layer: usize,
    (tokens, keep): (&[u32], &[bool]),
    (seq, batch): (usize, usize),
) -> Result<BlockSamples> {
    let d = model.config.dim;
    let mut samples = BlockSamples {
        inputs: Vec::new(),
        outputs: Vec::new(),
        rows: 0,
    };
    for (k, chunk) in tokens.chunks(batch * seq).enumerate() {
        let rows = chunk.len() / seq;
        let tb = gpu.upload("heal tokens", chunk);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let fwd = model.record_forward(gpu, &mut encoder, &tb, rows as u32, seq as u32)?;
        gpu.queue.submit([encoder.finish()]);
        let (x, before, after) = fwd
            .feed_forward_io(layer)
            .ok_or_else(|| Error::Config(format!("heal: layer {layer} has no feed-forward block")))?;
        let n = chunk.len() * d;
        let (x, before, after) = (
            gpu.read_f32(x, n).await?,
            gpu.read_f32(before, n).await?,
            gpu.read_f32(after, n).await?,
        );
        for i in 0..chunk.len() {
            if keep[k * batch * seq + i] {
                let row = i * d..(i + 1) * d;
                samples.inputs.extend_from_slice(&x[row.clone()]);
                samples
                    .outputs
                    .extend(after[row.clone()].iter().zip(&before[row]).map(|(a, b)| a - b));
                samples.rows += 1;
            }
        }
    }
    Ok(samples)
}

/// A healed memory layer: its parameters (`memory::parameters` names) and value table, and the
/// mean squared error of its outputs against the block's before and after healing (on the
/// same held-aside rows).
pub struct Healed {
    pub tensors: Vec<(&'static str, Vec<f32>)>,
    pub values: Vec<f32>,
    pub error_before: f32,
    pub error_after: f32,
}

/// Mean squared error of `layer` on `rows` of `samples` (row indices).
async fn error_on(
    gpu: &Gpu,
    layer: &MemoryLayer,
    pool: &ValuePool,
    samples: &BlockSamples,
    rows: &[usize],
) -> Result<(f32, Vec<f32>, wgpu::Buffer, crate::memory::MemoryActivations)> {
    let d = layer.config.d;
    let gather = |from: &[f32]| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| from[r * d..(r + 1) * d].to_vec())
            .collect()
    };
    let (x, y) = (gather(&samples.inputs), gather(&samples.outputs));
    let xb = gpu.upload("heal inputs", &x);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let acts = layer.record_forward(gpu, &mut encoder, pool, &xb, rows.len() as u32)?;
    gpu.queue.submit([encoder.finish()]);
    let out = gpu.read_f32(&acts.out, rows.len() * d).await?;
    let diff: Vec<f32> = out.iter().zip(&y).map(|(o, t)| o - t).collect();
    let error = diff.iter().map(|e| (e * e) as f64).sum::<f64>() / diff.len().max(1) as f64;
    Ok((error as f32, diff, xb, acts))
}

/// Trains the memory layer `tensors` + `values` of `config` for `steps` AdamW steps at `lr`
/// on batches of `batch` rows of `samples` drawn from `seed`; a tenth of the rows (at most
/// 1,024) is set aside to measure the error before and after.
#[allow(clippy::too_many_arguments)]
pub async fn heal(
    gpu: &Gpu,
    config: &MemoryConfig,
    tensors: Vec<(&'static str, Vec<f32>)>,
    values: Vec<f32>,
    samples: &BlockSamples,
    (steps, lr, batch): (u32, f32, usize),
    seed: u64,
) -> Result<Healed> {
    if samples.rows < 2 {
        return Err(Error::Config(
            "heal: the text gives fewer than 2 positions".into(),
        ));
    }
    let params: Vec<(&'static str, wgpu::Buffer)> = parameters(config)
        .into_iter()
        .map(|(name, _, _)| {
            let data = &tensors
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| Error::MissingTensor(name.into()))?
                .1;
            Ok((name, gpu.upload(name, data)))
        })
        .collect::<Result<_>>()?;
    let layer = MemoryLayer::from_buffers(config, params.iter().map(|(n, b)| (*n, b.clone())))?;
    let pool = ValuePool::new(gpu, &values, config.n_values(), config.v_dim, ValueDtype::F32)?;
    if pool.buffer_count() != 1 {
        return Err(Error::Config("heal: the value table must fit one buffer".into()));
    }
    let table = pool.buffers()[0].clone();
    let moments = |n: usize| {
        (
            gpu.storage("heal m", n as u64 * 4),
            gpu.storage("heal v", n as u64 * 4),
        )
    };
    let param_moments: Vec<_> = params
        .iter()
        .map(|(_, b)| moments((b.size() / 4) as usize))
        .collect();
    let table_moments = moments(values.len());
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..samples.rows).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let held = (samples.rows / 10).clamp(1, 1024);
    let (held, train) = order.split_at(held);
    let error_before = error_on(gpu, &layer, &pool, samples, held).await?.0;
    let d = config.d;
    for step in 1..=steps {
        let rows: Vec<usize> = (0..batch.min(train.len()))
            .map(|_| train[rng.below(train.len() as u64) as usize])
            .collect();
        let (_, diff, xb, acts) = error_on(gpu, &layer, &pool, samples, &rows).await?;
        let scale = 2.0 / (rows.len() * d) as f32;
        let dy: Vec<f32> = diff.iter().map(|e| e * scale).collect();
        let dyb = gpu.upload("heal d out", &dy);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let g = layer.record_backward(gpu, &mut encoder, &pool, &xb, &acts, &dyb)?;
        let table_grad = gpu.storage("heal value grads", values.len() as u64 * 4);
        g.values
            .record_scatter_add(gpu, &mut encoder, &table_grad, config.n_values() as u64)?;
        let named = g.named(config);
        let mut all: Vec<(&wgpu::Buffer, u64)> = named.iter().map(|(_, b)| (*b, b.size() / 4)).collect();
        all.push((&table_grad, values.len() as u64));
        let factors = record_clip(gpu, &mut encoder, &[&all], 1.0)?;
        let adam = AdamWStep {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            step,
        };
        let clip = Clip {
            factors: &factors,
            group: 0,
        };
        for ((name, grad), (m, v)) in named.iter().zip(&param_moments) {
            let param = &params
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::MissingTensor((*name).into()))?
                .1;
            let state = AdamWState { param, m, v };
            record_dense_step(gpu, &mut encoder, &state, grad, grad.size() / 4, clip, adam)?;
        }
        let state = AdamWState {
            param: &table,
            m: &table_moments.0,
            v: &table_moments.1,
        };
        record_dense_step(
            gpu,
            &mut encoder,
            &state,
            &table_grad,
            values.len() as u64,
            clip,
            adam,
        )?;
        gpu.queue.submit([encoder.finish()]);
    }
    let error_after = error_on(gpu, &layer, &pool, samples, held).await?.0;
    let mut healed = Vec::with_capacity(params.len());
    for (name, buffer) in &params {
        healed.push((*name, gpu.read_f32(buffer, (buffer.size() / 4) as usize).await?));
    }
    Ok(Healed {
        tensors: healed,
        values: gpu.read_f32(&table, values.len()).await?,
        error_before,
        error_after,
    })
}
