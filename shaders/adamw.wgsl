// AdamW, as torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps), with g the gradient times the clipping
// factor min(1, max_norm / (norm + 1e-6)) of its parameter group (clip_grad_norm_).
//   sum_squares: per block of 1024 elements, the sum of squares in order (one invocation),
//                over the blocks of `grad` and then those of `grad_b` (two buffers a dispatch)
//   clip:        per parameter group (one workgroup each), the group's norm from its partial
//                sums in order, then its clip factor
// The updates scale the gradient by the clip factor of their group (`clip_index`).
//   dense_step:  every element of a parameter (dense_step_vec4: four an invocation)
//   sparse_step: the listed rows only (the lazy update of value rows read this step): row
//                slots[i] of param takes gradient row i of `grad`
//   masked_step: the rows whose mask is set only, from a dense gradient (the lazy update
//                when several memory layers read the table: each row read once, with the
//                sum of their gradients)
// Every sum has a fixed order: the optimiser is deterministic.

struct Params {
    len: u32,        // elements (dense, sum_squares' grad) or listed rows (sparse)
    row_len: u32,    // sparse: elements per row; sum_squares: grad_b's elements
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,  // lr / bc1
    bc2_sqrt: f32,   // sqrt(bc2)
    max_norm: f32,
    partial_offset: u32, // sum_squares: where these buffers' partial sums start
    clip_index: u32,     // updates: the parameter group whose clip factor applies
}

const BLOCK: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> clip_factor: array<f32>;
@group(0) @binding(4) var<storage, read_write> param: array<f32>;
@group(0) @binding(5) var<storage, read_write> m: array<f32>;
@group(0) @binding(6) var<storage, read_write> v: array<f32>;
@group(0) @binding(7) var<storage, read> slots: array<u32>;
@group(0) @binding(8) var<storage, read> count: array<u32>;
@group(0) @binding(9) var<storage, read> grad_b: array<f32>;
// dense_step_vec4: the same buffers as 16-byte words.
@group(0) @binding(10) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> v4: array<vec4<f32>>;

@compute @workgroup_size(64)
fn sum_squares(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = (wg.y * nwg.x + wg.x) * 64u + lid;
    let blocks_a = (p.len + BLOCK - 1u) / BLOCK;
    var ss = 0.0;
    if (block < blocks_a) {
        let start = block * BLOCK;
        for (var i = start; i < min(start + BLOCK, p.len); i++) {
            ss = fma(grad[i], grad[i], ss);
        }
    } else {
        let start = (block - blocks_a) * BLOCK;
        if (start >= p.row_len) {
            return;
        }
        for (var i = start; i < min(start + BLOCK, p.row_len); i++) {
            ss = fma(grad_b[i], grad_b[i], ss);
        }
    }
    partials[p.partial_offset + block] = ss;
}

// A group with more partial sums than one loop may add: partials[p.row_len + j] = the sum,
// in order, of the j-th run of BLOCK of its p.len partial sums from p.partial_offset (the
// clip entry then adds these).
@compute @workgroup_size(64)
fn sum_partials(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let j = (wg.y * nwg.x + wg.x) * 64u + lid;
    let start = j * BLOCK;
    if (start >= p.len) {
        return;
    }
    var s = 0.0;
    for (var i = start; i < min(start + BLOCK, p.len); i++) {
        s += partials[p.partial_offset + i];
    }
    partials[p.row_len + j] = s;
}

// Group g's partial sums are partials[slots[2g] .. slots[2g + 1]].
@compute @workgroup_size(1)
fn clip(@builtin(workgroup_id) wg: vec3<u32>) {
    let g = wg.x;
    var ss = 0.0;
    for (var i = slots[2u * g]; i < slots[2u * g + 1u]; i++) {
        ss += partials[i];
    }
    clip_factor[g] = min(1.0, p.max_norm / (sqrt(ss) + 1e-6));
}

fn update(at: u32, g_raw: f32) {
    let g = g_raw * clip_factor[p.clip_index];
    let x = param[at] * (1.0 - p.lr * p.weight_decay);
    let mi = p.beta1 * m[at] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[at] + (1.0 - p.beta2) * g * g;
    m[at] = mi;
    v[at] = vi;
    param[at] = x - p.step_size * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
}

@compute @workgroup_size(64)
fn dense_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.len) {
        update(i, grad[i]);
    }
}

// `dense_step` four elements an invocation (len a multiple of 4), through 16-byte loads and
// stores: the same expressions on each component, so the same bits. CPU adapters run every
// load lane by lane, at about the cost of a 4-byte one.
@compute @workgroup_size(64)
fn dense_step_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let q = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (q < p.len / 4u) {
        let g = grad4[q] * clip_factor[p.clip_index];
        let x = param4[q] * (1.0 - p.lr * p.weight_decay);
        let mi = p.beta1 * m4[q] + (1.0 - p.beta1) * g;
        let vi = p.beta2 * v4[q] + (1.0 - p.beta2) * g * g;
        m4[q] = mi;
        v4[q] = vi;
        param4[q] = x - p.step_size * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
    }
}

// One workgroup per listed row (the count of rows actually listed is read from `count`).
@compute @workgroup_size(64)
fn sparse_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wg.y * nwg.x + wg.x;
    if (r >= p.len || r >= count[0]) {
        return;
    }
    let base = slots[r] * p.row_len;
    for (var c = lid; c < p.row_len; c += 64u) {
        update(base + c, grad[r * p.row_len + c]);
    }
}

// One workgroup per row of `row_len`; rows whose mask (binding 7, as u32) is 0 are skipped.
@compute @workgroup_size(64)
fn masked_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wg.y * nwg.x + wg.x;
    if (r >= p.len || slots[r] == 0u) {
        return;
    }
    let base = r * p.row_len;
    for (var c = lid; c < p.row_len; c += 64u) {
        update(base + c, grad[base + c]);
    }
}
