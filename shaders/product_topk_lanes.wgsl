// Product-key top-k, one (token, head) per invocation: the variant for CPU adapters, where
// `product_topk.wgsl`'s barriers (about forty per workgroup) and per-round histograms cost
// far more than the selection itself. Same inputs, outputs and results, bit for bit: the
// same total order (higher score first, equal scores by lower index), the same candidate
// pairs ((a + 1)(b + 1) <= knn, see product_topk.wgsl), the same sums and the same softmax
// expressions in the same order.
//
// Selection keeps the k best entries seen so far in a binary heap whose root ranks last: an
// entry that beats the root replaces it and sifts down, so n entries cost at most
// n (log2 k + 1) steps whatever their order (lavapipe stops an invocation's loops after
// 65,535 iterations; the host checks the bound). Heapsort then leaves them in rank order.
//
// Params, bindings and layouts: product_topk_common.wgsl, prepended on the host.
//
// MAX_K sizes the private arrays; the host replaces this line with knn rounded up to a
// power of two (private arrays cannot be sized by pipeline constants).
const MAX_K: u32 = 128u;
const INVOCATIONS: u32 = 64u;

var<private> heap_key: array<f32, MAX_K>;
var<private> heap_idx: array<u32, MAX_K>;
var<private> heap_size: u32;
var<private> top1_key: array<f32, MAX_K>;
var<private> top1_idx: array<u32, MAX_K>;
var<private> top2_key: array<f32, MAX_K>;
var<private> top2_idx: array<u32, MAX_K>;

fn ranks_before(ka: f32, ia: u32, kb: f32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Whether heap entry a ranks before heap entry b.
fn heap_before(a: u32, b: u32) -> bool {
    return ranks_before(heap_key[a], heap_idx[a], heap_key[b], heap_idx[b]);
}

fn heap_swap(a: u32, b: u32) {
    let key = heap_key[a];
    let idx = heap_idx[a];
    heap_key[a] = heap_key[b];
    heap_idx[a] = heap_idx[b];
    heap_key[b] = key;
    heap_idx[b] = idx;
}

// Restores the heap below `start` (the root ranks last) within the first `size` entries.
fn sift_down(start: u32, size: u32) {
    var i = start;
    loop {
        var c = 2u * i + 1u;
        if (c >= size) {
            break;
        }
        if (c + 1u < size && heap_before(c, c + 1u)) {
            c += 1u;
        }
        if (!heap_before(i, c)) {
            break;
        }
        heap_swap(i, c);
        i = c;
    }
}

// Keeps (key, idx) if it is among the knn best offered since heap_size was reset.
fn offer(key: f32, idx: u32) {
    if (heap_size < p.knn) {
        var i = heap_size;
        heap_size += 1u;
        heap_key[i] = key;
        heap_idx[i] = idx;
        while (i > 0u) {
            let parent = (i - 1u) / 2u;
            if (!heap_before(parent, i)) {
                break;
            }
            heap_swap(parent, i);
            i = parent;
        }
    } else if (ranks_before(key, idx, heap_key[0], heap_idx[0])) {
        heap_key[0] = key;
        heap_idx[0] = idx;
        sift_down(0u, heap_size);
    }
}

// Heapsort: heap_key/heap_idx[0, heap_size) in rank order, best first.
fn sort_heap() {
    var end = heap_size;
    while (end > 1u) {
        end -= 1u;
        heap_swap(0u, end);
        sift_down(0u, end);
    }
}

// The knn best sub-keys of one half into the heap arrays, in rank order.
fn select_half(base: u32) {
    heap_size = 0u;
    for (var e = 0u; e < p.n_keys; e++) {
        offer(scores[base + e], e);
    }
    sort_heap();
}

fn item_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * INVOCATIONS + lid;
}

