// Elementwise helpers of the model: `add` (y += x, the residual stream) and `pack_f16`
// (pairs of x as f16 into 32-bit words of `packed` from word `offset` on: a KV cache of f16).

struct Params {
    len: u32,    // add: elements; pack_f16: words written
    offset: u32, // pack_f16: the first word written
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;

@compute @workgroup_size(64)
fn add(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.len) {
        y[i] += x[i];
    }
}

// Word i from elements 2i (low half) and 2i + 1 (high half), each rounded to f16 (WGSL lets
// the rounding go to either neighbour of a value between two f16s).
@compute @workgroup_size(64)
fn pack_f16(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.len) {
        packed[p.offset + i] = pack2x16float(vec2<f32>(x[2u * i], x[2u * i + 1u]));
    }
}
