//! The device: adapter choice, limits and features, pipeline cache, buffers, readback and
//! timestamp profiling. Knows nothing of memories or models.

#[cfg(target_os = "linux")]
pub mod cpu_threads;
mod plan;
mod profiler;
mod readback;

pub use plan::StepPlan;
pub use profiler::{KernelTiming, Profiler};

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// What every kernel here needs; these are WebGPU's default compute limits, so any browser
/// or native adapter that implements WebGPU offers them.
pub const REQUIRED_STORAGE_BUFFERS: u32 = 8;
pub const REQUIRED_INVOCATIONS: u32 = 256;
pub const REQUIRED_WORKGROUP_STORAGE: u32 = 16384;

const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Largest workgroup count in one grid dimension that every adapter accepts.
pub const MAX_GRID_DIM: u32 = 65535;

/// Message shown whenever no adapter is found: how to get one on a machine without a GPU.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. On Debian/Ubuntu without a GPU install \
Mesa's software Vulkan driver (lavapipe): `sudo apt-get install -y mesa-vulkan-drivers libvulkan1` \
and run with WGPU_BACKEND=vulkan";

/// Kernel variants chosen per adapter. Results never depend on them (tests check this); only
/// speed does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Invocations per workgroup of the product top-k (64 on GPUs; 8 on CPU adapters such as
    /// lavapipe and SwiftShader, where every barrier cycles through the workgroup's SIMD
    /// batches: against 16, measured 1.2x faster on lavapipe and 2.2x on SwiftShader in
    /// Chromium, and 64 is slower still).
    pub topk_workgroup: u32,
    /// The product top-k with one invocation per (token, head) and no barriers
    /// (`product_topk_lanes.wgsl`) instead of a workgroup each: for CPU adapters, where the
    /// workgroup kernel's ~40 barriers per (token, head) dominate. GPUs keep the workgroups.
    pub topk_per_invocation: bool,
    /// Invocations per workgroup of the embedding bag's `main` and `main_column` entry points
    /// (64 on GPUs; 16 on CPU adapters). `main_vec4`, the CPU adapters' 16-byte variant,
    /// sizes its workgroup to the row instead (see `kernels::embedding_bag`).
    pub bag_workgroup: u32,
    /// 16-byte columns per invocation of the embedding bag: 1 on GPUs (more invocations,
    /// more loads in flight: on an H100, the bag alone on random rows reaches 95-100% of the
    /// copy kernel's bandwidth with f32 values against 51-86% with 4, and 47-87% with f16
    /// against 23-56%), 4 on CPU adapters (fewer rereads of each entry's slot).
    pub bag_columns_per_invocation: u32,
    /// Attention with one invocation per row (`attention_rows.wgsl`) where the shape allows,
    /// instead of a workgroup per row: on CPU adapters the workgroup variant spends its time
    /// in barriers and idle lanes (measured 2-4x slower there).
    pub attention_rows: bool,
    /// Of the row variants, the one whose eight lanes read each key, value and query row
    /// together, share it through subgroup shuffles and keep rows in registers
    /// (`attention_lanes.wgsl`, head_dim <= 32, bit-identical to `attention_rows.wgsl`): for
    /// CPU adapters with subgroups of 8 or more, where every storage load runs lane by lane.
    pub attention_lanes: bool,
    /// The kernel of linear layers where no timed trial decides (`gemm_trial` off, or no
    /// clock to time with, as in browsers): `Subgroup` for CPU adapters, which run a
    /// subgroup as one SIMD stream (it needs subgroups of 8 or more lanes, and falls back to
    /// the default tile without them); the default tile for GPUs.
    pub gemm: GemmKernel,
    /// Choose the linear layers' kernel by a short timed trial of every candidate at first
    /// use, remembered per adapter and driver (`kernels::linear::choice`). On for GPUs; off
    /// for CPU adapters, where compiling the candidates alone takes about a minute (lavapipe
    /// on 2 cores: 6-10 s a tile shape, 20-80 s on GL's llvmpipe) and the subgroup kernel
    /// runs 3x faster than any tile (`memlayers bench` times them all).
    pub gemm_trial: bool,
    /// The largest workgroup among the GEMM tiles the trial considers: 256 (WebGPU's limit)
    /// except on Mesa's GL llvmpipe, where a 256-invocation tile never finished (measured:
    /// killed after 40 s on an 8 x 8 x 8 product that takes a millisecond at 128; Vulkan's
    /// lavapipe runs it in milliseconds).
    pub gemm_max_invocations: u32,
    /// Products of at most this many rows (decoding one token at a time) run
    /// `linear_narrow.wgsl`, one invocation per output column, on CPU adapters (4), where the
    /// other kernels' 32- and 64-row blocks would leave all but one row idle; 0 on GPUs,
    /// whose tiles read the weights coalesced.
    pub gemm_narrow_rows: u32,
    /// RMSNorm with one row per invocation (`rmsnorm.wgsl`'s `*_rows` entry points, bit-identical)
    /// instead of a workgroup per row with two barriers: for CPU adapters, where those
    /// workgroups cost more than the arithmetic.
    pub norm_rows: bool,
    /// The embedding bag with one token row per invocation (`main_rows`, bit-identical) where
    /// a value row is at most 16 16-byte words: for CPU adapters, where the column-block
    /// variants leave most of a workgroup idle on short rows and pay a barrier per token.
    pub bag_rows: bool,
    /// Products with few output tiles (weight gradients) split their reduction over
    /// workgroups for parallelism (split-K) on GPUs. CPU adapters have a few cores, which a
    /// handful of tiles already fill; the split there costs a second dispatch (the partials'
    /// sum) and buys nothing. Reductions longer than one dispatch's loop budget split always.
    pub split_k: bool,
    /// The value gradient's per-slot reduction with 4 columns an invocation and 16-byte loads
    /// (`value_grads.wgsl`'s `reduce_quads`, bit-identical; where v_dim is a multiple of 4)
    /// instead of a column each: for CPU adapters, where every storage load runs lane by lane.
    pub value_grad_quads: bool,
    /// The radix sort's histogram and scatter with an invocation per block of pairs, in
    /// order (`radix_sort.wgsl`'s `*_serial`, the same output) instead of a workgroup per
    /// block: for CPU adapters, where the workgroup scatter's rank (a comparison with every
    /// earlier pair of the block) and its barriers cost more than the pairs' own loads.
    pub sort_per_invocation: bool,
    /// Cross-entropy with one row per invocation (`cross_entropy.wgsl`'s `rows`,
    /// bit-identical) where the vocabulary fits one invocation's loop budget, instead of 64
    /// invocations a row with five barriers: for CPU adapters.
    pub cross_entropy_rows: bool,
    /// Most workgroups of the sparse value gradient's scatter into a dense table, which
    /// covers the rows' capacity while only the count on the GPU are listed: 2048 on GPUs;
    /// 64 on CPU adapters, where each of the mostly idle workgroups costs a launch.
    pub scatter_workgroups: u32,
}

