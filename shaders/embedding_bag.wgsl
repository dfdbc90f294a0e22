// Weighted embedding bag: out[r, :] = sum_j weights[r, j] * V[indices[r, j], :], j < bag,
// where bag = heads * knn (the heads of a token are summed into one bag, as in the reference).
//
// The value table V is read as raw u32 words so one kernel serves both storage formats:
//   f32: one word per element, bitcast;
//   f16: two elements per word, unpack2x16float (no shader-f16 feature needed);
//        a row is padded to a whole number of words.
// Tables larger than one storage binding are split by rows into buffers of `rows_per_chunk`
// rows. One dispatch binds four of them, the rows [first_row, first_row + 4 * rows_per_chunk),
// and sums only the bag entries whose slot lies there; a larger table takes several
// dispatches, each adding to what the previous one wrote (`accumulate`). A slot picks its
// buffer with a switch that is uniform across the workgroup. Accumulation is in f32, in bag
// order within a dispatch and dispatch after dispatch: deterministic.
//
// Workgroups cover (token row, block of columns): the grid's x numbers the column blocks, y
// and z the rows (`main_rows`: one block, and a block of WG rows per workgroup), so that one
// invocation computes at most a few columns and its loops stay short (CPU Vulkan drivers
// cut invocations off after 65,535 loop iterations). x varies
// fastest, so a token's column blocks run one after another and read the same value rows
// while they are still cached (and, on CPUs, in the TLB): lavapipe, paper configuration,
// 1.3x faster than with the blocks in z, where each block swept all tokens in turn. Neighbouring
// invocations read neighbouring words of the same value row (coalesced on GPUs). Two entry
// points: `main_vec4` reads 16-byte words (4 f32 or 8 f16 values per load) when rows allow
// (f32: v_dim % 4 == 0; f16: v_dim % 8 == 0), `main` reads single words otherwise.
// `main` computes one word per invocation (blocks of WG words); `main_vec4` keeps four
// 16-byte columns per invocation in registers (blocks of 4 WG), so that each bag entry's
// (slot, weight), packed in one workgroup word, is read once per four loads. Its four
// columns are adjacent, one 64-byte cache line per invocation: CPU implementations run each
// lane's load as its own short sequence, so only the loads of one subgroup-wide load are in
// flight together, and with adjacent lanes on adjacent lines those start 8 cache misses in
// different lines of a random row instead of 2 (lavapipe, paper configuration: the bag 1.4x
// faster than with columns lid + i WG). `main_column` (GPUs) keeps one 16-byte column per
// invocation and loads four bag entries at a time. The variant and the workgroup size WG are
// chosen per adapter (main_column with 64 on GPUs, main_vec4 with up to one row per
// workgroup on CPU implementations); the results do not depend on them (bit for bit).

struct Params {
    rows: u32,
    bag: u32,
    v_dim: u32,
    row_words: u32,     // u32 words per value row
    rows_per_chunk: u32,
    f16_values: u32,
    first_row: u32,     // first value row bound to v0 in this dispatch
    accumulate: u32,    // add to `out` instead of overwriting it
}

override WG: u32 = 64u;
// Bag entries the workgroup array holds: the host sets it to the bag size rounded up to a
// power of two (at most 1024), because WebGPU zero-fills workgroup memory at every
// workgroup's start and CPU implementations pay for every word of it.
override BAG_CAP: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
// `main` binds the scalar views, `main_vec4` the vec4 views of the same buffers.
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> v0: array<u32>;
@group(0) @binding(5) var<storage, read> v1: array<u32>;
@group(0) @binding(6) var<storage, read> v2: array<u32>;
@group(0) @binding(7) var<storage, read> v3: array<u32>;
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> w0: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> w1: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> w2: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> w3: array<vec4<u32>>;

// Each bag entry decoded once: x = (buffer + 1) << 29 | first word of its row in that buffer
// (0 when the row is not bound to this dispatch), y = the weight's bits. The inner loops then
// need no division.
var<workgroup> bag: array<vec2<u32>, BAG_CAP>;

