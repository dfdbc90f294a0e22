//! The value table sharded by columns over several devices (memory parallelism;
//! `docs/scaling.md`).
//!
//! Device 0 holds the layer's weights and runs everything but the bag: the query projection,
//! the lookup, the projections after the bag. Each device `s` holds columns `columns[s]` of
//! every value row. The slots and softmax weights the lookup found go through the host to the
//! other devices; each device sums its columns of the bag; those columns come back and are
//! joined into the bag on device 0. The backward relays the bag gradient's columns out, and
//! each device computes its shard's value gradient. The gradient of each softmax weight is a
//! dot over the whole row: device 0 takes it over its columns, the next device goes on from
//! that partial dot over its own columns, and so on, in column order, exactly the sum one
//! device takes (same order, same roundings). Every result has the bits of one device's.

use super::backward::AboveBag;
use super::layer::{MemoryActivations, MemoryLayer};
use super::pool::{ValueDtype, ValuePool};
use crate::error::{Error, Result};
use crate::kernels::adamw::{record_sparse_step, AdamWState, AdamWStep, Clip};
use crate::kernels::columns::{self, Columns};
use crate::kernels::embedding_bag::{EmbeddingBag, WeightGrads, MAX_CHUNKS};
use crate::kernels::value_grads::{SparseRows, ValueGrads};
use crate::kernels::Gpu;
use std::ops::Range;

/// The environment variable that caps what a value table may take on each device, in bytes
/// (to show on one machine what several devices hold).
pub const MAX_DEVICE_BYTES_ENV: &str = "MEMLAYERS_MAX_DEVICE_BYTES";

/// The cap `MEMLAYERS_MAX_DEVICE_BYTES` sets, if it is set.
pub fn max_device_bytes_from_env() -> Result<Option<u64>> {
    match std::env::var(MAX_DEVICE_BYTES_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::Config(format!("{MAX_DEVICE_BYTES_ENV}={v}: expected a number of bytes"))),
        Err(_) => Ok(None),
    }
}

/// `v_dim` columns in `devices` contiguous shards, as even as the width allows (the first
/// `v_dim % devices` shards one column wider).
pub fn shard_columns(v_dim: usize, devices: usize) -> Vec<Range<usize>> {
    let (base, extra) = (v_dim / devices.max(1), v_dim % devices.max(1));
    let mut start = 0;
    (0..devices)
        .map(|s| {
            let width = base + (s < extra) as usize;
            start += width;
            start - width..start
        })
        .collect()
}

/// Columns `cols` of every row of `table [rows, v_dim]`, as a matrix of their own
/// `[rows, cols.len()]` (a shard on the host).
pub fn shard_of(table: &[f32], (rows, v_dim): (usize, usize), cols: &Range<usize>) -> Vec<f32> {
    let mut part = vec![0f32; rows * cols.len()];
    columns::copy_reference(
        table,
        (v_dim, cols.start),
        &mut part,
        (cols.len(), 0),
        (rows, cols.len()),
    );
    part
}

/// `part [rows, cols.len()]` into columns `cols` of `table [rows, v_dim]` (a shard joined on
/// the host).
pub fn put_shard(table: &mut [f32], (rows, v_dim): (usize, usize), cols: &Range<usize>, part: &[f32]) {
    columns::copy_reference(
        part,
        (cols.len(), 0),
        table,
        (v_dim, cols.start),
        (rows, cols.len()),
    );
}

/// How a table is split: buffers per device, and a cap on each device's bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardOptions {
    /// At most this many rows per buffer (`None`: as many as one binding holds).
    pub rows_per_chunk: Option<usize>,
    /// Refuse a table whose shard would take more than this on its device.
    pub max_device_bytes: Option<u64>,
}

/// A value table `[n_rows, v_dim]` split by columns, shard `s` on device `s`.
pub struct ShardedValues {
    shards: Vec<ValuePool>,
    columns: Vec<Range<usize>>,
    n_rows: usize,
    v_dim: usize,
}

