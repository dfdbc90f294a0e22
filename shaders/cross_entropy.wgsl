// Cross-entropy of logits [rows, vocab] against integer targets, in f32, with its gradient:
//   loss[r] = logsumexp(logits[r]) - logits[r, target[r]]
//   grad[r, c] = (softmax(logits[r])[c] - [c == target[r]]) * scale   (scale = 1 / rows)
// One workgroup per row; maxima and sums are per-invocation partials combined in invocation
// order: deterministic. The mean over rows is left to the caller. A target of IGNORE
// (0xffffffff, torch's ignore_index) gives the row zero loss and zero gradient.

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

const WG: u32 = 64u;
const IGNORE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad: array<f32>;

var<workgroup> partial: array<f32, WG>;
var<workgroup> combined: f32;

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
    let base = row * p.vocab;
    var m = -0x1.fffffep+127f; // -f32 max, exactly (a decimal that rounds to it is rejected by Tint)
    for (var c = lid; c < p.vocab; c += WG) {
        m = max(m, logits[base + c]);
    }
    partial[lid] = m;
    workgroupBarrier();
    if (lid == 0u) {
        var all = partial[0];
        for (var i = 1u; i < WG; i++) {
            all = max(all, partial[i]);
        }
        combined = all;
    }
    workgroupBarrier();
    let row_max = combined;
    var s = 0.0;
    for (var c = lid; c < p.vocab; c += WG) {
        s += exp(logits[base + c] - row_max);
    }
    workgroupBarrier();
    partial[lid] = s;
    workgroupBarrier();
    if (lid == 0u) {
        var total = 0.0;
        for (var i = 0u; i < WG; i++) {
            total += partial[i];
        }
        combined = row_max + log(total);
    }
    workgroupBarrier();
    let lse = combined;
    let t = targets[row];
    let counted = select(1.0, 0.0, t == IGNORE);
    for (var c = lid; c < p.vocab; c += WG) {
        let onehot = select(0.0, 1.0, c == t);
        grad[base + c] = (exp(logits[base + c] - lse) - onehot) * p.scale * counted;
    }
    if (lid == 0u) {
        loss[row] = select(lse - logits[base + min(t, p.vocab - 1u)], 0.0, t == IGNORE);
    }
}

// `main` with one row per invocation and no barriers, for CPU adapters (where `main`'s 64
// invocations a row spend their time in barriers): the same partial sums in the same order
// (partial v sums the columns v, v + 64, ... in turn; the row's sum adds partials 0 to 63 in
// turn), so the same bits.
@compute @workgroup_size(16)
fn rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wg.y * nwg.x + wg.x) * 16u + lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    var m = -0x1.fffffep+127f;
    for (var c = 0u; c < p.vocab; c++) {
        m = max(m, logits[base + c]);
    }
    var total = 0.0;
    for (var v = 0u; v < WG; v++) {
        var s = 0.0;
        for (var c = v; c < p.vocab; c += WG) {
            s += exp(logits[base + c] - m);
        }
        total += s;
    }
    let lse = m + log(total);
    let t = targets[row];
    let counted = select(1.0, 0.0, t == IGNORE);
    for (var c = 0u; c < p.vocab; c++) {
        let onehot = select(0.0, 1.0, c == t);
        grad[base + c] = (exp(logits[base + c] - lse) - onehot) * p.scale * counted;
    }
    loss[row] = select(lse - logits[base + min(t, p.vocab - 1u)], 0.0, t == IGNORE);
}
