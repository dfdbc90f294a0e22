// The linear layer of `linear.wgsl` (same Params, bindings, flags and results, bit for bit)
// for CPU implementations of WebGPU, which run each subgroup as one SIMD instruction stream
// (lavapipe: 8 lanes of AVX2). Needs the `subgroups` feature and subgroups of 8 or more.
//
// No workgroup memory and no barriers: on CPU adapters every barrier is a context switch
// through the workgroup's SIMD batches, and workgroup arrays are memory like any other. Each
// invocation owns a block of 32 rows (16 for products of one block: ROWS) x 4 columns (columns
// WG apart). The 32 x values of a k step are the same for every lane, so the lanes load them
// together, lane l the value at k0 + l for each of the 32 rows, and share them with
// subgroupShuffle (a register shuffle; the source lane is uniform). Per 8 k values a lane does 32 loads of x and 32 of w for
// 1,024 fmas. On lavapipe, storage loads run lane by lane and dominate, so the block is as
// large as registers allow. Measured on lavapipe (Mesa 25.0, 2 cores), 512 x 2048 x 1024:
// 32 x 4 blocks about 10 GFLOP/s, 32 x 8 11, 32 x 1 4.8, 16 x 8 7.8, 64 x 4 6.4, the tiled
// kernel 3.8. 32 x 8 is not used because LLVM takes several times longer to compile it
// (seconds per pipeline on 2 cores); arrays of accumulators indexed in loops stay in memory
// there (half the speed), hence the named accumulators.
//
// An f16 output (Y_F16) stores two adjacent columns a word, so for it (PAIRED) each lane
// owns two pairs of adjacent columns, 2 WG apart, instead of four columns WG apart: the same
// columns per workgroup and the same sums.
//
// Every lane takes part in every broadcast (subgroup operations need uniform control flow),
// so lanes past the last column or row compute on zeros and store nothing. The k-sum runs in
// increasing k with fma, 8 at a time with zeros past k_len, exactly as in `linear.wgsl`, so
// the two kernels agree bit for bit. Params, bindings and the epilogue: linear_common.wgsl.
//
// Browsers need `enable subgroups;` at the top, which naga 30 refuses: the Rust side prepends
// it on wasm32 (see `kernels::linear`).

// Rows per invocation: 32, or 16 for products that would otherwise be one workgroup (weight
// gradients of narrow layers: 32 x 32 outputs over thousands of k), which then spread over
// two cores. The same sums either way.
override ROWS: u32 = 32u;
const COLUMNS: u32 = 4u;

// Invocations per workgroup (a multiple of 8); a workgroup covers WG * COLUMNS columns.
override WG: u32 = 64u;
override PAIRED: bool = false;

// x at (row, k), zero outside the operand. The address is clamped to a real element and the
// value selected, rather than the load skipped in an `if`: lavapipe runs every storage load
// lane by lane, and a load under divergent control flow also tests each lane's mask.
fn x_at(base: u32, row: u32, k: u32) -> f32 {
    let v = x_at_index(base + min(row, p.m - 1u) * p.x_row + min(k, p.k_len - 1u) * p.x_k);
    return select(0.0, v, row < p.m && k < p.k_len);
}

// Rows r0 .. r0 + 3 at k.
fn load_x4(base: u32, r0: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(x_at(base, r0, k), x_at(base, r0 + 1u, k), x_at(base, r0 + 2u, k), x_at(base, r0 + 3u, k));
}

// w at (column, k) as a splat, zero outside the operand. `base` is the column's start,
// clamped to a real column, and k is clamped too, so every lane loads unmasked.
fn w_at(base: u32, column_ok: bool, k: u32) -> vec4<f32> {
    let v = w_at_index(base + min(k, p.k_len - 1u) * p.w_k);
    return vec4<f32>(select(0.0, v, column_ok && k < p.k_len));
}

fn store(b: u32, r: u32, c: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (r + j < p.m && c < p.n) {
            write_output(b, r + j, c, v[j]);
        }
    }
}

// Columns c and c + 1 (PAIRED) of rows r .. r + 3.
fn store_pair(b: u32, r: u32, c: u32, v: vec4<f32>, v1: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        if (r + j < p.m && c < p.n) {
            write_pair(b, r + j, c, v[j], v1[j]);
        }
    }
}

