// PEER's expert activations (lingua's peer_variant): for bag entry e of a row, with
// s[e] = <x_row, U[slot_e]> (embedding_bag.wgsl's weight_grads computes it) and w[e] the
// lookup's softmax weight,
//   forward:  a[e] = w[e] * gelu(s[e])          (the bag of V rows then sums a[e] * V[slot_e])
//   backward: from g[e] = dL/da[e]:  dw[e] = g[e] * gelu(s[e]),  ds[e] = g[e] * w[e] * gelu'(s[e])
// gelu is the exact one, x * Phi(x), with erf from Abramowitz and Stegun 7.1.26 (absolute
// error below 1.5e-7). One invocation per entry.

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;
@group(0) @binding(6) var<storage, read_write> ds: array<f32>;

fn erf(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-z * z));
}

// Phi(x), the standard normal's distribution function.
fn cdf(x: f32) -> f32 {
    return 0.5 * (1.0 + erf(x * 0.70710678118654752));
}

fn entry(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = entry(wg, nwg, lid);
    if (e < p.n) {
        a[e] = w[e] * s[e] * cdf(s[e]);
    }
}

@compute @workgroup_size(64)
fn backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = entry(wg, nwg, lid);
    if (e < p.n) {
        let x = s[e];
        let phi = cdf(x);
        // d gelu / dx = Phi(x) + x * phi(x), phi the standard normal density.
        let density = 0.39894228040143268 * exp(-0.5 * x * x);
        dw[e] = g[e] * x * phi;
        ds[e] = g[e] * w[e] * (phi + x * density);
    }
}
