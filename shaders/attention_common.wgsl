// Shared by attention.wgsl, attention_rows.wgsl and attention_lanes.wgsl (prepended on the host): the
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
// Keys and values as 32-bit words: f32 bits, or with KV_F16 two f16 values a word (element i
// in half i % 2 of word i / 2, as `unpack2x16float` reads them; no `shader-f16` needed), as a
// KV cache of f16 holds them. Read through `k_at` and `v_at`.
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> d_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> row_dot: array<f32>;
// Gradients: dq for backward_q; dk and dv for backward_kv.
@group(1) @binding(0) var<storage, read_write> dq: array<f32>;
@group(1) @binding(1) var<storage, read_write> dk: array<f32>;
@group(1) @binding(2) var<storage, read_write> dv: array<f32>;

override KV_F16: bool = false;

fn k_at(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(k[i >> 1u])[i & 1u];
    }
    return bitcast<f32>(k[i]);
}

fn v_at(i: u32) -> f32 {
    if (KV_F16) {
        return unpack2x16float(v[i >> 1u])[i & 1u];
    }
    return bitcast<f32>(v[i]);
}

fn q_base(b: u32, i: u32, h: u32) -> u32 {
    return ((b * p.seq + i) * p.heads + h) * p.head_dim;
}

fn kv_base(b: u32, j: u32, g: u32) -> u32 {
    return ((b * p.kv_len + j) * p.kv_heads + g) * p.head_dim;
}