@compute @workgroup_size(INVOCATIONS)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = item_index(wg, nwg, lid);
    if (item >= p.rows * p.heads) {
        return;
    }
    let k = p.knn;
    select_half((item * 2u) * p.n_keys);
    for (var j = 0u; j < k; j++) {
        top1_key[j] = heap_key[j];
        top1_idx[j] = heap_idx[j];
    }
    select_half((item * 2u + 1u) * p.n_keys);
    for (var j = 0u; j < k; j++) {
        top2_key[j] = heap_key[j];
        top2_idx[j] = heap_idx[j];
    }
    // Candidate pairs: row a holds b < k / (a + 1).
    heap_size = 0u;
    for (var a = 0u; a < k; a++) {
        for (var b = 0u; b < k / (a + 1u); b++) {
            offer(top1_key[a] + top2_key[b], top1_idx[a] * p.n_keys + top2_idx[b]);
        }
    }
    sort_heap();
    write_outputs(item);
}

// The item's outputs from heap_key/heap_idx[0, knn) in rank order: indices, scores, and the
// softmax over them (entry 0 is the maximum; one fixed-order sum).
fn write_outputs(item: u32) {
    let k = p.knn;
    var total = 0.0;
    for (var j = 0u; j < k; j++) {
        total += exp(heap_key[j] - heap_key[0]);
    }
    let o0 = (p.row0 * p.heads + item) * k;
    for (var j = 0u; j < k; j++) {
        out_indices[o0 + j] = heap_idx[j];
        out_scores[o0 + j] = heap_key[j];
        out_weights[o0 + j] = exp(heap_key[j] - heap_key[0]) / total;
    }
}

// Backward of the softmax and of the product sums, as product_topk.wgsl's `backward` (same
// expressions, same order): ds_j = w_j dw_j - w_j sum_i w_i dw_i, and each distinct sub-key's
// gradient summed over its entries in order. heap_key holds w dw, then ds; heap_idx the slots.
@compute @workgroup_size(INVOCATIONS)
fn backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = item_index(wg, nwg, lid);
    if (item >= p.rows * p.heads) {
        return;
    }
    let k = p.knn;
    let e0 = (p.row0 * p.heads + item) * k;
    var total = 0.0;
    for (var j = 0u; j < k; j++) {
        heap_idx[j] = out_indices[e0 + j];
        heap_key[j] = out_weights[e0 + j] * grad_weights[e0 + j];
        total += heap_key[j];
    }
    for (var j = 0u; j < k; j++) {
        heap_key[j] = heap_key[j] - out_weights[e0 + j] * total;
    }
    let g0 = item * 2u * p.n_keys;
    for (var j = 0u; j < k; j++) {
        let a = heap_idx[j] / p.n_keys;
        let b = heap_idx[j] % p.n_keys;
        var first_a = true;
        var first_b = true;
        for (var i = 0u; i < j; i++) {
            first_a = first_a && heap_idx[i] / p.n_keys != a;
            first_b = first_b && heap_idx[i] % p.n_keys != b;
        }
        var sum_a = 0.0;
        var sum_b = 0.0;
        for (var i = j; i < k; i++) {
            if (heap_idx[i] / p.n_keys == a) {
                sum_a += heap_key[i];
            }
            if (heap_idx[i] % p.n_keys == b) {
                sum_b += heap_key[i];
            }
        }
        if (first_a) {
            grad_scores[g0 + a] = sum_a;
        }
        if (first_b) {
            grad_scores[g0 + p.n_keys + b] = sum_b;
        }
    }
}

// `main` for knn <= 16, with no private arrays until its outputs (`write_outputs`): lavapipe indexes those lane by
// lane at every step of a sift. The best 16 offered so far are kept in registers in rank
// order (`Best`: four vec4 of scores and four of indices), and an offer that ranks before
// entry j moves entries j.. down one place, all 16 at once with selects: no branches that
// depend on the data, except skipping an offer that no lane's list takes. Same selection
// (the same total order), so the same outputs, bit for bit.
struct Best {
    k0: vec4<f32>, k1: vec4<f32>, k2: vec4<f32>, k3: vec4<f32>,
    i0: vec4<u32>, i1: vec4<u32>, i2: vec4<u32>, i3: vec4<u32>,
}

