//! The linear layers' kernel variants and arithmetic: which kernel (subgroup, a tile shape,
//! narrow, matrix units) and which precision (exact f32, or f16 inputs on matrix units).

use crate::error::{Error, Result};
use crate::gpu::{REQUIRED_INVOCATIONS, REQUIRED_WORKGROUP_STORAGE};

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
