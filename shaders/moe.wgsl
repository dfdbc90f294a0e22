// A mixture-of-experts feed-forward block, forward and backward (src/reference/moe.rs is its
// oracle). An assignment a = t * top_k + k is token t's k-th chosen expert e = chosen[a].
// Forward:
//   route:   per token, the router softmax over its logits, the top_k experts (most probable
//            first, ties to the lower index) and their probabilities renormalised over the
//            chosen ones
//   hidden:  per (assignment, hidden unit): a1 = w1[e] x, a3 = w3[e] x
//   combine: per (token, column): y (+)= sum over slots, in order, of gate * w2[e] (silu(a1) a3)
// Backward (dy: the output's gradient; the assignments sorted by expert, stably, give each
// expert a segment `offsets[e] .. offsets[e + 1]` of `sorted`, in assignment order):
//   grad_act:    per (assignment, hidden unit): da1, da3 through w2, the gate and the SwiGLU
//   grad_gate:   per assignment: d_gate = dy . (w2[e] (silu(a1) a3))
//   segments:    per expert, where its segment starts (a binary search of the sorted keys)
//   grad_w13:    per (expert, hidden unit, column): dw1, dw3 over its segment
//   grad_w2:     per (expert, column, hidden unit): dw2 over its segment
//   grad_logits: per token, the router logits' gradient through the renormalisation, the
//                load-balancing loss (coef * E * sum_e f_e P_e; through P_e) and the softmax
//   grad_x:      per (token, column): through the chosen experts' w1, w3 and the router
//   grad_router: per (expert, column): the router weight's gradient over the tokens in order
//   aux_parts:   per expert: its share of the assignments times its mean probability
//   aux_loss:    one invocation: the load-balancing loss, the parts summed in expert order
// Every sum runs in a fixed order inside one invocation: deterministic, no atomics.

struct Params {
    tokens: u32,
    dim: u32,
    hidden: u32,
    experts: u32,
    top_k: u32,
    aux_coef: f32,
    accumulate: u32, // combine: add into y instead of writing it
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
@group(0) @binding(12) var<storage, read> dy: array<f32>;
@group(0) @binding(13) var<storage, read_write> da1: array<f32>;
@group(0) @binding(14) var<storage, read_write> da3: array<f32>;
@group(0) @binding(15) var<storage, read_write> d_gate: array<f32>;
@group(0) @binding(16) var<storage, read> sorted: array<u32>;
@group(0) @binding(17) var<storage, read> sorted_keys: array<u32>;
@group(0) @binding(18) var<storage, read_write> offsets: array<u32>;
@group(0) @binding(19) var<storage, read_write> dw1: array<f32>;
@group(0) @binding(20) var<storage, read_write> dw3: array<f32>;
@group(0) @binding(21) var<storage, read_write> dw2: array<f32>;
@group(0) @binding(22) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(23) var<storage, read> router: array<f32>;
@group(0) @binding(24) var<storage, read_write> dx: array<f32>;
@group(0) @binding(25) var<storage, read_write> d_router: array<f32>;
@group(0) @binding(26) var<storage, read_write> aux: array<f32>;
@group(0) @binding(27) var<storage, read_write> aux_part: array<f32>;

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
    if (p.accumulate != 0u) {
        out += y[i];
    }
    y[i] = out;
}

fn silu_grad(v: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-v));
    return s * (1.0 + v * (1.0 - s));
}

// One invocation per (assignment, hidden unit).
@compute @workgroup_size(64)
fn grad_act(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.tokens * p.top_k * p.hidden) {
        return;
    }
    let j = i % p.hidden;
    let a = i / p.hidden;
    let t = a / p.top_k;
    let e = chosen[a];
    var g = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        g = fma(dy[t * p.dim + c], w2[(e * p.dim + c) * p.hidden + j], g);
    }
    let d_act = gates[a] * g;
    let u1 = a1[i];
    da1[i] = d_act * a3[i] * silu_grad(u1);
    da3[i] = d_act * silu(u1);
}

// One invocation per assignment.
@compute @workgroup_size(64)
fn grad_gate(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let a = index(wg, nwg, lid);
    if (a >= p.tokens * p.top_k) {
        return;
    }
    let t = a / p.top_k;
    let e = chosen[a];
    var acc = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        let w = (e * p.dim + c) * p.hidden;
        var o = 0.0;
        for (var j = 0u; j < p.hidden; j++) {
            let at = a * p.hidden + j;
            o = fma(silu(a1[at]) * a3[at], w2[w + j], o);
        }
        acc += dy[t * p.dim + c] * o;
    }
    d_gate[a] = acc;
}

// One invocation per expert and one more (offsets[experts] = the number of assignments).
@compute @workgroup_size(64)
fn segments(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = index(wg, nwg, lid);
    if (e > p.experts) {
        return;
    }
    var lo = 0u;
    var hi = p.tokens * p.top_k;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (sorted_keys[mid] < e) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    offsets[e] = lo;
}

