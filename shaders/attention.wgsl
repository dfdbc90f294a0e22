// Causal grouped-query attention (lingua): q [batch, seq, heads, hd], k, v [batch, seq,
// kv_heads, hd]; query head h reads kv head h / (heads / kv_heads); scores scaled by `scale`
// (1 / sqrt(hd)); position i attends to positions j <= i. Sequences up to MAX_SEQ.
// For decoding with a KV cache, `forward` also takes q_len query positions starting at
// absolute position q_offset against kv_len cached keys (training: q_len = kv_len = seq).
//   forward:      out, and lse = logsumexp of each score row (saved for the backward)
//   backward_q:   dq, and D = <dout, out> per (position, head)
//   backward_kv:  dk, dv, one workgroup per (batch, kv position, kv head): sums over the
//                 query positions and the heads of its group, in order
// Every sum runs in a fixed order (per-invocation loops, or one invocation over the
// workgroup's values): deterministic, no atomics.

// Params, bindings, q_base and kv_base: attention_common.wgsl.

const WG: u32 = 64u;
const MAX_SEQ: u32 = 1024u;

var<workgroup> row: array<f32, MAX_SEQ>;
var<workgroup> probs: array<f32, MAX_SEQ>;
var<workgroup> combined: f32;

fn score(qb: u32, kb: u32) -> f32 {
    var dot = 0.0;
    for (var c = 0u; c < p.head_dim; c++) {
        dot = fma(q[qb + c], k_at(kb + c), dot);
    }
    return dot * p.scale;
}

@compute @workgroup_size(64)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x; // (b, i, h)
    if (item >= p.batch * p.seq * p.heads) {
        return;
    }
    let h = item % p.heads;
    let i = (item / p.heads) % p.seq;
    let b = item / (p.heads * p.seq);
    let g = h / (p.heads / p.kv_heads);
    let qb = q_base(b, i, h);
    let last = i + p.q_offset; // the query's absolute position: it sees keys 0..=last
    for (var j = lid; j <= last; j += WG) {
        row[j] = score(qb, kv_base(b, j, g));
    }
    workgroupBarrier();
    if (lid == 0u) {
        var m = row[0];
        for (var j = 1u; j <= last; j++) {
            m = max(m, row[j]);
        }
        var sum = 0.0;
        for (var j = 0u; j <= last; j++) {
            sum += exp(row[j] - m);
        }
        combined = m + log(sum);
        lse[item] = combined;
    }
    workgroupBarrier();
    let l = combined;
    for (var j = lid; j <= last; j += WG) {
        row[j] = exp(row[j] - l);
    }
    workgroupBarrier();
    for (var c = lid; c < p.head_dim; c += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= last; j++) {
            acc = fma(row[j], v_at(kv_base(b, j, g) + c), acc);
        }
        out[qb + c] = acc;
    }
}

@compute @workgroup_size(64)
fn backward_q(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x;
    if (item >= p.batch * p.seq * p.heads) {
        return;
    }
    let h = item % p.heads;
    let i = (item / p.heads) % p.seq;
    let b = item / (p.heads * p.seq);
    let g = h / (p.heads / p.kv_heads);
    let qb = q_base(b, i, h);
    if (lid == 0u) {
        var dot = 0.0;
        for (var c = 0u; c < p.head_dim; c++) {
            dot = fma(d_out[qb + c], out[qb + c], dot);
        }
        combined = dot;
        row_dot[item] = dot;
    }
    workgroupBarrier();
    let big_d = combined;
    let l = lse[item];
    for (var j = lid; j <= i; j += WG) {
        let kb = kv_base(b, j, g);
        let prob = exp(score(qb, kb) - l);
        var dp = 0.0;
        for (var c = 0u; c < p.head_dim; c++) {
            dp = fma(d_out[qb + c], v_at(kb + c), dp);
        }
        row[j] = prob * (dp - big_d);
    }
    workgroupBarrier();
    for (var c = lid; c < p.head_dim; c += WG) {
        var acc = 0.0;
        for (var j = 0u; j <= i; j++) {
            acc = fma(row[j], k_at(kv_base(b, j, g) + c), acc);
        }
        dq[qb + c] = acc * p.scale;
    }
}

// Needs backward_q's row_dot (D) first.
@compute @workgroup_size(64)
fn backward_kv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.y * nwg.x + wg.x; // (b, j, g)
    if (item >= p.batch * p.seq * p.kv_heads) {
        return;
    }
    let g = item % p.kv_heads;
    let j = (item / p.kv_heads) % p.seq;
    let b = item / (p.kv_heads * p.seq);
    let group = p.heads / p.kv_heads;
    let kb = kv_base(b, j, g);
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i = j + lid; i < p.seq; i += WG) {
            let qb = q_base(b, i, h);
            let at = (b * p.seq + i) * p.heads + h;
            let prob = exp(score(qb, kb) - lse[at]);
            var dp = 0.0;
            for (var c = 0u; c < p.head_dim; c++) {
                dp = fma(d_out[qb + c], v_at(kb + c), dp);
            }
            probs[i] = prob;
            row[i] = prob * (dp - row_dot[at]);
        }
        workgroupBarrier();
        for (var c = lid; c < p.head_dim; c += WG) {
            var acc_v = 0.0;
            var acc_k = 0.0;
            for (var i = j; i < p.seq; i++) {
                let qb = q_base(b, i, h);
                acc_v = fma(probs[i], d_out[qb + c], acc_v);
                acc_k = fma(row[i], q[qb + c], acc_k);
            }
            if (hh == 0u) {
                dv[kb + c] = acc_v;
                dk[kb + c] = acc_k * p.scale;
            } else {
                dv[kb + c] += acc_v;
                dk[kb + c] += acc_k * p.scale;
            }
        }
        workgroupBarrier();
    }
}