// `weight_grads` (the backward's dL/dw): dy at binding 3 (the bag's output gradient, read
// through `out`), one gradient per bag entry at binding 8. With `accumulate` the dot goes on
// from the value binding 8 holds (a column shard continuing its predecessors' dot).
@group(0) @binding(8) var<storage, read_write> grad_weights: array<f32>;
const OFFSET_MASK: u32 = 0x1fffffffu;

fn decode(slot: u32) -> u32 {
    if (slot < p.first_row || (slot - p.first_row) / p.rows_per_chunk >= 4u) {
        return 0u;
    }
    let local = slot - p.first_row;
    let chunk = local / p.rows_per_chunk;
    return ((chunk + 1u) << 29u) | ((local % p.rows_per_chunk) * p.row_words);
}

fn value_word(entry: u32, word: u32) -> u32 {
    let at = (entry & OFFSET_MASK) + word;
    switch entry >> 29u {
        case 1u: { return v0[at]; }
        case 2u: { return v1[at]; }
        case 3u: { return v2[at]; }
        default: { return v3[at]; }
    }
}

// `quad` counts 16-byte words: quad q of a row holds its words 4q .. 4q + 3.
fn value_quad(entry: u32, quad: u32) -> vec4<u32> {
    let at = (entry & OFFSET_MASK) / 4u + quad;
    switch entry >> 29u {
        case 1u: { return w0[at]; }
        case 2u: { return w1[at]; }
        case 3u: { return w2[at]; }
        default: { return w3[at]; }
    }
}

// Columns l.x, l.y, l.z, l.w (16-byte words) of one entry's row, with one buffer switch
// for the four loads (CPU implementations do not merge four switches into one).
fn value_quads(entry: u32, l: vec4<u32>) -> array<vec4<u32>, 4> {
    let at = (entry & OFFSET_MASK) / 4u;
    switch entry >> 29u {
        case 1u: { return array<vec4<u32>, 4>(w0[at + l.x], w0[at + l.y], w0[at + l.z], w0[at + l.w]); }
        case 2u: { return array<vec4<u32>, 4>(w1[at + l.x], w1[at + l.y], w1[at + l.z], w1[at + l.w]); }
        case 3u: { return array<vec4<u32>, 4>(w2[at + l.x], w2[at + l.y], w2[at + l.z], w2[at + l.w]); }
        default: { return array<vec4<u32>, 4>(w3[at + l.x], w3[at + l.y], w3[at + l.z], w3[at + l.w]); }
    }
}

