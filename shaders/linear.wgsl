// Linear layer: y[m, n] = sum_k x[m, k] * w[n, k] + bias[n]   (nn.Linear: w is [out, in]).
//
// Optional epilogue (flag GATE): y = aux[m, n] * silu(y), which fuses Memory+'s
// `bag * silu(swilu_projection(x))` into the projection so the pre-activation never
// reaches global memory.
//
// Tiling: a 64 x 64 output tile per workgroup of 256 invocations; each invocation owns a
// 4 x 4 register block at rows tr + 16 i, columns tc + 16 j (strided so that reads of the
// workgroup tiles are conflict-free). K advances 16 at a time through two 4 KiB workgroup
// tiles. Every bound is checked, so any m, n, k works. The k-sum runs in increasing k
// order with fma, the same order for every element: results are deterministic.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32, // bit 0: add bias; bit 1: gate epilogue with aux
}

const FLAG_BIAS: u32 = 1u;
const FLAG_GATE: u32 = 2u;
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<f32, 1024>; // [TK][TM]
var<workgroup> ws: array<f32, 1024>; // [TK][TN]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    let tr = lid / 16u;
    let tc = lid % 16u;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = lid + e * 256u;
            let r = idx / TK;
            let kk = idx % TK;
            let gk = k0 + kk;
            var xv = 0.0;
            var wv = 0.0;
            if (gk < p.k) {
                if (row0 + r < p.m) {
                    xv = x[(row0 + r) * p.k + gk];
                }
                if (col0 + r < p.n) {
                    wv = w[(col0 + r) * p.k + gk];
                }
            }
            xs[kk * TM + r] = xv;
            ws[kk * TN + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[kk * TM + tr + 16u * i];
                b[i] = ws[kk * TN + tc + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + tr + 16u * i;
        if (r >= p.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + tc + 16u * j;
            if (c >= p.n) {
                continue;
            }
            var v = acc[i * 4u + j];
            if ((p.flags & FLAG_BIAS) != 0u) {
                v += bias[c];
            }
            if ((p.flags & FLAG_GATE) != 0u) {
                v = aux[r * p.n + c] * (v / (1.0 + exp(-v)));
            }
            y[r * p.n + c] = v;
        }
    }
}
