//! `linear.wgsl`: y = x w^T (+ bias) (then optionally y = gate * silu(y)), batched and
//! strided so that it also computes the sub-key scores of every (head, half). Which kernel
//! and tile shape run is decided per adapter by `choice`.

pub mod choice;
mod flags;
mod kernel;

pub use kernel::{GemmKernel, GemmPrecision, GemmTile, MatrixConfig};

use super::Gpu;
use super::{check_buffer, check_loop_budget, LOOP_BUDGET};
use crate::error::{Error, Result};
use crate::gpu::MAX_GRID_DIM;
use flags::Flags;

pub const SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear.wgsl")
);
pub const SUBGROUP_SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_subgroup.wgsl")
);
pub const NARROW_SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_narrow.wgsl")
);
/// Invocations per workgroup of `linear_narrow.wgsl`, one per output column: 64, or 8 where
/// 64 would leave fewer than 16 workgroups. A CPU adapter runs a workgroup's SIMD batches on
/// one thread, so the column sums of narrow products (a norm's or bias's weight gradient:
/// 32 columns over 1,536 rows) spread over the cores only in small workgroups.
fn narrow_workgroup(n: u32, batch: u32) -> u32 {
    if n.div_ceil(64) * batch >= 16 {
        64
    } else {
        8
    }
}

const MATRIX_SOURCE: &str = concat!(
    include_str!("../../../shaders/linear_common.wgsl"),
    include_str!("../../../shaders/linear_matrix.wgsl")
);

/// `linear_matrix.wgsl` for `config`: the `enable` directives and the matrix types it runs on.
/// Built once per configuration (the two that exist); recordings look it up.
pub fn matrix_source(config: MatrixConfig) -> &'static str {
    static SOURCES: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    SOURCES[config.f16_inputs as usize].get_or_init(|| build_matrix_source(config))
}

fn build_matrix_source(config: MatrixConfig) -> String {
    let (input, f16) = if config.f16_inputs {
        ("f16", "enable f16;\n")
    } else {
        ("f32", "")
    };
    let t = config.edge;
    format!(
        "{f16}enable wgpu_cooperative_matrix;\nalias In = {input};\nconst T: u32 = {t}u;\n\
         alias MatA = coop_mat{t}x{t}<{input}, A>;\nalias MatB = coop_mat{t}x{t}<{input}, B>;\n\
         alias MatC = coop_mat{t}x{t}<f32, C>;\n{MATRIX_SOURCE}"
    )
}

/// `values` as f16, two per 4-byte word (element i in the low half of word i / 2 when i is
/// even, the high half when odd), as a weight of `Linear { w_f16: true }` (and an f16
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

/// Output tile edge that split-K counts tiles in, and `reduce_split`'s workgroup width.
const SPLIT_TILE: u32 = 64;
/// Rows, and columns, per invocation of `linear_subgroup.wgsl`.
const SUBGROUP_ROWS: u32 = 32;
const SUBGROUP_COLUMNS: u32 = 4;
/// Split-K: a product with few output tiles splits its reduction into ranges computed by
/// separate workgroups until about this many workgroups run (weight gradients such as
/// dW = dY^T X have a small output and a reduction over every row: one workgroup would do
/// all the work on one core or SM).
const SPLIT_TARGET_WORKGROUPS: u32 = 64;
/// The shortest k range worth a workgroup of its own.
const MIN_SPLIT_K: u32 = 256;
/// The longest k range one dispatch of any GEMM kernel may reduce within the loop budget.
pub const MAX_K_PER_DISPATCH: u32 = {
    let mut least = subgroup_max_k();
    let mut i = 0;
    while i < GemmTile::CANDIDATES.len() {
        let k = tiled_max_k(GemmTile::CANDIDATES[i]);
        if k < least {
            least = k;
        }
        i += 1;
    }
    least
};

/// Loop iterations per invocation of the subgroup kernel: 17 per 8 k values, plus the stores.
const fn subgroup_iterations(k: u32) -> u64 {
    k.div_ceil(8) as u64 * 17 + 64
}

