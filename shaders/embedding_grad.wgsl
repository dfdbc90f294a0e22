// The gradient of an embedding lookup over a small vocabulary, without sorting:
//   grad[v, c] = sum over the rows r with ids[r] == v of dy[r, c]
// added in row order, as the sort-and-reduce path (value_grads.wgsl) adds them: both give the
// same bits. Each workgroup takes IDS consecutive ids and 64 columns and walks every row once
// (one id load per row, the same in every invocation); each invocation keeps the sums of its
// own column in workgroup memory, so no two invocations touch the same sum and no barrier is
// needed. Ids outside the vocabulary are skipped.

const IDS: u32 = 32u;
const WG: u32 = 64u;

struct Params {
    rows: u32,
    vocab: u32,
    dim: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

var<workgroup> sums: array<f32, 2048>; // IDS x WG

// Grid: (ceil(vocab / IDS), ceil(dim / 64)).
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = wg.x * IDS;
    let c = wg.y * WG + lid;
    for (var i = 0u; i < IDS; i++) {
        sums[i * WG + lid] = 0.0;
    }
    if (c >= p.dim) {
        return;
    }
    for (var r = 0u; r < p.rows; r++) {
        let t = ids[r] - first; // ids below `first` wrap past IDS
        if (t < IDS) {
            sums[t * WG + lid] += dy[r * p.dim + c];
        }
    }
    for (var i = 0u; i < min(IDS, p.vocab - first); i++) {
        grad[(first + i) * p.dim + c] = sums[i * WG + lid];
    }
}
