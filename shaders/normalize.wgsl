// Row-wise L2 normalisation: dst[r, :] = src[r, :] * (1 / max(|src[r, :]|, 1e-12)), rows of
// `len` contiguous elements (torch.nn.functional.normalize). Used for qk-norm on the query
// halves and the sub-key rows before scoring. One invocation per row; the sum of squares
// runs in index order with fma (the CPU oracle's order).
//
// `backward`: with s = 1 / max(|v|, 1e-12) and u = v s, dv = s (du - u <u, du>) where
// |v| > 1e-12, else s du. src holds v, grad_in du, grad_out dv.

struct Params {
    rows: u32,
    len: u32,
}

const NORM_EPS: f32 = 1e-12;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> grad_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_out: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.len;
    var ss = 0.0;
    for (var i = 0u; i < p.len; i++) {
        ss = fma(src[base + i], src[base + i], ss);
    }
    let scale = 1.0 / max(sqrt(ss), NORM_EPS);
    for (var i = 0u; i < p.len; i++) {
        dst[base + i] = src[base + i] * scale;
    }
}

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
    let base = r * p.len;
    var ss = 0.0;
    for (var i = 0u; i < p.len; i++) {
        ss = fma(src[base + i], src[base + i], ss);
    }
    let norm = sqrt(ss);
    let scale = 1.0 / max(norm, NORM_EPS);
    var dot = 0.0;
    if (norm > NORM_EPS) {
        for (var i = 0u; i < p.len; i++) {
            dot = fma(src[base + i] * scale, grad_in[base + i], dot);
        }
    }
    for (var i = 0u; i < p.len; i++) {
        grad_out[base + i] = scale * (grad_in[base + i] - src[base + i] * scale * dot);
    }
}
