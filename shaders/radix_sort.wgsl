// Stable LSD radix sort of (key, value) u32 pairs, 8 bits per pass, and the exclusive scan it
// is built on. Used to build the reverse map slot -> bag entries of the value gradient.
//
// One pass over n pairs, blocks of 256 pairs (one workgroup of 64 invocations each):
//   histogram: counts[digit * num_blocks + block] = pairs of this block with this digit;
//   scan:      exclusive prefix sum over counts (digit-major, so the result is each
//              (digit, block)'s first output position); one workgroup; also used alone;
//   scatter:   each pair goes to counts[digit, block] + (pairs before it in its block with
//              the same digit). Earlier pairs stay earlier: the sort is stable, and so the
//              order within equal keys is the input order. Only counts, no float atomics:
//              the result is the same on every run and adapter.

struct Params {
    n: u32,
    num_blocks: u32,
    shift: u32,
    _pad: u32,
}

const BLOCK: u32 = 256u;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> keys_in: array<u32>;
@group(0) @binding(2) var<storage, read> values_in: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> keys_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> values_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> total: array<u32>;

var<workgroup> local_hist: array<atomic<u32>, 256>;
var<workgroup> block_digits: array<u32, BLOCK>;
var<workgroup> partial: array<u32, WG>;

fn digit(key: u32) -> u32 {
    return (key >> p.shift) & 255u;
}

@compute @workgroup_size(64)
fn histogram(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wg.y * nwg.x + wg.x;
    if (block >= p.num_blocks) {
        return;
    }
    for (var b = lid; b < 256u; b += WG) {
        atomicStore(&local_hist[b], 0u);
    }
    workgroupBarrier();
    for (var t = 0u; t < BLOCK / WG; t++) {
        let i = block * BLOCK + t * WG + lid;
        if (i < p.n) {
            atomicAdd(&local_hist[digit(keys_in[i])], 1u);
        }
    }
    workgroupBarrier();
    for (var b = lid; b < 256u; b += WG) {
        counts[b * p.num_blocks + block] = atomicLoad(&local_hist[b]);
    }
}

// Exclusive scan of counts[0, n) in place, and their sum in total[0]. One workgroup: each
// invocation sums a contiguous segment, invocation 0 scans the 64 sums, then each rewrites
// its segment. Fixed order throughout.
@compute @workgroup_size(64)
fn scan(@builtin(local_invocation_index) lid: u32) {
    let per = (p.n + WG - 1u) / WG;
    let start = min(lid * per, p.n);
    let end = min(start + per, p.n);
    var sum = 0u;
    for (var i = start; i < end; i++) {
        sum += counts[i];
    }
    partial[lid] = sum;
    workgroupBarrier();
    if (lid == 0u) {
        var running = 0u;
        for (var t = 0u; t < WG; t++) {
            let s = partial[t];
            partial[t] = running;
            running += s;
        }
        total[0] = running;
    }
    workgroupBarrier();
    var run = partial[lid];
    for (var i = start; i < end; i++) {
        let c = counts[i];
        counts[i] = run;
        run += c;
    }
}

@compute @workgroup_size(64)
fn scatter(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = wg.y * nwg.x + wg.x;
    if (block >= p.num_blocks) {
        return;
    }
    for (var t = 0u; t < BLOCK / WG; t++) {
        let local = t * WG + lid;
        let i = block * BLOCK + local;
        block_digits[local] = select(256u, digit(keys_in[min(i, p.n - 1u)]), i < p.n);
    }
    workgroupBarrier();
    for (var t = 0u; t < BLOCK / WG; t++) {
        let local = t * WG + lid;
        let i = block * BLOCK + local;
        if (i < p.n) {
            let d = block_digits[local];
            var rank = 0u;
            for (var j = 0u; j < local; j++) {
                rank += select(0u, 1u, block_digits[j] == d);
            }
            let dest = counts[d * p.num_blocks + block] + rank;
            keys_out[dest] = keys_in[i];
            values_out[dest] = values_in[i];
        }
    }
}

// `histogram` and `scatter` for CPU adapters, where a workgroup's lanes run as one SIMD
// stream: an invocation per block, through its pairs in order (8 blocks a workgroup). No
// workgroup memory, atomics or barriers, and each pair costs its few loads and stores instead
// of `scatter`'s comparison with every pair before it in the block. The same counts and the
// same output, pair for pair.
// The block of an invocation of the `*_serial` entry points, and where the block's pairs end.
fn serial_block(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 8u + lid;
}

fn block_end(block: u32) -> u32 {
    return min(block * BLOCK + BLOCK, p.n);
}

@compute @workgroup_size(8)
fn histogram_serial(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = serial_block(wg, nwg, lid);
    if (block >= p.num_blocks) {
        return;
    }
    var hist: array<u32, 256>;
    for (var i = block * BLOCK; i < block_end(block); i++) {
        hist[digit(keys_in[i])] += 1u;
    }
    for (var d = 0u; d < 256u; d++) {
        counts[d * p.num_blocks + block] = hist[d];
    }
}

// Each pair goes to its (digit, block)'s next position, counted up in `counts` itself (only
// this block's invocation touches its column of counts).
@compute @workgroup_size(8)
fn scatter_serial(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let block = serial_block(wg, nwg, lid);
    if (block >= p.num_blocks) {
        return;
    }
    for (var i = block * BLOCK; i < block_end(block); i++) {
        let key = keys_in[i];
        let at = digit(key) * p.num_blocks + block;
        let dest = counts[at];
        counts[at] = dest + 1u;
        keys_out[dest] = key;
        values_out[dest] = values_in[i];
    }
}
