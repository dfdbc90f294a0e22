// Product-key top-k, fused: for one (token, head) per workgroup, from the sub-key scores of
// both halves it keeps the top-k of each half, forms the k x k product candidates, keeps
// their top-k in rank order and applies the softmax. The k x k candidates never leave
// workgroup memory.
//
// Params, bindings and layouts: product_topk_common.wgsl.
//
// Rank order: higher score first, equal scores by lower index (a total order).
//
// Selection of the k best of n entries, in three steps with a handful of barriers:
// 1. Radix select. Scores map to u32 keys that order like the floats (negative: all bits
//    flipped; otherwise the sign bit set; -0 counts as +0). Four passes, most significant
//    byte first, histogram the byte among the entries that match the threshold's bytes so
//    far (workgroup atomics; counts, so order-independent) and fix the next threshold byte.
//    If more entries tie at the exact threshold score than are still needed, four more passes
//    over the bit-inverted index pick the lowest indices among them.
// 2. Collect the k winners (entries above the threshold, and the chosen ties).
// 3. Rank the k winners among themselves (k comparisons each); the rank is the output slot.
// Every step is a count or a comparison in the total order, so the result is exact and
// deterministic whatever order the atomics ran in.
//
// Product step: with both halves in rank order, a pair at positions (a, b) is matched or
// beaten by every pair (a', b') with a' <= a, b' <= b, i.e. by (a + 1)(b + 1) - 1 others, so
// only pairs with (a + 1)(b + 1) <= knn can be in the top-k (about knn ln knn of them: 280
// for knn = 64, 695 for knn = 128). Exact unless two sums of different pairs round to the
// same f32 where the pre-rounding order disagrees with the slot order.

// Invocations per workgroup, chosen per adapter by the host (results do not depend on it):
// 64 on GPUs; 8 on CPU implementations, where each barrier switches between every SIMD
// batch of the workgroup and fewer, fuller batches win.
override WG: u32 = 64u;
// Workgroup arrays are sized by the host for the knn at hand (knn rounded up to a power of
// two, and the candidate pairs of that), because WebGPU zero-fills workgroup memory at
// every workgroup's start and CPU implementations pay for every word. The defaults are the
// largest: knn 128, sum over a < 128 of 128 / (a + 1) = 695 pairs.
override MAX_K: u32 = 128u;
override MAX_PAIRS: u32 = 704u;
const FROM_SCORES: u32 = 0u;
const FROM_PAIRS: u32 = 1u;

var<workgroup> pair_key: array<f32, MAX_PAIRS>;
var<workgroup> pair_idx: array<u32, MAX_PAIRS>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> group_sum: array<u32, 16>;
var<workgroup> winners: atomic<u32>;
var<workgroup> win_key: array<f32, MAX_K>;
var<workgroup> win_idx: array<u32, MAX_K>;
var<workgroup> best_key: array<f32, MAX_K>;
var<workgroup> best_idx: array<u32, MAX_K>;
var<workgroup> top1_key: array<f32, MAX_K>;
var<workgroup> top1_idx: array<u32, MAX_K>;
var<workgroup> top2_key: array<f32, MAX_K>;
var<workgroup> top2_idx: array<u32, MAX_K>;
var<workgroup> sel_hi: u32;
var<workgroup> sel_lo: u32;
var<workgroup> sel_need: u32;
var<workgroup> sel_ties: u32;
var<workgroup> softmax_sum: f32;

