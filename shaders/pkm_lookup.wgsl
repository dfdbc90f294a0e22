// Product-key lookup, fused: for one (token, head) per workgroup it scores the query halves
// against both sub-key tables, keeps the top-k of each half, forms the k x k product
// candidates, keeps their top-k sorted by descending score (ties to the lower slot) and
// applies the softmax. Neither the n_keys sub-key scores nor the k x k candidates ever
// reach global memory.
//
// Layouts (row-major f32):
//   query   [rows, heads, k_dim]          (the query projection's output)
//   keys    [heads, 2, n_keys, half]      (half = k_dim / 2; reference name `keys`)
//   indices [rows, heads, knn] u32        slot = i * n_keys + j
//   scores  [rows, heads, knn]            pre-softmax s1[i] + s2[j]
//   weights [rows, heads, knn]            softmax of the scores, in f32
//
// Top-k of a half: a workgroup array of S = min(1024, next_pow2(n_keys + knn)) (score, index)
// pairs. Slots [0, knn) hold the best so far; each pass scores the next S - knn keys into
// [knn, S) and sorts all S with a bitonic network whose comparator is "higher score, then
// lower index", so the result is the exact, deterministic top-k whatever S is.
//
// Product step: with both halves sorted, a pair at sorted positions (a, b) is matched or
// beaten by every pair (a', b') with a' <= a, b' <= b, i.e. by (a + 1)(b + 1) - 1 others, so
// only pairs with (a + 1)(b + 1) <= knn can be in the top-k (about knn ln knn of them: 280
// for knn = 64, 695 for knn = 128, all within the 1024-entry sort array). The candidates are
// appended through a workgroup atomic counter; their order does not matter because the
// sort that follows uses a total order (slots are unique).
//
// qk-norm (option): score = <q, k> * (1 / max(|q|, 1e-12)) * (1 / max(|k|, 1e-12)) per half, i.e.
// torch.nn.functional.normalize on both sides before the dot product.

struct Params {
    rows: u32,
    heads: u32,
    n_keys: u32,
    half_dim: u32,
    knn: u32,
    qk_norm: u32,
    sort_size: u32, // S above, computed on the host
    _pad: u32,
}

const WG: u32 = 256u;
const MAX_HALF: u32 = 512u;
const MAX_K: u32 = 128u;
const SORT_CAP: u32 = 1024u;
const NO_INDEX: u32 = 0xffffffffu;
const NEG_INF: f32 = -3.4028235e38;
const NORM_EPS: f32 = 1e-12;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> query: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_indices: array<u32>;
@group(0) @binding(4) var<storage, read_write> out_scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_weights: array<f32>;

var<workgroup> qs: array<f32, MAX_HALF>;
var<workgroup> skey: array<f32, SORT_CAP>;
var<workgroup> sidx: array<u32, SORT_CAP>;
var<workgroup> top1_key: array<f32, MAX_K>;
var<workgroup> top1_idx: array<u32, MAX_K>;
var<workgroup> top2_key: array<f32, MAX_K>;
var<workgroup> top2_idx: array<u32, MAX_K>;
var<workgroup> candidate_count: atomic<u32>;
var<workgroup> softmax_sum: f32;

