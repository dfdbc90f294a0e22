//! One memory layer: host-side weights (reference names and init), their GPU copy, and the
//! forward pass recorded into a caller's encoder.

use super::config::MemoryConfig;
use super::lookup::{record_lookup, LookupShape};
use super::pool::ValuePool;
use crate::error::{Error, Result};
use crate::kernels::embedding_bag::{EmbeddingBag, WeightGrads};
use crate::kernels::linear::{Gate, Linear, WeightFormat};
use crate::kernels::Gpu;
use crate::kernels::{peer, row_gate};
use crate::params::Init;
use crate::rng::Rng;

/// Host-side parameters of one layer, row-major f32, reference layouts.
#[derive(Clone, Debug)]
pub struct MemoryWeights {
    pub config: MemoryConfig,
    /// `query_proj.query_mlps.0.weight [heads * k_dim, d]`
    pub query_w: Vec<f32>,
    /// `query_proj.query_mlps.0.bias [heads * k_dim]`
    pub query_b: Vec<f32>,
    /// `keys [2 * heads * n_keys, k_dim / 2]`
    pub keys: Vec<f32>,
    /// `swilu_projection.weight [v_dim, d]`, `.bias [v_dim]`
    pub swilu: Option<(Vec<f32>, Vec<f32>)>,
    /// `value_proj.weight [d, v_dim]`, `.bias [d]`
    pub value_proj: Option<(Vec<f32>, Vec<f32>)>,
    /// `gating.weight [1, d]`, `.bias [1]` (mem_gated)
    pub gating: Option<(Vec<f32>, Vec<f32>)>,
}

/// Reference parameter names of one layer (values live in the pool, see `VALUES_NAME`).
pub const QUERY_W: &str = "query_proj.query_mlps.0.weight";
pub const QUERY_B: &str = "query_proj.query_mlps.0.bias";
pub const KEYS: &str = "keys";
pub const VALUES_NAME: &str = "values.weight";
/// PEER's two tables (`peer_variant`): the input is dotted with `values_u` rows, the bag sums
/// `values_v` rows.
pub const VALUES_U_NAME: &str = "values_u.weight";
pub const VALUES_V_NAME: &str = "values_v.weight";
pub const SWILU_W: &str = "swilu_projection.weight";
pub const SWILU_B: &str = "swilu_projection.bias";
pub const VALUE_PROJ_W: &str = "value_proj.weight";
pub const VALUE_PROJ_B: &str = "value_proj.bias";
pub const GATING_W: &str = "gating.weight";
pub const GATING_B: &str = "gating.bias";

/// The layer's parameters (the value table excluded: it lives in the pool) with their
/// reference names, shapes and initialisation (docs/reference.md, "The memory layer" table), in the order
/// of the reference's draws. Every list of a layer's parameters derives from this one.
pub fn parameters(c: &MemoryConfig) -> Vec<(&'static str, Vec<usize>, Init)> {
    let q_out = c.heads * c.k_dim;
    let xavier = (6.0 / (c.d + q_out) as f32).sqrt();
    let linear_default = 1.0 / (c.d as f32).sqrt();
    let proj_std = 1.0 / (c.d as f32).sqrt();
    let mut p = vec![
        (QUERY_W, vec![q_out, c.d], Init::Symmetric(xavier)),
        (QUERY_B, vec![q_out], Init::Symmetric(linear_default)),
        (
            KEYS,
            vec![2 * c.heads * c.n_keys, c.k_dim / 2],
            Init::Symmetric(1.0 / (c.k_dim as f32).sqrt()),
        ),
    ];
    if c.swilu {
        p.push((SWILU_W, vec![c.v_dim, c.d], Init::Normal(proj_std)));
        p.push((SWILU_B, vec![c.v_dim], Init::Normal(proj_std)));
    }
    if c.value_proj {
        p.push((VALUE_PROJ_W, vec![c.d, c.v_dim], Init::Normal(proj_std)));
        p.push((VALUE_PROJ_B, vec![c.d], Init::Normal(proj_std)));
    }
    if c.gated {
        // nn.Linear(d, 1): the weight re-drawn normal d^-1/2, the bias torch's default.
        p.push((GATING_W, vec![1, c.d], Init::Normal(proj_std)));
        p.push((GATING_B, vec![1], Init::Symmetric(linear_default)));
    }
    p
}

