// Causal grouped-query attention, one invocation per row: the variant for CPU adapters
// (lavapipe, SwiftShader), where attention.wgsl's workgroup per row spends most of its time
// in barriers and idle lanes. Same semantics, bindings and entry points as attention.wgsl
// (see there); head_dim at most MAX_HD (kept in private arrays). Results match attention.wgsl
// to rounding: the softmax is computed online (running maximum), and sums run in key order.
//   forward:     one invocation per (batch, query position, head)
//   backward_q:  one invocation per (batch, query position, head); also writes D
//   backward_kv: one invocation per (batch, key position, kv head), over the query
//                positions and the heads of its group in order (needs backward_q's D)

// Params, bindings, q_base and kv_base: attention_common.wgsl.

const WG: u32 = 16u;
const MAX_HD: u32 = 128u;

fn invocation(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + lid;
}

@compute @workgroup_size(16)
fn forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = invocation(wg, nwg, lid); // (b, i, h)
    if (item >= p.batch * p.seq * p.heads) {
        return;
    }
    let h = item % p.heads;
    let i = (item / p.heads) % p.seq;
    let b = item / (p.heads * p.seq);
    let g = h / (p.heads / p.kv_heads);
    let qb = q_base(b, i, h);
    var qr: array<f32, MAX_HD>;
    var acc: array<f32, MAX_HD>;
    for (var c = 0u; c < p.head_dim; c++) {
        qr[c] = q[qb + c];
        acc[c] = 0.0;
    }
    var m = -0x1.fffffep+127f; // -f32 max, exactly (a decimal that rounds to it is rejected by Tint)
    var sum = 0.0;
    let last = i + p.q_offset;
    for (var j = 0u; j <= last; j++) {
        let kb = kv_base(b, j, g);
        var dot = 0.0;
        for (var c = 0u; c < p.head_dim; c++) {
            dot = fma(qr[c], k_at(kb + c), dot);
        }
        let s = dot * p.scale;
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let w = exp(s - m_new);
        sum = sum * correction + w;
        for (var c = 0u; c < p.head_dim; c++) {
            acc[c] = fma(w, v_at(kb + c), acc[c] * correction);
        }
        m = m_new;
    }
    for (var c = 0u; c < p.head_dim; c++) {
        out[qb + c] = acc[c] / sum;
    }
    lse[item] = m + log(sum);
}

@compute @workgroup_size(16)
fn backward_q(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = invocation(wg, nwg, lid);
    if (item >= p.batch * p.seq * p.heads) {
        return;
    }
    let h = item % p.heads;
    let i = (item / p.heads) % p.seq;
    let b = item / (p.heads * p.seq);
    let g = h / (p.heads / p.kv_heads);
    let qb = q_base(b, i, h);
    var qr: array<f32, MAX_HD>;
    var dor: array<f32, MAX_HD>;
    var acc: array<f32, MAX_HD>;
    var big_d = 0.0;
    for (var c = 0u; c < p.head_dim; c++) {
        qr[c] = q[qb + c];
        dor[c] = d_out[qb + c];
        acc[c] = 0.0;
        big_d = fma(dor[c], out[qb + c], big_d);
    }
    row_dot[item] = big_d;
    let l = lse[item];
    for (var j = 0u; j <= i; j++) {
        let kb = kv_base(b, j, g);
        var dot = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < p.head_dim; c++) {
            dot = fma(qr[c], k_at(kb + c), dot);
            dp = fma(dor[c], v_at(kb + c), dp);
        }
        let ds = exp(dot * p.scale - l) * (dp - big_d);
        for (var c = 0u; c < p.head_dim; c++) {
            acc[c] = fma(ds, k_at(kb + c), acc[c]);
        }
    }
    for (var c = 0u; c < p.head_dim; c++) {
        dq[qb + c] = acc[c] * p.scale;
    }
}

@compute @workgroup_size(16)
fn backward_kv(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = invocation(wg, nwg, lid); // (b, j, g)
    if (item >= p.batch * p.seq * p.kv_heads) {
        return;
    }
    let g = item % p.kv_heads;
    let j = (item / p.kv_heads) % p.seq;
    let b = item / (p.kv_heads * p.seq);
    let group = p.heads / p.kv_heads;
    let kb = kv_base(b, j, g);
    var kr: array<f32, MAX_HD>;
    var vr: array<f32, MAX_HD>;
    var acc_k: array<f32, MAX_HD>;
    var acc_v: array<f32, MAX_HD>;
    for (var c = 0u; c < p.head_dim; c++) {
        kr[c] = k_at(kb + c);
        vr[c] = v_at(kb + c);
        acc_k[c] = 0.0;
        acc_v[c] = 0.0;
    }
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i = j; i < p.seq; i++) {
            let qb = q_base(b, i, h);
            let at = (b * p.seq + i) * p.heads + h;
            var dot = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < p.head_dim; c++) {
                dot = fma(q[qb + c], kr[c], dot);
                dp = fma(d_out[qb + c], vr[c], dp);
            }
            let prob = exp(dot * p.scale - lse[at]);
            let ds = prob * (dp - row_dot[at]);
            for (var c = 0u; c < p.head_dim; c++) {
                acc_v[c] = fma(prob, d_out[qb + c], acc_v[c]);
                acc_k[c] = fma(ds, q[qb + c], acc_k[c]);
            }
        }
    }
    for (var c = 0u; c < p.head_dim; c++) {
        dv[kb + c] = acc_v[c];
        dk[kb + c] = acc_k[c] * p.scale;
    }
}
