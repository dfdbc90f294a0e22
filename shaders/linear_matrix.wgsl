// The linear layer of `linear.wgsl` (same Params, bindings 0-6, flags and epilogue) on the
// adapter's matrix units (cooperative matrices), for the `f16-inputs` GEMM precision: the
// operands are rounded to the matrix type's input precision (f16, or f32 where the adapter
// only offers f32 x f32) as they are staged, and products accumulate in f32. Needs the
// `wgpu_cooperative_matrix` extension (and `f16` for the f16 configuration); the host
// prepends the `enable` directives and the configuration:
//   alias In = f16;  const T: u32 = 16u;   (the matrices' edge)
//   alias MatA = coop_mat16x16<f16, A>;  alias MatB = coop_mat16x16<f16, B>;
//   alias MatC = coop_mat16x16<f32, C>;
//
// A workgroup of SG_M x SG_N subgroups (SG invocations each, the adapter's fixed subgroup
// size) computes a 2T SG_M x 2T SG_N output tile; each subgroup a 2T x 2T block held as four
// accumulator matrices. K advances T at a time: every invocation stages its share of the x
// and w tiles (any strides, zeros outside the operands) into workgroup memory, k contiguous,
// so the x tile is A row-major and the w tile is B column-major. The accumulators go out
// through a T x T staging area per subgroup, one matrix at a time, and every element through
// the common epilogue (bias, gate, accumulate, bounds, f16 outputs).

override SG_M: u32 = 2u;
override SG_N: u32 = 2u;
override SG: u32 = 32u;

var<workgroup> xs: array<In, 2u * T * SG_M * T>; // [2T SG_M rows][T k values]
var<workgroup> ws: array<In, 2u * T * SG_N * T>; // [2T SG_N columns][T k values]
var<workgroup> outs: array<f32, SG_M * SG_N * T * T>; // per subgroup, one T x T matrix

fn x_at(base: u32, row: u32, k: u32) -> In {
    if (row < p.m && k < p.k_len) {
        return In(x_at_index(base + row * p.x_row + k * p.x_k));
    }
    return In(0.0);
}

fn w_at(base: u32, col: u32, k: u32) -> In {
    if (col < p.n && k < p.k_len) {
        return In(w_at_index(base + col * p.w_row + k * p.w_k));
    }
    return In(0.0);
}

@compute @workgroup_size(SG * SG_M * SG_N)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let b = wg.z;
    let tile_m = 2u * T * SG_M;
    let tile_n = 2u * T * SG_N;
    let row0 = wg.y * tile_m;
    let col0 = wg.x * tile_n;
    let x_base = p.x_offset + b * p.x_batch;
    let w_base = p.w_offset + b * p.w_batch;
    let invocations = SG * SG_M * SG_N;
    let sm = sg / SG_N;
    let sn = sg % SG_N;
    var c00 = MatC();
    var c01 = MatC();
    var c10 = MatC();
    var c11 = MatC();
    for (var k0 = 0u; k0 < p.k_len; k0 += T) {
        for (var e = lid; e < tile_m * T; e += invocations) {
            xs[e] = x_at(x_base, row0 + e / T, k0 + e % T);
        }
        for (var e = lid; e < tile_n * T; e += invocations) {
            ws[e] = w_at(w_base, col0 + e / T, k0 + e % T);
        }
        workgroupBarrier();
        let a0 = coopLoadT<MatA>(&xs[(sm * 2u * T) * T], T);
        let a1 = coopLoadT<MatA>(&xs[(sm * 2u * T + T) * T], T);
        let b0 = coopLoad<MatB>(&ws[(sn * 2u * T) * T], T);
        let b1 = coopLoad<MatB>(&ws[(sn * 2u * T + T) * T], T);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
        workgroupBarrier();
    }
    let own = sg * T * T;
    for (var q = 0u; q < 4u; q++) {
        switch q {
            case 0u: {
                coopStoreT(c00, &outs[own], T);
            }
            case 1u: {
                coopStoreT(c01, &outs[own], T);
            }
            case 2u: {
                coopStoreT(c10, &outs[own], T);
            }
            default: {
                coopStoreT(c11, &outs[own], T);
            }
        }
        workgroupBarrier();
        let r0 = row0 + sm * 2u * T + (q / 2u) * T;
        let c0 = col0 + sn * 2u * T + (q % 2u) * T;
        // Two adjacent columns an invocation (T is even), so an f16 output's word is one's.
        for (var e = 2u * lane; e < T * T; e += 2u * SG) {
            let r = r0 + e / T;
            let c = c0 + e % T;
            if (r < p.m && c < p.n) {
                write_pair(b, r, c, outs[own + e], outs[own + e + 1u]);
            }
        }
        workgroupBarrier();
    }
}
