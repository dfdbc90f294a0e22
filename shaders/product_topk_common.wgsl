// Shared by product_topk.wgsl and product_topk_lanes.wgsl (prepended to each on the host):
// the parameters and the bindings of the forward (`main`) and the backward (`backward`).
//
// Layouts (row-major):
//   scores  [rows, heads, 2, n_keys] f32   sub-key scores (the scoring GEMM's output)
//   indices [rows, heads, knn] u32         slot = i * n_keys + j
//   out_scores [rows, heads, knn] f32      pre-softmax s1[i] + s2[j]
//   weights [rows, heads, knn] f32         softmax, in f32
// `row0` offsets the outputs, so the scores may cover a block of rows.

struct Params {
    rows: u32,
    heads: u32,
    n_keys: u32,
    knn: u32,
    row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out_scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_weights: array<f32>;

// `backward` only: dL/dw per selected entry, and the dense sub-key score gradient
// [rows, heads, 2, n_keys] (zeroed by the caller; only selected sub-keys are written).
@group(0) @binding(5) var<storage, read> grad_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_scores: array<f32>;