/// A layer's optional (weight, bias) pairs: swilu_projection, value_proj, gating.
pub(crate) type OptionalPairs<'a, T> = (Option<&'a (T, T)>, Option<&'a (T, T)>, Option<&'a (T, T)>);

/// The tensor called `name` (a name of `parameters`) among a layer's tensors laid out as
/// its fields: weights, their GPU buffers, or their gradients.
pub(crate) fn by_name<'a, T>(
    name: &str,
    (query_w, query_b, keys): (&'a T, &'a T, &'a T),
    (swilu, value_proj, gating): OptionalPairs<'a, T>,
) -> Option<&'a T> {
    Some(match name {
        QUERY_W => query_w,
        QUERY_B => query_b,
        KEYS => keys,
        SWILU_W => &swilu?.0,
        SWILU_B => &swilu?.1,
        VALUE_PROJ_W => &value_proj?.0,
        VALUE_PROJ_B => &value_proj?.1,
        GATING_W => &gating?.0,
        GATING_B => &gating?.1,
        _ => return None,
    })
}

impl MemoryWeights {
    /// The reference initialisation, drawn in `parameters` order.
    pub fn init(config: &MemoryConfig, rng: &mut Rng) -> Result<Self> {
        config.validate()?;
        let drawn = parameters(config)
            .into_iter()
            .map(|(name, shape, init)| (name, init.draw(shape.iter().product(), rng)));
        Ok(Self::from_named(config, drawn))
    }

    /// Weights from every tensor of `parameters(config)`, by name.
    pub fn from_named(
        config: &MemoryConfig,
        tensors: impl IntoIterator<Item = (&'static str, Vec<f32>)>,
    ) -> Self {
        let mut w = MemoryWeights {
            config: config.clone(),
            query_w: Vec::new(),
            query_b: Vec::new(),
            keys: Vec::new(),
            swilu: config.swilu.then(Default::default),
            value_proj: config.value_proj.then(Default::default),
            gating: config.gated.then(Default::default),
        };
        for (name, data) in tensors {
            if let Some(field) = w.field_mut(name) {
                *field = data;
            }
        }
        w
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        Some(match name {
            QUERY_W => &mut self.query_w,
            QUERY_B => &mut self.query_b,
            KEYS => &mut self.keys,
            SWILU_W => &mut self.swilu.as_mut()?.0,
            SWILU_B => &mut self.swilu.as_mut()?.1,
            VALUE_PROJ_W => &mut self.value_proj.as_mut()?.0,
            VALUE_PROJ_B => &mut self.value_proj.as_mut()?.1,
            GATING_W => &mut self.gating.as_mut()?.0,
            GATING_B => &mut self.gating.as_mut()?.1,
            _ => return None,
        })
    }

    /// Values drawn as the reference draws them: normal, std v_dim^-1/2.
    pub fn init_values(config: &MemoryConfig, rng: &mut Rng) -> Vec<f32> {
        rng.vec_normal(
            config.n_values() * config.v_dim,
            1.0 / (config.v_dim as f32).sqrt(),
        )
    }

    /// Every parameter with its reference name and shape (values excluded: see the pool).
    pub fn named_tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        let fields = (&self.query_w, &self.query_b, &self.keys);
        let field = |name: &str| -> &[f32] {
            by_name(
                name,
                fields,
                (
                    self.swilu.as_ref(),
                    self.value_proj.as_ref(),
                    self.gating.as_ref(),
                ),
            )
            .map_or(&[], |v| v)
        };
        parameters(&self.config)
            .into_iter()
            .map(|(name, shape, _)| (name, shape, field(name)))
            .collect()
    }
}

/// A layer's parameters on the GPU.
pub struct MemoryLayer {
    pub config: MemoryConfig,
    pub(super) query_w: wgpu::Buffer,
    pub(super) query_b: wgpu::Buffer,
    pub(super) keys: wgpu::Buffer,
    pub(super) swilu: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub(super) value_proj: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub(super) gating: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// f16 copies of the projections' weights, once `use_f16_weights` made them.
    pub(super) half: Option<HalfProjections>,
    /// Memory+'s gated hidden `[rows, v_dim]` is stored as f16 (`use_f16_activations`).
    pub(super) f16_activations: bool,
}

