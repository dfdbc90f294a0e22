// Batched linear layer:  y[b][m, n] = sum_k x[b][m, k] * w[b][n, k]  (+ bias[n])
// (nn.Linear: w is [out, in]). Optional epilogue GATE: y = aux[m, n] * silu(y), which fuses
// Memory+'s `bag * silu(swilu_projection(x))` so the pre-activation never reaches memory.
//
// Strides on both operands make the same kernel serve every transpose case a backward pass
// needs (dX = dY W, dW = dY^T X) and the sub-key scoring, a GEMM per (head, half) over
// strided query slices:
//   x[b][m, k] = x[x_offset + b * x_batch + m * x_row + k * x_k]
//   w[b][n, k] = w[w_offset + b * w_batch + n * w_row + k * w_k]
//   y[b][m, n] = y[y_offset + b * y_batch + m * y_row + n]
// Flag ACCUMULATE adds the product to what y holds (gradients summed over blocks of rows).
// The batch index is the workgroup's z coordinate.
//
// Register tiling. A workgroup of WG_M x WG_N invocations computes an output tile of
// 8 WG_M x 8 WG_N (32 x 32 up to 128 x 128); each invocation owns an 8 x 8 block held as
// sixteen vec4 accumulators. K advances TK at a time through workgroup tiles stored k-major
// as vec4 along m (resp. n), so one vec4 read feeds four rows: per k value an invocation
// reads 4 vec4s for 16 vec4 fmas. The tiles are double-buffered: while the workgroup
// multiplies stage s, each invocation already holds its share of stage s + 1 in registers,
// and one barrier per stage separates the two. Tile shape and depth are override constants;
// the host picks them per adapter (a timed trial, `kernels::linear::choice`).
//
// Loads. Each invocation brings 2 TK / WG_N quads (4 consecutive elements) of the x tile
// and 2 TK / WG_M of the w tile per stage. Where an operand is contiguous along k (x_k = 1)
// or along its rows (x_row = 1) with every offset a multiple of 4 (flags VEC_*), a quad
// that lies inside the operand is one 16-byte load through the vec4 view of the same
// buffer; otherwise (and at the edges, and for f16 weights or inputs) four bounds-checked
// scalar loads.
//
// The k-sum runs in increasing k with fma, with zeros past k_len, the same order for every
// element and every tile shape: deterministic, bit for bit equal to linear_subgroup.wgsl,
// and the same order as the CPU oracle.

override WG_M: u32 = 8u;
override WG_N: u32 = 8u;
override TK: u32 = 8u;

const QUAD_SCALAR: u32 = 0u;
const QUAD_ALONG_K: u32 = 1u;
const QUAD_ALONG_ROWS: u32 = 2u;
const MAX_QUADS: u32 = 4u;

@group(0) @binding(7) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> w4: array<vec4<u32>>; // f32 weights only

// Two stages of each operand: xs[stage][kk][row / 4][row % 4], 2 WG_M vec4s per k value.
var<workgroup> xs: array<vec4<f32>, 4u * TK * WG_M>;
var<workgroup> ws: array<vec4<f32>, 4u * TK * WG_N>;

// How the operands' quads are loaded (QUAD_*): bits 16-17 for x, 18-19 for w.
fn x_quads() -> u32 {
    return (p.flags >> 16u) & 3u;
}
fn w_quads() -> u32 {
    return (p.flags >> 18u) & 3u;
}

// Quad q of an operand's stage tile of `rows` rows and TK k values, as (row, k) of its first
// element and whether the quad runs along k (else along rows).
fn quad_origin(q: u32, rows: u32, mode: u32) -> vec3<u32> {
    if (mode == QUAD_ALONG_K) {
        return vec3<u32>(q / (TK / 4u), (q % (TK / 4u)) * 4u, 1u);
    }
    return vec3<u32>((q % (rows / 4u)) * 4u, q / (rows / 4u), 0u);
}

fn load_x_quad(base: u32, row: u32, k: u32, along_k: bool) -> vec4<f32> {
    let mode = x_quads();
    if (mode != QUAD_SCALAR) {
        let inside = select(row + 3u < p.m && k < p.k_len, row < p.m && k + 3u < p.k_len, along_k);
        if (inside) {
            return x4[(base + row * p.x_row + k * p.x_k) / 4u];
        }
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let r = select(row + j, row, along_k);
        let kk = select(k, k + j, along_k);
        if (r < p.m && kk < p.k_len) {
            v[j] = x_at_index(base + r * p.x_row + kk * p.x_k);
        }
    }
    return v;
}

