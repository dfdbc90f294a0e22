//! The memory block: a product-key memory layer (`crate::memory`) in place of a layer's
//! feed-forward, `h += memory(x)`, reading a value table of the model (shared by all memory
//! layers, or its own).

use super::{FeedForwardKind, FeedForwardOnGpu, GradSink, Pass};
use crate::error::{Error, Result};
use crate::kernels::ops::record_add;
use crate::memory::{parameters, MemoryActivations, MemoryConfig, MemoryLayer};
use crate::model::config::ModelConfig;
use crate::params::{Group, Init, ParamId, Registry};

/// A memory layer's own parameters, and the value tables it reads (the model's).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryParams {
    /// `(reference name within the layer, id)`, in `memory::parameters` order.
    ids: Vec<(&'static str, ParamId)>,
    /// The table the bag sums (`values.weight`; PEER: `values_v.weight`).
    pub values: ParamId,
    /// PEER: the table the input is dotted with (`values_u.weight`).
    pub values_u: Option<ParamId>,
}

impl MemoryParams {
    /// Declares a memory layer of model `c` under `prefix` (`layers.<l>.feed_forward.` in
    /// place of a feed-forward block, `layers.<l>.memory.` beside one): the value tables
    /// first where this layer is the first to read them (one table shared by all memory
    /// layers, lingua's `mem_share_values` and its default, or one per layer; PEER's two),
    /// then the layer's own parameters. `values` holds the tables declared so far.
    pub(crate) fn declare_with_tables(
        r: &mut Registry,
        prefix: &str,
        m: &MemoryConfig,
        values: &mut Vec<ParamId>,
        c: &ModelConfig,
    ) -> Result<Self> {
        let names: &[&str] = if m.peer {
            &[crate::memory::VALUES_U_NAME, crate::memory::VALUES_V_NAME]
        } else {
            &[crate::memory::VALUES_NAME]
        };
        let tables: Vec<ParamId> = if c.args.productkey_args.mem_share_values && !values.is_empty() {
            values[..names.len()].to_vec()
        } else {
            let declared: Vec<ParamId> = names
                .iter()
                .map(|name| {
                    r.declare(
                        format!("{prefix}{name}"),
                        vec![m.n_values(), m.v_dim],
                        Init::Normal(1.0 / (m.v_dim as f32).sqrt()),
                        Group::Values,
                    )
                })
                .collect();
            values.extend(&declared);
            declared
        };
        Self::declare(r, prefix, m, &tables)
    }

    /// Declares the layer's own parameters under `prefix` (`layers.<l>.feed_forward.` in
    /// place of a feed-forward block, `layers.<l>.memory.` beside one); it reads value tables
    /// `tables` (`[values]`, or PEER's `[values_u, values_v]`).
    pub(crate) fn declare(
        r: &mut Registry,
        prefix: &str,
        c: &MemoryConfig,
        tables: &[ParamId],
    ) -> Result<Self> {
        c.validate()?;
        let ids = parameters(c)
            .into_iter()
            .map(|(name, shape, init)| {
                let id = r.declare(format!("{prefix}{name}"), shape, init, Group::Weights);
                (name, id)
            })
            .collect();
        let (values, values_u) = match tables {
            [values] => (*values, None),
            [u, v] => (*v, Some(*u)),
            _ => {
                return Err(Error::Config(format!(
                    "a memory layer reads 1 or 2 tables, not {}",
                    tables.len()
                )))
            }
        };
        Ok(MemoryParams {
            ids,
            values,
            values_u,
        })
    }

    /// Every parameter with its name within the layer.
    pub fn local(&self) -> impl Iterator<Item = (&'static str, ParamId)> + '_ {
        self.ids.iter().copied()
    }

    fn id(&self, name: &str) -> Option<ParamId> {
        self.ids.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
    }
}

/// A memory block on the GPU: its ids and the layer over the model's parameter buffers.
pub(crate) struct MemoryBlock {
    pub params: MemoryParams,
    pub layer: MemoryLayer,
}

impl FeedForwardKind for MemoryParams {
    fn ids(&self) -> Vec<ParamId> {
        self.local().map(|(_, id)| id).collect()
    }

