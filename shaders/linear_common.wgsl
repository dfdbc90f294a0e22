// Shared by linear.wgsl and linear_subgroup.wgsl (prepended on the host): the parameters, the
// bindings, and the epilogue that writes one output element.

struct Params {
    m: u32,
    n: u32,
    k_len: u32,
    flags: u32, // bit 0: add bias; bit 1: gate epilogue with aux; bit 2: accumulate into y;
                // bit 3: keep the gate's input in `pre`
    x_offset: u32,
    x_batch: u32,
    x_row: u32,
    w_batch: u32,
    y_batch: u32,
    y_row: u32,
    x_k: u32,
    w_row: u32,
    w_k: u32,
    y_offset: u32,
    w_offset: u32,
    _pad0: u32,
}

const FLAG_BIAS: u32 = 1u;
const FLAG_GATE: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;
const FLAG_KEEP_PRE: u32 = 8u;
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The weights' bits: f32 words, or with W_F16 two f16 values per word (element i in half
// i % 2 of word i / 2, as `unpack2x16float` reads them; no `shader-f16` needed). Read through
// `w_at_index`.
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> pre: array<f32>;

override W_F16: bool = false;

// Weight element i (an index into the f32 view of the weights) as f32.
fn w_at_index(i: u32) -> f32 {
    if (W_F16) {
        return unpack2x16float(w[i >> 1u])[i & 1u];
    }
    return bitcast<f32>(w[i]);
}

// Writes output (b, row, c) = v after the epilogue: + bias[c], then gate * silu(.) (its
// input kept in `pre` with KEEP_PRE), then + what y holds (ACCUMULATE). The caller checks row < m and c < n.
fn write_output(b: u32, row: u32, c: u32, v: f32) {
    var o = v;
    if ((p.flags & FLAG_BIAS) != 0u) {
        o += bias[c];
    }
    if ((p.flags & FLAG_GATE) != 0u) {
        if ((p.flags & FLAG_KEEP_PRE) != 0u) {
            pre[row * p.n + c] = o;
        }
        o = aux[row * p.n + c] * (o / (1.0 + exp(-o)));
    }
    let at = p.y_offset + b * p.y_batch + row * p.y_row + c;
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        o += y[at];
    }
    y[at] = o;
}