fn load_bag(row: u32, lid: u32) {
    for (var j = lid; j < p.bag; j += WG) {
        bag[j] = vec2<u32>(decode(indices[row * p.bag + j]), bitcast<u32>(weights[row * p.bag + j]));
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.z * nwg.y + wg.y;
    if (row >= p.rows) {
        return;
    }
    load_bag(row, lid);
    let word = wg.x * WG + lid;
    if (word >= p.row_words) {
        return;
    }
    let out0 = row * p.v_dim;
    if (p.f16_values != 0u) {
        let c = word * 2u;
        let has_second = c + 1u < p.v_dim;
        var acc = vec2<f32>(0.0, 0.0);
        if (p.accumulate != 0u) {
            acc.x = out[out0 + c];
            if (has_second) {
                acc.y = out[out0 + c + 1u];
            }
        }
        for (var j = 0u; j < p.bag; j++) {
            let e = bag[j];
            if (e.x != 0u) {
                acc = fma(vec2<f32>(bitcast<f32>(e.y)), unpack2x16float(value_word(e.x, word)), acc);
            }
        }
        out[out0 + c] = acc.x;
        if (has_second) {
            out[out0 + c + 1u] = acc.y;
        }
    } else {
        var acc = 0.0;
        if (p.accumulate != 0u) {
            acc = out[out0 + word];
        }
        for (var j = 0u; j < p.bag; j++) {
            let e = bag[j];
            if (e.x != 0u) {
                acc = fma(bitcast<f32>(e.y), bitcast<f32>(value_word(e.x, word)), acc);
            }
        }
        out[out0 + word] = acc;
    }
}

@compute @workgroup_size(WG)
fn main_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.z * nwg.y + wg.y;
    if (row >= p.rows) {
        return;
    }
    load_bag(row, lid);
    let quads = p.row_words / 4u;
    let out0 = row * (p.v_dim / 4u);
    // Columns q0, q1, q2, q3 of this block; a column past the row is computed on column 0
    // (a valid address) and not stored.
    {
        let q0 = (wg.x * WG + lid) * 4u;
        let q1 = q0 + 1u;
        let q2 = q0 + 2u;
        let q3 = q0 + 3u;
        let l0 = select(0u, q0, q0 < quads);
        let l1 = select(0u, q1, q1 < quads);
        let l2 = select(0u, q2, q2 < quads);
        let l3 = select(0u, q3, q3 < quads);
        if (p.f16_values != 0u) {
            var a0 = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
            var a1 = a0;
            var a2 = a0;
            var a3 = a0;
            if (p.accumulate != 0u) {
                a0 = array<vec4<f32>, 2>(out4[out0 + 2u * l0], out4[out0 + 2u * l0 + 1u]);
                a1 = array<vec4<f32>, 2>(out4[out0 + 2u * l1], out4[out0 + 2u * l1 + 1u]);
                a2 = array<vec4<f32>, 2>(out4[out0 + 2u * l2], out4[out0 + 2u * l2 + 1u]);
                a3 = array<vec4<f32>, 2>(out4[out0 + 2u * l3], out4[out0 + 2u * l3 + 1u]);
            }
            // Columns past the row compute on column 0 and are not stored.
            let l = vec4<u32>(l0, l1, l2, l3);
            for (var j = 0u; j < p.bag; j++) {
                let e = bag[j];
                if (e.x != 0u) {
                    let v = value_quads(e.x, l);
                    a0 = add_f16_loaded(a0, e, v[0]);
                    a1 = add_f16_loaded(a1, e, v[1]);
                    a2 = add_f16_loaded(a2, e, v[2]);
                    a3 = add_f16_loaded(a3, e, v[3]);
                }
            }
            if (q0 < quads) {
                out4[out0 + 2u * q0] = a0[0];
                out4[out0 + 2u * q0 + 1u] = a0[1];
            }
            if (q1 < quads) {
                out4[out0 + 2u * q1] = a1[0];
                out4[out0 + 2u * q1 + 1u] = a1[1];
            }
            if (q2 < quads) {
                out4[out0 + 2u * q2] = a2[0];
                out4[out0 + 2u * q2 + 1u] = a2[1];
            }
            if (q3 < quads) {
                out4[out0 + 2u * q3] = a3[0];
                out4[out0 + 2u * q3 + 1u] = a3[1];
            }
        } else {
            var a0 = vec4<f32>(0.0);
            var a1 = a0;
            var a2 = a0;
            var a3 = a0;
            if (p.accumulate != 0u) {
                a0 = out4[out0 + l0];
                a1 = out4[out0 + l1];
                a2 = out4[out0 + l2];
                a3 = out4[out0 + l3];
            }
            let l = vec4<u32>(l0, l1, l2, l3);
            for (var j = 0u; j < p.bag; j++) {
                let e = bag[j];
                if (e.x != 0u) {
                    let v = value_quads(e.x, l);
                    a0 = add_f32_loaded(a0, e, v[0]);
                    a1 = add_f32_loaded(a1, e, v[1]);
                    a2 = add_f32_loaded(a2, e, v[2]);
                    a3 = add_f32_loaded(a3, e, v[3]);
                }
            }
            if (q0 < quads) {
                out4[out0 + q0] = a0;
            }
            if (q1 < quads) {
                out4[out0 + q1] = a1;
            }
            if (q2 < quads) {
                out4[out0 + q2] = a2;
            }
            if (q3 < quads) {
                out4[out0 + q3] = a3;
            }
        }
    }
}