// One invocation per (expert, hidden unit, column).
@compute @workgroup_size(64)
fn grad_w13(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.experts * p.hidden * p.dim) {
        return;
    }
    let c = i % p.dim;
    let j = (i / p.dim) % p.hidden;
    let e = i / (p.dim * p.hidden);
    var g1 = 0.0;
    var g3 = 0.0;
    for (var s = offsets[e]; s < offsets[e + 1u]; s++) {
        let a = sorted[s];
        let xc = x[(a / p.top_k) * p.dim + c];
        g1 = fma(da1[a * p.hidden + j], xc, g1);
        g3 = fma(da3[a * p.hidden + j], xc, g3);
    }
    dw1[i] = g1;
    dw3[i] = g3;
}

// One invocation per (expert, column, hidden unit).
@compute @workgroup_size(64)
fn grad_w2(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.experts * p.dim * p.hidden) {
        return;
    }
    let j = i % p.hidden;
    let c = (i / p.hidden) % p.dim;
    let e = i / (p.hidden * p.dim);
    var g = 0.0;
    for (var s = offsets[e]; s < offsets[e + 1u]; s++) {
        let a = sorted[s];
        let at = a * p.hidden + j;
        g = fma(gates[a] * dy[(a / p.top_k) * p.dim + c], silu(a1[at]) * a3[at], g);
    }
    dw2[i] = g;
}

// dL/dp[t, e] before the softmax: the load-balancing term, and for a chosen expert the
// renormalisation's (d_gate - sum_k d_gate_k gate_k) / sum of the chosen probabilities.
fn d_prob(t: u32, e: u32, weighted: f32, chosen_sum: f32) -> f32 {
    let share = f32(offsets[e + 1u] - offsets[e]) / f32(p.tokens * p.top_k);
    var d = p.aux_coef * f32(p.experts) * share / f32(p.tokens);
    for (var k = 0u; k < p.top_k; k++) {
        let a = t * p.top_k + k;
        if (chosen[a] == e) {
            d += (d_gate[a] - weighted) / chosen_sum;
        }
    }
    return d;
}

// One invocation per token.
@compute @workgroup_size(64)
fn grad_logits(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = index(wg, nwg, lid);
    if (t >= p.tokens) {
        return;
    }
    let base = t * p.experts;
    var chosen_sum = 0.0;
    var weighted = 0.0;
    for (var k = 0u; k < p.top_k; k++) {
        let a = t * p.top_k + k;
        chosen_sum += probs[base + chosen[a]];
        weighted += d_gate[a] * gates[a];
    }
    var dot = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        dot += probs[base + e] * d_prob(t, e, weighted, chosen_sum);
    }
    for (var e = 0u; e < p.experts; e++) {
        dlogits[base + e] = probs[base + e] * (d_prob(t, e, weighted, chosen_sum) - dot);
    }
}

// One invocation per (token, column).
@compute @workgroup_size(64)
fn grad_x(
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
    var g = 0.0;
    for (var k = 0u; k < p.top_k; k++) {
        let a = t * p.top_k + k;
        let e = chosen[a];
        for (var j = 0u; j < p.hidden; j++) {
            let w = (e * p.hidden + j) * p.dim + c;
            g += da1[a * p.hidden + j] * w1[w] + da3[a * p.hidden + j] * w3[w];
        }
    }
    for (var e = 0u; e < p.experts; e++) {
        g += dlogits[t * p.experts + e] * router[e * p.dim + c];
    }
    dx[i] = g;
}

// One invocation per (expert, column).
@compute @workgroup_size(64)
fn grad_router(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = index(wg, nwg, lid);
    if (i >= p.experts * p.dim) {
        return;
    }
    let e = i / p.dim;
    let c = i % p.dim;
    var g = 0.0;
    for (var t = 0u; t < p.tokens; t++) {
        g = fma(dlogits[t * p.experts + e], x[t * p.dim + c], g);
    }
    d_router[i] = g;
}

// One invocation per expert (two dispatches with `aux_loss`, so that neither loops over
// experts x tokens, past the loop budget of CPU drivers).
@compute @workgroup_size(64)
fn aux_parts(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (e >= p.experts) {
        return;
    }
    var mean = 0.0;
    for (var t = 0u; t < p.tokens; t++) {
        mean += probs[t * p.experts + e];
    }
    let share = f32(offsets[e + 1u] - offsets[e]) / f32(p.tokens * p.top_k);
    aux_part[e] = share * (mean / f32(p.tokens));
}

// One invocation.
@compute @workgroup_size(1)
fn aux_loss() {
    var total = 0.0;
    for (var e = 0u; e < p.experts; e++) {
        total += aux_part[e];
    }
    aux[0] = p.aux_coef * f32(p.experts) * total;
}
