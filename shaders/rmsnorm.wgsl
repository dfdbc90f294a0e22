// RMSNorm over rows of d (lingua: x * rsqrt(mean(x^2) + eps) * weight, in f32).
// One workgroup per row. Sums are partial per invocation (strided), then added in invocation
// order by invocation 0: a fixed order, deterministic.
//   forward:  y = x r w with r = rsqrt(mean(x^2) + eps); r saved per row
//   backward: dx = r w dy - x r^3 <dy, w x> / d; per-row dw terms dy x r (summed over rows
//             by the caller, a GEMM with a ones vector)

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw_rows: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> shared_value: f32;

// The sum over invocations of `mine`, in invocation order; every invocation gets it.
fn ordered_sum(mine: f32, lid: u32) -> f32 {
    partial[lid] = mine;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += partial[i];
        }
        shared_value = total;
    }
    workgroupBarrier();
    return shared_value;
}

@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    var ss = 0.0;
    for (var j = lid; j < p.d; j += WG) {
        ss = fma(x[base + j], x[base + j], ss);
    }
    let r = inverseSqrt(ordered_sum(ss, lid) / f32(p.d) + p.eps);
    for (var j = lid; j < p.d; j += WG) {
        y[base + j] = x[base + j] * r * w[j];
    }
    if (lid == 0u) {
        rstd[row] = r;
    }
}

// dx goes to `y`; rstd holds the forward's r.
@compute @workgroup_size(64)
fn backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    let r = rstd[row];
    var dot = 0.0;
    for (var j = lid; j < p.d; j += WG) {
        dot = fma(dy[base + j] * w[j], x[base + j], dot);
    }
    let total = ordered_sum(dot, lid);
    let c = r * r * r * total / f32(p.d);
    for (var j = lid; j < p.d; j += WG) {
        y[base + j] = r * w[j] * dy[base + j] - x[base + j] * c;
        dw_rows[base + j] = dy[base + j] * x[base + j] * r;
    }
}
