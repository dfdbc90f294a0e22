// A scalar gate per row (lingua's mem_gated: out = sigmoid(gating(x)) * memory(x)):
//   forward:  y[r, c] = sigmoid(g[r]) * x[r, c], added to y under ACCUMULATE
//   backward: dx[r, c] = sigmoid(g[r]) * dy[r, c]
//             dg[r] = sigmoid'(g[r]) * sum_c dy[r, c] * x[r, c]   (columns in order)
// No reduction crosses invocations: deterministic.

struct Params {
    rows: u32,
    cols: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dg: array<f32>;

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// One invocation per element.
@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i >= p.rows * p.cols) {
        return;
    }
    var o = sigmoid(g[i / p.cols]) * x[i];
    if (p.accumulate != 0u) {
        o += y[i];
    }
    y[i] = o;
}

// One invocation per row; dx goes to `y`.
@compute @workgroup_size(64)
fn backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (r >= p.rows) {
        return;
    }
    let s = sigmoid(g[r]);
    var dot = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let i = r * p.cols + c;
        dot = fma(dy[i], x[i], dot);
        y[i] = s * dy[i];
    }
    dg[r] = s * (1.0 - s) * dot;
}
