// Elementwise helpers of the model: `add` (y += x, the residual stream) and `one_hot`
// (y [len / width, width] = 1 where the column is the row's id in `ids`, else 0; the
// embedding's gradient as a GEMM for small vocabularies).

struct Params {
    len: u32,
    width: u32, // one_hot: columns per row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

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

@group(0) @binding(3) var<storage, read> ids: array<u32>;

@compute @workgroup_size(64)
fn one_hot(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.len) {
        y[i] = select(0.0, 1.0, ids[i / p.width] == i % p.width);
    }
}