/// The projections' weights as f16, two a word (`kernels::linear::pack_f16`).
pub(super) struct HalfProjections {
    query_w: wgpu::Buffer,
    swilu_w: Option<wgpu::Buffer>,
    value_w: Option<wgpu::Buffer>,
}

/// Buffers one forward pass writes (kept for inspection and for the backward pass).
pub struct MemoryActivations {
    pub rows: u32,
    /// `[rows, heads * k_dim]`
    pub query: wgpu::Buffer,
    /// `[rows, heads, knn]` u32 slots, pre-softmax scores, softmax weights.
    pub indices: wgpu::Buffer,
    pub scores: wgpu::Buffer,
    pub weights: wgpu::Buffer,
    /// `[rows, v_dim]` the summed bag of values.
    pub bag: wgpu::Buffer,
    /// `[rows, v_dim]` `bag * silu(swilu_projection(x))` and `swilu_projection(x)` (Memory+
    /// only; with f16 activations the first holds f16 pairs and the second is not kept).
    pub gated: Option<wgpu::Buffer>,
    pub swilu_input: Option<wgpu::Buffer>,
    /// mem_gated: the gate's logits `[rows]` and the output before the gate `[rows, out_dim]`.
    pub gate: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// PEER: `<x, u_i>` and the activations `w_i * gelu(<x, u_i>)` per bag entry.
    pub peer: Option<(wgpu::Buffer, wgpu::Buffer)>,
    /// `[rows, out_dim]` the layer's output (from `record_forward_into` with a residual it
    /// was added to: that residual).
    pub out: wgpu::Buffer,
    /// A sharded forward's slots and softmax weights as devices 1, 2, ... received them
    /// (`forward_sharded`; empty otherwise): what their shards' backward reads.
    pub(crate) relayed: Vec<(wgpu::Buffer, wgpu::Buffer)>,
}

/// The forward up to the bag: the query and each row's slots, scores and softmax weights.
pub(super) struct Found {
    pub rows: u32,
    pub query: wgpu::Buffer,
    pub indices: wgpu::Buffer,
    pub scores: wgpu::Buffer,
    pub weights: wgpu::Buffer,
}

/// The forward after the bag (`MemoryActivations`' fields of the same names).
pub(super) struct Output {
    pub gated: Option<wgpu::Buffer>,
    pub swilu_input: Option<wgpu::Buffer>,
    pub gate: Option<(wgpu::Buffer, wgpu::Buffer)>,
    pub out: wgpu::Buffer,
    /// Whether `out` is the residual the output was added into.
    pub added: bool,
}

impl MemoryActivations {
    pub(super) fn from_stages(
        found: Found,
        bag: wgpu::Buffer,
        peer: Option<(wgpu::Buffer, wgpu::Buffer)>,
        output: Output,
    ) -> Self {
        MemoryActivations {
            rows: found.rows,
            query: found.query,
            indices: found.indices,
            scores: found.scores,
            weights: found.weights,
            bag,
            gated: output.gated,
            swilu_input: output.swilu_input,
            gate: output.gate,
            peer,
            out: output.out,
            relayed: Vec::new(),
        }
    }
}

/// A forward pass read back to the host.
#[derive(Clone, Debug)]
pub struct ForwardResult {
    pub out: Vec<f32>,
    pub indices: Vec<u32>,
    pub scores: Vec<f32>,
    pub weights: Vec<f32>,
}

fn upload_checked(gpu: &Gpu, name: &str, data: &[f32], shape: &[usize]) -> Result<wgpu::Buffer> {
    let n: usize = shape.iter().product();
    if data.len() != n {
        return Err(Error::tensor(
            name,
            format!("{shape:?} ({n} elements)"),
            format!("{} elements", data.len()),
        ));
    }
    Ok(gpu.upload(name, data))
}

impl MemoryLayer {
    pub fn new(gpu: &Gpu, w: &MemoryWeights) -> Result<Self> {
        w.config.validate()?;
        let mut buffers = Vec::new();
        for (name, shape, data) in w.named_tensors() {
            buffers.push((name, upload_checked(gpu, name, data, &shape)?));
        }
        Self::from_buffers(&w.config, buffers)
    }