// Below every real entry: -infinity and an index no entry has. (-infinity comes from a
// value Tint cannot fold at compile time: it rejects a constant -inf.)
fn empty_best() -> Best {
    let k = vec4<f32>(bitcast<f32>(0xff800000u | min(p.knn, 0u)));
    let i = vec4<u32>(0xffffffffu);
    return Best(k, k, k, k, i, i, i, i);
}

fn beats(key: f32, idx: u32, k: vec4<f32>, i: vec4<u32>) -> vec4<bool> {
    return (vec4<f32>(key) > k) | ((vec4<f32>(key) == k) & (vec4<u32>(idx) < i));
}

// The list with (key, idx) in its place (the last entry drops out).
fn offer_best(l: Best, key: f32, idx: u32) -> Best {
    let b0 = beats(key, idx, l.k0, l.i0);
    let b1 = beats(key, idx, l.k1, l.i1);
    let b2 = beats(key, idx, l.k2, l.i2);
    let b3 = beats(key, idx, l.k3, l.i3);
    // Each entry's predecessor, and whether the offer beat it too (then the entry takes it).
    let p0 = vec4<bool>(false, b0.x, b0.y, b0.z);
    let p1 = vec4<bool>(b0.w, b1.x, b1.y, b1.z);
    let p2 = vec4<bool>(b1.w, b2.x, b2.y, b2.z);
    let p3 = vec4<bool>(b2.w, b3.x, b3.y, b3.z);
    let kk = vec4<f32>(key);
    let ii = vec4<u32>(idx);
    return Best(
        select(select(l.k0, kk, b0), vec4<f32>(l.k0.x, l.k0.x, l.k0.y, l.k0.z), p0),
        select(select(l.k1, kk, b1), vec4<f32>(l.k0.w, l.k1.x, l.k1.y, l.k1.z), p1),
        select(select(l.k2, kk, b2), vec4<f32>(l.k1.w, l.k2.x, l.k2.y, l.k2.z), p2),
        select(select(l.k3, kk, b3), vec4<f32>(l.k2.w, l.k3.x, l.k3.y, l.k3.z), p3),
        select(select(l.i0, ii, b0), vec4<u32>(l.i0.x, l.i0.x, l.i0.y, l.i0.z), p0),
        select(select(l.i1, ii, b1), vec4<u32>(l.i0.w, l.i1.x, l.i1.y, l.i1.z), p1),
        select(select(l.i2, ii, b2), vec4<u32>(l.i1.w, l.i2.x, l.i2.y, l.i2.z), p2),
        select(select(l.i3, ii, b3), vec4<u32>(l.i2.w, l.i3.x, l.i3.y, l.i3.z), p3),
    );
}

// Offers (key, idx) unless it ranks after the 16th entry (then it would change nothing).
fn offer_if_better(l: Best, key: f32, idx: u32) -> Best {
    if (ranks_before(key, idx, l.k3.w, l.i3.w)) {
        return offer_best(l, key, idx);
    }
    return l;
}

// Entry j (0 .. 15) of a list: its score, and its index.
fn quad_of(l: Best, j: u32) -> vec4<f32> {
    return select(select(l.k0, l.k1, j >= 4u), select(l.k2, l.k3, j >= 12u), j >= 8u);
}

fn best_key(l: Best, j: u32) -> f32 {
    let q = quad_of(l, j);
    let c = j % 4u;
    return select(select(q.x, q.y, c == 1u), select(q.z, q.w, c == 3u), c >= 2u);
}

fn best_idx(l: Best, j: u32) -> u32 {
    return u32_at(l.i0, l.i1, l.i2, l.i3, j);
}