impl Tuning {
    pub const GPU: Tuning = Tuning {
        topk_workgroup: 64,
        topk_per_invocation: false,
        bag_workgroup: 64,
        bag_columns_per_invocation: 1,
        attention_rows: false,
        attention_lanes: false,
        gemm: GemmKernel::Tiled(GemmTile::DEFAULT),
        gemm_trial: true,
        gemm_max_invocations: 256,
        gemm_narrow_rows: 0,
        norm_rows: false,
        bag_rows: false,
        split_k: true,
        value_grad_quads: false,
        sort_per_invocation: false,
        cross_entropy_rows: false,
        scatter_workgroups: 2048,
    };
    pub const CPU: Tuning = Tuning {
        topk_workgroup: 8,
        topk_per_invocation: true,
        bag_workgroup: 16,
        bag_columns_per_invocation: 4,
        attention_rows: true,
        attention_lanes: true,
        gemm: GemmKernel::Subgroup,
        gemm_trial: false,
        gemm_max_invocations: 256,
        gemm_narrow_rows: 4,
        norm_rows: true,
        bag_rows: true,
        split_k: false,
        value_grad_quads: true,
        sort_per_invocation: true,
        cross_entropy_rows: true,
        scatter_workgroups: 64,
    };

    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Tuning {
        if info.device_type == wgpu::DeviceType::Cpu {
            Tuning {
                gemm_max_invocations: if info.backend == wgpu::Backend::Gl {
                    128
                } else {
                    256
                },
                ..Tuning::CPU
            }
        } else {
            Tuning::GPU
        }
    }
}

/// A linear layer's kernel: `linear_subgroup.wgsl`, or `linear.wgsl` with a tile shape.
/// Results are the same bit for bit with every kernel (tested); only speed differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKernel {
    Subgroup,
    Tiled(GemmTile),
    /// `linear_narrow.wgsl`: one invocation per output column for products of at most 4 rows
    /// (`Tuning::gemm_narrow_rows`).
    Narrow,
    /// `linear_matrix.wgsl` on the adapter's matrix units: only under
    /// `GemmPrecision::F16Inputs` (its results differ from the others by the inputs' rounding).
    Matrix(MatrixConfig),
}

/// The linear layers' arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmPrecision {
    /// f32 inputs, f32 accumulation in increasing k: the exact path, the same bit for bit on
    /// every kernel and tile shape.
    #[default]
    F32,
    /// Inputs rounded to the matrix units' type (f16, or f32 where the adapter offers only
    /// f32 x f32), accumulation in f32, on cooperative matrices where the adapter has them
    /// (`Gpu::matrix_config`); elsewhere the f32 path.
    F16Inputs,
}

/// A cooperative-matrix configuration the matrix-unit GEMM runs: square matrices of `edge`
/// (8 or 16), f16 or f32 inputs, f32 accumulators, on subgroups of `subgroup` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatrixConfig {
    pub edge: u32,
    pub f16_inputs: bool,
    pub subgroup: u32,
}

