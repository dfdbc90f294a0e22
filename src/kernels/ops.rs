//! The transformer ops of the training path, one struct per WGSL file: `rmsnorm.wgsl`,
//! `rope.wgsl`, `attention.wgsl`, `cross_entropy.wgsl`. Each validates shapes, sizes its
//! dispatch, and records into the caller's encoder.

use super::{check_buffer, check_loop_budget};
use crate::error::{Error, Result};
use crate::gpu::grid;
use crate::kernels::Gpu;

pub const RMSNORM: &str = include_str!("../../shaders/rmsnorm.wgsl");
pub const ROPE: &str = include_str!("../../shaders/rope.wgsl");
/// The attention variants, each prepended with their shared bindings and layout helpers.
pub const ATTENTION: &str = concat!(
    include_str!("../../shaders/attention_common.wgsl"),
    include_str!("../../shaders/attention.wgsl")
);
pub const ATTENTION_ROWS: &str = concat!(
    include_str!("../../shaders/attention_common.wgsl"),
    include_str!("../../shaders/attention_rows.wgsl")
);
pub const ATTENTION_LANES: &str = concat!(
    include_str!("../../shaders/attention_common.wgsl"),
    include_str!("../../shaders/attention_lanes.wgsl")
);
pub const CROSS_ENTROPY: &str = include_str!("../../shaders/cross_entropy.wgsl");
pub const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");

/// Longest sequence the attention kernel's workgroup arrays hold.
pub const MAX_SEQ: u32 = 1024;

use super::LOOP_BUDGET;

fn dispatch(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    label: &'static str,
    pipeline: &wgpu::ComputePipeline,
    binds: &[&wgpu::BindGroup],
    workgroups: u32,
) {
    let (x, y) = grid(workgroups);
    gpu.run_groups(encoder, label, pipeline, binds, (x, y, 1));
}

/// Records `y += x` over `len` elements.
pub fn record_add(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    len: u32,
) -> Result<()> {
    check_buffer(gpu, "add.x", x, len as u64)?;
    check_buffer(gpu, "add.y", y, len as u64)?;
    let params = gpu.uniform("add params", &[len, 0u32, 0, 0]);
    let pipeline = gpu.pipeline_entry("elementwise", ELEMENTWISE, "add", &[]);
    let bind = gpu.bind(&pipeline, &[&params, x, y]);
    dispatch(gpu, encoder, "add", &pipeline, &[&bind], len.div_ceil(64));
    Ok(())
}

/// Records `packed[offset + i] = f16(x[2i]) | f16(x[2i + 1]) << 16` for the `len` elements
/// of `x` (`len` even): f32 values into a buffer of f16 pairs, as `unpack2x16float` reads
/// them, from word `offset` on. WGSL rounds each value to one of its two nearest f16s.
pub fn record_pack_f16(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    packed: &wgpu::Buffer,
    offset: u32,
    len: u32,
) -> Result<()> {
    if !len.is_multiple_of(2) {
        return Err(Error::Config(format!(
            "pack_f16: an even number of values, not {len}"
        )));
    }
    let words = len / 2;
    check_buffer(gpu, "pack_f16.x", x, len as u64)?;
    check_buffer(gpu, "pack_f16.packed", packed, offset as u64 + words as u64)?;
    let params = gpu.uniform("pack_f16 params", &[words, offset, 0, 0]);
    let pipeline = gpu.pipeline_entry("elementwise", ELEMENTWISE, "pack_f16", &[]);
    let bind = gpu.bind_at(&pipeline, &[(0, &params), (1, x), (3, packed)]);
    dispatch(gpu, encoder, "pack_f16", &pipeline, &[&bind], words.div_ceil(64));
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RmsParams {
    rows: u32,
    d: u32,
    eps: f32,
    accumulate: u32,
    dw_offset: u32,
    _pad: [u32; 3],
}

/// Workgroups for `rows` rows: one each, or 64 rows each in the per-row entry points.
fn groups(per_row_invocations: bool, rows: u32) -> u32 {
    if per_row_invocations {
        rows.div_ceil(64)
    } else {
        rows
    }
}

/// RMSNorm over `rows` rows of `d`: `x`, `weight [d]`; forward writes `y` and `rstd [rows]`.
pub struct RmsNorm<'a> {
    pub rows: u32,
    pub d: u32,
    pub eps: f32,
    pub x: &'a wgpu::Buffer,
    pub weight: &'a wgpu::Buffer,
    pub rstd: &'a wgpu::Buffer,
}

