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
            for (var j = 0u; j < 16u; j++) {
                let wv = q8_byte(q[j / 4u], j % 4u) * s;
                a = fma(x_rows(x_base, r1, r2, r3, k + j), vec4<f32>(wv), a);
            }
        }
    }
    if (W_F16 && w_mode == 3u) {
        // f16 weights, rows 8-aligned: 8 values per 16-byte load.
        for (; k + 8u <= p.k_len; k += 8u) {
            let q = w4[(w_base + k) / 8u];
            for (var j = 0u; j < 8u; j++) {
                let wv = unpack2x16float(q[j / 2u])[j % 2u];
                a = fma(x_rows(x_base, r1, r2, r3, k + j), vec4<f32>(wv), a);
            }
        }
    }
    if (!W_F16 && !W_Q8 && w_mode == 1u) {
        for (; k + 4u <= p.k_len; k += 4u) {
            let wv = bitcast<vec4<f32>>(w4[(w_base + k) / 4u]);
            for (var j = 0u; j < 4u; j++) {
                a = fma(x_rows(x_base, r1, r2, r3, k + j), vec4<f32>(wv[j]), a);
            }
        }
    }
    for (; k < p.k_len; k++) {
        let wv = w_at_index(w_base + k * p.w_k);
        a = fma(x_rows(x_base, r1, r2, r3, k), vec4<f32>(wv), a);
    }
    for (var r = 0u; r < min(p.m, 4u); r++) {
        write_output(b, r, c, a[r]);
    }
}