impl MatrixConfig {
    /// The configuration this crate uses among the adapter's: 16 x 16 x 16 with f16 inputs
    /// and f32 accumulators (what NVIDIA, AMD and Intel offer), else 8 x 8 x 8 in f32 (Apple).
    /// Needs subgroups of one fixed size, which the kernel's layout assumes.
    pub fn pick(
        properties: &[wgpu::CooperativeMatrixProperties],
        features: wgpu::Features,
        info: &wgpu::AdapterInfo,
    ) -> Option<MatrixConfig> {
        use wgpu::CooperativeScalarType as S;
        if !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SUBGROUP)
            || info.subgroup_min_size != info.subgroup_max_size
            || !(8..=64).contains(&info.subgroup_min_size)
        {
            return None;
        }
        let has = |edge: u32, ab: S| {
            properties.iter().any(|p| {
                p.m_size == edge
                    && p.n_size == edge
                    && p.k_size == edge
                    && p.ab_type == ab
                    && p.cr_type == S::F32
            })
        };
        let subgroup = info.subgroup_min_size;
        if features.contains(wgpu::Features::SHADER_F16) && has(16, S::F16) {
            Some(MatrixConfig {
                edge: 16,
                f16_inputs: true,
                subgroup,
            })
        } else if has(8, S::F32) {
            Some(MatrixConfig {
                edge: 8,
                f16_inputs: false,
                subgroup,
            })
        } else {
            None
        }
    }

    /// Output rows (and columns) of one workgroup: 2 x 2 subgroups of 2 x 2 matrices.
    pub fn tile(self) -> u32 {
        4 * self.edge
    }
}

/// The register-tiled GEMM's shape: a workgroup of `wg_m x wg_n` invocations, each with an
/// 8 x 8 block of outputs, so an output tile of `8 wg_m x 8 wg_n`; `depth` k values per
/// (double-buffered) workgroup stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmTile {
    pub wg_m: u32,
    pub wg_n: u32,
    pub depth: u32,
}

impl GemmTile {
    /// 64 x 64 outputs, 64 invocations, 8 k values a stage: what timing-free GPUs run.
    pub const DEFAULT: GemmTile = GemmTile {
        wg_m: 8,
        wg_n: 8,
        depth: 8,
    };
    /// Every shape the timed trial considers (all inside WebGPU's default limits: at most 256
    /// invocations and 16 KiB of workgroup memory).
    pub const CANDIDATES: [GemmTile; 6] = [
        GemmTile {
            wg_m: 4,
            wg_n: 4,
            depth: 8,
        },
        GemmTile::DEFAULT,
        GemmTile {
            wg_m: 8,
            wg_n: 8,
            depth: 16,
        },
        GemmTile {
            wg_m: 16,
            wg_n: 8,
            depth: 8,
        },
        GemmTile {
            wg_m: 8,
            wg_n: 16,
            depth: 8,
        },
        GemmTile {
            wg_m: 16,
            wg_n: 16,
            depth: 8,
        },
    ];
    pub fn rows(self) -> u32 {
        8 * self.wg_m
    }
    pub fn columns(self) -> u32 {
        8 * self.wg_n
    }
    pub fn invocations(self) -> u32 {
        self.wg_m * self.wg_n
    }
    /// Bytes of workgroup memory: two stages of both operands' tiles.
    pub fn workgroup_bytes(self) -> u32 {
        2 * self.depth * (self.rows() + self.columns()) * 4
    }
    /// Whether the shader's load scheme fits this shape: each invocation brings whole quads
    /// (4 elements) of both stage tiles, at most four of each.
    pub fn is_valid(self) -> bool {
        let quads = |wg: u32| {
            wg > 0 && (2 * self.depth).is_multiple_of(wg) && (1..=4).contains(&(2 * self.depth / wg))
        };
        self.depth.is_multiple_of(4)
            && quads(self.wg_m)
            && quads(self.wg_n)
            && self.invocations() <= REQUIRED_INVOCATIONS
            && self.workgroup_bytes() <= REQUIRED_WORKGROUP_STORAGE
    }
}

impl std::fmt::Display for GemmKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GemmKernel::Subgroup => write!(f, "subgroup"),
            GemmKernel::Tiled(t) => write!(f, "tiled {}x{}x{}", t.rows(), t.columns(), t.depth),
            GemmKernel::Narrow => write!(f, "narrow"),
            GemmKernel::Matrix(c) => write!(
                f,
                "matrix units {0}x{0} {1}",
                c.edge,
                if c.f16_inputs { "f16" } else { "f32" }
            ),
        }
    }
}