impl ShardedValues {
    /// Uploads `values [n_rows, v_dim]`, columns `shard_columns(v_dim, gpus.len())[s]` to
    /// `gpus[s]`. Checks every shard against the cap and each device's binding before
    /// uploading any.
    pub fn new(
        gpus: &[&Gpu],
        values: &[f32],
        (n_rows, v_dim): (usize, usize),
        dtype: ValueDtype,
        options: ShardOptions,
    ) -> Result<Self> {
        if values.len() != n_rows * v_dim {
            return Err(Error::tensor(
                super::layer::VALUES_NAME,
                format!("{} elements ([{n_rows}, {v_dim}])", n_rows * v_dim),
                format!("{}", values.len()),
            ));
        }
        if gpus.is_empty() || gpus.len() > v_dim {
            return Err(Error::Config(format!(
                "{} devices for {v_dim} value columns: give between 1 and {v_dim}",
                gpus.len()
            )));
        }
        let columns = shard_columns(v_dim, gpus.len());
        for (s, (gpu, cols)) in gpus.iter().zip(&columns).enumerate() {
            let bytes = shard_bytes(n_rows, cols.len(), dtype);
            if let Some(cap) = options.max_device_bytes.filter(|&cap| bytes > cap) {
                return Err(Error::Config(format!(
                    "device {s}'s shard of the value table [{n_rows}, {v_dim}] (columns {cols:?} of {} devices) takes {bytes} bytes; the cap is {cap} ({MAX_DEVICE_BYTES_ENV}): use more devices or a smaller table",
                    gpus.len()
                )));
            }
            let row_bytes = shard_bytes(1, cols.len(), dtype);
            let rows_per_chunk = options
                .rows_per_chunk
                .map_or(gpu.max_binding_bytes() / row_bytes, |r| r as u64);
            if rows_per_chunk == 0 || (n_rows as u64).div_ceil(rows_per_chunk) > MAX_CHUNKS as u64 {
                return Err(Error::Config(format!(
                    "device {s} ({}) cannot hold its shard of the value table [{n_rows}, {v_dim}] (columns {cols:?}) in {MAX_CHUNKS} bindings: use more devices or f16 values",
                    gpu.adapter_name()
                )));
            }
        }
        let shards = gpus
            .iter()
            .zip(&columns)
            .map(|(gpu, cols)| {
                let width = cols.len();
                ValuePool::filled(
                    gpu,
                    n_rows,
                    width,
                    dtype,
                    options.rows_per_chunk,
                    |first, rows| {
                        for (r, row) in rows.chunks_mut(width).enumerate() {
                            let at = (first + r) * v_dim + cols.start;
                            row.copy_from_slice(&values[at..at + width]);
                        }
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ShardedValues {
            shards,
            columns,
            n_rows,
            v_dim,
        })
    }

    pub fn devices(&self) -> usize {
        self.shards.len()
    }

    /// The columns each device holds.
    pub fn columns(&self) -> &[Range<usize>] {
        &self.columns
    }

    /// Device `s`'s columns as a table of their own `[n_rows, columns[s].len()]`.
    pub fn shard(&self, s: usize) -> &ValuePool {
        &self.shards[s]
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn v_dim(&self) -> usize {
        self.v_dim
    }

    /// Bytes each device holds.
    pub fn bytes_per_device(&self) -> Vec<u64> {
        self.shards.iter().map(ValuePool::bytes).collect()
    }

    /// The whole table `[n_rows, v_dim]` on the host, joined from every device (what a
    /// checkpoint saves; it loads on any number of devices).
    pub async fn read(&self, gpus: &[&Gpu]) -> Result<Vec<f32>> {
        self.check_devices(gpus)?;
        let mut table = vec![0f32; self.n_rows * self.v_dim];
        for ((gpu, shard), cols) in gpus.iter().zip(&self.shards).zip(&self.columns) {
            put_shard(
                &mut table,
                (self.n_rows, self.v_dim),
                cols,
                &shard.read(gpu).await?,
            );
        }
        Ok(table)
    }

    fn check_devices(&self, gpus: &[&Gpu]) -> Result<()> {
        if gpus.len() != self.shards.len() {
            return Err(Error::Config(format!(
                "a table sharded over {} devices, given {}",
                self.shards.len(),
                gpus.len()
            )));
        }
        Ok(())
    }
}

/// Bytes `rows` rows of `width` columns take as `dtype` (f16 rows padded to whole words).
pub fn shard_bytes(rows: usize, width: usize, dtype: ValueDtype) -> u64 {
    let words = crate::kernels::embedding_bag::ValueChunks::row_words(width as u32, dtype == ValueDtype::F16);
    rows as u64 * words as u64 * 4
}

/// What one sharded pass sent through the host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Relay {
    /// Bytes read back from devices.
    pub bytes_read: u64,
    /// Bytes written to devices.
    pub bytes_written: u64,
    /// Seconds the transfers took, each timed from a device with no work left (native
    /// only: 0 in the browser, which has no clock here and cannot wait for a device).
    pub seconds: f64,
}

impl Relay {
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}

impl std::ops::AddAssign for Relay {
    fn add_assign(&mut self, other: Relay) {
        self.bytes_read += other.bytes_read;
        self.bytes_written += other.bytes_written;
        self.seconds += other.seconds;
    }
}

/// A sharded forward's activations: the layer's, on device 0 (the bag joined; they hold the
/// lookup's slots and weights as each other device received them, which the backward reads).
pub struct ShardedActivations {
    pub acts: MemoryActivations,
    /// Whether the output was added into the residual given (`acts.out` is then it).
    pub added: bool,
}

/// A sharded backward's gradients: the layer's on device 0, whose `values` are shard 0's
/// rows, and every shard's value gradient on its device (`values[0]` is shard 0's).
pub struct ShardedGrads {
    pub grads: super::MemoryGrads,
    pub values: Vec<SparseRows>,
}

/// Reads `len` words of `buffer` on `from` and writes them to a new buffer on `to`.
async fn relay_words(
    from: &Gpu,
    buffer: &wgpu::Buffer,
    len: usize,
    to: &Gpu,
    label: &str,
    relay: &mut Relay,
) -> Result<wgpu::Buffer> {
    let words = read_words(from, buffer, len, relay).await?;
    Ok(write_words(to, label, &words, relay))
}

/// Reads `len` words of `buffer` back from `from`, timed from the moment it is idle.
async fn read_words(from: &Gpu, buffer: &wgpu::Buffer, len: usize, relay: &mut Relay) -> Result<Vec<u32>> {
    let clock = RelayClock::start(from)?;
    let words = from.read_u32(buffer, len).await?;
    relay.bytes_read += len as u64 * 4;
    relay.seconds += clock.seconds();
    Ok(words)
}

/// Writes `words` to a new buffer on `to` (through the queue: a device lost meanwhile makes
/// this an error at its next read, not a panic).
fn write_words(to: &Gpu, label: &str, words: &[u32], relay: &mut Relay) -> wgpu::Buffer {
    let clock = RelayClock::now();
    let buffer = to.scratch(label, words.len() as u64 * 4);
    to.queue.write_buffer(&buffer, 0, bytemuck::cast_slice(words));
    relay.bytes_written += words.len() as u64 * 4;
    relay.seconds += clock.seconds();
    buffer
}

/// Times a transfer from the moment its source device has finished the work before it.
#[cfg(not(target_arch = "wasm32"))]
struct RelayClock(std::time::Instant);

#[cfg(not(target_arch = "wasm32"))]
impl RelayClock {
    fn start(from: &Gpu) -> Result<Self> {
        from.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("poll failed: {e}")))?;
        Ok(Self::now())
    }

    fn now() -> Self {
        RelayClock(std::time::Instant::now())
    }

    fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[cfg(target_arch = "wasm32")]
struct RelayClock;

#[cfg(target_arch = "wasm32")]
impl RelayClock {
    fn start(_: &Gpu) -> Result<Self> {
        Ok(RelayClock)
    }

    fn now() -> Self {
        RelayClock
    }

    fn seconds(&self) -> f64 {
        0.0
    }
}

impl MemoryLayer {
    fn check_sharded(&self, gpus: &[&Gpu], values: &ShardedValues) -> Result<()> {
        values.check_devices(gpus)?;
        let c = &self.config;
        if c.peer {
            return Err(Error::Config(
                "a PEER layer dots its input with whole values_u rows: it is not sharded".into(),
            ));
        }
        if values.v_dim() != c.v_dim || values.n_rows() != c.n_values() {
            return Err(Error::tensor(
                super::layer::VALUES_NAME,
                format!("[{}, {}]", c.n_values(), c.v_dim),
                format!("[{}, {}]", values.n_rows(), values.v_dim()),
            ));
        }
        Ok(())
    }

    /// The forward of `x [rows, d]` (on `gpus[0]`, which holds this layer) with the values
    /// sharded over `gpus`; the output added into `residual` as `record_forward_into` does.
    /// Submits work and waits for each relay. Gives the bits `record_forward` gives.
    pub async fn forward_sharded(
        &self,
        gpus: &[&Gpu],
        values: &ShardedValues,
        x: &wgpu::Buffer,
        rows: u32,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(ShardedActivations, Relay)> {
        self.check_sharded(gpus, values)?;
        let (c, main) = (&self.config, gpus[0]);
        let bag_size = (c.heads * c.knn) as u32;
        let entries = rows as usize * bag_size as usize;
        let mut encoder = main.device.create_command_encoder(&Default::default());
        let found = self.record_lookup_stage(main, &mut encoder, x, rows)?;
        submit(main, encoder);
        let mut relay = Relay::default();
        // The slots and weights, read once, to every other device, whose column bags start
        // at once.
        let (mut relayed, mut shard_bags) = (Vec::new(), Vec::new());
        if gpus.len() > 1 {
            let indices = read_words(main, &found.indices, entries, &mut relay).await?;
            let weights = read_words(main, &found.weights, entries, &mut relay).await?;
            for (s, gpu) in gpus.iter().enumerate().skip(1) {
                let indices = write_words(gpu, "relayed slots", &indices, &mut relay);
                let weights = write_words(gpu, "relayed weights", &weights, &mut relay);
                let width = values.columns[s].len();
                let bag = gpu.scratch("shard bag", rows as u64 * width as u64 * 4);
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                record_bag(
                    gpu,
                    &mut encoder,
                    (rows, bag_size),
                    (&indices, &weights),
                    values.shard(s),
                    &bag,
                )?;
                submit(gpu, encoder);
                relayed.push((indices, weights));
                shard_bags.push(bag);
            }
        }
        // Device 0's columns, then the others' joined in.
        let bag = main.scratch("bag", rows as u64 * c.v_dim as u64 * 4);
        let own = main.scratch("shard bag", rows as u64 * values.columns[0].len() as u64 * 4);
        let mut encoder = main.device.create_command_encoder(&Default::default());
        record_bag(
            main,
            &mut encoder,
            (rows, bag_size),
            (&found.indices, &found.weights),
            values.shard(0),
            &own,
        )?;
        // Submitted now: device 0 sums its columns while the others' come back.
        submit(main, encoder);
        let mut encoder = main.device.create_command_encoder(&Default::default());
        let mut joined = vec![own];
        for (s, shard_bag) in shard_bags.iter().enumerate() {
            let width = values.columns[s + 1].len();
            let from = gpus[s + 1];
            joined.push(
                relay_words(
                    from,
                    shard_bag,
                    rows as usize * width,
                    main,
                    "relayed bag",
                    &mut relay,
                )
                .await?,
            );
        }
        for (part, cols) in joined.iter().zip(&values.columns) {
            join_columns(main, &mut encoder, (part, &bag), cols, (rows, c.v_dim as u32))?;
        }
        let output = self.record_output_stage(main, &mut encoder, x, rows, &bag, residual)?;
        submit(main, encoder);
        let added = output.added;
        let mut acts = MemoryActivations::from_stages(found, bag, None, output);
        acts.relayed = relayed;
        Ok((ShardedActivations { acts, added }, relay))
    }

    /// The backward of `forward_sharded` for `d_out [rows, out_dim]` (on `gpus[0]`): every
    /// gradient with the bits of `record_backward`'s, each shard's value gradient on its
    /// device. Submits work and waits for each relay.
    pub async fn backward_sharded(
        &self,
        gpus: &[&Gpu],
        values: &ShardedValues,
        x: &wgpu::Buffer,
        sharded: &ShardedActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<(ShardedGrads, Relay)> {
        self.backward_sharded_from(gpus, values, x, &sharded.acts, d_out)
            .await
    }

    /// `backward_sharded` from the activations themselves (a model's blocks keep those).
    pub(crate) async fn backward_sharded_from(
        &self,
        gpus: &[&Gpu],
        values: &ShardedValues,
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        d_out: &wgpu::Buffer,
    ) -> Result<(ShardedGrads, Relay)> {
        self.check_sharded(gpus, values)?;
        if acts.relayed.len() + 1 != values.devices() {
            return Err(Error::Config(
                "a sharded backward needs the activations of a forward over the same devices".into(),
            ));
        }
        let (c, main) = (&self.config, gpus[0]);
        let (rows, v) = (acts.rows, c.v_dim as u32);
        let bag_size = (c.heads * c.knn) as u32;
        let entries = rows as usize * bag_size as usize;
        let pass = self.backward_pass(main, x, acts)?;
        let mut encoder = main.device.create_command_encoder(&Default::default());
        let above: AboveBag = pass.above_bag(&mut encoder, d_out)?;
        // The bag gradient's columns, one matrix a shard.
        let mut dys = Vec::new();
        for cols in &values.columns {
            let dy = main.scratch("shard grad bag", rows as u64 * cols.len() as u64 * 4);
            columns::record_copy(
                main,
                &mut encoder,
                Columns {
                    buffer: &above.dy,
                    stride: v,
                    first: cols.start as u32,
                },
                Columns {
                    buffer: &dy,
                    stride: cols.len() as u32,
                    first: 0,
                },
                (rows, cols.len() as u32),
            )?;
            dys.push(dy);
        }
        let bag_of = |s: usize| -> (&wgpu::Buffer, &wgpu::Buffer) {
            match s {
                0 => (&acts.indices, &acts.weights),
                _ => (&acts.relayed[s - 1].0, &acts.relayed[s - 1].1),
            }
        };
        let mut d_weights = main.storage("grad bag weights", entries as u64 * 4);
        record_weight_dots(
            main,
            &mut encoder,
            (rows, bag_size),
            bag_of(0).0,
            (values.shard(0), &dys[0]),
            (&d_weights, false),
        )?;
        submit(main, encoder);
        let mut relay = Relay::default();
        // The bag gradient's columns out to their devices.
        let mut shard_dys = vec![dys[0].clone()];
        for (s, gpu) in gpus.iter().enumerate().skip(1) {
            let len = rows as usize * values.columns[s].len();
            shard_dys.push(relay_words(main, &dys[s], len, gpu, "relayed grad bag", &mut relay).await?);
        }
        // A shard's value gradient, submitted once its partial dots have been read: the chain
        // of dots waits for the dots alone, and each device's value gradient runs meanwhile.
        let value_grads = |s: usize| -> Result<SparseRows> {
            let gpu = gpus[s];
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let (indices, weights) = bag_of(s);
            let grads = ValueGrads {
                rows,
                bag: bag_size,
                v_dim: values.columns[s].len() as u32,
                n_values: c.n_values() as u32,
                max_per_slot: rows * c.heads as u32,
                indices,
                weights,
                dy: &shard_dys[s],
            }
            .record(gpu, &mut encoder)?;
            submit(gpu, encoder);
            Ok(grads)
        };
        // Each next shard goes on from the partial dots of the ones before it.
        let mut shard_grads = Vec::with_capacity(values.devices());
        let mut at = 0;
        for (s, gpu) in gpus.iter().enumerate().skip(1) {
            let partial = relay_words(
                gpus[at],
                &d_weights,
                entries,
                gpu,
                "relayed partial dots",
                &mut relay,
            )
            .await?;
            shard_grads.push(value_grads(at)?);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            record_weight_dots(
                gpu,
                &mut encoder,
                (rows, bag_size),
                bag_of(s).0,
                (values.shard(s), &shard_dys[s]),
                (&partial, true),
            )?;
            submit(gpu, encoder);
            d_weights = partial;
            at = s;
        }
        if at != 0 {
            d_weights = relay_words(
                gpus[at],
                &d_weights,
                entries,
                main,
                "grad bag weights",
                &mut relay,
            )
            .await?;
        }
        shard_grads.push(value_grads(at)?);
        let mut encoder = main.device.create_command_encoder(&Default::default());
        let grads = pass.below_bag(&mut encoder, above, d_weights, shard_grads[0].clone(), None)?;
        submit(main, encoder);
        Ok((
            ShardedGrads {
                grads,
                values: shard_grads,
            },
            relay,
        ))
    }
}

/// Submits `encoder` on `gpu`, after ending the pass a step plan's recording keeps open on
/// it (a sharded layer inside a model's planned pass submits its own encoders).
fn submit(gpu: &Gpu, encoder: wgpu::CommandEncoder) {
    gpu.end_open_pass();
    gpu.queue.submit([encoder.finish()]);
}

/// One device's columns of the bag: `out [rows, width] = sum_j w[r, j] * shard[slot[r, j]]`.
fn record_bag(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (rows, bag): (u32, u32),
    (indices, weights): (&wgpu::Buffer, &wgpu::Buffer),
    shard: &ValuePool,
    out: &wgpu::Buffer,
) -> Result<()> {
    EmbeddingBag {
        rows,
        bag,
        indices,
        weights,
        values: &shard.chunks(),
        out,
        workgroup_size: None,
        columns_per_invocation: None,
    }
    .record(gpu, encoder)
}

/// `part [rows, cols.len()]` into columns `cols` of `bag [rows, v_dim]`.
fn join_columns(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (part, bag): (&wgpu::Buffer, &wgpu::Buffer),
    cols: &Range<usize>,
    (rows, v_dim): (u32, u32),
) -> Result<()> {
    columns::record_copy(
        gpu,
        encoder,
        Columns {
            buffer: part,
            stride: cols.len() as u32,
            first: 0,
        },
        Columns {
            buffer: bag,
            stride: v_dim,
            first: cols.start as u32,
        },
        (rows, cols.len() as u32),
    )
}

/// One shard's dots of the softmax weights' gradient, `<dy[r, :], V[slot, :]>` over its
/// columns, going on from what `d_weights` holds when `continues`.
fn record_weight_dots(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    (rows, bag): (u32, u32),
    indices: &wgpu::Buffer,
    (shard, dy): (&ValuePool, &wgpu::Buffer),
    (d_weights, continues): (&wgpu::Buffer, bool),
) -> Result<()> {
    WeightGrads {
        rows,
        bag,
        indices,
        values: &shard.chunks(),
        dy,
        grad_weights: d_weights,
        continues,
    }
    .record(gpu, encoder)
}

/// AdamW's moments of a sharded table, each shard's beside it; the lazy (listed rows only)
/// update the trainer gives a value table.
pub struct ShardedAdamW {
    moments: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// One clip factor of 1 on each device (no clipping).
    unclipped: Vec<wgpu::Buffer>,
}

impl ShardedAdamW {
    /// Zero moments for every shard of `values` (an f32 table of one buffer a device: the
    /// shape a trained table has).
    pub fn new(gpus: &[&Gpu], values: &ShardedValues) -> Result<Self> {
        values.check_devices(gpus)?;
        let mut moments = Vec::new();
        let mut unclipped = Vec::new();
        for (s, gpu) in gpus.iter().enumerate() {
            let shard = values.shard(s);
            if shard.dtype() != ValueDtype::F32 || shard.buffer_count() != 1 {
                return Err(Error::Config(
                    "AdamW updates f32 value tables held in one buffer a device".into(),
                ));
            }
            let bytes = shard.bytes();
            moments.push((gpu.storage("adam m", bytes), gpu.storage("adam v", bytes)));
            unclipped.push(gpu.upload("clip factor", &[1f32]));
        }
        Ok(ShardedAdamW { moments, unclipped })
    }

    /// Records each shard's update from its gradient rows (`grads.values[s]`) on its device
    /// and submits it.
    pub fn step(
        &self,
        gpus: &[&Gpu],
        values: &ShardedValues,
        grads: &ShardedGrads,
        step: AdamWStep,
    ) -> Result<()> {
        values.check_devices(gpus)?;
        if self.moments.len() != values.devices() || grads.values.len() != values.devices() {
            return Err(Error::Config(format!(
                "AdamW of a table on {} devices, given a table on {} and gradients from {}",
                self.moments.len(),
                values.devices(),
                grads.values.len()
            )));
        }
        for (s, gpu) in gpus.iter().enumerate() {
            let (m, v) = &self.moments[s];
            let shard = values.shard(s);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            record_sparse_step(
                gpu,
                &mut encoder,
                &AdamWState {
                    param: &shard.buffers()[0],
                    m,
                    v,
                },
                shard.n_rows() as u64,
                &grads.values[s],
                Clip {
                    factors: &self.unclipped[s],
                    group: 0,
                },
                step,
            )?;
            submit(gpu, encoder);
        }
        Ok(())
    }
}