/// Loop iterations per invocation of the tiled kernel, from above: per stage of `depth` k
/// values, each quad's load and store (a loop of 4 each), and the multiply loop; then the
/// stores.
const fn tiled_iterations(tile: GemmTile, k: u32) -> u64 {
    let quads = 2 * tile.depth / tile.wg_n + 2 * tile.depth / tile.wg_m;
    let per_stage = 10 * quads + tile.depth + 1;
    (k.div_ceil(tile.depth) + 1) as u64 * per_stage as u64 + 64
}

const fn subgroup_max_k() -> u32 {
    ((LOOP_BUDGET as u32 - 64) / 17) * 8
}

const fn tiled_max_k(tile: GemmTile) -> u32 {
    let quads = 2 * tile.depth / tile.wg_n + 2 * tile.depth / tile.wg_m;
    let per_stage = 10 * quads + tile.depth + 1;
    ((LOOP_BUDGET as u32 - 64) / per_stage - 1) * tile.depth
}

/// The longest k range one dispatch of `kernel` may reduce within the loop budget.
pub fn max_k_per_dispatch(kernel: GemmKernel) -> u32 {
    match kernel {
        GemmKernel::Subgroup => subgroup_max_k(),
        GemmKernel::Tiled(tile) => tiled_max_k(tile),
        GemmKernel::Narrow => ((LOOP_BUDGET as u32 - 16) / 5) * 4,
        // Matrix units exist only on GPUs, whose drivers do not stop long loops.
        GemmKernel::Matrix(_) => u32::MAX,
    }
}

/// Invocations per workgroup of `linear_subgroup.wgsl` for `n` output columns: of 8, 16, 32
/// and 64 (a workgroup covers 4 columns an invocation), the largest that computes the fewest
/// columns past n. Lanes past the last column compute on zeros, so 96 columns take three
/// workgroups of 8, not one of 32 with a quarter idle.
fn subgroup_workgroup(n: u32) -> u32 {
    let computed = |wg: u32| n.div_ceil(wg * SUBGROUP_COLUMNS) * wg * SUBGROUP_COLUMNS;
    [64, 32, 16, 8]
        .into_iter()
        .min_by_key(|&wg| computed(wg))
        .unwrap_or(8)
}