fn ranks_before(ka: f32, ia: u32, kb: f32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

fn orderable(f: f32) -> u32 {
    let b = select(bitcast<u32>(f), 0u, f == 0.0);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn entry_key(source: u32, base: u32, e: u32) -> f32 {
    if (source == FROM_SCORES) {
        return scores[base + e];
    }
    return pair_key[e];
}

fn entry_idx(source: u32, e: u32) -> u32 {
    if (source == FROM_SCORES) {
        return e;
    }
    return pair_idx[e];
}

// Whether u's bits above `above` equal t's (all of them match when above >= 32).
fn same_prefix(u: u32, t: u32, above: u32) -> bool {
    return above >= 32u || (u >> above) == (t >> above);
}

// The knn best of n entries into best_key/best_idx[0, knn), in rank order. Uniform args.
fn select_top(source: u32, base: u32, n: u32, lid: u32) {
    if (lid == 0u) {
        sel_hi = 0u;
        sel_lo = 0u;
        sel_need = p.knn;
        sel_ties = 0u;
        atomicStore(&winners, 0u);
    }
    for (var round = 0u; round < 8u; round++) {
        if (round == 4u) {
            if (workgroupUniformLoad(&sel_ties) == 0u) {
                break;
            }
        }
        for (var b = lid; b < 256u; b += WG) {
            atomicStore(&hist[b], 0u);
        }
        workgroupBarrier();
        let hi = sel_hi;
        let lo = sel_lo;
        let shift = 24u - 8u * (round % 4u);
        for (var e = lid; e < n; e += WG) {
            let u = orderable(entry_key(source, base, e));
            if (round < 4u) {
                if (same_prefix(u, hi, shift + 8u)) {
                    atomicAdd(&hist[(u >> shift) & 255u], 1u);
                }
            } else {
                let v = ~entry_idx(source, e);
                if (u == hi && same_prefix(v, lo, shift + 8u)) {
                    atomicAdd(&hist[(v >> shift) & 255u], 1u);
                }
            }
        }
        workgroupBarrier();
        // Find the threshold digit: the highest digit d whose count, added to the counts of
        // all higher digits, reaches `need`. Sixteen invocations sum sixteen bins each, then
        // one walks the group sums and the sixteen bins of the group it lands in.
        for (var g = lid; g < 16u; g += WG) {
            var sum = 0u;
            for (var i = 0u; i < 16u; i++) {
                sum += atomicLoad(&hist[g * 16u + i]);
            }
            group_sum[g] = sum;
        }
        workgroupBarrier();
        if (lid == 0u) {
            var need = sel_need;
            var g = 15u;
            while (group_sum[g] < need && g > 0u) {
                need -= group_sum[g];
                g--;
            }
            var d = g * 16u + 15u;
            loop {
                let c = atomicLoad(&hist[d]);
                if (c >= need || d == g * 16u) {
                    break;
                }
                need -= c;
                d--;
            }
            if (round < 4u) {
                sel_hi |= d << shift;
            } else {
                sel_lo |= d << shift;
            }
            if (round == 3u && atomicLoad(&hist[d]) != need) {
                sel_ties = 1u;
            }
            sel_need = need;
        }
        workgroupBarrier();
    }
    let hi = sel_hi;
    let lo = sel_lo;
    let ties = sel_ties;
    for (var e = lid; e < n; e += WG) {
        let key = entry_key(source, base, e);
        let u = orderable(key);
        let idx = entry_idx(source, e);
        if (u > hi || (u == hi && (ties == 0u || ~idx >= lo))) {
            let at = atomicAdd(&winners, 1u);
            win_key[at] = key;
            win_idx[at] = idx;
        }
    }
    workgroupBarrier();
    for (var w = lid; w < p.knn; w += WG) {
        let key = win_key[w];
        let idx = win_idx[w];
        var rank = 0u;
        for (var j = 0u; j < p.knn; j++) {
            if (ranks_before(win_key[j], win_idx[j], key, idx)) {
                rank++;
            }
        }
        best_key[rank] = key;
        best_idx[rank] = idx;
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x;
    if (item >= p.rows * p.heads) {
        return;
    }
    let k = p.knn;

    select_top(FROM_SCORES, (item * 2u) * p.n_keys, p.n_keys, lid);
    for (var j = lid; j < k; j += WG) {
        top1_key[j] = best_key[j];
        top1_idx[j] = best_idx[j];
    }
    workgroupBarrier();
    select_top(FROM_SCORES, (item * 2u + 1u) * p.n_keys, p.n_keys, lid);
    for (var j = lid; j < k; j += WG) {
        top2_key[j] = best_key[j];
        top2_idx[j] = best_idx[j];
    }
    workgroupBarrier();

    // Candidate pairs, listed row by row: row a holds b < k / (a + 1).
    var pairs = 0u;
    for (var a = 0u; a < k; a++) {
        pairs += k / (a + 1u);
    }
    for (var t = lid; t < pairs; t += WG) {
        var a = 0u;
        var b = t;
        while (b >= k / (a + 1u)) {
            b -= k / (a + 1u);
            a++;
        }
        pair_key[t] = top1_key[a] + top2_key[b];
        pair_idx[t] = top1_idx[a] * p.n_keys + top2_idx[b];
    }
    workgroupBarrier();
    select_top(FROM_PAIRS, 0u, pairs, lid);

    // Softmax over the k best (in rank order, so entry 0 is the maximum); one fixed-order sum.
    if (lid == 0u) {
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            total += exp(best_key[j] - best_key[0]);
        }
        softmax_sum = total;
    }
    workgroupBarrier();
    let o0 = (p.row0 * p.heads + item) * k;
    for (var j = lid; j < k; j += WG) {
        out_indices[o0 + j] = best_idx[j];
        out_scores[o0 + j] = best_key[j];
        out_weights[o0 + j] = exp(best_key[j] - best_key[0]) / softmax_sum;
    }
}

// Backward of the softmax and of the product sums, one workgroup per (token, head):
//   ds_j = w_j (dw_j - sum_i w_i dw_i)                 (softmax, f32, fixed order)
//   dS1[i] = sum of ds_j over entries with slot / n_keys == i,  dS2 likewise with slot % n_keys
// Each distinct sub-key is summed by the invocation holding its first entry, over the later
// entries in order: deterministic, no atomics.
@compute @workgroup_size(WG)
fn backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x;
    if (item >= p.rows * p.heads) {
        return;
    }
    let k = p.knn;
    let e0 = (p.row0 * p.heads + item) * k;
    for (var j = lid; j < k; j += WG) {
        best_idx[j] = out_indices[e0 + j];
        best_key[j] = out_weights[e0 + j] * grad_weights[e0 + j];
    }
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            total += best_key[j];
        }
        softmax_sum = total;
    }
    workgroupBarrier();
    for (var j = lid; j < k; j += WG) {
        // ds_j = w_j dw_j - w_j sum_i w_i dw_i
        win_key[j] = best_key[j] - out_weights[e0 + j] * softmax_sum;
    }
    workgroupBarrier();
    let g0 = item * 2u * p.n_keys;
    for (var j = lid; j < k; j += WG) {
        let a = best_idx[j] / p.n_keys;
        let b = best_idx[j] % p.n_keys;
        var first_a = true;
        var first_b = true;
        for (var i = 0u; i < j; i++) {
            first_a = first_a && best_idx[i] / p.n_keys != a;
            first_b = first_b && best_idx[i] % p.n_keys != b;
        }
        if (first_a) {
            var sum = 0.0;
            for (var i = j; i < k; i++) {
                if (best_idx[i] / p.n_keys == a) {
                    sum += win_key[i];
                }
            }
            grad_scores[g0 + a] = sum;
        }
        if (first_b) {
            var sum = 0.0;
            for (var i = j; i < k; i++) {
                if (best_idx[i] % p.n_keys == b) {
                    sum += win_key[i];
                }
            }
            grad_scores[g0 + p.n_keys + b] = sum;
        }
    }
}
