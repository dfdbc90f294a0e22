//! `product_topk.wgsl`: from the sub-key scores of both halves, the top-k of each half, the
//! top-k of the k x k products in rank order, and their softmax; one workgroup per
//! (token, head).

use super::{check_buffer, check_loop_budget, LOOP_BUDGET};
use crate::error::{Error, Result};
use crate::gpu::{grid, Gpu};

pub const SOURCE: &str = include_str!("../../shaders/product_topk.wgsl");

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
    /// Invocations per workgroup (1..=256); `None` takes the adapter's tuning, widened when
    /// the loop budget needs it. Results do not depend on it.
    pub workgroup_size: Option<u32>,
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
        let wg = match self.workgroup_size {
            Some(wg) if (1..=256).contains(&wg) => {
                let what = format!("n_keys = {}, knn = {}, workgroup {wg}", self.n_keys, self.knn);
                check_loop_budget("product top-k", loop_iterations(self.n_keys, self.knn, wg), &what)?;
                wg
            }
            Some(wg) => {
                return Err(Error::Config(format!(
                    "product top-k: workgroup size {wg} not in 1..=256"
                )))
            }
            None => workgroup_for(self.n_keys, self.knn, gpu.tuning().topk_workgroup)?,
        };
        let pipeline = gpu.pipeline("product_topk", SOURCE, &constants(self.knn, wg));
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
        let (x, y) = grid(items as u32);
        let mut pass = gpu.begin_pass(encoder, "product_topk");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
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
        let wg = gpu.tuning().topk_workgroup;
        let k = self.knn as u64;
        check_loop_budget("product top-k backward", 3 * k.div_ceil(wg as u64) * k + k, "knn")?;
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
        let pipeline = gpu.pipeline_entry("product_topk", SOURCE, "backward", &constants(self.knn, wg));
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
        let (x, y) = grid(items as u32);
        let mut pass = gpu.begin_pass(encoder, "product_topk_backward");
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(x, y, 1);
        Ok(())
    }
}
