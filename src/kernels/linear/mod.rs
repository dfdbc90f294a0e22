//! The linear layers: y = x w^T (+ bias) (then optionally y = gate * silu(y)), batched and
//! strided so that it also computes the sub-key scores of every (head, half). One interface
//! (`Linear`), one file a kernel variant: `tiled` (`linear.wgsl`), `subgroup`, `narrow`,
//! `matrix` (matrix units) and `split_k` (a reduction split over workgroups); which kernel and
//! tile shape run is decided per adapter by `choice`. All but the matrix units give the same
//! bits.

pub mod choice;
mod flags;
mod kernel;
mod matrix;
mod narrow;
mod split_k;
mod subgroup;
mod tiled;
mod weight_format;

pub use kernel::{GemmKernel, GemmPrecision, GemmTile, MatrixConfig};
pub use matrix::matrix_source;
pub use narrow::SOURCE as NARROW_SOURCE;
pub use subgroup::SOURCE as SUBGROUP_SOURCE;
pub use tiled::SOURCE;
pub use weight_format::{pack_q8, unpack_q8, WeightFormat, Q8_GROUP};

use super::check_buffer;
use super::check_loop_budget;
use super::Gpu;
use crate::error::{Error, Result};
use crate::gpu::MAX_GRID_DIM;
use flags::Flags;

/// `values` as f16, two per 4-byte word (element i in the low half of word i / 2 when i is
/// even, the high half when odd), as a weight of `WeightFormat::F16` (and an f16
/// activation) is stored.
pub fn pack_f16(values: &[f32]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|pair| {
            let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
            let hi = pair
                .get(1)
                .map_or(0, |&v| half::f16::from_f32(v).to_bits() as u32);
            lo | hi << 16
        })
        .collect()
}

/// The first `n` values of f16 pairs stored as `pack_f16` stores them, as f32 (exact).
pub fn unpack_f16(words: &[u32], n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| half::f16::from_bits((words[i / 2] >> (16 * (i % 2))) as u16).to_f32())
        .collect()
}

/// The longest k range one dispatch of any GEMM kernel may reduce within the loop budget.
pub const MAX_K_PER_DISPATCH: u32 = {
    let mut least = subgroup::max_k();
    let mut i = 0;
    while i < GemmTile::CANDIDATES.len() {
        let k = tiled::max_k(GemmTile::CANDIDATES[i]);
        if k < least {
            least = k;
        }
        i += 1;
    }
    least
};

