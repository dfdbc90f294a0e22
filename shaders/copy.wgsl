// Plain copy, dst[i] = src[i] over vec4 words: the bandwidth yardstick that the benchmark
// sets next to the embedding bag on the same adapter. A 2-D grid of 256-wide workgroups,
// so any length fits (workgroup index = y * num_workgroups.x + x).

struct Params {
    len: u32, // number of vec4 words
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 256u + lid;
    if (i < p.len) {
        dst[i] = src[i];
    }
}