// The GPU variant of `main_vec4`: one 16-byte column per invocation (four times as many
// invocations, so a GPU keeps more loads in flight), and the bag read four entries at a time:
// four independent loads, then their four multiply-adds in bag order (the same chain as
// `main_vec4`, so the results are bit-identical). An entry outside this dispatch's buffers
// still loads (from a valid address) but adds nothing.
@compute @workgroup_size(WG)
fn main_column(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.z * nwg.y + wg.y;
    if (row >= p.rows) {
        return;
    }
    load_bag(row, lid);
    let q = wg.x * WG + lid;
    if (q >= p.row_words / 4u) {
        return;
    }
    let out0 = row * (p.v_dim / 4u);
    let whole = p.bag / 4u * 4u;
    if (p.f16_values != 0u) {
        var a = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        if (p.accumulate != 0u) {
            a = array<vec4<f32>, 2>(out4[out0 + 2u * q], out4[out0 + 2u * q + 1u]);
        }
        for (var j = 0u; j < whole; j += 4u) {
            let e0 = bag[j];
            let e1 = bag[j + 1u];
            let e2 = bag[j + 2u];
            let e3 = bag[j + 3u];
            let v0 = value_quad(e0.x, q);
            let v1 = value_quad(e1.x, q);
            let v2 = value_quad(e2.x, q);
            let v3 = value_quad(e3.x, q);
            a = add_f16_loaded(a, e0, v0);
            a = add_f16_loaded(a, e1, v1);
            a = add_f16_loaded(a, e2, v2);
            a = add_f16_loaded(a, e3, v3);
        }
        for (var j = whole; j < p.bag; j++) {
            let e = bag[j];
            a = add_f16_loaded(a, e, value_quad(e.x, q));
        }
        out4[out0 + 2u * q] = a[0];
        out4[out0 + 2u * q + 1u] = a[1];
    } else {
        var a = vec4<f32>(0.0);
        if (p.accumulate != 0u) {
            a = out4[out0 + q];
        }
        for (var j = 0u; j < whole; j += 4u) {
            let e0 = bag[j];
            let e1 = bag[j + 1u];
            let e2 = bag[j + 2u];
            let e3 = bag[j + 3u];
            let v0 = value_quad(e0.x, q);
            let v1 = value_quad(e1.x, q);
            let v2 = value_quad(e2.x, q);
            let v3 = value_quad(e3.x, q);
            a = add_f32_loaded(a, e0, v0);
            a = add_f32_loaded(a, e1, v1);
            a = add_f32_loaded(a, e2, v2);
            a = add_f32_loaded(a, e3, v3);
        }
        for (var j = whole; j < p.bag; j++) {
            let e = bag[j];
            a = add_f32_loaded(a, e, value_quad(e.x, q));
        }
        out4[out0 + q] = a;
    }
}

// The CPU variant for short rows: one token row per invocation, the whole row in registers
// (at most ROW_QUADS 16-byte words), no workgroup memory and no barriers. Where a value row
// is a few 16-byte words, the column-block variants leave most of a workgroup idle and pay a
// workgroup (and a barrier) per token row. Each output element is the same chain of
// multiply-adds in bag order as in `main_vec4`, so the results are bit-identical.
const ROW_QUADS: u32 = 16u;