impl RmsNorm<'_> {
    fn check(&self, gpu: &Gpu, (accumulate, dw_offset): (bool, u32)) -> Result<wgpu::Buffer> {
        if self.rows == 0 || self.d == 0 {
            return Err(Error::Config("rmsnorm: empty shape".into()));
        }
        check_buffer(gpu, "rmsnorm.x", self.x, self.rows as u64 * self.d as u64)?;
        check_buffer(gpu, "rmsnorm.weight", self.weight, self.d as u64)?;
        check_buffer(gpu, "rmsnorm.rstd", self.rstd, self.rows as u64)?;
        check_loop_budget("rmsnorm", 3 * (self.d as u64).div_ceil(64) + 64, "d")?;
        if gpu.tuning().norm_rows {
            check_loop_budget("rmsnorm", 2 * self.d as u64 + 64, "d")?;
        }
        let (rows, d, eps) = (self.rows, self.d, self.eps);
        Ok(gpu.uniform(
            "rmsnorm params",
            &RmsParams {
                rows,
                d,
                eps,
                accumulate: accumulate as u32,
                dw_offset,
                _pad: [0; 3],
            },
        ))
    }

    pub fn record_forward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let params = self.check(gpu, (false, 0))?;
        check_buffer(gpu, "rmsnorm.y", y, self.rows as u64 * self.d as u64)?;
        let rows = gpu.tuning().norm_rows;
        // Rows per invocation take 16-byte loads where rows are whole 16-byte words.
        let vec4 = rows && self.d.is_multiple_of(4);
        let entry = match (rows, vec4) {
            (true, true) => "forward_rows_vec4",
            (true, false) => "forward_rows",
            _ => "forward",
        };
        let pipeline = gpu.pipeline_entry("rmsnorm", RMSNORM, entry, &[]);
        let v = if vec4 { 6 } else { 0 };
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (1 + v, self.x),
                (2 + v, self.weight),
                (3 + v, y),
                (4, self.rstd),
            ],
        );
        dispatch(
            gpu,
            encoder,
            "rmsnorm",
            &pipeline,
            &[&bind],
            groups(rows, self.rows),
        );
        Ok(())
    }

    /// Writes `dx` and the per-row terms of the weight gradient `dw_rows [rows, d]` (their
    /// column sums are dL/dweight).
    pub fn record_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        dw_rows: &wgpu::Buffer,
    ) -> Result<()> {
        self.record_backward_into(gpu, encoder, dy, (dx, false), (dw_rows, 0))
    }

    /// `record_backward` with `dx` added into what `dx` holds when `accumulate` (a residual
    /// stream's gradient: one dispatch instead of the backward and an add, the same sums),
    /// and the per-row terms written `dw_offset` elements into `dw_rows` (several norms'
    /// terms in one buffer, summed by one batched GEMM).
    pub fn record_backward_into(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        (dx, accumulate): (&wgpu::Buffer, bool),
        (dw_rows, dw_offset): (&wgpu::Buffer, u64),
    ) -> Result<()> {
        if dw_offset > u32::MAX as u64 {
            return Err(Error::Config(format!("rmsnorm: dw offset {dw_offset}")));
        }
        let params = self.check(gpu, (accumulate, dw_offset as u32))?;
        let n = self.rows as u64 * self.d as u64;
        check_buffer(gpu, "rmsnorm.dy", dy, n)?;
        check_buffer(gpu, "rmsnorm.dx", dx, n)?;
        check_buffer(gpu, "rmsnorm.dw_rows", dw_rows, dw_offset + n)?;
        let rows = gpu.tuning().norm_rows;
        let vec4 = rows && self.d.is_multiple_of(4) && dw_offset.is_multiple_of(4);
        let entry = match (rows, vec4) {
            (true, true) => "backward_rows_vec4",
            (true, false) => "backward_rows",
            _ => "backward",
        };
        let pipeline = gpu.pipeline_entry("rmsnorm", RMSNORM, entry, &[]);
        let v = if vec4 { 6 } else { 0 };
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (1 + v, self.x),
                (2 + v, self.weight),
                (3 + v, dx),
                (4, self.rstd),
                (5 + v, dy),
                (6 + v, dw_rows),
            ],
        );
        dispatch(
            gpu,
            encoder,
            "rmsnorm_backward",
            &pipeline,
            &[&bind],
            groups(rows, self.rows),
        );
        Ok(())
    }
}

