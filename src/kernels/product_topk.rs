//! `product_topk.wgsl`: from the sub-key scores of both halves, the top-k of each half, the
//! top-k of the k x k products in rank order, and their softmax. Two kernels with the same
//! results bit for bit: one workgroup per (token, head) (`product_topk.wgsl`, for GPUs), or
//! one invocation per (token, head) (`product_topk_lanes.wgsl`, for CPU adapters).

use super::{check_buffer, check_loop_budget, LOOP_BUDGET};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const SOURCE: &str = concat!(
    include_str!("../../shaders/product_topk_common.wgsl"),
    include_str!("../../shaders/product_topk.wgsl")
);
pub const LANES_SOURCE: &str = concat!(
    include_str!("../../shaders/product_topk_common.wgsl"),
    include_str!("../../shaders/product_topk_lanes.wgsl")
);

/// The line of `LANES_SOURCE` that sizes its private arrays, replaced per knn.
const LANES_MAX_K_LINE: &str = "const MAX_K: u32 = 128u;";
/// Invocations per workgroup of the per-invocation kernel (its `INVOCATIONS`).
const LANES_WORKGROUP: u32 = 64;

/// Which kernel runs the top-k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopKKernel {
    /// The adapter's tuning: one invocation per (token, head) where `Tuning::topk_per_invocation`
    /// says so and its loops fit the budget; otherwise workgroups of `Tuning::topk_workgroup`
    /// invocations, widened when the loop budget needs it.
    Auto,
    /// One workgroup of this many invocations (1..=256) per (token, head).
    Workgroup(u32),
    /// One invocation per (token, head); refused when its loops exceed the budget.
    PerInvocation,
}

/// `LANES_SOURCE` with its arrays sized for `knn`, and a pipeline name to match.
fn lanes_source(knn: u32) -> (String, String) {
    let cap = knn.next_power_of_two().clamp(4, MAX_KNN);
    let source = LANES_SOURCE.replacen(LANES_MAX_K_LINE, &format!("const MAX_K: u32 = {cap}u;"), 1);
    (source, format!("product_topk_lanes{cap}"))
}

/// Upper bound on the per-invocation kernel's loop iterations for its forward (following the
/// WGSL: every offer may sift through the heap's depth, heapsort sifts k times).
pub fn lanes_loop_iterations(n_keys: u32, knn: u32) -> u64 {
    let (n, k) = (n_keys as u64, knn as u64);
    let depth = 64 - k.leading_zeros() as u64 + 1; // sift steps per offer, at most
    let select = |n: u64| n * (1 + depth) + k * (1 + depth);
    let pairs = candidate_pairs(knn) as u64;
    2 * (select(n) + k) + k + pairs + select(pairs) + 2 * k
}

/// Upper bound on the per-invocation backward's loop iterations.
fn lanes_backward_iterations(knn: u32) -> u64 {
    let k = knn as u64;
    2 * k + k * (k + 1) + k
}

/// Largest knn the kernel's workgroup arrays hold.
pub const MAX_KNN: u32 = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    heads: u32,
    n_keys: u32,
    knn: u32,
    row0: u32,
    _pad: [u32; 3],
}

/// Candidate pairs the product step ranks: sum over a < knn of knn / (a + 1).
pub fn candidate_pairs(knn: u32) -> u32 {
    (1..=knn).map(|a| knn / a).sum()
}