    /// A layer over parameter buffers that exist already (a model's), by reference name:
    /// every tensor of `parameters(config)`.
    pub fn from_buffers<'n>(
        config: &MemoryConfig,
        buffers: impl IntoIterator<Item = (&'n str, wgpu::Buffer)>,
    ) -> Result<Self> {
        config.validate()?;
        let mut by_name: std::collections::HashMap<&str, wgpu::Buffer> = buffers.into_iter().collect();
        let mut take = |name: &str| {
            by_name
                .remove(name)
                .ok_or_else(|| Error::MissingTensor(name.into()))
        };
        let pair =
            |on: bool, take: &mut dyn FnMut(&str) -> Result<wgpu::Buffer>, w: &str, b: &str| -> Result<_> {
                Ok(if on { Some((take(w)?, take(b)?)) } else { None })
            };
        Ok(MemoryLayer {
            config: config.clone(),
            query_w: take(QUERY_W)?,
            query_b: take(QUERY_B)?,
            keys: take(KEYS)?,
            swilu: pair(config.swilu, &mut take, SWILU_W, SWILU_B)?,
            value_proj: pair(config.value_proj, &mut take, VALUE_PROJ_W, VALUE_PROJ_B)?,
            gating: pair(config.gated, &mut take, GATING_W, GATING_B)?,
            half: None,
            f16_activations: false,
        })
    }

    /// Stores the query, SwiGLU and value projections' weights as f16 (from `w`, this
    /// layer's own) for the forward to read: half their memory and traffic, sums still in
    /// f32. The keys stay f32 (their scores decide the top-k), as do the values (`ValuePool`
    /// has its own f16) and the gate. For inference: the backward refuses such a layer.
    pub fn use_f16_weights(&mut self, gpu: &Gpu, w: &MemoryWeights) -> Result<()> {
        if w.config != self.config {
            return Err(Error::Config(
                "use_f16_weights: the weights are not this layer's".into(),
            ));
        }
        let pack = |name: &str, data: &[f32]| {
            gpu.upload(&format!("{name} (f16)"), &crate::kernels::linear::pack_f16(data))
        };
        self.half = Some(HalfProjections {
            query_w: pack(QUERY_W, &w.query_w),
            swilu_w: w.swilu.as_ref().map(|(w1, _)| pack(SWILU_W, w1)),
            value_w: w.value_proj.as_ref().map(|(wo, _)| pack(VALUE_PROJ_W, wo)),
        });
        Ok(())
    }

    /// Has the forward read the f32 projection weights again (undoes `use_f16_weights`).
    pub fn use_f32_weights(&mut self) {
        self.half = None;
    }

    /// Whether the forward reads f16 projection weights (`use_f16_weights`).
    pub fn uses_f16_weights(&self) -> bool {
        self.half.is_some()
    }

    /// Stores Memory+'s gated hidden `bag * silu(x W1^T + b1)` (`[rows, v_dim]`, the widest
    /// activation between two GEMMs) as f16, which the value projection reads: half its
    /// memory and traffic, every sum still in f32 (the hidden rounded once as it is stored).
    /// The SwiGLU's input is then not kept. For inference: the backward refuses such a
    /// layer. The query, scores and bag stay f32 (they decide and weight the top-k), and an
    /// odd v_dim keeps f32 (an f16 word holds two columns).
    pub fn use_f16_activations(&mut self, on: bool) {
        self.f16_activations = on;
    }

    /// Whether the forward stores f16 activations (`use_f16_activations`).
    pub fn uses_f16_activations(&self) -> bool {
        self.f16_activations
    }

