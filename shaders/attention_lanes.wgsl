// Causal grouped-query attention for CPU adapters with subgroups of 8 or more lanes, for
// head_dim up to 32: the rows of attention_rows.wgsl (one invocation per row), with two
// changes that matter on lavapipe, where every storage load runs lane by lane (about ten
// instructions) and so does every access to a private array at a computed index:
//   - eight consecutive rows of one (batch, head) to a workgroup, so that the eight lanes
//     read the same key, value, query or output-gradient row at each step. They read it
//     together, lane l the elements l, 8 + l, 16 + l and 24 + l, and share them with
//     subgroupShuffle (a register shuffle), as linear_subgroup.wgsl does: 4 loads per lane
//     for a row of 32 instead of 32;
//   - rows held in registers (`Row`: eight vec4, always indexed by name), not arrays.
// Same semantics, bindings and entry points as attention_rows.wgsl, and the same results
// bit for bit: each row's sums run over its elements in the same order with the same
// operations (the elements past head_dim are zeros, which add nothing), and the steps a row
// does not take (keys after it; queries before a key) change nothing (`select`).
//   forward, backward_q: a workgroup per (batch, head, 8 query positions)
//   backward_kv:         a workgroup per (batch, kv head, 8 key positions)
// Needs workgroups of 8 to fill 8 aligned lanes of one subgroup, as CPU implementations
// place them.
//
// Browsers need `enable subgroups;` at the top, which naga 30 refuses: the Rust side prepends
// it on wasm32 (see `kernels::with_subgroups`).

// Params, bindings, q_base and kv_base: attention_common.wgsl.

const LANES: u32 = 8u;

// A row of up to 32 values, zeros past head_dim.
struct Row {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
    e: vec4<f32>,
    f: vec4<f32>,
    g: vec4<f32>,
    h: vec4<f32>,
}

// The workgroup's block index and the 8-row blocks per sequence.
fn block_of(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y * nwg.x + wg.x;
}

fn blocks_per_sequence() -> u32 {
    return (p.seq + LANES - 1u) / LANES;
}

// The 8 positions of one sequence and head (a kv head for backward_kv) that a workgroup
// takes: the sequence `b`, the head, the block's first position, this lane's position, and
// the position it computes on (lanes past the sequence compute on its last one and store
// nothing).
struct Block {
    b: u32,
    head: u32,
    first: u32,
    position: u32,
    row: u32,
}

fn blocks(heads: u32) -> u32 {
    return p.batch * heads * blocks_per_sequence();
}

fn block_at(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, heads: u32) -> Block {
    let per_sequence = blocks_per_sequence();
    let block = block_of(wg, nwg);
    let first = (block % per_sequence) * LANES;
    let position = first + lid;
    return Block(
        block / (per_sequence * heads),
        (block / per_sequence) % heads,
        first,
        position,
        min(position, p.seq - 1u),
    );
}

// The index of element c of the row at base, clamped into the row, and whether c is in it.
fn element(base: u32, c: u32) -> u32 {
    return base + min(c, p.head_dim - 1u);
}

// Four elements held by lanes first .. first + 3 (or first + 4 .. first + 7), as a vec4.
fn quad(x: f32, first: u32) -> vec4<f32> {
    return vec4<f32>(
        subgroupShuffle(x, first),
        subgroupShuffle(x, first + 1u),
        subgroupShuffle(x, first + 2u),
        subgroupShuffle(x, first + 3u),
    );
}

// A row read together: lane l of the 8 holds elements l, 8 + l, 16 + l, 24 + l as x.
fn spread(x: vec4<f32>, sg_lane: u32) -> Row {
    let first = sg_lane - sg_lane % LANES;
    return Row(
        quad(x.x, first), quad(x.x, first + 4u),
        quad(x.y, first), quad(x.y, first + 4u),
        quad(x.z, first), quad(x.z, first + 4u),
        quad(x.w, first), quad(x.w, first + 4u),
    );
}

// This lane's share of the row at base: elements l, 8 + l, 16 + l, 24 + l (zeros past it).
fn mine(sg_lane: u32) -> vec4<u32> {
    let l = sg_lane % LANES;
    return vec4<u32>(l, l + 8u, l + 16u, l + 24u);
}

fn in_row(c: vec4<u32>) -> vec4<bool> {
    return c < vec4<u32>(p.head_dim);
}

fn shared_k(base: u32, sg_lane: u32) -> Row {
    let c = mine(sg_lane);
    let x = vec4<f32>(k_at(element(base, c.x)), k_at(element(base, c.y)), k_at(element(base, c.z)), k_at(element(base, c.w)));
    return spread(select(vec4<f32>(0.0), x, in_row(c)), sg_lane);
}

