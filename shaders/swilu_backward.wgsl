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
// main_vec4: the same tensors 16 bytes at a time (len a multiple of 4).
@group(0) @binding(6) var<storage, read> dh4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> y4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dy4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dg4: array<vec4<f32>>;

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

// `main` four elements an invocation, through 16-byte loads and stores: the same expressions
// element by element, so the same bits. CPU adapters run each load lane by lane, and a
// 16-byte load costs them about what a 4-byte one does.
@compute @workgroup_size(64)
fn main_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i >= p.len / 4u) {
        return;
    }
    let gi = g4[i];
    let s = 1.0 / (1.0 + exp(-gi));
    let d = dh4[i];
    dy4[i] = d * (gi * s);
    dg4[i] = d * y4[i] * (s * (1.0 + gi * (1.0 - s)));
}
