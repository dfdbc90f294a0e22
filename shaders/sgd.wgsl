// Plain SGD on the rows of a [rows, row_len] table whose mask entry is set (sparse memory
// fine-tuning's value update): param -= lr * clip * grad, with clip the clipping factor of the
// parameter group (`clip_index` of the factors `adamw.wgsl`'s `clip` wrote). Rows whose mask
// is 0 are left as they are. One workgroup per row; each element is written by one
// invocation: deterministic.

struct Params {
    rows: u32,
    row_len: u32,
    lr: f32,
    clip_index: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> clip_factor: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;

@compute @workgroup_size(64)
fn masked_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wg.y * nwg.x + wg.x;
    if (r >= p.rows || mask[r] == 0u) {
        return;
    }
    let scale = p.lr * clip_factor[p.clip_index];
    let base = r * p.row_len;
    for (var c = lid; c < p.row_len; c += 64u) {
        param[base + c] -= scale * grad[base + c];
    }
}