    fn flops_per_token(&self, c: &ModelConfig) -> f64 {
        c.memory.as_ref().map_or(0.0, MemoryConfig::flops_per_token)
    }

    fn compact_weights(&self) -> Vec<ParamId> {
        Vec::new()
    }

    fn memory(&self) -> Option<&MemoryParams> {
        Some(self)
    }
}

impl FeedForwardOnGpu for MemoryBlock {
    type Params = MemoryParams;
    type Acts = MemoryActivations;

    fn new(params: &MemoryParams, c: &ModelConfig, buffer: &dyn Fn(ParamId) -> wgpu::Buffer) -> Result<Self> {
        let config = c
            .memory
            .as_ref()
            .ok_or_else(|| Error::Config("memory layers need a memory configuration".into()))?;
        let layer = MemoryLayer::from_buffers(config, params.local().map(|(name, id)| (name, buffer(id))))?;
        Ok(MemoryBlock {
            params: params.clone(),
            layer,
        })
    }

    fn record_forward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
    ) -> Result<MemoryActivations> {
        if let Some(table) = p.model.sharded(self.params.values) {
            return self.record_forward_sharded(p, encoder, x, h, table);
        }
        let pool = p.model.pool(self.params.values)?;
        let (acts, added) = match self.params.values_u {
            Some(u) => {
                let pools = (p.model.pool(u)?, pool);
                self.layer
                    .record_forward_peer(p.gpu, encoder, pools, x, p.rows(), Some(h))?
            }
            None => self
                .layer
                .record_forward_into(p.gpu, encoder, pool, x, p.rows(), Some(h))?,
        };
        if !added {
            record_add(p.gpu, encoder, &acts.out, h, p.rows() * p.model.config.dim as u32)?;
        }
        Ok(acts)
    }

    fn record_backward(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        acts: &MemoryActivations,
        dh: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        if let Some(table) = p.model.sharded(self.params.values) {
            return self.record_backward_sharded(p, encoder, (x, acts, dh, dx), table, grads);
        }
        let pool = p.model.pool(self.params.values)?;
        let g = match self.params.values_u {
            Some(u) => {
                let pools = (p.model.pool(u)?, pool);
                self.layer
                    .record_backward_peer(p.gpu, encoder, pools, x, acts, dh)?
            }
            None => self.layer.record_backward(p.gpu, encoder, pool, x, acts, dh)?,
        };
        self.take_layer_grads(p, encoder, &g, dx, grads)?;
        let tables = [
            (self.params.values, Some(&g.values)),
            (
                self.params.values_u.unwrap_or(self.params.values),
                g.values_u.as_ref(),
            ),
        ];
        for (id, rows) in tables {
            let Some(rows) = rows else { continue };
            let table = grads.value_table(id)?;
            rows.record_scatter_add(p.gpu, encoder, &table.grad, table.rows)?;
            if let Some(read) = &table.read {
                rows.record_mark(p.gpu, encoder, read, table.rows)?;
            }
        }
        Ok(())
    }

    fn memory_mut(&mut self) -> Option<&mut MemoryBlock> {
        Some(self)
    }

    fn memory_acts(acts: &MemoryActivations) -> Option<&MemoryActivations> {
        Some(acts)
    }
}

impl MemoryBlock {
    /// The forward over a table sharded across devices: what `encoder` holds is submitted,
    /// the layer runs over every device (`MemoryLayer::forward_sharded`, waiting for each
    /// relay), and recording goes on into a new encoder in `encoder`'s place.
    #[cfg(not(target_arch = "wasm32"))]
    fn record_forward_sharded(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        h: &wgpu::Buffer,
        table: &crate::memory::ShardedValues,
    ) -> Result<MemoryActivations> {
        p.gpu.end_open_pass();
        let before = std::mem::replace(encoder, p.gpu.device.create_command_encoder(&Default::default()));
        p.gpu.queue.submit([before.finish()]);
        let devices = p.model.shard_devices(p.gpu);
        let sharded = pollster::block_on(self.layer.forward_sharded(&devices, table, x, p.rows(), Some(h)));
        // A failure may leave a planned recording's pass open on an encoder it dropped.
        let (sharded, _) = sharded.inspect_err(|_| p.gpu.end_open_pass())?;
        if !sharded.added {
            record_add(
                p.gpu,
                encoder,
                &sharded.acts.out,
                h,
                p.rows() * p.model.config.dim as u32,
            )?;
        }
        Ok(sharded.acts)
    }