fn shared_v(base: u32, sg_lane: u32) -> Row {
    let c = mine(sg_lane);
    let x = vec4<f32>(v_at(element(base, c.x)), v_at(element(base, c.y)), v_at(element(base, c.z)), v_at(element(base, c.w)));
    return spread(select(vec4<f32>(0.0), x, in_row(c)), sg_lane);
}

fn shared_q(base: u32, sg_lane: u32) -> Row {
    let c = mine(sg_lane);
    let x = vec4<f32>(q[element(base, c.x)], q[element(base, c.y)], q[element(base, c.z)], q[element(base, c.w)]);
    return spread(select(vec4<f32>(0.0), x, in_row(c)), sg_lane);
}

fn shared_d_out(base: u32, sg_lane: u32) -> Row {
    let c = mine(sg_lane);
    let x = vec4<f32>(d_out[element(base, c.x)], d_out[element(base, c.y)], d_out[element(base, c.z)], d_out[element(base, c.w)]);
    return spread(select(vec4<f32>(0.0), x, in_row(c)), sg_lane);
}

// One lane's own rows, read alone (once per invocation): the elements, zeros past head_dim.
fn row_from(x: array<f32, 32>) -> Row {
    return Row(
        vec4<f32>(x[0], x[1], x[2], x[3]), vec4<f32>(x[4], x[5], x[6], x[7]),
        vec4<f32>(x[8], x[9], x[10], x[11]), vec4<f32>(x[12], x[13], x[14], x[15]),
        vec4<f32>(x[16], x[17], x[18], x[19]), vec4<f32>(x[20], x[21], x[22], x[23]),
        vec4<f32>(x[24], x[25], x[26], x[27]), vec4<f32>(x[28], x[29], x[30], x[31]),
    );
}

fn own_q(base: u32) -> Row {
    var x: array<f32, 32>;
    for (var c = 0u; c < p.head_dim; c++) { x[c] = q[base + c]; }
    return row_from(x);
}

fn own_k(base: u32) -> Row {
    var x: array<f32, 32>;
    for (var c = 0u; c < p.head_dim; c++) { x[c] = k_at(base + c); }
    return row_from(x);
}

fn own_v(base: u32) -> Row {
    var x: array<f32, 32>;
    for (var c = 0u; c < p.head_dim; c++) { x[c] = v_at(base + c); }
    return row_from(x);
}

fn own_d_out(base: u32) -> Row {
    var x: array<f32, 32>;
    for (var c = 0u; c < p.head_dim; c++) { x[c] = d_out[base + c]; }
    return row_from(x);
}

fn own_out(base: u32) -> Row {
    var x: array<f32, 32>;
    for (var c = 0u; c < p.head_dim; c++) { x[c] = out[base + c]; }
    return row_from(x);
}

fn dot4(x: vec4<f32>, y: vec4<f32>, acc: f32) -> f32 {
    return fma(x.w, y.w, fma(x.z, y.z, fma(x.y, y.y, fma(x.x, y.x, acc))));
}

// The sum of x_c y_c in increasing c, fma by fma (attention_rows.wgsl's order).
fn dot_rows(x: Row, y: Row) -> f32 {
    var acc = dot4(x.a, y.a, 0.0);
    acc = dot4(x.b, y.b, acc);
    acc = dot4(x.c, y.c, acc);
    acc = dot4(x.d, y.d, acc);
    acc = dot4(x.e, y.e, acc);
    acc = dot4(x.f, y.f, acc);
    acc = dot4(x.g, y.g, acc);
    return dot4(x.h, y.h, acc);
}

// fma(s, x, y) element by element.
fn row_fma(s: f32, x: Row, y: Row) -> Row {
    let t = vec4<f32>(s);
    return Row(
        fma(t, x.a, y.a), fma(t, x.b, y.b), fma(t, x.c, y.c), fma(t, x.d, y.d),
        fma(t, x.e, y.e), fma(t, x.f, y.f), fma(t, x.g, y.g), fma(t, x.h, y.h),
    );
}

fn row_scale(x: Row, s: f32) -> Row {
    return Row(x.a * s, x.b * s, x.c * s, x.d * s, x.e * s, x.f * s, x.g * s, x.h * s);
}

fn row_select(kept: Row, updated: Row, take: bool) -> Row {
    return Row(
        select(kept.a, updated.a, take), select(kept.b, updated.b, take),
        select(kept.c, updated.c, take), select(kept.d, updated.d, take),
        select(kept.e, updated.e, take), select(kept.f, updated.f, take),
        select(kept.g, updated.g, take), select(kept.h, updated.h, take),
    );
}

fn zero_row() -> Row {
    let z = vec4<f32>(0.0);
    return Row(z, z, z, z, z, z, z, z);
}

