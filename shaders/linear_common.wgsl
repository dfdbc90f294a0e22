// Shared by the linear kernels (prepended on the host): the parameters, the bindings, the
// operands' element formats, and the epilogue that writes the outputs.
//
// f16 activations (inference): with X_F16 the input x, with flag AUX_F16 the gate's `aux`, and
// with flag Y_F16 the output y hold f16 values two per 4-byte word, as the weights do with
// W_F16. Values are widened exactly and every sum runs in f32; an f16 output is rounded once,
// as it is stored, two adjacent columns a word (`write_pair`: the host makes the offsets, row
// strides and n even). x, aux and y are bound as u32 words and read through bitcasts, so the
// same bindings serve both formats (and no `shader-f16` is needed).

struct Params {
    m: u32,
    n: u32,
    k_len: u32,
    flags: u32, // bit 0: add bias; bit 1: gate epilogue with aux; bit 2: accumulate into y;
                // bit 3: keep the gate's input in `pre`; bit 4: aux holds f16 pairs;
                // bit 5: store y as f16 pairs
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
    w_scales: u32, // where a q8 weight's scales start, in words (W_Q8)
}

const FLAG_BIAS: u32 = 1u;
const FLAG_GATE: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;
const FLAG_KEEP_PRE: u32 = 8u;
const FLAG_AUX_F16: u32 = 16u;
const FLAG_Y_F16: u32 = 32u;
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>; // f32 bits, or f16 pairs (X_F16)
// The weights' bits: f32 words, or with W_F16 two f16 values per word (element i in half
// i % 2 of word i / 2, as `unpack2x16float` reads them; no `shader-f16` needed), or with W_Q8
// 8-bit integers four a word (element i in byte i % 4 of word i / 4) and from word w_scales
// one f16 scale per 32 elements, two a word. Read through `w_at_index`.
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<u32>; // f32 bits, or f16 pairs (AUX_F16)
@group(0) @binding(5) var<storage, read_write> y: array<u32>; // f32 bits, or f16 pairs (Y_F16)
@group(0) @binding(6) var<storage, read_write> pre: array<f32>;

override W_F16: bool = false;
override W_Q8: bool = false;
override X_F16: bool = false;

// Byte j (0-3) of a q8 word, sign-extended, as f32.
fn q8_byte(word: u32, j: u32) -> f32 {
    return f32(bitcast<i32>(word << (24u - 8u * j)) >> 24u);
}

// The scale of q8 element i's group of 32.
fn q8_scale(i: u32) -> f32 {
    return unpack2x16float(w[p.w_scales + (i >> 6u)])[(i >> 5u) & 1u];
}

// Element i of the weights, as f32 (a q8 value is its integer times its scale, exact).
fn w_at_index(i: u32) -> f32 {
    if (W_F16) {
        return unpack2x16float(w[i >> 1u])[i & 1u];
    }
    if (W_Q8) {
        return q8_byte(w[i >> 2u], i & 3u) * q8_scale(i);
    }
    return bitcast<f32>(w[i]);
}

fn x_at_index(i: u32) -> f32 {
    if (X_F16) {
        return unpack2x16float(x[i >> 1u])[i & 1u];
    }
    return bitcast<f32>(x[i]);
}

fn aux_at_index(i: u32) -> f32 {
    if ((p.flags & FLAG_AUX_F16) != 0u) {
        return unpack2x16float(aux[i >> 1u])[i & 1u];
    }
    return bitcast<f32>(aux[i]);
}

// Output (row, c) from its sum v: + bias[c], then gate * silu(.) (its input kept in `pre`
// with KEEP_PRE).
fn epilogue(row: u32, c: u32, v: f32) -> f32 {
    var o = v;
    if ((p.flags & FLAG_BIAS) != 0u) {
        o += bias[c];
    }
    if ((p.flags & FLAG_GATE) != 0u) {
        if ((p.flags & FLAG_KEEP_PRE) != 0u) {
            pre[row * p.n + c] = o;
        }
        o = aux_at_index(row * p.n + c) * (o / (1.0 + exp(-o)));
    }
    return o;
}

// Writes output (b, row, c) = v after the epilogue, then + what y holds (ACCUMULATE), in f32.
// The caller checks row < m and c < n, and that y is not f16 (else `write_pair`).
fn write_output(b: u32, row: u32, c: u32, v: f32) {
    var o = epilogue(row, c, v);
    let at = p.y_offset + b * p.y_batch + row * p.y_row + c;
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        o += bitcast<f32>(y[at]);
    }
    y[at] = bitcast<u32>(o);
}

// Writes outputs (b, row, c) and (b, row, c + 1) (c even; n is even for f16 outputs) after
// the epilogue: as one word of f16 pairs under Y_F16 (ACCUMULATE adds in f32, then rounds),
// else as two f32. The caller checks row < m and c < n.
fn write_pair(b: u32, row: u32, c: u32, v0: f32, v1: f32) {
    if ((p.flags & FLAG_Y_F16) == 0u) {
        write_output(b, row, c, v0);
        if (c + 1u < p.n) {
            write_output(b, row, c + 1u, v1);
        }
        return;
    }
    var o = vec2<f32>(epilogue(row, c, v0), epilogue(row, c + 1u, v1));
    let at = (p.y_offset + b * p.y_batch + row * p.y_row + c) >> 1u;
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        o += unpack2x16float(y[at]);
    }
    y[at] = pack2x16float(o);
}