    #[cfg(target_arch = "wasm32")]
    fn record_forward_sharded(
        &self,
        _: &Pass,
        _: &mut wgpu::CommandEncoder,
        _: &wgpu::Buffer,
        _: &wgpu::Buffer,
        _: &crate::memory::ShardedValues,
    ) -> Result<MemoryActivations> {
        Err(Error::Config("sharded value tables need a native build".into()))
    }

    /// The layer's input gradient into `dx` and its own parameters' gradients into `grads`.
    fn take_layer_grads(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        g: &crate::memory::MemoryGrads,
        dx: &wgpu::Buffer,
        grads: &mut GradSink,
    ) -> Result<()> {
        let bytes = p.rows() as u64 * p.model.config.dim as u64 * 4;
        p.gpu.copy(encoder, (&g.x, 0), (dx, 0), bytes);
        for (name, grad) in g.named(&self.layer.config) {
            let id = self
                .params
                .id(name)
                .ok_or_else(|| Error::MissingTensor(name.into()))?;
            grads.set(id, grad.clone());
        }
        Ok(())
    }

    /// The backward over a table sharded across devices: what `encoder` holds is submitted,
    /// the layer's backward runs over every device (`MemoryLayer::backward_sharded`, waiting
    /// for each relay), and each shard's value gradient is added into its table's gradient
    /// on its device; recording goes on into a new encoder in `encoder`'s place.
    #[cfg(not(target_arch = "wasm32"))]
    fn record_backward_sharded(
        &self,
        p: &Pass,
        encoder: &mut wgpu::CommandEncoder,
        (x, acts, dh, dx): (&wgpu::Buffer, &MemoryActivations, &wgpu::Buffer, &wgpu::Buffer),
        table: &crate::memory::ShardedValues,
        grads: &mut GradSink,
    ) -> Result<()> {
        p.gpu.end_open_pass();
        let before = std::mem::replace(encoder, p.gpu.device.create_command_encoder(&Default::default()));
        p.gpu.queue.submit([before.finish()]);
        let devices = p.model.shard_devices(p.gpu);
        let sharded = pollster::block_on(self.layer.backward_sharded_from(&devices, table, x, acts, dh));
        let (sharded, _) = sharded.inspect_err(|_| p.gpu.end_open_pass())?;
        self.take_layer_grads(p, encoder, &sharded.grads, dx, grads)?;
        let shards = grads.sharded_table(self.params.values)?;
        for (s, (gpu, rows)) in devices.iter().zip(&sharded.values).enumerate() {
            let target = &shards[s];
            // Device 0's into the pass's encoder; each other device's in one of its own.
            let mut own = (s > 0).then(|| gpu.device.create_command_encoder(&Default::default()));
            let enc = own.as_mut().unwrap_or(encoder);
            rows.record_scatter_add(gpu, enc, &target.grad, target.rows)?;
            if let Some(read) = &target.read {
                rows.record_mark(gpu, enc, read, target.rows)?;
            }
            if let Some(own) = own {
                gpu.queue.submit([own.finish()]);
            }
        }
        Ok(())
    }

    #[cfg(target_arch = "wasm32")]
    fn record_backward_sharded(
        &self,
        _: &Pass,
        _: &mut wgpu::CommandEncoder,
        _: (&wgpu::Buffer, &MemoryActivations, &wgpu::Buffer, &wgpu::Buffer),
        _: &crate::memory::ShardedValues,
        _: &mut GradSink,
    ) -> Result<()> {
        Err(Error::Config("sharded value tables need a native build".into()))
    }
}
