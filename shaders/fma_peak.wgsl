// The adapter's arithmetic ceiling, for `memlayers bench`: each invocation runs `iterations`
// rounds of multiply-adds on 8 vec4 accumulators held in registers (32 independent chains),
// with no memory traffic in the loop, then stores one sum so that nothing is optimised away.
// The benchmark sets the GEMMs' GFLOP/s next to this figure measured in the same run, as a
// ratio (CPU implementations such as lavapipe compile `fma` into a multiply, an add and a
// blend with the loop's mask, so their ceiling is far below the CPU's peak).

struct Params {
    iterations: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y * nwg.x * 64u + gid.x;
    let s = f32(i) * 1e-6;
    // |a| stays bounded: a -> 0.999 a + c converges, so no infinities or subnormals arise.
    let m = vec4<f32>(0.999);
    let c = vec4<f32>(1e-3, 2e-3, 3e-3, 4e-3);
    var a0 = vec4<f32>(s);
    var a1 = vec4<f32>(s + 1.0);
    var a2 = vec4<f32>(s + 2.0);
    var a3 = vec4<f32>(s + 3.0);
    var a4 = vec4<f32>(s + 4.0);
    var a5 = vec4<f32>(s + 5.0);
    var a6 = vec4<f32>(s + 6.0);
    var a7 = vec4<f32>(s + 7.0);
    for (var round = 0u; round < p.iterations; round++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    let t = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    out[i] = t.x + t.y + t.z + t.w;
}
