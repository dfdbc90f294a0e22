// The linear layer of `linear.wgsl` (same Params, bindings, flags, epilogue and results, bit
// for bit) for products of at most 4 rows, as in decoding one token at a time, on CPU
// adapters: one invocation per output column computes that column for every row, reading its
// weight row once, 16 bytes at a time where the weights are contiguous along k and aligned
// (flag bits 18-19: 1 for f32 weights, as in `linear.wgsl`; 3 for f16 weights, 8 values a
// load, and for q8 weights, 16 values a load). The other kernels give a 1-row product a 32- or 64-row block and leave almost all of
// it idle.
//
// An f16 output (Y_F16) pairs adjacent columns, which are different invocations here: the
// host runs such products on the adapter's other kernel.
//
// The k-sum runs in increasing k with fma, one accumulator per output, exactly as in the other
// kernels.

@group(0) @binding(8) var<storage, read> w4: array<vec4<u32>>;

override WG: u32 = 64u;
// A product of one row (decoding): one accumulator, not four that compute the same row.
override ONE_ROW: bool = false;

fn x_row(base: u32, r: u32, k: u32) -> f32 {
    return x_at_index(base + r * p.x_row + k * p.x_k);
}

// Rows 0, r1, r2, r3 at k (rows past m are row m - 1): one load where m is 1.
fn x_rows(base: u32, r1: u32, r2: u32, r3: u32, k: u32) -> vec4<f32> {
    let x0 = x_row(base, 0u, k);
    if (p.m == 1u) {
        return vec4<f32>(x0);
    }
    return vec4<f32>(x0, x_row(base, r1, k), x_row(base, r2, k), x_row(base, r3, k));
}

// The accumulators after adding the rows' x at k times wv (fma, as every kernel sums).
fn accumulate(a: vec4<f32>, base: u32, r1: u32, r2: u32, r3: u32, k: u32, wv: f32) -> vec4<f32> {
    if (ONE_ROW) {
        return vec4<f32>(fma(x_row(base, 0u, k), wv, a.x), 0.0, 0.0, 0.0);
    }
    return fma(x_rows(base, r1, r2, r3, k), vec4<f32>(wv), a);
}

// `accumulate` of two consecutive k.
fn accumulate_pair(a: vec4<f32>, base: u32, r1: u32, r2: u32, r3: u32, k: u32, wv: vec2<f32>) -> vec4<f32> {
    let once = accumulate(a, base, r1, r2, r3, k, wv.x);
    return accumulate(once, base, r1, r2, r3, k + 1u, wv.y);
}

// `accumulate` of the four q8 values of `word` (k to k + 3) with scale s.
fn accumulate_q8_word(a: vec4<f32>, base: u32, r1: u32, r2: u32, r3: u32, k: u32, word: u32, s: f32) -> vec4<f32> {
    let v = vec4<f32>(q8_byte(word, 0u), q8_byte(word, 1u), q8_byte(word, 2u), q8_byte(word, 3u)) * s;
    return accumulate_pair(accumulate_pair(a, base, r1, r2, r3, k, v.xy), base, r1, r2, r3, k + 2u, v.zw);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.z;
    let c = wg.x * WG + lid;
    if (c >= p.n) {
        return;
    }
    let x_base = p.x_offset + b * p.x_batch;
    let w_base = p.w_offset + b * p.w_batch + c * p.w_row;
    // Rows past m compute on row m - 1 and store nothing.
    let r1 = min(1u, p.m - 1u);
    let r2 = min(2u, p.m - 1u);
    let r3 = min(3u, p.m - 1u);
    var a = vec4<f32>(0.0);
    var k = 0u;
    let w_mode = (p.flags >> 18u) & 3u;
    if (W_Q8 && w_mode == 3u) {
        // q8 weights, rows 16-aligned: 16 values (of one scale's group) per 16-byte load.
        for (; k + 16u <= p.k_len; k += 16u) {
            let q = w4[(w_base + k) / 16u];
            let s = q8_scale(w_base + k);
            // Written out word by word: constant shifts, no dynamic vector index.
            a = accumulate_q8_word(a, x_base, r1, r2, r3, k, q.x, s);
            a = accumulate_q8_word(a, x_base, r1, r2, r3, k + 4u, q.y, s);
            a = accumulate_q8_word(a, x_base, r1, r2, r3, k + 8u, q.z, s);
            a = accumulate_q8_word(a, x_base, r1, r2, r3, k + 12u, q.w, s);
        }
    }
    if (W_F16 && w_mode == 3u) {
        // f16 weights, rows 8-aligned: 8 values per 16-byte load.
        for (; k + 8u <= p.k_len; k += 8u) {
            let q = w4[(w_base + k) / 8u];
            a = accumulate_pair(a, x_base, r1, r2, r3, k, unpack2x16float(q.x));
            a = accumulate_pair(a, x_base, r1, r2, r3, k + 2u, unpack2x16float(q.y));
            a = accumulate_pair(a, x_base, r1, r2, r3, k + 4u, unpack2x16float(q.z));
            a = accumulate_pair(a, x_base, r1, r2, r3, k + 6u, unpack2x16float(q.w));
        }
    }
    if (!W_F16 && !W_Q8 && w_mode == 1u) {
        for (; k + 4u <= p.k_len; k += 4u) {
            let wv = bitcast<vec4<f32>>(w4[(w_base + k) / 4u]);
            a = accumulate_pair(a, x_base, r1, r2, r3, k, wv.xy);
            a = accumulate_pair(a, x_base, r1, r2, r3, k + 2u, wv.zw);
        }
    }
    for (; k < p.k_len; k++) {
        let wv = w_at_index(w_base + k * p.w_k);
        a = accumulate(a, x_base, r1, r2, r3, k, wv);
    }
    for (var r = 0u; r < min(p.m, 4u); r++) {
        write_output(b, r, c, a[r]);
    }
}