/// The shader's workgroup array sizes for `knn` (MAX_K, MAX_PAIRS), and the workgroup size,
/// as pipeline constants: arrays just large enough, in few distinct pipelines.
fn constants(knn: u32, wg: u32) -> [(&'static str, f64); 3] {
    let cap = knn.next_power_of_two().clamp(4, MAX_KNN);
    [
        ("WG", wg as f64),
        ("MAX_K", cap as f64),
        ("MAX_PAIRS", candidate_pairs(cap).next_multiple_of(4) as f64),
    ]
}

/// Upper bound on one invocation's loop iterations (see `LOOP_BUDGET`), following the WGSL.
pub fn loop_iterations(n_keys: u32, knn: u32, wg: u32) -> u64 {
    let (k, wg) = (knn as u64, wg as u64);
    let per = |n: u64| n.div_ceil(wg);
    let select = |n: u64| 8 * (per(256) + per(n) + 16 * per(16) + 32) + per(n) + per(k) * k;
    let pairs = candidate_pairs(knn) as u64;
    2 * select(n_keys as u64) + select(pairs) + 2 * per(k) + k + per(pairs) * (1 + k) + k + per(k)
}

/// The workgroup size to use: `preferred`, doubled until the loop budget holds (large n_keys
/// on CPU adapters), or an error when even 256 does not.
pub fn workgroup_for(n_keys: u32, knn: u32, preferred: u32) -> Result<u32> {
    let mut wg = preferred.clamp(1, 256);
    while loop_iterations(n_keys, knn, wg) > LOOP_BUDGET && wg < 256 {
        wg = (wg * 2).min(256);
    }
    check_loop_budget(
        "product top-k",
        loop_iterations(n_keys, knn, wg),
        &format!("n_keys = {n_keys}, knn = {knn}"),
    )?;
    Ok(wg)
}

/// `scores [rows, heads, 2, n_keys]` for rows `row0 .. row0 + rows` of the outputs
/// `indices` (u32), `out_scores`, `weights`, each `[total rows, heads, knn]`.
pub struct ProductTopK<'a> {
    pub rows: u32,
    pub row0: u32,
    pub heads: u32,
    pub n_keys: u32,
    pub knn: u32,
    pub scores: &'a wgpu::Buffer,
    pub indices: &'a wgpu::Buffer,
    pub out_scores: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    /// Which kernel, and its workgroup size; results do not depend on it.
    pub kernel: TopKKernel,
}

impl ProductTopK<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if self.rows == 0 || self.heads == 0 || self.knn == 0 || self.knn > MAX_KNN || self.knn > self.n_keys
        {
            return Err(Error::Config(format!(
                "product top-k: need rows, heads > 0 and 1 <= knn <= min({MAX_KNN}, n_keys); found rows {} heads {} \
knn {} n_keys {}",
                self.rows, self.heads, self.knn, self.n_keys
            )));
        }
        let items = self.rows as u64 * self.heads as u64;
        if items > u32::MAX as u64 {
            return Err(Error::Config(format!(
                "product top-k: {items} (row, head) pairs is too many"
            )));
        }
        check_buffer(gpu, "sub-key scores", self.scores, items * 2 * self.n_keys as u64)?;
        let outputs = (self.row0 as u64 + self.rows as u64) * self.heads as u64 * self.knn as u64;
        check_buffer(gpu, "lookup.indices", self.indices, outputs)?;
        check_buffer(gpu, "lookup.scores", self.out_scores, outputs)?;
        check_buffer(gpu, "lookup.weights", self.weights, outputs)?;
        let tuning = gpu.tuning();
        let lanes_fit = lanes_loop_iterations(self.n_keys, self.knn) <= LOOP_BUDGET;
        let kernel = match self.kernel {
            TopKKernel::Auto if tuning.topk_per_invocation && lanes_fit => TopKKernel::PerInvocation,
            TopKKernel::Auto => {
                TopKKernel::Workgroup(workgroup_for(self.n_keys, self.knn, tuning.topk_workgroup)?)
            }
            TopKKernel::Workgroup(wg) if (1..=256).contains(&wg) => {
                let what = format!("n_keys = {}, knn = {}, workgroup {wg}", self.n_keys, self.knn);
                check_loop_budget("product top-k", loop_iterations(self.n_keys, self.knn, wg), &what)?;
                self.kernel
            }
            TopKKernel::Workgroup(wg) => {
                return Err(Error::Config(format!(
                    "product top-k: workgroup size {wg} not in 1..=256"
                )))
            }
            TopKKernel::PerInvocation => {
                let what = format!(
                    "n_keys = {}, knn = {}, one invocation each",
                    self.n_keys, self.knn
                );
                check_loop_budget(
                    "product top-k",
                    lanes_loop_iterations(self.n_keys, self.knn),
                    &what,
                )?;
                self.kernel
            }
        };
        let (pipeline, groups) = match kernel {
            TopKKernel::Workgroup(wg) => (
                gpu.pipeline("product_topk", SOURCE, &constants(self.knn, wg)),
                items as u32,
            ),
            _ => {
                let (source, name) = lanes_source(self.knn);
                // Up to 16 best kept in registers (`main_registers`), else heaps.
                let entry = if self.knn <= 16 { "main_registers" } else { "main" };
                (
                    gpu.pipeline_entry(&name, &source, entry, &[]),
                    (items as u32).div_ceil(LANES_WORKGROUP),
                )
            }
        };
        let params = gpu.uniform(
            "product top-k params",
            &Params {
                rows: self.rows,
                heads: self.heads,
                n_keys: self.n_keys,
                knn: self.knn,
                row0: self.row0,
                _pad: [0; 3],
            },
        );
        let bind = gpu.bind(
            &pipeline,
            &[&params, self.scores, self.indices, self.out_scores, self.weights],
        );
        let (x, y) = grid(groups);
        gpu.run(encoder, "product_topk", &pipeline, &bind, (x, y, 1));
        Ok(())
    }
}