/// RoPE's default inverse frequencies: pair m of a head of `head_dim` turns by
/// `theta^(-2m / head_dim)` a position, computed in f32 as lingua and transformers do.
pub fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|m| 1.0f32 / theta.powf((2 * m) as f32 / head_dim as f32))
        .collect()
}

/// The tables the RoPE kernel reads, `[max_pos, pairs]` each: the cos and sin of the angle
/// `t * inv_freq[m]` of position t and pair m (the angle rounded to f32, as lingua and
/// transformers compute it; its cos and sin in f64, then rounded).
pub fn rope_tables(max_pos: usize, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(max_pos * inv_freq.len());
    let mut sin = Vec::with_capacity(max_pos * inv_freq.len());
    for t in 0..max_pos {
        for &f in inv_freq {
            let angle = (t as f32 * f) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RopeParams {
    pairs: u32,
    heads: u32,
    half_dim: u32,
    pos0: u32,
    inverse: u32,
    seq: u32,
    heads2: u32,
    pairs2: u32,
}

/// Interleaved RoPE on `x [batch, seq, heads, head_dim]`, each sequence at positions
/// `pos0..pos0 + seq`, from tables of `rope_tables`; `inverse` is the backward.
pub struct Rope<'a> {
    pub batch: u32,
    pub seq: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub pos0: u32,
    pub inverse: bool,
    pub cos: &'a wgpu::Buffer,
    pub sin: &'a wgpu::Buffer,
}

impl Rope<'_> {
    /// The pairs of a tensor with `heads` heads, checked against `x` and `y`.
    fn check(&self, gpu: &Gpu, heads: u32, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<u64> {
        if !self.head_dim.is_multiple_of(2) || self.seq == 0 || heads == 0 || self.batch == 0 {
            return Err(Error::Config(format!(
                "rope: head_dim {} must be even",
                self.head_dim
            )));
        }
        let half = self.head_dim / 2;
        let pairs = self.batch as u64 * self.seq as u64 * heads as u64 * half as u64;
        check_buffer(gpu, "rope.x", x, 2 * pairs)?;
        check_buffer(gpu, "rope.y", y, 2 * pairs)?;
        let positions = (self.pos0 + self.seq) as u64 * half as u64;
        check_buffer(gpu, "rope cos table", self.cos, positions)?;
        check_buffer(gpu, "rope sin table", self.sin, positions)?;
        Ok(pairs)
    }

    fn params(&self, pairs: u64, (heads2, pairs2): (u32, u64)) -> RopeParams {
        RopeParams {
            pairs: pairs as u32,
            heads: self.heads,
            half_dim: self.head_dim / 2,
            pos0: self.pos0,
            inverse: self.inverse as u32,
            seq: self.seq,
            heads2,
            pairs2: pairs2 as u32,
        }
    }

    pub fn record(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) -> Result<()> {
        let pairs = self.check(gpu, self.heads, x, y)?;
        let params = gpu.uniform("rope params", &self.params(pairs, (0, 0)));
        let pipeline = gpu.pipeline("rope", ROPE, &[]);
        let bind = gpu.bind(&pipeline, &[&params, x, self.cos, self.sin, y]);
        dispatch(
            gpu,
            encoder,
            "rope",
            &pipeline,
            &[&bind],
            (pairs as u32).div_ceil(64),
        );
        Ok(())
    }

    /// `record` on `x -> y` and, in the same dispatch, on `x2 -> y2` (the keys, with
    /// `heads2` heads, at the same positions): bit-identical to two `record`s.
    #[allow(clippy::too_many_arguments)]
    pub fn record_pair(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (x, y): (&wgpu::Buffer, &wgpu::Buffer),
        heads2: u32,
        (x2, y2): (&wgpu::Buffer, &wgpu::Buffer),
    ) -> Result<()> {
        let pairs = self.check(gpu, self.heads, x, y)?;
        let pairs2 = self.check(gpu, heads2, x2, y2)?;
        let total = pairs + pairs2;
        if total > u32::MAX as u64 {
            return Err(Error::Config(format!("rope: {total} pairs in one dispatch")));
        }
        let params = gpu.uniform("rope params", &self.params(pairs, (heads2, pairs2)));
        // Two pairs an invocation with 16-byte loads where both pairs share a head (head_dim
        // a multiple of 4).
        let vec4 = self.head_dim.is_multiple_of(4);
        let pipeline = gpu.pipeline_entry(
            "rope",
            ROPE,
            if vec4 { "main_pair_vec4" } else { "main_pair" },
            &[],
        );
        let bindings: [(u32, &wgpu::Buffer); 7] = if vec4 {
            [
                (0, &params),
                (7, x),
                (11, self.cos),
                (12, self.sin),
                (8, y),
                (9, x2),
                (10, y2),
            ]
        } else {
            [
                (0, &params),
                (1, x),
                (2, self.cos),
                (3, self.sin),
                (4, y),
                (5, x2),
                (6, y2),
            ]
        };
        let bind = gpu.bind_at(&pipeline, &bindings);
        let invocations = if vec4 { total / 2 } else { total };
        dispatch(
            gpu,
            encoder,
            "rope",
            &pipeline,
            &[&bind],
            (invocations as u32).div_ceil(64),
        );
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttentionParams {
    batch: u32,
    seq: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    kv_len: u32,
    q_offset: u32,
}

/// The attention kernels: a workgroup per row (`attention.wgsl`, GPUs), an invocation per row
/// (`attention_rows.wgsl`, CPU adapters), or an invocation per row with eight rows of a head
/// reading their keys together through subgroup shuffles (`attention_lanes.wgsl`, CPU
/// adapters with subgroups). All three give the same results; the row variants bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttentionKernel {
    Workgroups,
    Rows,
    Lanes,
}

impl AttentionKernel {
    /// The pipeline of `entry`, reading keys and values as f16 pairs where `kv_f16`.
    fn pipeline(self, gpu: &Gpu, entry: &str, kv_f16: bool) -> wgpu::ComputePipeline {
        let constants: &[(&str, f64)] = if kv_f16 { &[("KV_F16", 1.0)] } else { &[] };
        match self {
            AttentionKernel::Workgroups => gpu.pipeline_entry("attention", ATTENTION, entry, constants),
            AttentionKernel::Rows => gpu.pipeline_entry("attention_rows", ATTENTION_ROWS, entry, constants),
            AttentionKernel::Lanes => gpu.pipeline_entry(
                "attention_lanes",
                &super::with_subgroups(ATTENTION_LANES),
                entry,
                constants,
            ),
        }
    }

    /// Workgroups for `rows_per_position` rows (heads, or kv heads for `backward_kv`) at each
    /// of `seq` positions of `batch` sequences.
    fn workgroups(self, batch: u32, rows_per_position: u32, seq: u32) -> u32 {
        match self {
            AttentionKernel::Workgroups => batch * seq * rows_per_position,
            AttentionKernel::Rows => (batch * seq * rows_per_position).div_ceil(16),
            AttentionKernel::Lanes => batch * rows_per_position * seq.div_ceil(8),
        }
    }
}

/// Causal grouped-query attention over `batch` sequences: `q [batch, seq, heads, hd]`,
/// `k, v [batch, seq, kv_heads, hd]`, `out` like q, `lse [batch, seq, heads]`.
/// With a KV cache (`record_decode`), `k, v` hold `kv_len` positions and the `seq` query
/// positions start at `kv_len - seq`. With `kv_f16`, `k` and `v` hold f16 pairs
/// (`record_pack_f16`), as an f16 KV cache does; the arithmetic stays f32.
pub struct Attention<'a> {
    pub batch: u32,
    pub seq: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub lse: &'a wgpu::Buffer,
    pub kv_f16: bool,
}

impl Attention<'_> {
    fn params(&self, gpu: &Gpu) -> Result<wgpu::Buffer> {
        self.params_with_cache(gpu, self.seq)
    }

    fn params_with_cache(&self, gpu: &Gpu, kv_len: u32) -> Result<wgpu::Buffer> {
        let a = self;
        if kv_len < a.seq || kv_len > MAX_SEQ {
            return Err(Error::Config(format!(
                "attention: {kv_len} cached positions for {} queries (at most {MAX_SEQ})",
                a.seq
            )));
        }
        if a.batch == 0
            || a.seq == 0
            || a.heads == 0
            || a.kv_heads == 0
            || a.head_dim == 0
            || !a.heads.is_multiple_of(a.kv_heads)
        {
            return Err(Error::Config(format!(
                "attention: heads ({}) must be a positive multiple of kv_heads ({})",
                a.heads, a.kv_heads
            )));
        }
        if a.seq > MAX_SEQ {
            return Err(Error::Config(format!(
                "attention: sequences of at most {MAX_SEQ}, found {}",
                a.seq
            )));
        }
        let (s, hd, group) = (a.seq as u64, a.head_dim as u64, (a.heads / a.kv_heads) as u64);
        check_loop_budget(
            "attention",
            group * (s.div_ceil(64) * 3 * hd + 2 * s) + 2 * s,
            "seq and head_dim",
        )?;
        let qn = a.batch as u64 * s * a.heads as u64 * hd;
        let kvn = a.batch as u64 * kv_len as u64 * a.kv_heads as u64 * hd;
        check_buffer(gpu, "attention.q", a.q, qn)?;
        let kv_words = if a.kv_f16 { kvn.div_ceil(2) } else { kvn };
        check_buffer(gpu, "attention.k", a.k, kv_words)?;
        check_buffer(gpu, "attention.v", a.v, kv_words)?;
        check_buffer(gpu, "attention.out", a.out, qn)?;
        check_buffer(gpu, "attention.lse", a.lse, a.batch as u64 * s * a.heads as u64)?;
        let params = AttentionParams {
            batch: a.batch,
            seq: a.seq,
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            scale: 1.0 / (a.head_dim as f32).sqrt(),
            kv_len,
            q_offset: kv_len - a.seq,
        };
        Ok(gpu.uniform("attention params", &params))
    }

    /// The kernel variant for this shape on `gpu`. The row variants keep a row in private
    /// arrays (head_dim <= 128) and run every key of a row in one invocation, within the loop
    /// budget; of those, the one reading rows a subgroup at a time and keeping them in
    /// registers needs subgroups of 8 and head_dim <= 32. `rows_a_key` is how many rows an
    /// invocation runs over each key: 1 in the forward (a query row), the group's query
    /// heads in the backward (a key row meets every query head of its group).
    fn variant(&self, gpu: &Gpu, kv_len: u32, rows_a_key: u64) -> AttentionKernel {
        let hd = self.head_dim as u64;
        let iterations = rows_a_key * kv_len as u64 * (2 * hd + 2) + 4 * hd;
        let tuning = gpu.tuning();
        if !tuning.attention_rows || hd > 128 || iterations > LOOP_BUDGET {
            AttentionKernel::Workgroups
        } else if tuning.attention_lanes && hd <= 32 && gpu.subgroup_min_size() >= 8 {
            AttentionKernel::Lanes
        } else {
            AttentionKernel::Rows
        }
    }

    pub fn record_forward(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        self.record_forward_as(gpu, encoder, self.seq, "attention")
    }

    fn record_forward_as(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        kv_len: u32,
        label: &'static str,
    ) -> Result<()> {
        let params = self.params_with_cache(gpu, kv_len)?;
        let kernel = self.variant(gpu, kv_len, 1);
        let pipeline = kernel.pipeline(gpu, "forward", self.kv_f16);
        let bind = gpu.bind_at(
            &pipeline,
            &[
                (0, &params),
                (1, self.q),
                (2, self.k),
                (3, self.v),
                (4, self.out),
                (5, self.lse),
            ],
        );
        dispatch(
            gpu,
            encoder,
            label,
            &pipeline,
            &[&bind],
            kernel.workgroups(self.batch, self.heads, self.seq),
        );
        Ok(())
    }

    /// The forward for `seq` new query positions against `kv_len` cached key/value
    /// positions (the queries are the last `seq` of them).
    pub fn record_decode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, kv_len: u32) -> Result<()> {
        self.record_forward_as(gpu, encoder, kv_len, "attention_decode")
    }

    /// From `d_out` (like q), writes `dq`, `dk`, `dv` (after `record_forward`).
    pub fn record_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        d_out: &wgpu::Buffer,
        dq: &wgpu::Buffer,
        dk: &wgpu::Buffer,
        dv: &wgpu::Buffer,
    ) -> Result<()> {
        let params = self.params(gpu)?;
        let rows = self.batch * self.seq * self.heads;
        let qn = rows as u64 * self.head_dim as u64;
        let kvn = (self.batch * self.seq * self.kv_heads) as u64 * self.head_dim as u64;
        check_buffer(gpu, "attention.d_out", d_out, qn)?;
        check_buffer(gpu, "attention.dq", dq, qn)?;
        check_buffer(gpu, "attention.dk", dk, kvn)?;
        check_buffer(gpu, "attention.dv", dv, kvn)?;
        let row_dot = gpu.storage("attention D", rows as u64 * 4);
        let shared = [
            (0, &params),
            (1, self.q),
            (2, self.k),
            (3, self.v),
            (5, self.lse),
            (6, d_out),
            (7, &row_dot),
        ];
        let group = (self.heads / self.kv_heads.max(1)) as u64;
        let kernel = self.variant(gpu, self.seq, group);
        let bq = kernel.pipeline(gpu, "backward_q", self.kv_f16);
        let mut with_out = shared.to_vec();
        with_out.push((4, self.out));
        let bind0 = gpu.bind_at(&bq, &with_out);
        let bind1 = gpu.bind_group(&bq, 1, &[(0, dq)]);
        dispatch(
            gpu,
            encoder,
            "attention_backward_q",
            &bq,
            &[&bind0, &bind1],
            kernel.workgroups(self.batch, self.heads, self.seq),
        );
        let bkv = kernel.pipeline(gpu, "backward_kv", self.kv_f16);
        let bind0 = gpu.bind_at(&bkv, &shared);
        let bind1 = gpu.bind_group(&bkv, 1, &[(1, dk), (2, dv)]);
        dispatch(
            gpu,
            encoder,
            "attention_backward_kv",
            &bkv,
            &[&bind0, &bind1],
            kernel.workgroups(self.batch, self.kv_heads, self.seq),
        );
        Ok(())
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CeParams {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

// Cross-entropy of `logits [rows, vocab]` against `targets [rows]` (u32): per-row `loss`
// and `grad = (softmax - onehot) * scale` (scale 1 / rows for the mean).
pub use crate::constants::IGNORE_TARGET;

/// Cross-entropy rows: per-row loss and `scale * (softmax - onehot)`; set `scale` to one over
/// the number of counted (not ignored) rows for a mean.
pub struct CrossEntropy<'a> {
    pub rows: u32,
    pub vocab: u32,
    pub scale: f32,
    pub logits: &'a wgpu::Buffer,
    pub targets: &'a wgpu::Buffer,
    pub loss: &'a wgpu::Buffer,
    pub grad: &'a wgpu::Buffer,
}

impl CrossEntropy<'_> {
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if self.rows == 0 || self.vocab == 0 {
            return Err(Error::Config("cross-entropy: empty shape".into()));
        }
        let n = self.rows as u64 * self.vocab as u64;
        check_buffer(gpu, "logits", self.logits, n)?;
        check_buffer(gpu, "targets", self.targets, self.rows as u64)?;
        check_buffer(gpu, "loss", self.loss, self.rows as u64)?;
        check_buffer(gpu, "grad logits", self.grad, n)?;
        check_loop_budget(
            "cross-entropy",
            3 * (self.vocab as u64).div_ceil(64) + 128,
            "vocab",
        )?;
        // CPU adapters: a row per invocation (`rows`) where its loops fit the budget.
        let per_invocation = gpu.tuning().cross_entropy_rows && 3 * self.vocab as u64 + 128 <= LOOP_BUDGET;
        let params = CeParams {
            rows: self.rows,
            vocab: self.vocab,
            scale: self.scale,
            _pad: 0,
        };
        let params = gpu.uniform("cross-entropy params", &params);
        let (entry, groups) = match per_invocation {
            true => ("rows", self.rows.div_ceil(16)),
            false => ("main", self.rows),
        };
        let pipeline = gpu.pipeline_entry("cross_entropy", CROSS_ENTROPY, entry, &[]);
        let bind = gpu.bind(
            &pipeline,
            &[&params, self.logits, self.targets, self.loss, self.grad],
        );
        dispatch(gpu, encoder, "cross_entropy", &pipeline, &[&bind], groups);
        Ok(())
    }
}