impl std::str::FromStr for GemmKernel {
    type Err = Error;
    /// Reads what `Display` writes: `subgroup` or `tiled RxCxD` (R = 8 wg_m, C = 8 wg_n).
    fn from_str(s: &str) -> Result<Self> {
        if s == "subgroup" {
            return Ok(GemmKernel::Subgroup);
        }
        let bad = || Error::Config(format!("GEMM kernel {s:?}: expected `subgroup` or `tiled RxCxD`"));
        let dims: Vec<u32> = s
            .strip_prefix("tiled ")
            .ok_or_else(bad)?
            .split('x')
            .map(|d| d.parse().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        match dims[..] {
            [r, c, depth] if r % 8 == 0 && c % 8 == 0 => {
                let tile = GemmTile {
                    wg_m: r / 8,
                    wg_n: c / 8,
                    depth,
                };
                if tile.is_valid() {
                    Ok(GemmKernel::Tiled(tile))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

/// A wgpu device and queue plus what the kernels share: cached pipelines and the profiler.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    info: Option<wgpu::AdapterInfo>,
    tuning: Tuning,
    /// Compute pipelines by the hash of their `PipelineKey`, each with its owned key.
    pipelines: Mutex<HashMap<u64, Vec<(OwnedPipelineKey, wgpu::ComputePipeline)>>>,
    profiler: Mutex<Option<Profiler>>,
    /// The first error the device reported since the last read-back (devices this crate
    /// created only; a host's device keeps the host's error handling).
    device_error: Arc<Mutex<Option<String>>>,
    created: Counters,
    /// The step plan being recorded into (`record_planned`), if any.
    active_plan: Mutex<Option<plan::ActivePlan>>,
    /// The compute pass a planned recording's dispatches go into, while it is open.
    open_pass: Mutex<Option<OpenPass>>,
    /// Read-back staging buffers, reused.
    staging: Mutex<Vec<wgpu::Buffer>>,
    /// Bound where a kernel's optional output is absent (`unused_output`).
    unused_output: std::sync::OnceLock<wgpu::Buffer>,
    /// Bound where a kernel's optional input is absent (`unused_input`).
    unused_input: std::sync::OnceLock<wgpu::Buffer>,
    /// The linear layers' arithmetic (`set_gemm_precision`).
    gemm_precision: GemmPrecision,
    /// The matrix units' configuration, where the adapter has them and this `Gpu` enabled them.
    matrix: Option<MatrixConfig>,
    /// The GEMM kernel the timed trial chose for this device, once asked
    /// (`kernels::linear::choice::kernel`; cleared by `set_tuning`).
    pub(crate) timed_gemm: std::sync::OnceLock<GemmKernel>,
    /// Threads of a CPU adapter pinned to one CPU each (`cpu_threads`; Linux).
    pinned_threads: Vec<i32>,
}

/// A compute pass that outlives the borrow of its encoder (the encoder stays locked until it
/// ends, when this is dropped).
struct OpenPass {
    pass: wgpu::ComputePass<'static>,
}

/// What a `Gpu` has created and recorded since it was made: the counting wrapper around the
/// device that shows whether a step allocates (every buffer and bind group of this crate is
/// created through `Gpu`, every dispatch recorded through `Gpu::run`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub buffers: u64,
    pub bind_groups: u64,
    pub dispatches: u64,
}

impl Counts {
    /// Each count divided by `n` (per step of `n` steps).
    pub fn per(self, n: u64) -> Counts {
        let n = n.max(1);
        Counts {
            buffers: self.buffers / n,
            bind_groups: self.bind_groups / n,
            dispatches: self.dispatches / n,
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            buffers: self.buffers - o.buffers,
            bind_groups: self.bind_groups - o.bind_groups,
            dispatches: self.dispatches - o.dispatches,
        }
    }
}

#[derive(Default)]
struct Counters {
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    dispatches: AtomicU64,
}

/// What identifies a compute pipeline: the shader's name, the entry point and the override
/// constants. Looked up without allocating (by hash, then compared with the owned copy).
#[derive(Clone, Copy, Debug)]
struct PipelineKey<'a> {
    name: &'a str,
    entry: &'a str,
    constants: &'a [(&'a str, f64)],
}

impl PipelineKey<'_> {
    fn hash64(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut h);
        self.entry.hash(&mut h);
        for (k, v) in self.constants {
            k.hash(&mut h);
            v.to_bits().hash(&mut h);
        }
        h.finish()
    }

    fn to_owned(self) -> OwnedPipelineKey {
        OwnedPipelineKey {
            name: self.name.to_string(),
            entry: self.entry.to_string(),
            constants: self
                .constants
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_bits()))
                .collect(),
        }
    }
}

struct OwnedPipelineKey {
    name: String,
    entry: String,
    constants: Vec<(String, u64)>,
}

impl OwnedPipelineKey {
    fn is(&self, k: &PipelineKey) -> bool {
        self.name == k.name
            && self.entry == k.entry
            && self.constants.len() == k.constants.len()
            && self
                .constants
                .iter()
                .zip(k.constants)
                .all(|((a, x), (b, y))| a == b && *x == y.to_bits())
    }
}

