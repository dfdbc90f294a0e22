// Shared by attention.wgsl and attention_rows.wgsl (prepended to each on the host): the
// parameters, the bindings, and the layouts q [batch, seq, heads, hd], k, v [batch, kv_len,
// kv_heads, hd]. `seq` is the number of query positions; kv_len that of key/value positions.

struct Params {
    batch: u32,
    seq: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    kv_len: u32,
    q_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> d_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> row_dot: array<f32>;
// Gradients: dq for backward_q; dk and dv for backward_kv.
@group(1) @binding(0) var<storage, read_write> dq: array<f32>;
@group(1) @binding(1) var<storage, read_write> dk: array<f32>;
@group(1) @binding(2) var<storage, read_write> dv: array<f32>;

fn q_base(b: u32, i: u32, h: u32) -> u32 {
    return ((b * p.seq + i) * p.heads + h) * p.head_dim;
}

fn kv_base(b: u32, j: u32, g: u32) -> u32 {
    return ((b * p.kv_len + j) * p.kv_heads + g) * p.head_dim;
}