/// The longest k range one dispatch of `kernel` may reduce within the loop budget.
pub fn max_k_per_dispatch(kernel: GemmKernel) -> u32 {
    match kernel {
        GemmKernel::Subgroup => subgroup::max_k(),
        GemmKernel::Tiled(tile) => tiled::max_k(tile),
        GemmKernel::Narrow => narrow::max_k(),
        // Matrix units exist only on GPUs, whose drivers do not stop long loops.
        GemmKernel::Matrix(_) => u32::MAX,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k_len: u32,
    flags: u32,
    x_offset: u32,
    x_batch: u32,
    x_row: u32,
    w_batch: u32,
    y_batch: u32,
    y_row: u32,
    x_k: u32,
    w_row: u32,
    w_k: u32,
    y_offset: u32,
    w_offset: u32,
    /// Where a q8 weight's scales start, in words (`WeightFormat::Q8`).
    w_scales: u32,
}

/// Strided, batched operands (in elements):
/// `x[b][m, k] = x[x_offset + b x_batch + m x_row + k x_k]`,
/// `w[b][n, k] = w[w_offset + b w_batch + n w_row + k w_k]`,
/// `y[b][m, n] = y[y_offset + b y_batch + m y_row + n]`.
#[derive(Clone, Copy, Debug)]
pub struct Batched {
    pub batch: u32,
    pub x_offset: u32,
    pub x_batch: u32,
    pub x_row: u32,
    pub x_k: u32,
    pub w_offset: u32,
    pub w_batch: u32,
    pub w_row: u32,
    pub w_k: u32,
    pub y_offset: u32,
    pub y_batch: u32,
    pub y_row: u32,
}

impl Batched {
    /// One product `y [m, n] = op(x) op(w)^T` over densely stored operands: `x` is `[m, k]`,
    /// or `[k, m]` when `x_transposed`; `w` is `[n, k]` (nn.Linear), or `[k, n]` when
    /// `w_transposed`. So `dX = dY W` is `(dY, W, w_transposed)` and `dW = dY^T X` is
    /// `(dY, X, x_transposed, w_transposed)`.
    pub fn dense(m: u32, n: u32, k: u32, x_transposed: bool, w_transposed: bool) -> Self {
        let (x_row, x_k) = if x_transposed { (1, m) } else { (k, 1) };
        let (w_row, w_k) = if w_transposed { (1, n) } else { (k, 1) };
        Batched {
            batch: 1,
            x_offset: 0,
            x_batch: 0,
            x_row,
            x_k,
            w_offset: 0,
            w_batch: 0,
            w_row,
            w_k,
            y_offset: 0,
            y_batch: 0,
            y_row: n,
        }
    }
}

/// The SwiGLU epilogue: `y = by * silu(x w^T + bias)`, `by [m, n]`.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    pub by: &'a wgpu::Buffer,
    /// `by` holds f16 pairs (`pack_f16`) instead of f32.
    pub by_f16: bool,
    /// Also store `x w^T + bias` here (`[m, n]`), for the backward pass.
    pub keep_input: Option<&'a wgpu::Buffer>,
}

/// A linear layer over `m` rows: `x [m, k]`, `w [n, k]` (nn.Linear layout), `bias [n]`,
/// output `y [m, n]`. With a `gate`, stores `gate * silu(x w^T + bias)` instead.
/// With `batched`, a batch of such products over strided views (no bias or gate).
pub struct Linear<'a> {
    /// Names the pass in profiles (e.g. "query_proj").
    pub label: &'static str,
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    /// How `w` is stored: f32, f16 pairs (`pack_f16`) or 8-bit integers with scales
    /// (`pack_q8`).
    pub w_format: WeightFormat,
    /// `x` holds f16 pairs (an f16 activation), instead of f32.
    pub x_f16: bool,
    /// Store `y` as f16 pairs, each output rounded once after the epilogue (and after adding
    /// what `y` held, with `accumulate`). Needs an even `n`, and even offsets and strides of
    /// `y`; not on the narrow kernel (an invocation per column), whose products then run on
    /// the adapter's other kernel.
    pub y_f16: bool,
    pub bias: Option<&'a wgpu::Buffer>,
    pub gate: Option<Gate<'a>>,
    pub y: &'a wgpu::Buffer,
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batched: Option<Batched>,
    /// Add the product to what `y` holds instead of overwriting it.
    pub accumulate: bool,
}

impl<'a> Linear<'a> {
    /// `y [m, n] = x [m, k] w^T` (`w [n, k]`), f32 operands and output, no bias, gate, batch
    /// or accumulation: the other options by struct update (`Linear { bias, ..Linear::new(..) }`).
    pub fn new(
        label: &'static str,
        x: &'a wgpu::Buffer,
        w: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
        (m, n, k): (u32, u32, u32),
    ) -> Self {
        Linear {
            label,
            x,
            w,
            w_format: WeightFormat::F32,
            x_f16: false,
            y_f16: false,
            bias: None,
            gate: None,
            y,
            m,
            n,
            k,
            batched: None,
            accumulate: false,
        }
    }
}