fn load_w_quad(base: u32, row: u32, k: u32, along_k: bool) -> vec4<f32> {
    let mode = w_quads();
    if (mode != QUAD_SCALAR) {
        let inside = select(row + 3u < p.n && k < p.k_len, row < p.n && k + 3u < p.k_len, along_k);
        if (inside) {
            let at = base + row * p.w_row + k * p.w_k;
            if (W_Q8) {
                // Four values of one word, all in one scale's group (along k, 4-aligned).
                let word = w[at >> 2u];
                let s = q8_scale(at);
                return vec4<f32>(q8_byte(word, 0u), q8_byte(word, 1u), q8_byte(word, 2u), q8_byte(word, 3u)) * s;
            }
            return bitcast<vec4<f32>>(w4[at / 4u]);
        }
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let r = select(row + j, row, along_k);
        let kk = select(k, k + j, along_k);
        if (r < p.n && kk < p.k_len) {
            v[j] = w_at_index(base + r * p.w_row + kk * p.w_k);
        }
    }
    return v;
}

// Writes a quad loaded at tile (row, kk) into stage `stage` of xs (`is_x`) or ws.
fn put_quad(is_x: bool, stage: u32, row: u32, kk: u32, along_k: bool, v: vec4<f32>) {
    let width = select(2u * WG_N, 2u * WG_M, is_x);
    let at = (stage * TK + kk) * width + row / 4u;
    if (!along_k) {
        if (is_x) {
            xs[at] = v;
        } else {
            ws[at] = v;
        }
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let a = at + j * width;
        if (is_x) {
            xs[a][row % 4u] = v[j];
        } else {
            ws[a][row % 4u] = v[j];
        }
    }
}

fn store(b: u32, r: u32, c0: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j += 2u) {
        if (c0 + j < p.n) {
            write_pair(b, r, c0 + j, v[j], v[j + 1u]);
        }
    }
}

