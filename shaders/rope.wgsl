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
// main_pair_vec4: the same tensors two pairs at a time (16-byte loads of x, 8-byte loads of
// the tables; half_dim even, so both pairs share a row and head and read adjacent angles).
@group(0) @binding(7) var<storage, read> x_4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> y_4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> x2_4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> y2_4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> cos_2: array<vec2<f32>>;
@group(0) @binding(12) var<storage, read> sin_2: array<vec2<f32>>;

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

// The (cos, sin) of pairs i and i + 1 (i even) of a tensor with `heads` heads: (cos_i,
// cos_i+1, sin_i, sin_i+1), signs as in `angle`.
fn angles2(i: u32, heads: u32) -> vec4<f32> {
    let m = i % p.half_dim;
    let t = (i / (p.half_dim * heads)) % p.seq;
    let at = ((p.pos0 + t) * p.half_dim + m) / 2u;
    let s = sin_2[at];
    return vec4(cos_2[at], select(s, -s, p.inverse != 0u));
}

// Pairs (x.x, x.y) and (x.z, x.w) rotated, each exactly as `main` rotates one.
fn rotate2(x: vec4<f32>, cs: vec4<f32>) -> vec4<f32> {
    return vec4(
        x.x * cs.x - x.y * cs.z,
        x.x * cs.z + x.y * cs.x,
        x.z * cs.y - x.w * cs.w,
        x.z * cs.w + x.w * cs.y,
    );
}

// `main_pair` two pairs an invocation (half_dim even): CPU adapters run every load lane by
// lane, and a 16-byte load costs them about what a 4-byte one does.
@compute @workgroup_size(64)
fn main_pair_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = (wg.y * nwg.x + wg.x) * 64u + lid;
    let quads = p.pairs / 2u;
    if (q < quads) {
        y_4[q] = rotate2(x_4[q], angles2(2u * q, p.heads));
    } else if (q - quads < p.pairs2 / 2u) {
        let j = q - quads;
        y2_4[j] = rotate2(x2_4[j], angles2(2u * j, p.heads2));
    }
}