// Stores row x times s at base (head_dim elements) into out, dq, dk or dv.
fn element_of(x: Row, c: u32) -> f32 {
    switch c / 4u {
        case 0u: { return x.a[c % 4u]; }
        case 1u: { return x.b[c % 4u]; }
        case 2u: { return x.c[c % 4u]; }
        case 3u: { return x.d[c % 4u]; }
        case 4u: { return x.e[c % 4u]; }
        case 5u: { return x.f[c % 4u]; }
        case 6u: { return x.g[c % 4u]; }
        default: { return x.h[c % 4u]; }
    }
}

@compute @workgroup_size(8)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    if (block_of(wg, nwg) >= blocks(p.heads)) {
        return;
    }
    let at = block_at(wg, nwg, lid, p.heads);
    let b = at.b; let h = at.head; let i0 = at.first;
    let i = at.position; let row = at.row;
    let g = h / (p.heads / p.kv_heads);
    let qb = q_base(b, row, h);
    let qr = own_q(qb);
    var acc = zero_row();
    var m = -0x1.fffffep+127f; // -f32 max, exactly (a decimal that rounds to it is rejected by Tint)
    var sum = 0.0;
    let last = row + p.q_offset;
    let block_last = min(i0 + LANES - 1u, p.seq - 1u) + p.q_offset;
    for (var j = 0u; j <= block_last; j++) {
        let kb = kv_base(b, j, g);
        let s = dot_rows(qr, shared_k(kb, sg_lane)) * p.scale;
        let vr = shared_v(kb, sg_lane);
        let live = j <= last;
        let m_new = select(m, max(m, s), live);
        let correction = exp(m - m_new);
        let w = exp(s - m_new);
        sum = select(sum, sum * correction + w, live);
        acc = row_select(acc, row_fma(w, vr, row_scale(acc, correction)), live);
        m = m_new;
    }
    if (i < p.seq) {
        for (var c = 0u; c < p.head_dim; c++) {
            out[qb + c] = element_of(acc, c) / sum;
        }
        lse[(b * p.seq + i) * p.heads + h] = m + log(sum);
    }
}

@compute @workgroup_size(8)
fn backward_q(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    if (block_of(wg, nwg) >= blocks(p.heads)) {
        return;
    }
    let at = block_at(wg, nwg, lid, p.heads);
    let b = at.b; let h = at.head; let i0 = at.first;
    let i = at.position; let row = at.row;
    let g = h / (p.heads / p.kv_heads);
    let item = (b * p.seq + row) * p.heads + h;
    let qb = q_base(b, row, h);
    let qr = own_q(qb);
    let dor = own_d_out(qb);
    let big_d = dot_rows(dor, own_out(qb));
    if (i < p.seq) {
        row_dot[item] = big_d;
    }
    let l = lse[item];
    var acc = zero_row();
    let block_last = min(i0 + LANES - 1u, p.seq - 1u);
    for (var j = 0u; j <= block_last; j++) {
        let kb = kv_base(b, j, g);
        let kr = shared_k(kb, sg_lane);
        let dot = dot_rows(qr, kr);
        let dp = dot_rows(dor, shared_v(kb, sg_lane));
        let ds = exp(dot * p.scale - l) * (dp - big_d);
        acc = row_select(acc, row_fma(ds, kr, acc), j <= row);
    }
    if (i < p.seq) {
        for (var c = 0u; c < p.head_dim; c++) {
            dq[qb + c] = element_of(acc, c) * p.scale;
        }
    }
}

@compute @workgroup_size(8)
fn backward_kv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    if (block_of(wg, nwg) >= blocks(p.kv_heads)) {
        return;
    }
    let at = block_at(wg, nwg, lid, p.kv_heads);
    let b = at.b; let g = at.head; let j0 = at.first;
    let j = at.position; let key = at.row;
    let group = p.heads / p.kv_heads;
    let kb = kv_base(b, key, g);
    let kr = own_k(kb);
    let vr = own_v(kb);
    var acc_k = zero_row();
    var acc_v = zero_row();
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i = j0; i < p.seq; i++) {
            let qb = q_base(b, i, h);
            let at = (b * p.seq + i) * p.heads + h;
            let qr = shared_q(qb, sg_lane);
            let dor = shared_d_out(qb, sg_lane);
            let prob = exp(dot_rows(qr, kr) * p.scale - lse[at]);
            let ds = prob * (dot_rows(dor, vr) - row_dot[at]);
            let live = i >= key;
            acc_v = row_select(acc_v, row_fma(prob, dor, acc_v), live);
            acc_k = row_select(acc_k, row_fma(ds, qr, acc_k), live);
        }
    }
    if (j < p.seq) {
        for (var c = 0u; c < p.head_dim; c++) {
            dv[kb + c] = element_of(acc_v, c);
            dk[kb + c] = element_of(acc_k, c) * p.scale;
        }
    }
}
