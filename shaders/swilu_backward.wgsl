// Backward of Memory+'s gate h = y * silu(g), elementwise over [rows, v_dim]:
//   dy = dh * silu(g)
//   dg = dh * y * silu'(g),   silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g)
// g is the swilu projection's pre-activation (recomputed by the caller).

struct Params {
    len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dh: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dg: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i >= p.len) {
        return;
    }
    let gi = g[i];
    let s = 1.0 / (1.0 + exp(-gi));
    dy[i] = dh[i] * (gi * s);
    dg[i] = dh[i] * y[i] * (s * (1.0 + gi * (1.0 - s)));
}