/// Backward of the softmax and the product sums for rows `row0 .. row0 + rows`: from the
/// forward's `indices` and `weights` and `grad_weights` (dL/dw, all `[total rows, heads,
/// knn]`), writes the sub-key score gradient `grad_scores [rows, heads, 2, n_keys]` at the
/// selected sub-keys. The caller zeroes `grad_scores` first.
pub struct ProductTopKBackward<'a> {
    pub rows: u32,
    pub row0: u32,
    pub heads: u32,
    pub n_keys: u32,
    pub knn: u32,
    pub indices: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    pub grad_weights: &'a wgpu::Buffer,
    pub grad_scores: &'a wgpu::Buffer,
}

impl ProductTopKBackward<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let items = self.rows as u64 * self.heads as u64;
        if items == 0 || items > u32::MAX as u64 || self.knn == 0 || self.knn > MAX_KNN {
            return Err(Error::Config(format!(
                "product top-k backward: rows {} heads {} knn {}",
                self.rows, self.heads, self.knn
            )));
        }
        let k = self.knn as u64;
        let tuning = gpu.tuning();
        let per_invocation = tuning.topk_per_invocation;
        let wg = tuning.topk_workgroup;
        let iterations = if per_invocation {
            lanes_backward_iterations(self.knn)
        } else {
            3 * k.div_ceil(wg as u64) * k + k
        };
        check_loop_budget("product top-k backward", iterations, "knn")?;
        let outputs = (self.row0 as u64 + self.rows as u64) * self.heads as u64 * k;
        check_buffer(gpu, "lookup.indices", self.indices, outputs)?;
        check_buffer(gpu, "lookup.weights", self.weights, outputs)?;
        check_buffer(gpu, "grad weights", self.grad_weights, outputs)?;
        check_buffer(
            gpu,
            "grad sub-key scores",
            self.grad_scores,
            items * 2 * self.n_keys as u64,
        )?;
        let (pipeline, groups) = if per_invocation {
            let (source, name) = lanes_source(self.knn);
            // Up to 16 entries in registers (`backward_registers`), else private arrays.
            let entry = if self.knn <= 16 {
                "backward_registers"
            } else {
                "backward"
            };
            (
                gpu.pipeline_entry(&name, &source, entry, &[]),
                (items as u32).div_ceil(LANES_WORKGROUP),
            )
        } else {
            (
                gpu.pipeline_entry("product_topk", SOURCE, "backward", &constants(self.knn, wg)),
                items as u32,
            )
        };
        let params = gpu.uniform(
            "product top-k backward params",
            &Params {
                rows: self.rows,
                heads: self.heads,
                n_keys: self.n_keys,
                knn: self.knn,
                row0: self.row0,
                _pad: [0; 3],
            },
        );
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (2, self.indices),
                (4, self.weights),
                (5, self.grad_weights),
                (6, self.grad_scores),
            ],
        );
        let (x, y) = grid(groups);
        gpu.run(encoder, "product_topk_backward", &pipeline, &bind, (x, y, 1));
        Ok(())
    }
}