    /// Records the forward pass of `rows` tokens `x [rows, d]` reading values from `pool`.
    /// Nothing is submitted.
    pub fn record_forward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        pool: &ValuePool,
        x: &wgpu::Buffer,
        rows: u32,
    ) -> Result<MemoryActivations> {
        self.record_forward_into(gpu, encoder, pool, x, rows, None)
            .map(|(acts, _)| acts)
    }

    /// `record_forward`, with the output added into `residual [rows, d]` by the value
    /// projection's epilogue when the layer has one (one dispatch fewer than an add; the
    /// same sums). Returns whether it was added; if so, `out` of the activations is the
    /// residual buffer.
    pub fn record_forward_into(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        pool: &ValuePool,
        x: &wgpu::Buffer,
        rows: u32,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(MemoryActivations, bool)> {
        if self.config.peer {
            return Err(Error::Config(
                "a PEER layer reads two tables: record_forward_peer".into(),
            ));
        }
        self.record_any(gpu, encoder, (None, pool), x, rows, residual)
    }

    /// PEER's forward (`peer_variant`): `out = sum_i w_i * gelu(<x, u_i>) * v_i` over the
    /// selected rows of `pools = (values_u, values_v)`; added into `residual` like
    /// `record_forward_into`.
    pub fn record_forward_peer(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (pool_u, pool_v): (&ValuePool, &ValuePool),
        x: &wgpu::Buffer,
        rows: u32,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(MemoryActivations, bool)> {
        if !self.config.peer {
            return Err(Error::Config(
                "record_forward_peer on a layer that is not PEER".into(),
            ));
        }
        self.record_any(gpu, encoder, (Some(pool_u), pool_v), x, rows, residual)
    }

    fn record_any(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        (pool_u, pool): (Option<&ValuePool>, &ValuePool),
        x: &wgpu::Buffer,
        rows: u32,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(MemoryActivations, bool)> {
        let c = &self.config;
        for (name, p) in [(VALUES_NAME, Some(pool)), (VALUES_U_NAME, pool_u)] {
            if let Some(p) = p.filter(|p| p.v_dim() != c.v_dim || p.n_rows() != c.n_values()) {
                return Err(Error::tensor(
                    name,
                    format!("[{}, {}]", c.n_values(), c.v_dim),
                    format!("[{}, {}]", p.n_rows(), p.v_dim()),
                ));
            }
        }
        let found = self.record_lookup_stage(gpu, encoder, x, rows)?;
        let bag = gpu.scratch("bag", rows as u64 * c.v_dim as u64 * 4);
        let peer = match pool_u {
            Some(pool_u) => Some(self.pass(gpu, x, rows).peer_activations(
                encoder,
                pool_u,
                &found.indices,
                &found.weights,
            )?),
            None => None,
        };
        EmbeddingBag {
            rows,
            bag: (c.heads * c.knn) as u32,
            indices: &found.indices,
            weights: peer.as_ref().map_or(&found.weights, |(_, a)| a),
            values: &pool.chunks(),
            out: &bag,
            workgroup_size: None,
            columns_per_invocation: None,
        }
        .record(gpu, encoder)?;
        let output = self.record_output_stage(gpu, encoder, x, rows, &bag, residual)?;
        let added = output.added;
        Ok((MemoryActivations::from_stages(found, bag, peer, output), added))
    }

    fn pass<'a>(&'a self, gpu: &'a Gpu, x: &'a wgpu::Buffer, rows: u32) -> ForwardPass<'a> {
        ForwardPass {
            layer: self,
            gpu,
            x,
            rows,
        }
    }

    /// The forward up to the bag: the query projection and the product-key lookup.
    pub(super) fn record_lookup_stage(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        rows: u32,
    ) -> Result<Found> {
        let c = &self.config;
        let query = gpu.scratch("query", rows as u64 * (c.heads * c.k_dim) as u64 * 4);
        self.pass(gpu, x, rows).query_proj(encoder, &query)?;
        let shape = LookupShape {
            rows,
            heads: c.heads as u32,
            n_keys: c.n_keys as u32,
            k_dim: c.k_dim as u32,
            knn: c.knn as u32,
            qk_norm: c.qk_norm,
        };
        let found = record_lookup(gpu, encoder, shape, &query, &self.keys)?;
        Ok(Found {
            rows,
            query,
            indices: found.indices,
            scores: found.scores,
            weights: found.weights,
        })
    }

    /// The forward after the bag `[rows, v_dim]`: Memory+'s SwiGLU gate, the value projection
    /// (added into `residual` where it can be) and mem_gated's gate.
    pub(super) fn record_output_stage(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        rows: u32,
        bag: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<Output> {
        let pass = self.pass(gpu, x, rows);
        let (gated, swilu_input) = pass.swilu(encoder, bag)?;
        // With mem_gated the projection's output is gated before it can join the residual.
        let residual_in_proj = residual.filter(|_| self.gating.is_none());
        let (out, added) = pass.value_proj(
            encoder,
            gated.as_ref().unwrap_or(bag),
            gated.is_some(),
            residual_in_proj,
        )?;
        let (out, added, gate) = match &self.gating {
            Some(_) => {
                let (target, logits) = pass.gate(encoder, &out, residual)?;
                (target, residual.is_some(), Some((logits, out)))
            }
            None => (out, added, None),
        };
        Ok(Output {
            gated,
            swilu_input,
            gate,
            out,
            added,
        })
    }

    /// Uploads `x [rows, d]`, runs the forward pass and reads the results back.
    pub async fn forward(
        &self,
        gpu: &Gpu,
        pool: &ValuePool,
        x: &[f32],
        rows: usize,
    ) -> Result<ForwardResult> {
        let c = &self.config;
        if x.len() != rows * c.d {
            return Err(Error::tensor(
                "input",
                format!("[{rows}, {}]", c.d),
                format!("{} elements", x.len()),
            ));
        }
        let xb = gpu.upload("input", x);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let act = self.record_forward(gpu, &mut encoder, pool, &xb, rows as u32)?;
        gpu.queue.submit([encoder.finish()]);
        let n = rows * c.heads * c.knn;
        Ok(ForwardResult {
            out: gpu.read_f32(&act.out, rows * c.out_dim()).await?,
            indices: gpu.read_u32(&act.indices, n).await?,
            scores: gpu.read_f32(&act.scores, n).await?,
            weights: gpu.read_f32(&act.weights, n).await?,
        })
    }

    /// Blocking `forward` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        gpu: &Gpu,
        pool: &ValuePool,
        x: &[f32],
        rows: usize,
    ) -> Result<ForwardResult> {
        pollster::block_on(self.forward(gpu, pool, x, rows))
    }
}