/// A short description of an adapter, as `memlayers info` prints it.
pub fn describe_adapter(adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    let l = adapter.limits();
    format!(
        "{} ({:?}, {:?}, driver {} {})\n  limits: max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
storage buffers/stage {}, invocations/workgroup {}, workgroup storage {} B, workgroups/dim {}\n  features: {:?}",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_storage_size,
        l.max_compute_workgroups_per_dimension,
        adapter.features()
    )
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter this machine offers (honouring `WGPU_BACKEND`).
#[cfg(not(target_arch = "wasm32"))]
pub async fn all_adapters() -> Vec<wgpu::Adapter> {
    instance()
        .enumerate_adapters(wgpu::Backends::all().with_env())
        .await
}

fn check_adapter(adapter: &wgpu::Adapter) -> Result<()> {
    let l = adapter.limits();
    let mut missing = Vec::new();
    if l.max_storage_buffers_per_shader_stage < REQUIRED_STORAGE_BUFFERS {
        missing.push(format!(
            "{REQUIRED_STORAGE_BUFFERS} storage buffers per stage (has {})",
            l.max_storage_buffers_per_shader_stage
        ));
    }
    if l.max_compute_invocations_per_workgroup < REQUIRED_INVOCATIONS {
        missing.push(format!(
            "{REQUIRED_INVOCATIONS} invocations per workgroup (has {})",
            l.max_compute_invocations_per_workgroup
        ));
    }
    if l.max_compute_workgroup_storage_size < REQUIRED_WORKGROUP_STORAGE {
        missing.push(format!(
            "{REQUIRED_WORKGROUP_STORAGE} B of workgroup storage (has {})",
            l.max_compute_workgroup_storage_size
        ));
    }
    if l.max_compute_workgroups_per_dimension < MAX_GRID_DIM {
        missing.push(format!(
            "{MAX_GRID_DIM} workgroups per dimension (has {})",
            l.max_compute_workgroups_per_dimension
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Adapter(format!(
            "`{}` cannot run memlayers kernels: needs {}",
            adapter.get_info().name,
            missing.join(", ")
        )))
    }
}

impl Gpu {
    /// Picks the best adapter (honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`) and creates a
    /// device with the limits the kernels need, raising the binding and buffer sizes to what
    /// the adapter offers so large value tables split into as few buffers as possible.
    pub async fn new() -> Result<Self> {
        #[cfg(target_os = "linux")]
        let threads_before = cpu_threads::thread_ids();
        let instance = instance();
        let adapter = Self::choose_adapter(&instance).await?;
        check_adapter(&adapter)?;
        let a = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: REQUIRED_STORAGE_BUFFERS,
            max_compute_invocations_per_workgroup: REQUIRED_INVOCATIONS,
            max_compute_workgroup_size_x: REQUIRED_INVOCATIONS,
            max_compute_workgroup_storage_size: REQUIRED_WORKGROUP_STORAGE,
            max_compute_workgroups_per_dimension: MAX_GRID_DIM,
            max_storage_buffer_binding_size: a.max_storage_buffer_binding_size,
            max_buffer_size: a.max_buffer_size,
            ..wgpu::Limits::downlevel_defaults()
        }
        .using_alignment(a.clone());
        // Optional: timestamp queries (only the benchmark uses them) and subgroups (kernel
        // variants that have a fallback); cooperative matrices (and f16 for them) where the
        // matrix-unit GEMM can run, which it does only under `GemmPrecision::F16Inputs`.
        let info = adapter.get_info();
        let matrix = MatrixConfig::pick(
            &adapter.cooperative_matrix_properties(),
            adapter.features(),
            &info,
        );
        let mut required_features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        if let Some(m) = matrix {
            required_features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            if m.f16_inputs {
                required_features |= wgpu::Features::SHADER_F16;
            }
        }
        let request = |features: wgpu::Features, experimental: bool| {
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("memlayers"),
                required_features: features,
                required_limits: required_limits.clone(),
                // Safety: the one experimental feature ever requested is cooperative
                // matrices, used by one kernel (`linear_matrix.wgsl`), only when the caller
                // asks for f16-input GEMMs; the GPU check tests it against the oracle.
                experimental_features: if experimental {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
        };
        // A device with the matrix units if the adapter grants them, else one without.
        let mut matrix = matrix;
        let granted = match matrix {
            Some(_) => request(required_features, true).await.ok(),
            None => None,
        };
        let (device, queue) = match granted {
            Some(pair) => pair,
            None => {
                matrix = None;
                request(
                    required_features
                        - (wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16),
                    false,
                )
                .await
                .map_err(|e| Error::Device(format!("request_device failed: {e}")))?
            }
        };
        let mut gpu = Self::from_device(device, queue);
        // Validation errors become `Error::Device` at the next read-back instead of a panic
        // (native wgpu's default) or a console warning and silently skipped work (browsers).
        let first_error = gpu.device_error.clone();
        gpu.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = first_error.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        #[cfg(target_os = "linux")]
        if info.device_type == wgpu::DeviceType::Cpu && cpu_threads::enabled() {
            let started = cpu_threads::started_unnamed(&threads_before, &cpu_threads::thread_ids());
            gpu.pinned_threads = cpu_threads::spread(&started);
            log::debug!(
                "pinned the adapter's threads {:?} to one CPU each",
                gpu.pinned_threads
            );
        }
        gpu.tuning = Tuning::for_adapter(&info);
        gpu.info = Some(info);
        gpu.matrix = matrix;
        Ok(gpu)
    }

    /// Blocking `new` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
            let wanted = wanted.to_lowercase();
            let adapters = instance
                .enumerate_adapters(wgpu::Backends::all().with_env())
                .await;
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            return adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                .ok_or_else(|| {
                    Error::Adapter(format!(
                        "WGPU_ADAPTER_NAME={wanted} matches none of the adapters {names:?}"
                    ))
                });
        }
        instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Adapter(format!("{NO_ADAPTER_HELP} ({e})")))
    }

    /// Wraps a device and queue that a host application created. The device must have been
    /// created with at least WebGPU's default compute limits (`wgpu::Limits::default()`).
    /// Kernel variants default to the GPU ones; see `set_tuning`.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Gpu {
            device,
            queue,
            info: None,
            tuning: Tuning::GPU,
            pipelines: Mutex::new(HashMap::new()),
            profiler: Mutex::new(None),
            device_error: Arc::new(Mutex::new(None)),
            created: Counters::default(),
            active_plan: Mutex::new(None),
            open_pass: Mutex::new(None),
            staging: Mutex::new(Vec::new()),
            unused_output: std::sync::OnceLock::new(),
            unused_input: std::sync::OnceLock::new(),
            gemm_precision: GemmPrecision::F32,
            matrix: None,
            timed_gemm: std::sync::OnceLock::new(),
            pinned_threads: Vec::new(),
        }
    }

    /// The threads a CPU adapter started for this device that were pinned to one CPU each,
    /// in creation order (`gpu::cpu_threads`; Linux only, else empty).
    pub fn pinned_threads(&self) -> &[i32] {
        &self.pinned_threads
    }

    /// A small storage buffer, made once, to bind where a kernel's optional output is
    /// absent (the kernel then never writes it): a writable binding needs a buffer that no
    /// other binding of the dispatch uses.
    pub fn unused_output(&self) -> &wgpu::Buffer {
        self.unused_output.get_or_init(|| {
            self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused optional output"),
                size: 16,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        })
    }

    /// Buffers and bind groups created and dispatches recorded so far.
    /// A 16-byte storage buffer, made once, to bind where a kernel's optional input is
    /// absent or too small for its view (the kernel then never reads it).
    pub fn unused_input(&self) -> &wgpu::Buffer {
        self.unused_input.get_or_init(|| {
            self.create_buffer(&wgpu::BufferDescriptor {
                label: Some("unused optional input"),
                size: 16,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            buffers: self.created.buffers.load(Ordering::Relaxed),
            bind_groups: self.created.bind_groups.load(Ordering::Relaxed),
            dispatches: self.created.dispatches.load(Ordering::Relaxed),
        }
    }

    /// The one way kernels dispatch: `pipeline` over `grid` workgroups with `bind` as bind
    /// group 0, counted; in a compute pass of its own (timed under `label` when profiling), or
    /// inside `record_planned` in the recording's open pass.
    pub fn run(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        bind: &wgpu::BindGroup,
        grid: (u32, u32, u32),
    ) {
        self.run_groups(encoder, label, pipeline, &[bind], grid)
    }

    /// `run` with bind groups 0, 1, ... in order.
    pub fn run_groups(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        binds: &[&wgpu::BindGroup],
        grid: (u32, u32, u32),
    ) {
        self.with_pass(encoder, label, |pass| {
            pass.set_pipeline(pipeline);
            for (i, b) in binds.iter().enumerate() {
                pass.set_bind_group(i as u32, *b, &[]);
            }
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        });
        self.created.dispatches.fetch_add(1, Ordering::Relaxed);
    }

    /// One dispatch of `pipeline` over `grid` per bind group (group 0), in one pass: a kernel
    /// over a table split across buffers.
    pub fn run_each(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        binds: &[wgpu::BindGroup],
        grid: (u32, u32, u32),
    ) {
        self.with_pass(encoder, label, |pass| {
            pass.set_pipeline(pipeline);
            for bind in binds {
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, grid.2);
            }
        });
        self.created
            .dispatches
            .fetch_add(binds.len() as u64, Ordering::Relaxed);
    }

    /// Runs `f` on a compute pass: inside `record_planned` (and not profiling), the
    /// recording's one open pass, so that a step's dispatches share passes (wgpu places the
    /// barriers between them); otherwise a pass of its own, timed under `label` when
    /// profiling.
    fn with_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        f: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) {
        let merge = self.profiler.lock().unwrap().is_none()
            && self
                .active_plan
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|p| p.serves_this_thread());
        if !merge {
            let mut pass = self.begin_pass(encoder, label);
            f(&mut pass);
            return;
        }
        let mut open = self.open_pass.lock().unwrap();
        let pass = open.get_or_insert_with(|| OpenPass {
            pass: encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime(),
        });
        f(&mut pass.pass);
    }

    /// Ends the open pass of a planned recording, if any, so that `encoder` takes other
    /// commands again.
    pub(crate) fn end_open_pass(&self) {
        self.open_pass.lock().unwrap().take();
    }

    /// `encoder.copy_buffer_to_buffer`, after ending a planned recording's open pass: code
    /// that records into a plan copies through this.
    pub fn copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (src, src_offset): (&wgpu::Buffer, u64),
        (dst, dst_offset): (&wgpu::Buffer, u64),
        bytes: u64,
    ) {
        self.end_open_pass();
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// `encoder.clear_buffer` (all of `buffer`), after ending a planned recording's open pass.
    pub fn clear(&self, encoder: &mut wgpu::CommandEncoder, buffer: &wgpu::Buffer) {
        self.end_open_pass();
        encoder.clear_buffer(buffer, 0, None);
    }

    /// Creates a buffer, counted.
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        self.created.buffers.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    fn create_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor) -> wgpu::Buffer {
        self.created.buffers.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer_init(desc)
    }

    /// The first error the device reported since the last call, as an `Error::Device`.
    /// Every read-back calls this, so results computed by rejected work never come back
    /// looking valid.
    /// Whether the device reported an error that no read-back has taken yet.
    pub(crate) fn device_error_pending(&self) -> bool {
        self.device_error.lock().unwrap().is_some()
    }

    pub fn take_device_error(&self) -> Result<()> {
        match self.device_error.lock().unwrap().take() {
            Some(e) => Err(Error::Device(format!("the GPU rejected work: {e}"))),
            None => Ok(()),
        }
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Fewest lanes a subgroup can have on this device: 0 when the device lacks the
    /// `subgroups` feature, or when its adapter is unknown (a host's device).
    pub fn subgroup_min_size(&self) -> u32 {
        match &self.info {
            Some(info) if self.device.features().contains(wgpu::Features::SUBGROUP) => info.subgroup_min_size,
            _ => 0,
        }
    }

    /// Whether this device can run `linear_subgroup.wgsl`: subgroups of at least 8 lanes.
    pub fn has_subgroup_gemm(&self) -> bool {
        self.subgroup_min_size() >= 8
    }

    /// The linear layers' arithmetic: `F32` (the default, exact) or `F16Inputs` (matrix units
    /// where the adapter has them).
    pub fn set_gemm_precision(&mut self, precision: GemmPrecision) {
        self.gemm_precision = precision;
    }

    pub fn gemm_precision(&self) -> GemmPrecision {
        self.gemm_precision
    }

    /// The matrix units' configuration the f16-input GEMM runs on, if this device has one.
    pub fn matrix_config(&self) -> Option<MatrixConfig> {
        self.matrix
    }

    /// Overrides the per-adapter kernel variants (e.g. a host app that knows its device is a
    /// CPU implementation).
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
        self.timed_gemm = std::sync::OnceLock::new();
    }

    /// The adapter's description, when this `Gpu` chose the adapter itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.info.as_ref()
    }

    pub fn adapter_name(&self) -> String {
        self.info
            .as_ref()
            .map(|i| format!("{} ({:?})", i.name, i.backend))
            .unwrap_or_else(|| "host-provided device".into())
    }

    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Largest storage binding, capped at what a buffer can hold.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.device.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }

    /// A compute pipeline for `source` (entry point `main`), built once per (name, constants).
    pub fn pipeline(&self, name: &str, source: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
        self.pipeline_entry(name, source, "main", constants)
    }

    /// A compute pipeline for entry point `entry` of `source`, built once per
    /// (name, entry, constants). Bind group 0's layout is derived from what the entry uses.
    pub fn pipeline_entry(
        &self,
        name: &str,
        source: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = PipelineKey {
            name,
            entry,
            constants,
        };
        let hash = key.hash64();
        let mut cache = self.pipelines.lock().unwrap();
        if let Some((_, p)) = cache.get(&hash).and_then(|v| v.iter().find(|(k, _)| k.is(&key))) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            });
        cache
            .entry(hash)
            .or_default()
            .push((key.to_owned(), pipeline.clone()));
        pipeline
    }

    /// A bind group for group 0 of `pipeline` with `buffers` at bindings 0, 1, 2, ...
    pub fn bind(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let numbered: Vec<(u32, &wgpu::Buffer)> =
            buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        self.bind_at(pipeline, &numbered)
    }

    /// A bind group for group 0 of `pipeline` with each buffer at its binding number (for
    /// entry points that use only some of a module's bindings).
    pub fn bind_at(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        self.bind_group(pipeline, 0, buffers)
    }

    /// A bind group for group `group` of `pipeline`, each buffer at its binding number.
    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        group: u32,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        self.planned(
            |plan| plan.bind_group(pipeline, group, buffers),
            || {
                let layout = pipeline.get_bind_group_layout(group);
                let entries: Vec<wgpu::BindGroupEntry> = buffers
                    .iter()
                    .map(|(binding, b)| wgpu::BindGroupEntry {
                        binding: *binding,
                        resource: b.as_entire_binding(),
                    })
                    .collect();
                self.created.bind_groups.fetch_add(1, Ordering::Relaxed);
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &entries,
                })
            },
            |plan, bind| {
                let key = plan::BindKey {
                    pipeline: pipeline.clone(),
                    group,
                    entries: buffers.iter().map(|(i, b)| (*i, (*b).clone())).collect(),
                };
                plan.keep_bind_group(key, bind);
            },
        )
    }

    /// What this thread's active step plan (if any) hands out for the next request
    /// (`reuse`); else a new object (`create`), which the plan keeps for later recordings
    /// (`keep`).
    fn planned<T>(
        &self,
        reuse: impl FnOnce(&mut plan::ActivePlan) -> Option<T>,
        create: impl FnOnce() -> T,
        keep: impl FnOnce(&mut plan::ActivePlan, &T),
    ) -> T {
        let mut guard = self.active_plan.lock().unwrap();
        let mut active = guard.as_mut().filter(|p| p.serves_this_thread());
        if let Some(reused) = active.as_mut().and_then(|plan| reuse(plan)) {
            return reused;
        }
        let created = create();
        if let Some(plan) = active {
            keep(plan, &created);
        }
        created
    }

    /// A storage buffer holding `data` (usable as kernel input and output, and copyable).
    /// Inside `record_planned`, the plan's buffer for this request, with `data` written to it.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        // A zero-length binding is invalid: keep at least one word.
        let contents: Vec<u8>;
        let contents = if bytes.len() < 4 {
            contents = vec![0u8; 4];
            &contents[..]
        } else {
            bytes
        };
        self.planned(
            |plan| plan.upload(&self.queue, contents),
            || {
                self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: STORAGE_USAGE,
                })
            },
            |plan, buffer| plan.keep_buffer(buffer, Some(contents), false),
        )
    }

    /// A zeroed storage buffer of `bytes` bytes (at least 4). Inside `record_planned`, the
    /// plan's buffer for this request, cleared at the start of the recording.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.storage_buffer(label, bytes, true)
    }

    /// A storage buffer of `bytes` bytes that the caller writes in full before reading it.
    /// Fresh buffers are zero; inside `record_planned`, the plan's buffer for this request
    /// holds what the last recording left in it (and costs no clearing).
    pub fn scratch(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.storage_buffer(label, bytes, false)
    }

    fn storage_buffer(&self, label: &str, bytes: u64, zeroed: bool) -> wgpu::Buffer {
        let size = bytes.max(4).next_multiple_of(4);
        self.planned(
            |plan| plan.storage(size, zeroed),
            || {
                self.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                })
            },
            |plan, buffer| plan.keep_buffer(buffer, None, zeroed),
        )
    }

    /// A uniform buffer holding one parameter block. Inside `record_planned`, the plan's
    /// buffer for this request, rewritten when the block changed.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, params: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(params);
        self.planned(
            |plan| plan.uniform(&self.queue, bytes),
            || {
                self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                })
            },
            |plan, buffer| plan.keep_uniform(buffer, bytes),
        )
    }

    /// Begins a compute pass; when profiling is on, the pass is timed under `label`.
    pub fn begin_pass<'e>(
        &self,
        encoder: &'e mut wgpu::CommandEncoder,
        label: &'static str,
    ) -> wgpu::ComputePass<'e> {
        let mut guard = self.profiler.lock().unwrap();
        let writes = guard.as_mut().and_then(|p| p.next_writes(label));
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: writes,
        })
    }

    /// Turns on per-pass GPU timing for up to `passes` passes. Errors when the adapter has no
    /// timestamp queries.
    pub fn start_profiling(&self, passes: u32) -> Result<()> {
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Adapter("this adapter has no timestamp queries".into()));
        }
        *self.profiler.lock().unwrap() = Some(Profiler::new(&self.device, passes));
        Ok(())
    }

    /// Stops profiling and returns the time of every recorded pass, in recording order.
    pub async fn finish_profiling(&self) -> Result<Vec<KernelTiming>> {
        let profiler = self.profiler.lock().unwrap().take();
        match profiler {
            Some(p) => p.read(self).await,
            None => Ok(Vec::new()),
        }
    }
}

/// A 2-D grid of `n` workgroups (x * y >= n), for counts beyond one dimension's limit.
/// Kernels recover the linear index as `wg.y * num_workgroups.x + wg.x` and skip the excess.
pub fn grid(n: u32) -> (u32, u32) {
    if n == 0 {
        return (0, 0);
    }
    let x = n.min(MAX_GRID_DIM);
    (x, n.div_ceil(x))
}
