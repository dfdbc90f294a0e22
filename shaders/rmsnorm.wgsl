// RMSNorm over rows of d (lingua: x * rsqrt(mean(x^2) + eps) * weight, in f32).
// `forward`/`backward`: one workgroup per row. Sums are partial per invocation (strided),
// then added in invocation order by invocation 0: a fixed order, deterministic.
// `forward_rows`/`backward_rows`: one row per invocation, no barriers (for CPU adapters,
// where a workgroup with barriers per row costs more than the row's arithmetic); they form
// the same partial sums in the same order, so the results are bit-identical.
//   forward:  y = x r w with r = rsqrt(mean(x^2) + eps); r saved per row
//   backward: dx = r w dy - x r^3 <dy, w x> / d (or dx += that, with `accumulate`: the
//             residual stream's gradient); per-row dw terms dy x r (summed over rows by the
//             caller, a GEMM with a ones vector)

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    accumulate: u32, // backward: 1 adds dx into `y` instead of writing it
    dw_offset: u32,  // backward: where this norm's per-row dw terms start in `dw_rows`
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

fn store_dx(at: u32, v: f32) {
    if (p.accumulate != 0u) {
        y[at] = y[at] + v;
    } else {
        y[at] = v;
    }
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw_rows: array<f32>;

// The `*_rows_vec4` entry points: the same tensors 16 bytes at a time, each 6 bindings after
// its 4-byte view (d and dw_offset multiples of 4).
@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> w4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dw_rows4: array<vec4<f32>>;

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
        store_dx(base + j, r * w[j] * dy[base + j] - x[base + j] * c);
        dw_rows[p.dw_offset + base + j] = dy[base + j] * x[base + j] * r;
    }
}

// One row's sums in the order of `ordered_sum`: WG strided partials (fma chains from +0),
// added in partial order. The workgroup kernel's partials past d are +0 and adding them
// changes nothing (the running total is never -0), so they are skipped.
fn row_sum_squares(base: u32) -> f32 {
    var total = 0.0;
    for (var l = 0u; l < min(WG, p.d); l++) {
        var part = 0.0;
        for (var j = l; j < p.d; j += WG) {
            part = fma(x[base + j], x[base + j], part);
        }
        total += part;
    }
    return total;
}

fn row_dot(base: u32) -> f32 {
    var total = 0.0;
    for (var l = 0u; l < min(WG, p.d); l++) {
        var part = 0.0;
        for (var j = l; j < p.d; j += WG) {
            part = fma(dy[base + j] * w[j], x[base + j], part);
        }
        total += part;
    }
    return total;
}

@compute @workgroup_size(64)
fn forward_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    let r = inverseSqrt(row_sum_squares(base) / f32(p.d) + p.eps);
    for (var j = 0u; j < p.d; j++) {
        y[base + j] = x[base + j] * r * w[j];
    }
    rstd[row] = r;
}

@compute @workgroup_size(64)
fn backward_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    let r = rstd[row];
    let c = r * r * r * row_dot(base) / f32(p.d);
    for (var j = 0u; j < p.d; j++) {
        store_dx(base + j, r * w[j] * dy[base + j] - x[base + j] * c);
        dw_rows[p.dw_offset + base + j] = dy[base + j] * x[base + j] * r;
    }
}

// `forward_rows` and `backward_rows` through 16-byte loads and stores (d a multiple of 4):
// four adjacent partials at a time, added in partial order, and the same expressions element
// by element, so the same bits. CPU adapters run every load lane by lane, and a 16-byte load
// costs them about what a 4-byte one does. The row starts at vec4 `base4`.
fn row_sum_squares4(base4: u32) -> f32 {
    var total = 0.0;
    for (var l = 0u; l < min(WG, p.d); l += 4u) {
        var part = vec4<f32>(0.0);
        for (var j = l; j < p.d; j += WG) {
            let v = x4[base4 + j / 4u];
            part = fma(v, v, part);
        }
        total += part.x;
        total += part.y;
        total += part.z;
        total += part.w;
    }
    return total;
}

fn row_dot4(base4: u32) -> f32 {
    var total = 0.0;
    for (var l = 0u; l < min(WG, p.d); l += 4u) {
        var part = vec4<f32>(0.0);
        for (var j = l; j < p.d; j += WG) {
            part = fma(dy4[base4 + j / 4u] * w4[j / 4u], x4[base4 + j / 4u], part);
        }
        total += part.x;
        total += part.y;
        total += part.z;
        total += part.w;
    }
    return total;
}

@compute @workgroup_size(64)
fn forward_rows_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (row >= p.rows) {
        return;
    }
    let base4 = row * (p.d / 4u);
    let r = inverseSqrt(row_sum_squares4(base4) / f32(p.d) + p.eps);
    for (var j = 0u; j < p.d / 4u; j++) {
        y4[base4 + j] = x4[base4 + j] * r * w4[j];
    }
    rstd[row] = r;
}

@compute @workgroup_size(64)
fn backward_rows_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (row >= p.rows) {
        return;
    }
    let base4 = row * (p.d / 4u);
    let r = rstd[row];
    let c = r * r * r * row_dot4(base4) / f32(p.d);
    for (var j = 0u; j < p.d / 4u; j++) {
        let at = base4 + j;
        let dy_j = dy4[at];
        let x_j = x4[at];
        let v = r * w4[j] * dy_j - x_j * c;
        if (p.accumulate != 0u) {
            y4[at] = y4[at] + v;
        } else {
            y4[at] = v;
        }
        dw_rows4[p.dw_offset / 4u + at] = dy_j * x_j * r;
    }
}