/// One forward pass's shared inputs: each method records one stage of the layer.
struct ForwardPass<'a> {
    layer: &'a MemoryLayer,
    gpu: &'a Gpu,
    /// The layer's input `[rows, d]`.
    x: &'a wgpu::Buffer,
    rows: u32,
}

impl ForwardPass<'_> {
    /// The query projection: `query = x Wq^T + bq` (the f16 weight where the layer has one).
    fn query_proj(&self, encoder: &mut wgpu::CommandEncoder, query: &wgpu::Buffer) -> Result<()> {
        let (l, c) = (self.layer, &self.layer.config);
        let half = l.half.as_ref();
        Linear {
            w_format: WeightFormat::f16_if(half.is_some()),
            bias: Some(&l.query_b),
            ..Linear::new(
                "query_proj",
                self.x,
                half.map_or(&l.query_w, |h| &h.query_w),
                query,
                (self.rows, (c.heads * c.k_dim) as u32, c.d as u32),
            )
        }
        .record(self.gpu, encoder)
    }

    /// PEER: each selected row's weight times gelu(<x, u_i>), the input dotted with the
    /// values_u rows (the bag's weight-gradient kernel computes exactly those dots). Returns
    /// (dots, activations).
    fn peer_activations(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pool_u: &ValuePool,
        indices: &wgpu::Buffer,
        weights: &wgpu::Buffer,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let (gpu, c) = (self.gpu, &self.layer.config);
        let entries = self.rows * (c.heads * c.knn) as u32;
        let (dots, activations) = (
            gpu.scratch("PEER scores", entries as u64 * 4),
            gpu.scratch("PEER activations", entries as u64 * 4),
        );
        WeightGrads {
            rows: self.rows,
            bag: (c.heads * c.knn) as u32,
            indices,
            values: &pool_u.chunks(),
            dy: self.x,
            grad_weights: &dots,
            continues: false,
        }
        .record(gpu, encoder)?;
        peer::record_forward(gpu, encoder, (&dots, weights, &activations), entries)?;
        Ok((dots, activations))
    }

    /// Whether the gated hidden is stored as f16 (where it feeds the value projection).
    fn gated_f16(&self) -> bool {
        let l = self.layer;
        l.f16_activations && l.config.v_dim.is_multiple_of(2) && l.value_proj.is_some() && !l.config.peer
    }

    /// Memory+'s gate: `gated = bag * silu(x W1^T + b1)`, keeping the pre-activation for the
    /// backward unless the gated hidden is f16. PEER has no projections (they exist unused,
    /// as in the reference). Returns (gated, pre-activation).
    fn swilu(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bag: &wgpu::Buffer,
    ) -> Result<(Option<wgpu::Buffer>, Option<wgpu::Buffer>)> {
        let (l, c, gpu) = (self.layer, &self.layer.config, self.gpu);
        let Some((w1, b1)) = l.swilu.as_ref().filter(|_| !c.peer) else {
            return Ok((None, None));
        };
        let (rows, v) = (self.rows, c.v_dim as u32);
        let gated_f16 = self.gated_f16();
        let bytes = if gated_f16 { 2 } else { 4 };
        let gated = gpu.scratch("gated", rows as u64 * v as u64 * bytes);
        let input = (!gated_f16).then(|| gpu.scratch("swilu pre-activation", rows as u64 * v as u64 * 4));
        let half_w1 = l.half.as_ref().and_then(|h| h.swilu_w.as_ref());
        Linear {
            w_format: WeightFormat::f16_if(half_w1.is_some()),
            y_f16: gated_f16,
            bias: Some(b1),
            gate: Some(Gate {
                by_f16: false,
                by: bag,
                keep_input: input.as_ref(),
            }),
            ..Linear::new(
                "swilu_projection+gate",
                self.x,
                half_w1.unwrap_or(w1),
                &gated,
                (rows, v, c.d as u32),
            )
        }
        .record(gpu, encoder)?;
        Ok((Some(gated), input))
    }

    /// The value projection `out = hidden Wo^T + bo`, added into `residual` when given.
    /// Without one the output is `hidden`. Returns (out, whether it was added).
    fn value_proj(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        hidden: &wgpu::Buffer,
        hidden_is_gated: bool,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(wgpu::Buffer, bool)> {
        let (l, c, gpu) = (self.layer, &self.layer.config, self.gpu);
        let Some((wo, bo)) = l.value_proj.as_ref().filter(|_| !c.peer) else {
            return Ok((hidden.clone(), false));
        };
        let (d, v) = (c.d as u32, c.v_dim as u32);
        let out = match residual {
            Some(r) => r.clone(),
            None => gpu.scratch("memory out", self.rows as u64 * d as u64 * 4),
        };
        let half_wo = l.half.as_ref().and_then(|h| h.value_w.as_ref());
        Linear {
            w_format: WeightFormat::f16_if(half_wo.is_some()),
            x_f16: self.gated_f16() && hidden_is_gated,
            bias: Some(bo),
            accumulate: residual.is_some(),
            ..Linear::new(
                "value_proj",
                hidden,
                half_wo.unwrap_or(wo),
                &out,
                (self.rows, d, v),
            )
        }
        .record(gpu, encoder)?;
        Ok((out, residual.is_some()))
    }

    /// `mem_gated`: `sigmoid(x Wg^T + bg) * out`, into `residual` when there is one. Returns
    /// (the gated output, the gate's logits).
    fn gate(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        out: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let (l, c, gpu, rows) = (self.layer, &self.layer.config, self.gpu, self.rows);
        let (gw, gb) = l.gating.as_ref().expect("a gated layer");
        let logits = gpu.scratch("gate logits", rows as u64 * 4);
        Linear {
            bias: Some(gb),
            ..Linear::new("gating", self.x, gw, &logits, (rows, 1, c.d as u32))
        }
        .record(gpu, encoder)?;
        let target = match residual {
            Some(r) => r.clone(),
            None => gpu.scratch("gated memory out", rows as u64 * c.out_dim() as u64 * 4),
        };
        row_gate::record_forward(
            gpu,
            encoder,
            (&logits, out, &target),
            (rows, c.out_dim() as u32),
            residual.is_some(),
        )?;
        Ok((target, logits))
    }
}