/// How the tiled kernel loads an operand's quads (`linear.wgsl`'s QUAD_*): one 16-byte load
/// where the operand runs contiguously along k (1) or along its rows (2) and every offset is
/// a multiple of 4 elements, else element by element (0). The vec4 view of a buffer needs at
/// least 16 bytes.
fn quad_mode(buffer: &wgpu::Buffer, offset: u32, batch: u32, row: u32, k: u32) -> u32 {
    let aligned = |v: u32| v.is_multiple_of(4);
    if buffer.size() < 16 || !aligned(offset) || !aligned(batch) {
        0
    } else if k == 1 && aligned(row) {
        1
    } else if row == 1 && aligned(k) {
        2
    } else {
        0
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
    _pad: u32,
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

/// A linear layer over `m` rows: `x [m, k]`, `w [n, k]` (nn.Linear layout), `bias [n]`,
/// output `y [m, n]`. With a `gate`, stores `gate * silu(x w^T + bias)` instead.
/// With `batched`, a batch of such products over strided views (no bias or gate).
/// The SwiGLU epilogue: `y = by * silu(x w^T + bias)`, `by [m, n]`.
#[derive(Clone, Copy)]
pub struct Gate<'a> {
    pub by: &'a wgpu::Buffer,
    /// `by` holds f16 pairs (`pack_f16`) instead of f32.
    pub by_f16: bool,
    /// Also store `x w^T + bias` here (`[m, n]`), for the backward pass.
    pub keep_input: Option<&'a wgpu::Buffer>,
}

pub struct Linear<'a> {
    /// Names the pass in profiles (e.g. "query_proj").
    pub label: &'static str,
    pub x: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    /// `w` holds f16 values, two per 4-byte word (`pack_f16`), instead of f32.
    pub w_f16: bool,
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
            w_f16: false,
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
    fn layout(&self) -> Batched {
        self.batched
            .unwrap_or(Batched::dense(self.m, self.n, self.k, false, false))
    }

    /// How many k ranges this product's reduction is split into (1: not split). Only single
    /// products without bias or gate split; reductions longer than one dispatch's loop
    /// budget always do.
    fn splits(&self, gpu: &Gpu, kernel: GemmKernel) -> u32 {
        let l = self.layout();
        if l.batch != 1 || self.bias.is_some() || self.gate.is_some() || self.m > MAX_GRID_DIM {
            return 1;
        }
        let tiles = self.m.div_ceil(SPLIT_TILE) * self.n.div_ceil(SPLIT_TILE);
        let for_parallelism = if gpu.tuning().split_k {
            (SPLIT_TARGET_WORKGROUPS / tiles).min(self.k / MIN_SPLIT_K)
        } else {
            1
        };
        for_parallelism
            .max(self.k.div_ceil(max_k_per_dispatch(kernel)))
            .max(1)
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
        let splits = self.splits(gpu, kernel);
        if splits <= 1 {
            return self.record_unsplit(gpu, encoder, kernel);
        }
        let l = self.layout();
        self.check_f16_output(&l)?;
        let y_elems = l.y_offset as u64 + (self.m as u64 - 1) * l.y_row as u64 + self.n as u64;
        check_buffer(
            gpu,
            "linear.y",
            self.y,
            if self.y_f16 { y_elems.div_ceil(2) } else { y_elems },
        )?;
        // `full` ranges of `chunk` k values as one batched product, then the remainder.
        let chunk = self.k.div_ceil(splits);
        let full = self.k / chunk;
        let rest = self.k - full * chunk;
        let parts = full + (rest > 0) as u32;
        let mn = self.m * self.n;
        let partial = gpu.storage("linear split-k partials", parts as u64 * mn as u64 * 4);
        let part = |batch: u32, k: u32, skip: u32, y_offset: u32| Linear {
            label: self.label,
            x: self.x,
            w: self.w,
            w_f16: self.w_f16,
            x_f16: self.x_f16,
            y_f16: false,
            bias: None,
            gate: None,
            y: &partial,
            m: self.m,
            n: self.n,
            k,
            batched: Some(Batched {
                batch,
                x_offset: l.x_offset + skip * l.x_k,
                x_batch: chunk * l.x_k,
                w_offset: l.w_offset + skip * l.w_k,
                w_batch: chunk * l.w_k,
                y_offset,
                y_batch: mn,
                y_row: self.n,
                ..l
            }),
            accumulate: false,
        };
        part(full, chunk, 0, 0).record_unsplit(gpu, encoder, kernel)?;
        if rest > 0 {
            part(1, rest, full * chunk, full * mn).record_unsplit(gpu, encoder, kernel)?;
        }
        let pipeline = gpu.pipeline_entry("linear_reduce_split", SOURCE, "reduce_split", &[]);
        let params = gpu.uniform(
            "linear split-k params",
            &Params {
                m: self.m,
                n: self.n,
                k_len: parts,
                flags: Flags::default()
                    .with(Flags::ACCUMULATE, self.accumulate)
                    .with(Flags::Y_F16, self.y_f16)
                    .bits(),
                y_offset: l.y_offset,
                y_row: l.y_row,
                ..bytemuck::Zeroable::zeroed()
            },
        );
        let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, &partial), (5, self.y)]);
        let per_workgroup = if self.y_f16 { 2 * SPLIT_TILE } else { SPLIT_TILE };
        gpu.run(
            encoder,
            self.label,
            &pipeline,
            &bind,
            (self.n.div_ceil(per_workgroup), self.m, 1),
        );
        Ok(())
    }

    /// An f16 output's words must each hold two outputs of one row.
    fn check_f16_output(&self, l: &Batched) -> Result<()> {
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

    fn record_unsplit(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        kernel: GemmKernel,
    ) -> Result<()> {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        let l = self.layout();
        if m == 0 || n == 0 || k == 0 || l.batch == 0 {
            return Err(Error::Config(format!(
                "linear: empty shape m={m} n={n} k={k} batch={}",
                l.batch
            )));
        }
        // Output rows and columns per workgroup; a kernel whose grid would not fit falls back
        // to the default tile (as wide as any dispatch ever needed before tiles were chosen).
        let extent = |k: GemmKernel| match k {
            GemmKernel::Subgroup => (SUBGROUP_ROWS, SUBGROUP_COLUMNS * 8),
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
            GemmKernel::Subgroup => subgroup_iterations(self.k),
            GemmKernel::Tiled(tile) => tiled_iterations(tile, self.k),
            GemmKernel::Narrow => self.k as u64 / 4 * 5 + 16,
            GemmKernel::Matrix(_) => 0,
        };
        check_loop_budget("linear", iterations, &format!("k = {k}"))?;
        let last = |off: u32, batch: u32, row: u32, rows: u64, cols: u64| {
            off as u64 + (l.batch as u64 - 1) * batch as u64 + (rows - 1) * row as u64 + cols
        };
        self.check_f16_output(&l)?;
        let halves = |f16: bool, elems: u64| if f16 { elems.div_ceil(2) } else { elems };
        check_buffer(
            gpu,
            "linear.x",
            self.x,
            halves(self.x_f16, last(l.x_offset, l.x_batch, l.x_row, m, k)),
        )?;
        let w_elems = last(0, l.w_batch, self.k, n, k);
        check_buffer(gpu, "linear.weight", self.w, halves(self.w_f16, w_elems))?;
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
        let keep_input = self.gate.and_then(|g| g.keep_input);
        let flags = Flags::default()
            .with(Flags::BIAS, self.bias.is_some())
            .with(Flags::GATE, self.gate.is_some())
            .with(Flags::ACCUMULATE, self.accumulate)
            .with(Flags::KEEP_PRE, keep_input.is_some())
            .with(Flags::AUX_F16, self.gate.is_some_and(|g| g.by_f16))
            .with(Flags::Y_F16, self.y_f16);
        // The subgroup variant: 32 rows x 4 columns per invocation, 8 to 64 invocations per
        // workgroup (fewer for narrow outputs, so that small products still spread over the
        // cores; a power of two, so few pipelines get compiled, and at least 8, the lanes
        // that share x).
        let mut quads = Flags::default();
        let with_w_f16 = |mut constants: Vec<(&'static str, f64)>| {
            if self.w_f16 {
                constants.push(("W_F16", 1.0));
            }
            if self.x_f16 {
                constants.push(("X_F16", 1.0));
            }
            constants
        };
        let (pipeline, grid) = match kernel {
            GemmKernel::Subgroup => {
                let wg = subgroup_workgroup(self.n);
                let column_blocks = self.n.div_ceil(wg * SUBGROUP_COLUMNS);
                // A product that 32-row blocks would leave in one workgroup (on one core)
                // takes 16-row blocks.
                let rows = match column_blocks * self.m.div_ceil(SUBGROUP_ROWS) * l.batch {
                    1 => SUBGROUP_ROWS / 2,
                    _ => SUBGROUP_ROWS,
                };
                let mut constants = with_w_f16(vec![("WG", wg as f64)]);
                if rows != SUBGROUP_ROWS {
                    constants.push(("ROWS", rows as f64));
                }
                if self.y_f16 {
                    constants.push(("PAIRED", 1.0));
                }
                (
                    gpu.pipeline(
                        "linear_subgroup",
                        &super::with_subgroups(SUBGROUP_SOURCE),
                        &constants,
                    ),
                    (column_blocks, self.m.div_ceil(rows)),
                )
            }
            GemmKernel::Tiled(tile) => {
                let w_quads = if self.w_f16 {
                    0
                } else {
                    quad_mode(self.w, l.w_offset, l.w_batch, l.w_row, l.w_k)
                };
                let x_quads = if self.x_f16 {
                    0
                } else {
                    quad_mode(self.x, l.x_offset, l.x_batch, l.x_row, l.x_k)
                };
                quads = Flags::quads(x_quads, w_quads);
                let constants = with_w_f16(vec![
                    ("WG_M", tile.wg_m as f64),
                    ("WG_N", tile.wg_n as f64),
                    ("TK", tile.depth as f64),
                ]);
                (
                    gpu.pipeline("linear", SOURCE, &constants),
                    (self.n.div_ceil(tile.columns()), self.m.div_ceil(tile.rows())),
                )
            }
            GemmKernel::Narrow => {
                if self.m > 4 {
                    return Err(Error::Config(format!(
                        "linear: the narrow kernel takes at most 4 rows, not {m}"
                    )));
                }
                let w_quads = if self.w_f16 {
                    let aligned = |v: u32| v.is_multiple_of(8);
                    let rows_aligned =
                        aligned(l.w_offset) && aligned(l.w_batch) && aligned(l.w_row) && l.w_k == 1;
                    if rows_aligned && self.w.size() >= 16 {
                        3
                    } else {
                        0
                    }
                } else {
                    quad_mode(self.w, l.w_offset, l.w_batch, l.w_row, l.w_k)
                };
                quads = Flags::quads(0, w_quads);
                let wg = narrow_workgroup(self.n, l.batch);
                let constants = with_w_f16(vec![("WG", wg as f64)]);
                (
                    gpu.pipeline("linear_narrow", NARROW_SOURCE, &constants),
                    (self.n.div_ceil(wg), 1),
                )
            }
            GemmKernel::Matrix(config) => {
                let name = if config.f16_inputs {
                    "linear_matrix_f16"
                } else {
                    "linear_matrix_f32"
                };
                let constants = with_w_f16(vec![("SG", config.subgroup as f64)]);
                (
                    gpu.pipeline(name, matrix_source(config), &constants),
                    (self.n.div_ceil(config.tile()), self.m.div_ceil(config.tile())),
                )
            }
        };
        let params = gpu.uniform(
            "linear params",
            &Params {
                m: self.m,
                n: self.n,
                k_len: self.k,
                flags: flags.union(quads).bits(),
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
                _pad: 0,
            },
        );
        // Absent optional inputs are bound to `x`, which the shader then never reads; an
        // absent kept gate input to a buffer it never writes.
        let bias = self.bias.unwrap_or(self.x);
        let gate = self.gate.map_or(self.x, |g| g.by);
        let keep = keep_input.unwrap_or(gpu.unused_output());
        let bind = match kernel {
            GemmKernel::Subgroup | GemmKernel::Matrix(_) => {
                gpu.bind(&pipeline, &[&params, self.x, self.w, bias, gate, self.y, keep])
            }
            GemmKernel::Narrow => {
                let w4 = if self.w.size() >= 16 {
                    self.w
                } else {
                    gpu.unused_input()
                };
                gpu.bind_at(
                    &pipeline,
                    &[
                        (0, &params),
                        (1, self.x),
                        (2, self.w),
                        (3, bias),
                        (4, gate),
                        (5, self.y),
                        (6, keep),
                        (8, w4),
                    ],
                )
            }
            GemmKernel::Tiled(_) => {
                // The operands' vec4 views; a buffer too small for one is never read through
                // it (quad mode 0), and a placeholder stands in.
                let view = |b: &'_ wgpu::Buffer| {
                    if b.size() >= 16 {
                        b.clone()
                    } else {
                        gpu.unused_input().clone()
                    }
                };
                let (x4, w4) = (view(self.x), view(self.w));
                gpu.bind(
                    &pipeline,
                    &[&params, self.x, self.w, bias, gate, self.y, keep, &x4, &w4],
                )
            }
        };
        gpu.run(encoder, self.label, &pipeline, &bind, (grid.0, grid.1, l.batch));
        Ok(())
    }
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