// a<g> of a0 .. a7.
fn pick(g: u32, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>, a4: vec4<f32>, a5: vec4<f32>, a6: vec4<f32>, a7: vec4<f32>) -> vec4<f32> {
    let lo = select(select(a0, a1, g == 1u), select(a2, a3, g == 3u), g >= 2u);
    let hi = select(select(a4, a5, g == 5u), select(a6, a7, g == 7u), g >= 6u);
    return select(lo, hi, g >= 4u);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let b = wg.z;
    let r = wg.y * ROWS;
    let x_base = p.x_offset + b * p.x_batch;
    let w_base = p.w_offset + b * p.w_batch;
    // This lane's columns c0 .. c3, WG apart (PAIRED: c0, c0 + 1 and c2, c2 + 1, 2 WG apart).
    let c0 = wg.x * WG * COLUMNS + select(lid, 2u * lid, PAIRED);
    let c1 = c0 + select(WG, 1u, PAIRED);
    let c2 = c0 + 2u * WG;
    let c3 = c1 + 2u * WG;
    let wb0 = w_base + min(c0, p.n - 1u) * p.w_row;
    let wb1 = w_base + min(c1, p.n - 1u) * p.w_row;
    let wb2 = w_base + min(c2, p.n - 1u) * p.w_row;
    let wb3 = w_base + min(c3, p.n - 1u) * p.w_row;
    // a<g><c>: rows r + 4 g .. + 3 of column c<c>.
    var a00 = vec4<f32>(0.0); var a01 = vec4<f32>(0.0); var a02 = vec4<f32>(0.0); var a03 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0); var a11 = vec4<f32>(0.0); var a12 = vec4<f32>(0.0); var a13 = vec4<f32>(0.0);
    var a20 = vec4<f32>(0.0); var a21 = vec4<f32>(0.0); var a22 = vec4<f32>(0.0); var a23 = vec4<f32>(0.0);
    var a30 = vec4<f32>(0.0); var a31 = vec4<f32>(0.0); var a32 = vec4<f32>(0.0); var a33 = vec4<f32>(0.0);
    var a40 = vec4<f32>(0.0); var a41 = vec4<f32>(0.0); var a42 = vec4<f32>(0.0); var a43 = vec4<f32>(0.0);
    var a50 = vec4<f32>(0.0); var a51 = vec4<f32>(0.0); var a52 = vec4<f32>(0.0); var a53 = vec4<f32>(0.0);
    var a60 = vec4<f32>(0.0); var a61 = vec4<f32>(0.0); var a62 = vec4<f32>(0.0); var a63 = vec4<f32>(0.0);
    var a70 = vec4<f32>(0.0); var a71 = vec4<f32>(0.0); var a72 = vec4<f32>(0.0); var a73 = vec4<f32>(0.0);
    let kl = lane % 8u;
    for (var k0 = 0u; k0 < p.k_len; k0 += 8u) {
        // This lane's share of the x block: the 32 rows at k0 + kl.
        let x0 = load_x4(x_base, r, k0 + kl);
        let x1 = load_x4(x_base, r + 4u, k0 + kl);
        let x2 = load_x4(x_base, r + 8u, k0 + kl);
        let x3 = load_x4(x_base, r + 12u, k0 + kl);
        var x4 = vec4<f32>(0.0);
        var x5 = vec4<f32>(0.0);
        var x6 = vec4<f32>(0.0);
        var x7 = vec4<f32>(0.0);
        if (ROWS == 32u) {
            x4 = load_x4(x_base, r + 16u, k0 + kl);
            x5 = load_x4(x_base, r + 20u, k0 + kl);
            x6 = load_x4(x_base, r + 24u, k0 + kl);
            x7 = load_x4(x_base, r + 28u, k0 + kl);
        }
        // k0 + j in increasing order, its x from lane j.
        for (var j = 0u; j < 8u; j++) {
            let w0 = w_at(wb0, c0 < p.n, k0 + j);
            let w1 = w_at(wb1, c1 < p.n, k0 + j);
            let w2 = w_at(wb2, c2 < p.n, k0 + j);
            let w3 = w_at(wb3, c3 < p.n, k0 + j);
            var s = subgroupShuffle(x0, j);
            a00 = fma(s, w0, a00); a01 = fma(s, w1, a01); a02 = fma(s, w2, a02); a03 = fma(s, w3, a03);
            s = subgroupShuffle(x1, j);
            a10 = fma(s, w0, a10); a11 = fma(s, w1, a11); a12 = fma(s, w2, a12); a13 = fma(s, w3, a13);
            s = subgroupShuffle(x2, j);
            a20 = fma(s, w0, a20); a21 = fma(s, w1, a21); a22 = fma(s, w2, a22); a23 = fma(s, w3, a23);
            s = subgroupShuffle(x3, j);
            a30 = fma(s, w0, a30); a31 = fma(s, w1, a31); a32 = fma(s, w2, a32); a33 = fma(s, w3, a33);
            if (ROWS == 32u) {
                s = subgroupShuffle(x4, j);
                a40 = fma(s, w0, a40); a41 = fma(s, w1, a41); a42 = fma(s, w2, a42); a43 = fma(s, w3, a43);
                s = subgroupShuffle(x5, j);
                a50 = fma(s, w0, a50); a51 = fma(s, w1, a51); a52 = fma(s, w2, a52); a53 = fma(s, w3, a53);
                s = subgroupShuffle(x6, j);
                a60 = fma(s, w0, a60); a61 = fma(s, w1, a61); a62 = fma(s, w2, a62); a63 = fma(s, w3, a63);
                s = subgroupShuffle(x7, j);
                a70 = fma(s, w0, a70); a71 = fma(s, w1, a71); a72 = fma(s, w2, a72); a73 = fma(s, w3, a73);
            }
        }
    }
    // Stored a group of 4 rows at a time, the group's accumulators picked by selects on the
    // (uniform) group index: reading them back from an array indexed in a loop runs lane by
    // lane on CPU adapters, and 32 inlined epilogues make LLVM compile for seconds.
    for (var g = 0u; g < ROWS / 4u; g++) {
        let rr = r + 4u * g;
        let v0 = pick(g, a00, a10, a20, a30, a40, a50, a60, a70);
        let v1 = pick(g, a01, a11, a21, a31, a41, a51, a61, a71);
        let v2 = pick(g, a02, a12, a22, a32, a42, a52, a62, a72);
        let v3 = pick(g, a03, a13, a23, a33, a43, a53, a63, a73);
        if (PAIRED) {
            store_pair(b, rr, c0, v0, v1);
            store_pair(b, rr, c2, v2, v3);
        } else {
            store(b, rr, c0, v0);
            store(b, rr, c1, v1);
            store(b, rr, c2, v2);
            store(b, rr, c3, v3);
        }
    }
}