impl Linear<'_> {
    pub(super) fn layout(&self) -> Batched {
        self.batched
            .unwrap_or(Batched::dense(self.m, self.n, self.k, false, false))
    }

    /// Records the product with the kernel this adapter's tuning picks (`choice::kernel`), or
    /// for products of few rows, `linear_narrow.wgsl` where the tuning says so.
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let kernel = choice::kernel(gpu);
        let narrow = self.m <= gpu.tuning().gemm_narrow_rows
            && !self.y_f16
            && !matches!(kernel, GemmKernel::Matrix(_));
        self.record_with(gpu, encoder, if narrow { GemmKernel::Narrow } else { kernel })
    }

    /// Records the product with `kernel` (the subgroup kernel only where the device has
    /// subgroups of 8 or more lanes; else the default tile).
    pub fn record_with(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        kernel: GemmKernel,
    ) -> Result<()> {
        let kernel = match kernel {
            GemmKernel::Subgroup if !gpu.has_subgroup_gemm() => GemmKernel::Tiled(GemmTile::DEFAULT),
            GemmKernel::Tiled(tile) if !tile.is_valid() => {
                return Err(Error::Config(format!("linear: invalid tile {tile:?}")))
            }
            GemmKernel::Matrix(config) if gpu.matrix_config() != Some(config) => {
                return Err(Error::Adapter(format!(
                    "linear: this device has no matrix units of {config:?}"
                )))
            }
            k => k,
        };
        if self.y_f16 && kernel == GemmKernel::Narrow {
            return Err(Error::Config(
                "linear: an f16 output does not run on the narrow kernel".into(),
            ));
        }
        match split_k::splits(self, gpu, kernel) {
            0 | 1 => self.record_unsplit(gpu, encoder, kernel),
            splits => split_k::record(self, gpu, encoder, kernel, splits),
        }
    }

    /// An f16 output's words must each hold two outputs of one row.
    pub(super) fn check_f16_output(&self, l: &Batched) -> Result<()> {
        let even = |v: u32| v.is_multiple_of(2);
        if self.y_f16
            && !(even(self.n) && even(l.y_offset) && even(l.y_row) && (l.batch == 1 || even(l.y_batch)))
        {
            return Err(Error::Config(format!(
                "linear: an f16 output needs an even n and even offsets and strides (n {}, y_offset {}, y_row {}, y_batch {})",
                self.n, l.y_offset, l.y_row, l.y_batch
            )));
        }
        Ok(())
    }

    /// The pipeline constants of the operands' formats (f16 weights, f16 input) beside
    /// `constants`.
    pub(super) fn with_formats(&self, mut constants: Vec<(&'static str, f64)>) -> Vec<(&'static str, f64)> {
        if let Some(name) = self.w_format.constant() {
            constants.push((name, 1.0));
        }
        if self.x_f16 {
            constants.push(("X_F16", 1.0));
        }
        constants
    }

    /// Checks the shape, the operands' sizes and the loop budget for `kernel` (falling back
    /// to the default tile where its grid would not fit one dispatch); returns the kernel
    /// that runs.
    fn check(&self, gpu: &Gpu, kernel: GemmKernel, l: &Batched) -> Result<GemmKernel> {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        if m == 0 || n == 0 || k == 0 || l.batch == 0 {
            return Err(Error::Config(format!(
                "linear: empty shape m={m} n={n} k={k} batch={}",
                l.batch
            )));
        }
        // Output rows and columns per workgroup; a kernel whose grid would not fit falls back
        // to the default tile (as wide as any dispatch ever needed before tiles were chosen).
        let extent = |k: GemmKernel| match k {
            GemmKernel::Subgroup => (subgroup::ROWS, subgroup::COLUMNS * 8),
            GemmKernel::Tiled(t) => (t.rows(), t.columns()),
            GemmKernel::Narrow => (4, 8),
            GemmKernel::Matrix(c) => (c.tile(), c.tile()),
        };
        let fits = |k: GemmKernel| {
            let (rows, cols) = extent(k);
            self.m.div_ceil(rows) <= MAX_GRID_DIM && self.n.div_ceil(cols) <= MAX_GRID_DIM
        };
        let kernel = if fits(kernel) {
            kernel
        } else {
            GemmKernel::Tiled(GemmTile::DEFAULT)
        };
        if !fits(kernel) || l.batch > MAX_GRID_DIM {
            return Err(Error::Config(format!(
                "linear: {m} x {n} outputs x {} batches exceed one dispatch ({} rows or columns at most)",
                l.batch,
                MAX_GRID_DIM as u64 * GemmTile::DEFAULT.rows() as u64
            )));
        }
        if (self.bias.is_some() || self.gate.is_some()) && (l.batch != 1 || l.y_row != self.n) {
            return Err(Error::Config(
                "linear: bias and gate need one dense [m, n] output".into(),
            ));
        }
        let iterations = match kernel {
            GemmKernel::Subgroup => subgroup::iterations(self.k),
            GemmKernel::Tiled(tile) => tiled::iterations(tile, self.k),
            GemmKernel::Narrow => narrow::iterations(self.k),
            GemmKernel::Matrix(_) => 0,
        };
        check_loop_budget("linear", iterations, &format!("k = {k}"))?;
        let last = |off: u32, batch: u32, row: u32, rows: u64, cols: u64| {
            off as u64 + (l.batch as u64 - 1) * batch as u64 + (rows - 1) * row as u64 + cols
        };
        self.check_f16_output(l)?;
        let halves = |f16: bool, elems: u64| if f16 { elems.div_ceil(2) } else { elems };
        check_buffer(
            gpu,
            "linear.x",
            self.x,
            halves(self.x_f16, last(l.x_offset, l.x_batch, l.x_row, m, k)),
        )?;
        let w_elems = last(0, l.w_batch, self.k, n, k);
        check_buffer(gpu, "linear.weight", self.w, self.w_format.words(w_elems))?;
        check_buffer(
            gpu,
            "linear.y",
            self.y,
            halves(self.y_f16, last(l.y_offset, l.y_batch, l.y_row, m, n)),
        )?;
        if let Some(b) = self.bias {
            check_buffer(gpu, "linear.bias", b, n)?;
        }
        if let Some(g) = self.gate {
            check_buffer(gpu, "linear.gate", g.by, halves(g.by_f16, m * n))?;
            if let Some(keep) = g.keep_input {
                check_buffer(gpu, "linear.gate input", keep, m * n)?;
            }
        }
        Ok(kernel)
    }

    /// Records one dispatch of `kernel` (its reduction not split).
    fn record_unsplit(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        kernel: GemmKernel,
    ) -> Result<()> {
        let l = self.layout();
        let kernel = self.check(gpu, kernel, &l)?;
        let keep_input = self.gate.and_then(|g| g.keep_input);
        let flags = Flags::default()
            .with(Flags::BIAS, self.bias.is_some())
            .with(Flags::GATE, self.gate.is_some())
            .with(Flags::ACCUMULATE, self.accumulate)
            .with(Flags::KEEP_PRE, keep_input.is_some())
            .with(Flags::AUX_F16, self.gate.is_some_and(|g| g.by_f16))
            .with(Flags::Y_F16, self.y_f16);
        let variant = match kernel {
            GemmKernel::Subgroup => subgroup::prepare(self, gpu, l.batch),
            GemmKernel::Tiled(tile) => tiled::prepare(self, gpu, &l, tile),
            GemmKernel::Narrow => narrow::prepare(self, gpu, &l)?,
            GemmKernel::Matrix(config) => matrix::prepare(self, gpu, config),
        };
        let params = gpu.uniform(
            "linear params",
            &Params {
                m: self.m,
                n: self.n,
                k_len: self.k,
                flags: flags.union(variant.quads).bits(),
                x_offset: l.x_offset,
                x_batch: l.x_batch,
                x_row: l.x_row,
                w_batch: l.w_batch,
                y_batch: l.y_batch,
                y_row: l.y_row,
                x_k: l.x_k,
                w_row: l.w_row,
                w_k: l.w_k,
                y_offset: l.y_offset,
                w_offset: l.w_offset,
                w_scales: match self.w_format {
                    WeightFormat::Q8 { scales_at } => scales_at,
                    _ => 0,
                },
            },
        );
        // Absent optional inputs are bound to `x`, which the shader then never reads; an
        // absent kept gate input to a buffer it never writes.
        let bindings = Bindings {
            params: &params,
            bias: self.bias.unwrap_or(self.x),
            gate: self.gate.map_or(self.x, |g| g.by),
            keep: keep_input.unwrap_or(gpu.unused_output()),
        };
        let pipeline = &variant.pipeline;
        let bind = match kernel {
            GemmKernel::Subgroup | GemmKernel::Matrix(_) => gpu.bind(
                pipeline,
                &[
                    bindings.params,
                    self.x,
                    self.w,
                    bindings.bias,
                    bindings.gate,
                    self.y,
                    bindings.keep,
                ],
            ),
            GemmKernel::Narrow => narrow::bind(self, gpu, pipeline, &bindings),
            GemmKernel::Tiled(_) => tiled::bind(self, gpu, pipeline, &bindings),
        };
        let grid = variant.grid;
        gpu.run(encoder, self.label, pipeline, &bind, (grid.0, grid.1, l.batch));
        Ok(())
    }
}

