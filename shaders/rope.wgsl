// Rotary position embedding, interleaved pairs (lingua/llama): dims (2m, 2m + 1) of each head
// rotate by the angle of (position, m). cos/sin come from a host table [max_pos, head_dim / 2]
// computed like torch's f32 freqs (so long positions lose no accuracy to GPU sin/cos).
// `inverse` rotates back: the backward of the forward rotation.
//   x [batch * seq, heads, head_dim]; row r is position pos0 + r % seq of its sequence.
// `main_pair` rotates two tensors of the same positions in one dispatch (queries x -> y with
// `heads`, keys x2 -> y2 with `heads2`), each pair exactly as `main` does.

struct Params {
    pairs: u32,    // batch * seq * heads * head_dim / 2
    heads: u32,
    half_dim: u32, // head_dim / 2
    pos0: u32,
    inverse: u32,
    seq: u32,
    heads2: u32,  // main_pair: the second tensor's heads
    pairs2: u32,  // main_pair: the second tensor's pairs
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_table: array<f32>;
@group(0) @binding(3) var<storage, read> sin_table: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> x2: array<f32>;
@group(0) @binding(6) var<storage, read_write> y2: array<f32>;

// The (cos, sin) of pair i of a tensor with `heads` heads.
fn angle(i: u32, heads: u32) -> vec2<f32> {
    let m = i % p.half_dim;
    let t = (i / (p.half_dim * heads)) % p.seq;
    let at = (p.pos0 + t) * p.half_dim + m;
    return vec2(cos_table[at], select(sin_table[at], -sin_table[at], p.inverse != 0u));
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i >= p.pairs) {
        return;
    }
    let cs = angle(i, p.heads);
    let a = x[2u * i];
    let b = x[2u * i + 1u];
    y[2u * i] = a * cs.x - b * cs.y;
    y[2u * i + 1u] = a * cs.y + b * cs.x;
}

@compute @workgroup_size(64)
fn main_pair(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.pairs) {
        let cs = angle(i, p.heads);
        let a = x[2u * i];
        let b = x[2u * i + 1u];
        y[2u * i] = a * cs.x - b * cs.y;
        y[2u * i + 1u] = a * cs.y + b * cs.x;
    } else if (i - p.pairs < p.pairs2) {
        let j = i - p.pairs;
        let cs = angle(j, p.heads2);
        let a = x2[2u * j];
        let b = x2[2u * j + 1u];
        y2[2u * j] = a * cs.x - b * cs.y;
        y2[2u * j + 1u] = a * cs.y + b * cs.x;
    }
}
