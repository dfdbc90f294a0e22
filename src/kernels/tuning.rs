//! The kernels' variants chosen per adapter: which top-k, bag, attention, norm, sort,
//! cross-entropy and GEMM kernels run. Results never depend on them (tests check this);
//! only speed does (`docs/performance.md` has the measurements behind each default).

use super::linear::{GemmKernel, GemmTile};
use crate::error::{Error, Result};

/// Kernel variants chosen per adapter. Results never depend on them (tests check this); only
/// speed does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Invocations per workgroup of the product top-k (64 on GPUs; 8 on CPU adapters such as
    /// lavapipe and SwiftShader, where every barrier cycles through the workgroup's SIMD
    /// batches).
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
    /// more loads in flight), 4 on CPU adapters (fewer rereads of each entry's slot).
    pub bag_columns_per_invocation: u32,
    /// Attention with one invocation per row (`attention_rows.wgsl`) where the shape allows,
    /// instead of a workgroup per row: on CPU adapters the workgroup variant spends its time
    /// in barriers and idle lanes.
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
    /// for CPU adapters, where compiling the candidates alone takes about a minute and the
    /// subgroup kernel is the fastest (`memlayers bench` times them all).
    pub gemm_trial: bool,
    /// The largest workgroup among the GEMM tiles the trial considers: 256 (WebGPU's limit)
    /// except on Mesa's GL llvmpipe, where a 256-invocation tile does not finish.
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

impl Tuning {
    /// `self` with `overrides` applied: comma-separated items, each `cpu` or `gpu` (that whole
    /// set) or `field=value` with a field's own name (`topk_workgroup=8`, `attention_rows=1`,
    /// `gemm=subgroup`, `gemm=tiled 64x64x8`; booleans as 0 or 1): the same names in Rust, in
    /// the page (`?variants=`) and in the docs.
    pub fn with_overrides(mut self, overrides: &str) -> Result<Tuning> {
        for item in overrides.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                Error::Config(format!(
                    "kernel variants: cannot read {item:?} (cpu, gpu, or field=value with a field of Tuning: {})",
                    Self::FIELDS.join(", ")
                ))
            };
            let (key, value) = match item.split_once('=') {
                None if item == "cpu" => {
                    self = Tuning::CPU;
                    continue;
                }
                None if item == "gpu" => {
                    self = Tuning::GPU;
                    continue;
                }
                None => return Err(bad()),
                Some((k, v)) => (k.trim(), v.trim()),
            };
            if key == "gemm" {
                self.gemm = value.parse().map_err(|_| bad())?;
                continue;
            }
            let n: u32 = value.parse().map_err(|_| bad())?;
            let flag = n != 0;
            match key {
                "topk_workgroup" => self.topk_workgroup = n,
                "topk_per_invocation" => self.topk_per_invocation = flag,
                "bag_workgroup" => self.bag_workgroup = n,
                "bag_columns_per_invocation" => self.bag_columns_per_invocation = n,
                "attention_rows" => self.attention_rows = flag,
                "attention_lanes" => self.attention_lanes = flag,
                "gemm_trial" => self.gemm_trial = flag,
                "gemm_max_invocations" => self.gemm_max_invocations = n,
                "gemm_narrow_rows" => self.gemm_narrow_rows = n,
                "norm_rows" => self.norm_rows = flag,
                "bag_rows" => self.bag_rows = flag,
                "split_k" => self.split_k = flag,
                "value_grad_quads" => self.value_grad_quads = flag,
                "sort_per_invocation" => self.sort_per_invocation = flag,
                "cross_entropy_rows" => self.cross_entropy_rows = flag,
                "scatter_workgroups" => self.scatter_workgroups = n,
                _ => return Err(bad()),
            }
        }
        Ok(self)
    }

    /// Every field's name, as `with_overrides` reads them.
    pub const FIELDS: [&'static str; 17] = [
        "topk_workgroup",
        "topk_per_invocation",
        "bag_workgroup",
        "bag_columns_per_invocation",
        "attention_rows",
        "attention_lanes",
        "gemm",
        "gemm_trial",
        "gemm_max_invocations",
        "gemm_narrow_rows",
        "norm_rows",
        "bag_rows",
        "split_k",
        "value_grad_quads",
        "sort_per_invocation",
        "cross_entropy_rows",
        "scatter_workgroups",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_use_the_field_names() {
        let t = Tuning::GPU
            .with_overrides("cpu, topk_workgroup=16, attention_rows=0, gemm=tiled 64x64x8")
            .unwrap();
        assert_eq!(t.topk_workgroup, 16);
        assert!(!t.attention_rows);
        assert_eq!(t.gemm, GemmKernel::Tiled(GemmTile::DEFAULT));
        assert_eq!(t.bag_workgroup, Tuning::CPU.bag_workgroup);
        for bad in ["topk_wg=8", "fast", "attention_rows=yes", "gemm=big"] {
            assert!(Tuning::GPU.with_overrides(bad).is_err(), "{bad}");
        }
    }
}