/// What a kernel variant dispatches: its pipeline, its grid (x, y; the batch is z) and the
/// quad modes of its loads.
struct Variant {
    pipeline: wgpu::ComputePipeline,
    grid: (u32, u32),
    quads: Flags,
}

/// `buffer`'s vec4 view: itself, or a placeholder where it is too small for one (a kernel
/// then never reads through the view: its quad mode is 0).
fn vec4_view<'a>(gpu: &'a Gpu, buffer: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
    if buffer.size() >= 16 {
        buffer
    } else {
        gpu.unused_input()
    }
}

/// What every variant binds beside the operands: the parameters, and the optional inputs
/// (or their stand-ins).
struct Bindings<'a> {
    params: &'a wgpu::Buffer,
    bias: &'a wgpu::Buffer,
    gate: &'a wgpu::Buffer,
    keep: &'a wgpu::Buffer,
}

/// Records `y [m, n] = op(x) op(w)^T` over densely stored operands (see `Batched::dense`),
/// adding to `y` when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    label: &'static str,
    (x, x_transposed): (&wgpu::Buffer, bool),
    (w, w_transposed): (&wgpu::Buffer, bool),
    y: &wgpu::Buffer,
    (m, n, k): (u32, u32, u32),
    accumulate: bool,
) -> Result<()> {
    Linear {
        batched: Some(Batched::dense(m, n, k, x_transposed, w_transposed)),
        accumulate,
        ..Linear::new(label, x, w, y, (m, n, k))
    }
    .record(gpu, encoder)
}

/// The column sums of `x [rows, n]` into a new buffer `[n]` (a bias's or a shared norm
/// weight's gradient): a GEMM with a ones vector, in row chunks one dispatch can reduce,
/// added in order.
pub fn column_sums(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    label: &'static str,
    x: &wgpu::Buffer,
    (rows, n): (u32, u32),
) -> Result<wgpu::Buffer> {
    let chunk = rows.min(MAX_K_PER_DISPATCH);
    let ones = gpu.upload("ones", &vec![1f32; chunk as usize]);
    let sums = gpu.scratch(label, n as u64 * 4);
    let mut start = 0;
    while start < rows {
        let k = chunk.min(rows - start);
        Linear {
            batched: Some(Batched {
                w_offset: start * n,
                ..Batched::dense(1, n, k, false, true)
            }),
            accumulate: start > 0,
            ..Linear::new(label, &ones, x, &sums, (1, n, k))
        }
        .record(gpu, encoder)?;
        start += k;
    }
    Ok(sums)
}
