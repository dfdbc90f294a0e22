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
// Tiling: a 64 x 64 output tile per workgroup of 64 invocations; each invocation owns an
// 8 x 8 register block held as sixteen vec4 accumulators, and K advances 8 at a time through
// two 2 KiB workgroup tiles stored as vec4 along m (resp. n), so one vec4 read feeds four
// rows. Per step an invocation does 4 vec4 workgroup reads for 16 vec4 fmas: few memory
// operations per flop, which is what both GPUs and CPU implementations of WebGPU reward.
// Every bound is checked, so any m, n, k works. The k-sum runs in increasing k with fma,
// the same order for every element: deterministic, and the same order as the CPU oracle.

const TILE: u32 = 64u;
const TK: u32 = 8u;

var<workgroup> xs: array<vec4<f32>, 128>; // [TK][TILE / 4]
var<workgroup> ws: array<vec4<f32>, 128>; // [TK][TILE / 4]

fn store(b: u32, r: u32, c0: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (c0 + j < p.n) {
            write_output(b, r, c0 + j, v[j]);
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wg.z;
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    let tr = lid / 8u; // rows row0 + 8 tr .. + 7
    let tc = lid % 8u; // cols col0 + 8 tc .. + 7
    let x_base = p.x_offset + b * p.x_batch;
    let w_base = p.w_offset + b * p.w_batch;
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
    // Tile loading: invocation lid brings row (resp. column) lid of the tile, 8 k values.
    let lr = row0 + lid;
    let lc = col0 + lid;
    for (var k0 = 0u; k0 < p.k_len; k0 += TK) {
        for (var kk = 0u; kk < TK; kk++) {
            let gk = k0 + kk;
            var xv = 0.0;
            var wv = 0.0;
            if (gk < p.k_len) {
                if (lr < p.m) {
                    xv = x[x_base + lr * p.x_row + gk * p.x_k];
                }
                if (lc < p.n) {
                    wv = w[w_base + lc * p.w_row + gk * p.w_k];
                }
            }
            xs[kk * 16u + lid / 4u][lid % 4u] = xv;
            ws[kk * 16u + lid / 4u][lid % 4u] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let r0 = xs[kk * 16u + 2u * tr];
            let r1 = xs[kk * 16u + 2u * tr + 1u];
            let c0 = ws[kk * 16u + 2u * tc];
            let c1 = ws[kk * 16u + 2u * tc + 1u];
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
// over consecutive k ranges (batches of `main`, stored [k_len][m][n] in `x`), then summed here
// in range order (deterministic) into y[y_offset + r * y_row + c], added to y under
// ACCUMULATE. One invocation per output; grid (ceil(n / 64), m).
@compute @workgroup_size(64)
fn reduce_split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.x * TILE + lid;
    let r = wg.y;
    if (c >= p.n || r >= p.m) {
        return;
    }
    var o = 0.0;
    for (var s = 0u; s < p.k_len; s++) {
        o += x[(s * p.m + r) * p.n + c];
    }
    let at = p.y_offset + r * p.y_row + c;
    if ((p.flags & FLAG_ACCUMULATE) != 0u) {
        o += y[at];
    }
    y[at] = o;
}