@compute @workgroup_size(WG)
fn main_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.z * nwg.y + wg.y) * WG + lid;
    if (row >= p.rows) {
        return;
    }
    let quads = p.row_words / 4u;
    let out_quads = p.v_dim / 4u;
    let out0 = row * out_quads;
    var acc: array<vec4<f32>, 2 * ROW_QUADS>;
    if (p.accumulate != 0u) {
        for (var c = 0u; c < out_quads; c++) {
            acc[c] = out4[out0 + c];
        }
    }
    for (var j = 0u; j < p.bag; j++) {
        let e = vec2<u32>(decode(indices[row * p.bag + j]), bitcast<u32>(weights[row * p.bag + j]));
        if (e.x == 0u) {
            continue;
        }
        if (p.f16_values != 0u) {
            for (var q = 0u; q < quads; q++) {
                let a = add_f16_loaded(array<vec4<f32>, 2>(acc[2u * q], acc[2u * q + 1u]), e, value_quad(e.x, q));
                acc[2u * q] = a[0];
                acc[2u * q + 1u] = a[1];
            }
        } else {
            for (var q = 0u; q < quads; q++) {
                acc[q] = add_f32_loaded(acc[q], e, value_quad(e.x, q));
            }
        }
    }
    for (var c = 0u; c < out_quads; c++) {
        out4[out0 + c] = acc[c];
    }
}

// Adds a loaded 16-byte column `v` of entry `e` (decoded slot, weight bits) to `acc`, when
// the entry's row is bound to this dispatch.
fn add_f32_loaded(acc: vec4<f32>, e: vec2<u32>, v: vec4<u32>) -> vec4<f32> {
    if (e.x == 0u) {
        return acc;
    }
    return fma(vec4<f32>(bitcast<f32>(e.y)), bitcast<vec4<f32>>(v), acc);
}

fn add_f16_loaded(acc: array<vec4<f32>, 2>, e: vec2<u32>, v: vec4<u32>) -> array<vec4<f32>, 2> {
    if (e.x == 0u) {
        return acc;
    }
    let wv = vec4<f32>(bitcast<f32>(e.y));
    return array<vec4<f32>, 2>(
        fma(wv, vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), acc[0]),
        fma(wv, vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)), acc[1]),
    );
}

// Backward, dL/dw[r, j] = <dy[r, :], V[indices[r, j], :]>: one invocation per bag entry, a
// fixed-order dot product over the row (f32, or the f16 pairs unpacked). Entries whose row
// lies outside this dispatch's buffers are left to the dispatch that binds it; every entry
// is written by exactly one dispatch.
@compute @workgroup_size(64)
fn weight_grads(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (e >= p.rows * p.bag) {
        return;
    }
    let entry = decode(indices[e]);
    if (entry == 0u) {
        return;
    }
    let d0 = (e / p.bag) * p.v_dim;
    var dot = 0.0;
    if (p.accumulate != 0u) {
        dot = grad_weights[e];
    }
    if (p.f16_values != 0u) {
        for (var word = 0u; word < p.row_words; word++) {
            let v = unpack2x16float(value_word(entry, word));
            let c = 2u * word;
            dot = fma(out[d0 + c], v.x, dot);
            if (c + 1u < p.v_dim) {
                dot = fma(out[d0 + c + 1u], v.y, dot);
            }
        }
    } else {
        for (var c = 0u; c < p.v_dim; c++) {
            dot = fma(out[d0 + c], bitcast<f32>(value_word(entry, c)), dot);
        }
    }
    grad_weights[e] = dot;
}

// `weight_grads` for f32 values whose rows are whole 16-byte words (v_dim a multiple of 4):
// the row and dy read 16 bytes at a time, the same fma chain in the same order, so the same
// bits. CPU adapters run every load lane by lane, at about the same cost whatever its width.
@compute @workgroup_size(64)
fn weight_grads_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (e >= p.rows * p.bag) {
        return;
    }
    let entry = decode(indices[e]);
    if (entry == 0u) {
        return;
    }
    let quads = p.v_dim / 4u;
    let d0 = (e / p.bag) * quads;
    var dot = 0.0;
    if (p.accumulate != 0u) {
        dot = grad_weights[e];
    }
    for (var q = 0u; q < quads; q++) {
        let v = bitcast<vec4<f32>>(value_quad(entry, q));
        let dy = out4[d0 + q];
        dot = fma(dy.x, v.x, dot);
        dot = fma(dy.y, v.y, dot);
        dot = fma(dy.z, v.z, dot);
        dot = fma(dy.w, v.w, dot);
    }
    grad_weights[e] = dot;
}