@compute @workgroup_size(WG_M * WG_N)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.z;
    let tile_m = 8u * WG_M;
    let tile_n = 8u * WG_N;
    let row0 = wg.y * tile_m;
    let col0 = wg.x * tile_n;
    let tr = lid / WG_N; // rows row0 + 8 tr .. + 7
    let tc = lid % WG_N; // cols col0 + 8 tc .. + 7
    let invocations = WG_M * WG_N;
    let x_base = p.x_offset + b * p.x_batch;
    let w_base = p.w_offset + b * p.w_batch;
    let x_mode = x_quads();
    let w_mode = w_quads();
    let qx = 2u * TK / WG_N; // quads of x per invocation and stage
    let qw = 2u * TK / WG_M;
    var a00 = vec4<f32>(0.0);
    var a01 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0);
    var a21 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0);
    var a31 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0);
    var a41 = vec4<f32>(0.0);
    var a50 = vec4<f32>(0.0);
    var a51 = vec4<f32>(0.0);
    var a60 = vec4<f32>(0.0);
    var a61 = vec4<f32>(0.0);
    var a70 = vec4<f32>(0.0);
    var a71 = vec4<f32>(0.0);
    // This invocation's share of the next stage, in registers.
    var next_x: array<vec4<f32>, MAX_QUADS>;
    var next_w: array<vec4<f32>, MAX_QUADS>;
    let steps = (p.k_len + TK - 1u) / TK;
    for (var s = 0u; s <= steps; s++) {
        // Fetch stage s (for s < steps) while stage s - 1 is multiplied.
        if (s < steps) {
            let k0 = s * TK;
            for (var i = 0u; i < qx; i++) {
                let o = quad_origin(lid + i * invocations, tile_m, x_mode);
                next_x[i] = load_x_quad(x_base, row0 + o.x, k0 + o.y, o.z == 1u);
            }
            for (var i = 0u; i < qw; i++) {
                let o = quad_origin(lid + i * invocations, tile_n, w_mode);
                next_w[i] = load_w_quad(w_base, col0 + o.x, k0 + o.y, o.z == 1u);
            }
        }
        if (s > 0u) {
            let xb = ((s - 1u) % 2u) * TK * 2u * WG_M + 2u * tr;
            let wb = ((s - 1u) % 2u) * TK * 2u * WG_N + 2u * tc;
            for (var kk = 0u; kk < TK; kk++) {
                let r0 = xs[xb + kk * 2u * WG_M];
                let r1 = xs[xb + kk * 2u * WG_M + 1u];
                let c0 = ws[wb + kk * 2u * WG_N];
                let c1 = ws[wb + kk * 2u * WG_N + 1u];
                a00 = fma(vec4<f32>(r0.x), c0, a00);
                a01 = fma(vec4<f32>(r0.x), c1, a01);
                a10 = fma(vec4<f32>(r0.y), c0, a10);
                a11 = fma(vec4<f32>(r0.y), c1, a11);
                a20 = fma(vec4<f32>(r0.z), c0, a20);
                a21 = fma(vec4<f32>(r0.z), c1, a21);
                a30 = fma(vec4<f32>(r0.w), c0, a30);
                a31 = fma(vec4<f32>(r0.w), c1, a31);
                a40 = fma(vec4<f32>(r1.x), c0, a40);
                a41 = fma(vec4<f32>(r1.x), c1, a41);
                a50 = fma(vec4<f32>(r1.y), c0, a50);
                a51 = fma(vec4<f32>(r1.y), c1, a51);
                a60 = fma(vec4<f32>(r1.z), c0, a60);
                a61 = fma(vec4<f32>(r1.z), c1, a61);
                a70 = fma(vec4<f32>(r1.w), c0, a70);
                a71 = fma(vec4<f32>(r1.w), c1, a71);
            }
        }
        // Stage s goes into the buffer that stage s - 2 used; its readers finished before
        // the last barrier.
        if (s < steps) {
            let stage = s % 2u;
            for (var i = 0u; i < qx; i++) {
                let o = quad_origin(lid + i * invocations, tile_m, x_mode);
                put_quad(true, stage, o.x, o.y, o.z == 1u, next_x[i]);
            }
            for (var i = 0u; i < qw; i++) {
                let o = quad_origin(lid + i * invocations, tile_n, w_mode);
                put_quad(false, stage, o.x, o.y, o.z == 1u, next_w[i]);
            }
        }
        workgroupBarrier();
    }
    let r = row0 + 8u * tr;
    let c = col0 + 8u * tc;
    store(b, r, c, a00);
    store(b, r, c + 4u, a01);
    store(b, r + 1u, c, a10);
    store(b, r + 1u, c + 4u, a11);
    store(b, r + 2u, c, a20);
    store(b, r + 2u, c + 4u, a21);
    store(b, r + 3u, c, a30);
    store(b, r + 3u, c + 4u, a31);
    store(b, r + 4u, c, a40);
    store(b, r + 4u, c + 4u, a41);
    store(b, r + 5u, c, a50);
    store(b, r + 5u, c + 4u, a51);
    store(b, r + 6u, c, a60);
    store(b, r + 6u, c + 4u, a61);
    store(b, r + 7u, c, a70);
    store(b, r + 7u, c + 4u, a71);
}

// Split-K epilogue: the product of a long reduction is computed as `k_len` partial products
// over consecutive k ranges (batches of `main`, stored [k_len][m][n] in `x`, f32), then summed
// here in range order (deterministic) into y[y_offset + r * y_row + c], added to y under
// ACCUMULATE. One invocation per output, or per pair of outputs for an f16 y (Y_F16); grid
// (ceil(n / 64) or ceil(n / 128), m).
@compute @workgroup_size(64)
fn reduce_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pairs = (p.flags & FLAG_Y_F16) != 0u;
    let c = select(1u, 2u, pairs) * (wg.x * 64u + lid);
    let r = wg.y;
    if (c >= p.n || r >= p.m) {
        return;
    }
    let at = p.y_offset + r * p.y_row + c;
    if (pairs) {
        var o = vec2<f32>(0.0);
        for (var s = 0u; s < p.k_len; s++) {
            let i = (s * p.m + r) * p.n + c;
            o += vec2<f32>(bitcast<f32>(x[i]), bitcast<f32>(x[i + 1u]));
        }
        if ((p.flags & FLAG_ACCUMULATE) != 0u) {
            o += unpack2x16float(y[at >> 1u]);
        }
        y[at >> 1u] = pack2x16float(o);
        return;
    }
    var o = 0.0;
    for (var s = 0u; s < p.k_len; s++) {
        o += bitcast<f32>(x[(s * p.m + r) * p.n + c]);
    }
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        o += bitcast<f32>(y[at]);
    }
    y[at] = bitcast<u32>(o);
}