fn select_half_best(base: u32) -> Best {
    var l = empty_best();
    for (var e = 0u; e < p.n_keys; e++) {
        l = offer_if_better(l, scores[base + e], e);
    }
    return l;
}

@compute @workgroup_size(INVOCATIONS)
fn main_registers(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = item_index(wg, nwg, lid);
    if (item >= p.rows * p.heads) {
        return;
    }
    let k = p.knn;
    let top1 = select_half_best((item * 2u) * p.n_keys);
    let top2 = select_half_best((item * 2u + 1u) * p.n_keys);
    // Candidate pairs: row a holds b < k / (a + 1).
    var l = empty_best();
    for (var a = 0u; a < k; a++) {
        let key_a = best_key(top1, a);
        let idx_a = best_idx(top1, a) * p.n_keys;
        for (var b = 0u; b < k / (a + 1u); b++) {
            l = offer_if_better(l, key_a + best_key(top2, b), idx_a + best_idx(top2, b));
        }
    }
    for (var j = 0u; j < k; j++) {
        heap_key[j] = best_key(l, j);
        heap_idx[j] = best_idx(l, j);
    }
    write_outputs(item);
}

// `backward` for knn <= 16 with no private arrays (lavapipe indexes those lane by lane, and
// the backward's pairwise loops touch them k^2 times): the entries' w dw, ds and sub-key
// indices live in vec4 registers, entries past knn hold 0 and an index no entry has, and
// every sum adds the entries in the same order as `backward` (the masked ones add 0, which
// changes no sum), so the outputs are the same bits.
const NO_KEY: u32 = 0xffffffffu;

// The 16 components in order: ((q0.x + q0.y) + ...) + q3.w, from 0.
fn ordered_sum(q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>) -> f32 {
    var s = 0.0;
    s += q0.x; s += q0.y; s += q0.z; s += q0.w;
    s += q1.x; s += q1.y; s += q1.z; s += q1.w;
    s += q2.x; s += q2.y; s += q2.z; s += q2.w;
    s += q3.x; s += q3.y; s += q3.z; s += q3.w;
    return s;
}

// Component j (0 .. 15) of four quads.
fn u32_at(q0: vec4<u32>, q1: vec4<u32>, q2: vec4<u32>, q3: vec4<u32>, j: u32) -> u32 {
    let q = select(select(q0, q1, j >= 4u), select(q2, q3, j >= 12u), j >= 8u);
    let c = j % 4u;
    return select(select(q.x, q.y, c == 1u), select(q.z, q.w, c == 3u), c >= 2u);
}

// Entries e .. e + 3 of the list at e0: their positions, clamped into the list so that every
// load stays unmasked, and which of them exist.
fn quad_positions(e0: u32, e: u32) -> vec4<u32> {
    return vec4<u32>(e0) + min(vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.knn - 1u));
}

fn quad_exists(e: u32) -> vec4<bool> {
    return vec4<u32>(e) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.knn);
}

// The entries' weights, their w dw, and their slots (0, 0 and NO_KEY past knn).
fn quad_weights(e0: u32, e: u32) -> vec4<f32> {
    let i = quad_positions(e0, e);
    let w = vec4<f32>(out_weights[i.x], out_weights[i.y], out_weights[i.z], out_weights[i.w]);
    return select(vec4<f32>(0.0), w, quad_exists(e));
}

fn quad_wdw(e0: u32, e: u32) -> vec4<f32> {
    let i = quad_positions(e0, e);
    let dw = vec4<f32>(grad_weights[i.x], grad_weights[i.y], grad_weights[i.z], grad_weights[i.w]);
    return select(vec4<f32>(0.0), quad_weights(e0, e) * dw, quad_exists(e));
}

