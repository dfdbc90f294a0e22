// A mixture-of-experts feed-forward block's forward (src/reference/moe.rs is its oracle):
//   route:   per token, the router softmax over its logits, the top_k experts (most probable
//            first, ties to the lower index) and their probabilities renormalised over the
//            chosen ones
//   hidden:  per (token, chosen slot, hidden unit): a1 = w1[e] x, a3 = w3[e] x
//   combine: per (token, column): y = sum over slots, in order, of gate * w2[e] (silu(a1) a3)
// Every sum runs in a fixed order inside one invocation: deterministic, no atomics.

struct Params {
    tokens: u32,
    dim: u32,
    hidden: u32,
    experts: u32,
    top_k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> probs: array<f32>;
@group(0) @binding(3) var<storage, read_write> chosen: array<u32>;
@group(0) @binding(4) var<storage, read_write> gates: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;
@group(0) @binding(6) var<storage, read> w1: array<f32>;
@group(0) @binding(7) var<storage, read> w3: array<f32>;
@group(0) @binding(8) var<storage, read_write> a1: array<f32>;
@group(0) @binding(9) var<storage, read_write> a3: array<f32>;
@group(0) @binding(10) var<storage, read> w2: array<f32>;
@group(0) @binding(11) var<storage, read_write> y: array<f32>;

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 64u + lid;
}

// One invocation per token.
@compute @workgroup_size(64)
fn route(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = index(wg, nwg, lid);
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.experts;
    var m = logits[base];
    for (var e = 1u; e < p.experts; e++) {
        m = max(m, logits[base + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        let v = exp(logits[base + e] - m);
        probs[base + e] = v;
        sum += v;
    }
    for (var e = 0u; e < p.experts; e++) {
        probs[base + e] = probs[base + e] / sum;
    }
    // The k-th pick: the best expert ranked after the (k-1)-th, in the rank order (higher
    // probability first, equal ones by lower index).
    var chosen_sum = 0.0;
    var last_p = 0.0;
    var last_e = 0u;
    for (var k = 0u; k < p.top_k; k++) {
        var best_e = p.experts;
        var best_p = 0.0;
        for (var e = 0u; e < p.experts; e++) {
            let pe = probs[base + e];
            let after_last = k == 0u || pe < last_p || (pe == last_p && e > last_e);
            let better = best_e == p.experts || pe > best_p || (pe == best_p && e < best_e);
            if (after_last && better) {
                best_e = e;
                best_p = pe;
            }
        }
        chosen[t * p.top_k + k] = best_e;
        gates[t * p.top_k + k] = best_p;
        chosen_sum += best_p;
        last_p = best_p;
        last_e = best_e;
    }
    for (var k = 0u; k < p.top_k; k++) {
        gates[t * p.top_k + k] = gates[t * p.top_k + k] / chosen_sum;
    }
}

// One invocation per (token, slot, hidden unit).
@compute @workgroup_size(64)
fn hidden(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.tokens * p.top_k * p.hidden) {
        return;
    }
    let j = i % p.hidden;
    let assignment = i / p.hidden;
    let t = assignment / p.top_k;
    let e = chosen[assignment];
    let w = (e * p.hidden + j) * p.dim;
    var u1 = 0.0;
    var u3 = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        let xc = x[t * p.dim + c];
        u1 = fma(xc, w1[w + c], u1);
        u3 = fma(xc, w3[w + c], u3);
    }
    a1[i] = u1;
    a3[i] = u3;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// One invocation per (token, output column).
@compute @workgroup_size(64)
fn combine(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.tokens * p.dim) {
        return;
    }
    let t = i / p.dim;
    let c = i % p.dim;
    var out = 0.0;
    for (var k = 0u; k < p.top_k; k++) {
        let assignment = t * p.top_k + k;
        let e = chosen[assignment];
        let w = (e * p.dim + c) * p.hidden;
        var o = 0.0;
        for (var j = 0u; j < p.hidden; j++) {
            let at = assignment * p.hidden + j;
            o = fma(silu(a1[at]) * a3[at], w2[w + j], o);
        }
        out += gates[assignment] * o;
    }
    y[i] = out;
}
