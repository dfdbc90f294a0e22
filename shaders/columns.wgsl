// A block of columns copied between two row-major matrices of 32-bit words:
//   dst[r, dst_first + c] = src[r, src_first + c]   for r < rows, c < width.
// Joins the column shards of a sharded value table's bag into one matrix, and takes a shard's
// columns out of a gradient. Words are copied as u32, so every bit (NaN payloads included)
// arrives unchanged.

struct Params {
    rows: u32,
    width: u32,
    src_stride: u32,
    src_first: u32,
    dst_stride: u32,
    dst_first: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(64)
fn copy_columns(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.y * nwg.x + wg.x) * 64u + lid;
    if (i >= p.rows * p.width) {
        return;
    }
    let r = i / p.width;
    let c = i - r * p.width;
    dst[r * p.dst_stride + p.dst_first + c] = src[r * p.src_stride + p.src_first + c];
}