// a ranks before b: higher score first, equal scores by lower index.
fn ranks_before(ka: f32, ia: u32, kb: f32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// Sorts skey/sidx[0, size) into rank order; size is a power of two, uniform.
fn bitonic_sort(size: u32, lid: u32) {
    for (var block = 2u; block <= size; block = block << 1u) {
        for (var stride = block >> 1u; stride > 0u; stride = stride >> 1u) {
            for (var t = lid; t < size / 2u; t += WG) {
                let i = (t / stride) * 2u * stride + (t % stride);
                let l = i + stride;
                let forward = (i & block) == 0u;
                let ka = skey[i];
                let ia = sidx[i];
                let kb = skey[l];
                let ib = sidx[l];
                if (forward == ranks_before(kb, ib, ka, ia)) {
                    skey[i] = kb;
                    sidx[i] = ib;
                    skey[l] = ka;
                    sidx[l] = ia;
                }
            }
            workgroupBarrier();
        }
    }
}

// Top-knn of one half into skey/sidx[0, knn), sorted.
fn top_half(row: u32, head: u32, half_index: u32, lid: u32) {
    let hd = p.half_dim;
    let q0 = (row * p.heads + head) * 2u * hd + half_index * hd;
    for (var d = lid; d < hd; d += WG) {
        qs[d] = query[q0 + d];
    }
    for (var s = lid; s < p.sort_size; s += WG) {
        skey[s] = NEG_INF;
        sidx[s] = NO_INDEX;
    }
    workgroupBarrier();
    var q_scale = 1.0;
    if (p.qk_norm != 0u) {
        var qq = 0.0;
        for (var d = 0u; d < hd; d++) {
            qq = fma(qs[d], qs[d], qq);
        }
        q_scale = 1.0 / max(sqrt(qq), NORM_EPS);
    }
    let table0 = (head * 2u + half_index) * p.n_keys;
    let chunk = p.sort_size - p.knn;
    for (var c0 = 0u; c0 < p.n_keys; c0 += chunk) {
        for (var s = lid; s < chunk; s += WG) {
            let key = c0 + s;
            var score = NEG_INF;
            var index = NO_INDEX;
            if (key < p.n_keys) {
                let k0 = (table0 + key) * hd;
                var dot = 0.0;
                var kk = 0.0;
                for (var d = 0u; d < hd; d++) {
                    let kv = keys[k0 + d];
                    dot = fma(qs[d], kv, dot);
                    kk = fma(kv, kv, kk);
                }
                if (p.qk_norm != 0u) {
                    dot = dot * q_scale * (1.0 / max(sqrt(kk), NORM_EPS));
                }
                score = dot;
                index = key;
            }
            skey[p.knn + s] = score;
            sidx[p.knn + s] = index;
        }
        workgroupBarrier();
        bitonic_sort(p.sort_size, lid);
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x;
    if (item >= p.rows * p.heads) {
        return;
    }
    let row = item / p.heads;
    let head = item % p.heads;
    let k = p.knn;

    top_half(row, head, 0u, lid);
    for (var j = lid; j < k; j += WG) {
        top1_key[j] = skey[j];
        top1_idx[j] = sidx[j];
    }
    workgroupBarrier();
    top_half(row, head, 1u, lid);
    for (var j = lid; j < k; j += WG) {
        top2_key[j] = skey[j];
        top2_idx[j] = sidx[j];
    }
    if (lid == 0u) {
        atomicStore(&candidate_count, 0u);
    }
    workgroupBarrier();

    // Number of candidate pairs and the sort size that holds them (same on every invocation).
    var pairs = 0u;
    for (var a = 1u; a <= k; a++) {
        pairs += k / a;
    }
    var size = 1u;
    while (size < pairs) {
        size = size << 1u;
    }
    for (var s = lid; s < size; s += WG) {
        skey[s] = NEG_INF;
        sidx[s] = NO_INDEX;
    }
    workgroupBarrier();
    for (var t = lid; t < k * k; t += WG) {
        let a = t / k;
        let b = t % k;
        if ((a + 1u) * (b + 1u) <= k) {
            let pos = atomicAdd(&candidate_count, 1u);
            skey[pos] = top1_key[a] + top2_key[b];
            sidx[pos] = top1_idx[a] * p.n_keys + top2_idx[b];
        }
    }
    workgroupBarrier();
    bitonic_sort(size, lid);

    // Softmax over the k best (sorted, so skey[0] is the maximum); one fixed-order sum.
    if (lid == 0u) {
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            total += exp(skey[j] - skey[0]);
        }
        softmax_sum = total;
    }
    workgroupBarrier();
    let o0 = item * k;
    for (var j = lid; j < k; j += WG) {
        out_indices[o0 + j] = sidx[j];
        out_scores[o0 + j] = skey[j];
        out_weights[o0 + j] = exp(skey[j] - skey[0]) / softmax_sum;
    }
}