fn quad_slots(e0: u32, e: u32) -> vec4<u32> {
    let i = quad_positions(e0, e);
    let s = vec4<u32>(out_indices[i.x], out_indices[i.y], out_indices[i.z], out_indices[i.w]);
    return select(vec4<u32>(NO_KEY), s, quad_exists(e));
}

// The first half's sub-key of each slot (`first`), or the second's; NO_KEY stays NO_KEY.
fn sub_keys(s: vec4<u32>, first: bool) -> vec4<u32> {
    let n = vec4<u32>(p.n_keys);
    let key = select(s % n, s / n, first);
    return select(key, vec4<u32>(NO_KEY), s == vec4<u32>(NO_KEY));
}

// ds of the entries whose sub-key is `key`, at positions >= j (else 0).
fn matching(ds: vec4<f32>, keys: vec4<u32>, pos: vec4<u32>, key: u32, j: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), ds, (keys == vec4<u32>(key)) & (pos >= vec4<u32>(j)));
}

// Whether an entry before position j has sub-key `key`.
fn seen(keys: vec4<u32>, pos: vec4<u32>, key: u32, j: u32) -> bool {
    return any((keys == vec4<u32>(key)) & (pos < vec4<u32>(j)));
}

@compute @workgroup_size(INVOCATIONS)
fn backward_registers(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = item_index(wg, nwg, lid);
    if (item >= p.rows * p.heads) {
        return;
    }
    let e0 = (p.row0 * p.heads + item) * p.knn;
    let wd0 = quad_wdw(e0, 0u);
    let wd1 = quad_wdw(e0, 4u);
    let wd2 = quad_wdw(e0, 8u);
    let wd3 = quad_wdw(e0, 12u);
    let total = vec4<f32>(ordered_sum(wd0, wd1, wd2, wd3));
    let ds0 = wd0 - quad_weights(e0, 0u) * total;
    let ds1 = wd1 - quad_weights(e0, 4u) * total;
    let ds2 = wd2 - quad_weights(e0, 8u) * total;
    let ds3 = wd3 - quad_weights(e0, 12u) * total;
    let s0 = quad_slots(e0, 0u);
    let s1 = quad_slots(e0, 4u);
    let s2 = quad_slots(e0, 8u);
    let s3 = quad_slots(e0, 12u);
    let a0 = sub_keys(s0, true);
    let a1 = sub_keys(s1, true);
    let a2 = sub_keys(s2, true);
    let a3 = sub_keys(s3, true);
    let b0 = sub_keys(s0, false);
    let b1 = sub_keys(s1, false);
    let b2 = sub_keys(s2, false);
    let b3 = sub_keys(s3, false);
    let p0 = vec4<u32>(0u, 1u, 2u, 3u);
    let p1 = p0 + vec4<u32>(4u);
    let p2 = p0 + vec4<u32>(8u);
    let p3 = p0 + vec4<u32>(12u);
    let g0 = item * 2u * p.n_keys;
    for (var j = 0u; j < p.knn; j++) {
        let a = u32_at(a0, a1, a2, a3, j);
        let b = u32_at(b0, b1, b2, b3, j);
        if (!(seen(a0, p0, a, j) || seen(a1, p1, a, j) || seen(a2, p2, a, j) || seen(a3, p3, a, j))) {
            grad_scores[g0 + a] = ordered_sum(
                matching(ds0, a0, p0, a, j), matching(ds1, a1, p1, a, j),
                matching(ds2, a2, p2, a, j), matching(ds3, a3, p3, a, j),
            );
        }
        if (!(seen(b0, p0, b, j) || seen(b1, p1, b, j) || seen(b2, p2, b, j) || seen(b3, p3, b, j))) {
            grad_scores[g0 + p.n_keys + b] = ordered_sum(
                matching(ds0, b0, p0, b, j), matching(ds1, b1, p1, b, j),
                matching(ds2, b2, p2, b, j), matching(ds3, b3, p3, b, j),
            );
        }
    }
}
