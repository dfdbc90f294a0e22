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
// One workgroup per token row; invocations stride over the row so that neighbouring
// invocations read neighbouring words of the same value row (coalesced on GPUs). Two entry
// points: `main_vec4` reads 16-byte words (4 f32 or 8 f16 values per load) when rows allow
// (f32: v_dim % 4 == 0; f16: v_dim % 8 == 0), `main` reads single words otherwise.

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

const WG: u32 = 64u;
const MAX_BAG: u32 = 1024u;

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

var<workgroup> bag_slot: array<u32, MAX_BAG>;
var<workgroup> bag_weight: array<f32, MAX_BAG>;

// Whether `slot` lies in the four buffers bound to this dispatch.
fn bound_here(slot: u32) -> bool {
    return slot >= p.first_row && (slot - p.first_row) / p.rows_per_chunk < 4u;
}

fn value_word(slot: u32, word: u32) -> u32 {
    let local = slot - p.first_row;
    let chunk = local / p.rows_per_chunk;
    let at = (local % p.rows_per_chunk) * p.row_words + word;
    switch chunk {
        case 0u: { return v0[at]; }
        case 1u: { return v1[at]; }
        case 2u: { return v2[at]; }
        default: { return v3[at]; }
    }
}

// `quad` counts 16-byte words: quad q of a row holds its words 4q .. 4q + 3.
fn value_quad(slot: u32, quad: u32) -> vec4<u32> {
    let local = slot - p.first_row;
    let chunk = local / p.rows_per_chunk;
    let at = (local % p.rows_per_chunk) * (p.row_words / 4u) + quad;
    switch chunk {
        case 0u: { return w0[at]; }
        case 1u: { return w1[at]; }
        case 2u: { return w2[at]; }
        default: { return w3[at]; }
    }
}

fn load_bag(row: u32, lid: u32) {
    for (var j = lid; j < p.bag; j += WG) {
        bag_slot[j] = indices[row * p.bag + j];
        bag_weight[j] = weights[row * p.bag + j];
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    load_bag(row, lid);
    let out0 = row * p.v_dim;
    if (p.f16_values != 0u) {
        for (var word = lid; word < p.row_words; word += WG) {
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
                if (bound_here(bag_slot[j])) {
                    acc = fma(vec2<f32>(bag_weight[j]), unpack2x16float(value_word(bag_slot[j], word)), acc);
                }
            }
            out[out0 + c] = acc.x;
            if (has_second) {
                out[out0 + c + 1u] = acc.y;
            }
        }
    } else {
        for (var c = lid; c < p.v_dim; c += WG) {
            var acc = 0.0;
            if (p.accumulate != 0u) {
                acc = out[out0 + c];
            }
            for (var j = 0u; j < p.bag; j++) {
                if (bound_here(bag_slot[j])) {
                    acc = fma(bag_weight[j], bitcast<f32>(value_word(bag_slot[j], c)), acc);
                }
            }
            out[out0 + c] = acc;
        }
    }
}

@compute @workgroup_size(64)
fn main_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wg.y * nwg.x + wg.x;
    if (row >= p.rows) {
        return;
    }
    load_bag(row, lid);
    let quads = p.row_words / 4u;
    let out0 = row * (p.v_dim / 4u);
    if (p.f16_values != 0u) {
        for (var q = lid; q < quads; q += WG) {
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            if (p.accumulate != 0u) {
                lo = out4[out0 + 2u * q];
                hi = out4[out0 + 2u * q + 1u];
            }
            for (var j = 0u; j < p.bag; j++) {
                let slot = bag_slot[j];
                if (bound_here(slot)) {
                    let v = value_quad(slot, q);
                    let w = vec4<f32>(bag_weight[j]);
                    lo = fma(w, vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), lo);
                    hi = fma(w, vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)), hi);
                }
            }
            out4[out0 + 2u * q] = lo;
            out4[out0 + 2u * q + 1u] = hi;
        }
    } else {
        for (var q = lid; q < quads; q += WG) {
            var acc = vec4<f32>(0.0);
            if (p.accumulate != 0u) {
                acc = out4[out0 + q];
            }
            for (var j = 0u; j < p.bag; j++) {
                let slot = bag_slot[j];
                if (bound_here(slot)) {
                    acc = fma(vec4<f32>(bag_weight[j]), bitcast<vec4<f32>>(value_quad(slot, q)), acc);
                }
            }
            out4[out0 + q] = acc;
        }
    }
}
