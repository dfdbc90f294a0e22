//! One memory layer set up for timing its forward pass, shared by `memlayers bench` and the
//! browser bench, so that both time the same work: random weights with the reference's
//! init, a value table of uniform values with the reference's std (contents do not change
//! the speed), and a fixed random input.

use super::{MemoryActivations, MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
use crate::error::Result;
use crate::gpu::{KernelTiming, StepPlan};
use crate::kernels::Gpu;
use crate::rng::Rng;

pub struct ForwardWorkload {
    pub config: MemoryConfig,
    pub tokens: usize,
    pub layer: MemoryLayer,
    pub pool: ValuePool,
    pub x: wgpu::Buffer,
    /// The forward's buffers and bind groups, kept from one pass to the next.
    plan: std::sync::Mutex<StepPlan>,
}

impl ForwardWorkload {
    pub fn new(gpu: &Gpu, config: &MemoryConfig, dtype: ValueDtype, tokens: usize) -> Result<Self> {
        let mut rng = Rng::new(1);
        let weights = MemoryWeights::init(config, &mut rng)?;
        let a = (3.0 / config.v_dim as f32).sqrt();
        let pool = ValuePool::filled(gpu, config.n_values(), config.v_dim, dtype, None, |_, rows| {
            rows.iter_mut().for_each(|v| *v = rng.symmetric(a))
        })?;
        Ok(ForwardWorkload {
            config: config.clone(),
            tokens,
            layer: MemoryLayer::new(gpu, &weights)?,
            pool,
            x: gpu.upload("x", &Rng::new(2).vec_normal(tokens * config.d, 1.0)),
            plan: Default::default(),
        })
    }

    /// Records one forward pass into `encoder`.
    pub fn record(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<MemoryActivations> {
        self.layer
            .record_forward(gpu, encoder, &self.pool, &self.x, self.tokens as u32)
    }

    /// Records one forward pass into `encoder` through the workload's step plan (no new
    /// buffers or bind groups after the first pass). Submit it before recording the next.
    pub fn record_planned(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<MemoryActivations> {
        let mut plan = std::mem::take(&mut *self.plan.lock().unwrap());
        let act = gpu.record_planned(&mut plan, encoder, |encoder| self.record(gpu, encoder));
        *self.plan.lock().unwrap() = plan;
        act
    }

    /// Runs one forward pass (planned) and waits until it is done (by reading back one
    /// output value, which works the same natively and in the browser).
    pub async fn run(&self, gpu: &Gpu) -> Result<()> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let act = self.record_planned(gpu, &mut encoder)?;
        gpu.queue.submit([encoder.finish()]);
        gpu.read_f32(&act.out, 1).await.map(|_| ())
    }

    /// Forward tokens/s over `iters` passes after one warm-up pass; `now` is the caller's
    /// clock in seconds (std's Instant does not exist in the browser).
    pub async fn tokens_per_s(&self, gpu: &Gpu, iters: usize, now: impl Fn() -> f64) -> Result<f64> {
        self.run(gpu).await?; // pipelines, first-dispatch costs
        let start = now();
        for _ in 0..iters {
            self.run(gpu).await?;
        }
        Ok((self.tokens * iters) as f64 / (now() - start))
    }

    /// GPU time per kernel (label, seconds per forward, in recording order) averaged over
    /// `iters` passes, from timestamp queries; empty when the adapter has none (browsers
    /// without `--enable-dawn-features=allow_unsafe_apis`, for one).
    pub async fn kernel_times(&self, gpu: &Gpu, iters: usize) -> Result<Vec<(&'static str, f64)>> {
        if gpu.start_profiling(64 * iters as u32).is_err() {
            return Ok(Vec::new());
        }
        for _ in 0..iters {
            self.run(gpu).await?;
        }
        Ok(KernelTiming::per_label(&gpu.finish_profiling().await?, iters))
    }
}
