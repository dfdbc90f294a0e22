// The value table's gradient, dV[slot] = sum over the bag entries e that read slot of
// w[e] * dy[row(e)], reduced per slot without atomics: the entries arrive sorted by slot
// (stable, so within a slot in entry order), `run_starts` marks where each slot's run begins
// (the scan that follows numbers the runs), and `reduce` lets each workgroup take a block of
// ENTRIES_PER_GROUP sorted entries and sum every run that starts there, in order, one column
// per invocation, columns in blocks along z. (A workgroup per entry, most of them idle, costs
// CPU adapters a workgroup launch each.) Output is sparse: the distinct slots, ascending, and
// one gradient row per slot.

const ENTRIES_PER_GROUP: u32 = 64u;

struct Params {
    n: u32,      // bag entries (rows * bag)
    bag: u32,
    v_dim: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> sorted_slots: array<u32>;
@group(0) @binding(2) var<storage, read> sorted_entries: array<u32>;
@group(0) @binding(3) var<storage, read_write> run_ids: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> out_slots: array<u32>;
@group(0) @binding(7) var<storage, read_write> out_rows: array<f32>;
// scatter_add: the number of rows listed, and the dense table they are added to.
@group(0) @binding(8) var<storage, read> row_count: array<u32>;
@group(0) @binding(9) var<storage, read_write> dense: array<f32>;
// mark_rows: 1 at every listed slot (idempotent writes: the same result in any order).
@group(0) @binding(10) var<storage, read_write> row_mask: array<u32>;
// reduce_quads: dy again, 16 bytes at a time (v_dim a multiple of 4).
@group(0) @binding(11) var<storage, read> dy4: array<vec4<f32>>;
// scatter_add_vec4: the rows and the dense table 16 bytes at a time (v_dim a multiple of 4).
@group(0) @binding(12) var<storage, read> rows4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> dense4: array<vec4<f32>>;

fn starts_run(i: u32) -> bool {
    return i == 0u || sorted_slots[i] != sorted_slots[i - 1u];
}

@compute @workgroup_size(64)
fn run_starts(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i < p.n) {
        run_ids[i] = select(0u, 1u, starts_run(i));
    }
}

@compute @workgroup_size(64)
fn reduce(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = (wg.y * nwg.x + wg.x) * ENTRIES_PER_GROUP;
    let end = min(first + ENTRIES_PER_GROUP, p.n);
    let col = wg.z * 64u + lid;
    for (var i = first; i < end; i++) {
        if (!starts_run(i)) {
            continue;
        }
        let slot = sorted_slots[i];
        let run = run_ids[i];
        if (wg.z == 0u && lid == 0u) {
            out_slots[run] = slot;
        }
        if (col < p.v_dim) {
            var acc = 0.0;
            for (var at = i; at < p.n && sorted_slots[at] == slot; at++) {
                let e = sorted_entries[at];
                acc = fma(weights[e], dy[(e / p.bag) * p.v_dim + col], acc);
            }
            out_rows[run * p.v_dim + col] = acc;
        }
    }
}

// `reduce` for CPU adapters, which run a workgroup's lanes as one SIMD stream and every
// storage load lane by lane: 8 invocations of 4 adjacent columns each (32 columns a
// workgroup, blocks along z) and 16-byte loads of dy, so an entry costs 8 lanes 4 loads
// instead of 32 lanes 4 loads. Every column sums the same products in the same order as
// `reduce`: the same bits.
@compute @workgroup_size(8)
fn reduce_quads(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let first = (wg.y * nwg.x + wg.x) * ENTRIES_PER_GROUP;
    let end = min(first + ENTRIES_PER_GROUP, p.n);
    let quads = p.v_dim / 4u;
    let quad = wg.z * 8u + lid;
    let col = quad * 4u;
    let loaded = min(quad, quads - 1u); // lanes past the row load its last quad, store nothing
    for (var i = first; i < end; i++) {
        if (!starts_run(i)) {
            continue;
        }
        let slot = sorted_slots[i];
        let run = run_ids[i];
        if (wg.z == 0u && lid == 0u) {
            out_slots[run] = slot;
        }
        var acc = vec4<f32>(0.0);
        for (var at = i; at < p.n && sorted_slots[at] == slot; at++) {
            let e = sorted_entries[at];
            acc = fma(vec4<f32>(weights[e]), dy4[(e / p.bag) * quads + loaded], acc);
        }
        if (col < p.v_dim) {
            let base = run * p.v_dim + col;
            out_rows[base] = acc.x;
            out_rows[base + 1u] = acc.y;
            out_rows[base + 2u] = acc.z;
            out_rows[base + 3u] = acc.w;
        }
    }
}

// dense[slot] += row for each listed (slot, row): sparse gradient rows into a dense table.
// Slots within one list are distinct, so every element is written by one invocation. The
// elements (row, column) are spread over a capped grid, each invocation striding through it.
@compute @workgroup_size(64)
fn scatter_add(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let stride = nwg.x * nwg.y * 64u;
    let elements = min(p.n, row_count[0]) * p.v_dim;
    for (var e = (wg.y * nwg.x + wg.x) * 64u + lid; e < elements; e += stride) {
        let r = e / p.v_dim;
        dense[out_slots[r] * p.v_dim + e % p.v_dim] += out_rows[e];
    }
}

// `scatter_add` four elements at a time (v_dim a multiple of 4): the same sums.
@compute @workgroup_size(64)
fn scatter_add_vec4(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let stride = nwg.x * nwg.y * 64u;
    let quads = p.v_dim / 4u;
    let elements = min(p.n, row_count[0]) * quads;
    for (var e = (wg.y * nwg.x + wg.x) * 64u + lid; e < elements; e += stride) {
        let at = out_slots[e / quads] * quads + e % quads;
        dense4[at] = dense4[at] + rows4[e];
    }
}

@compute @workgroup_size(64)
fn mark_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (r < p.n && r < row_count[0]) {
        row_mask[out_slots[r]] = 1u;
    }
}
