//! Dispatches and passes: the one way kernels run (counted, timed when profiling, merged into
//! one pass while a step plan records), the copies and clears around them, and profiling.

use super::{Device, KernelTiming, Profiler};
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

/// Largest workgroup count in one grid dimension that every adapter accepts.
pub const MAX_GRID_DIM: u32 = 65535;

/// A compute pass that outlives the borrow of its encoder (the encoder stays locked until it
/// ends, when this is dropped).
pub(super) struct OpenPass {
    pass: wgpu::ComputePass<'static>,
}

impl Device {
    /// The one way kernels dispatch: `pipeline` over `grid` workgroups with `bind` as bind
    /// group 0, counted; in a compute pass of its own (timed under `label` when profiling), or
    /// inside `record_planned` in the recording's open pass.
    pub fn run(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        bind: &wgpu::BindGroup,
        grid: (u32, u32, u32),
    ) {
        self.run_groups(encoder, label, pipeline, &[bind], grid)
    }

    /// `run` with bind groups 0, 1, ... in order.
    pub fn run_groups(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        binds: &[&wgpu::BindGroup],
        grid: (u32, u32, u32),
    ) {
        self.with_pass(encoder, label, |pass| {
            pass.set_pipeline(pipeline);
            for (i, b) in binds.iter().enumerate() {
                pass.set_bind_group(i as u32, *b, &[]);
            }
            pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        });
        self.created.dispatches.fetch_add(1, Ordering::Relaxed);
    }

    /// One dispatch of `pipeline` over `grid` per bind group (group 0), in one pass: a kernel
    /// over a table split across buffers.
    pub fn run_each(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        binds: &[wgpu::BindGroup],
        grid: (u32, u32, u32),
    ) {
        self.with_pass(encoder, label, |pass| {
            pass.set_pipeline(pipeline);
            for bind in binds {
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(grid.0, grid.1, grid.2);
            }
        });
        self.created
            .dispatches
            .fetch_add(binds.len() as u64, Ordering::Relaxed);
    }

    /// Runs `f` on a compute pass: inside `record_planned` (and not profiling), the
    /// recording's one open pass, so that a step's dispatches share passes (wgpu places the
    /// barriers between them); otherwise a pass of its own, timed under `label` when
    /// profiling.
    fn with_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        label: &'static str,
        f: impl FnOnce(&mut wgpu::ComputePass<'_>),
    ) {
        let merge = self.profiler.lock().unwrap().is_none()
            && self
                .active_plan
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|p| p.serves_this_thread());
        if !merge {
            let mut pass = self.begin_pass(encoder, label);
            f(&mut pass);
            return;
        }
        let mut open = self.open_pass.lock().unwrap();
        let pass = open.get_or_insert_with(|| OpenPass {
            pass: encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step"),
                    timestamp_writes: None,
                })
                .forget_lifetime(),
        });
        f(&mut pass.pass);
    }

    /// Ends the open pass of a planned recording, if any, so that `encoder` takes other
    /// commands again.
    pub(crate) fn end_open_pass(&self) {
        self.open_pass.lock().unwrap().take();
    }

    /// `encoder.copy_buffer_to_buffer`, after ending a planned recording's open pass: code
    /// that records into a plan copies through this.
    pub fn copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (src, src_offset): (&wgpu::Buffer, u64),
        (dst, dst_offset): (&wgpu::Buffer, u64),
        bytes: u64,
    ) {
        self.end_open_pass();
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// `encoder.clear_buffer` (all of `buffer`), after ending a planned recording's open pass.
    pub fn clear(&self, encoder: &mut wgpu::CommandEncoder, buffer: &wgpu::Buffer) {
        self.end_open_pass();
        encoder.clear_buffer(buffer, 0, None);
    }

    /// Begins a compute pass; when profiling is on, the pass is timed under `label`.
    pub fn begin_pass<'e>(
        &self,
        encoder: &'e mut wgpu::CommandEncoder,
        label: &'static str,
    ) -> wgpu::ComputePass<'e> {
        let mut guard = self.profiler.lock().unwrap();
        let writes = guard.as_mut().and_then(|p| p.next_writes(label));
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(label),
            timestamp_writes: writes,
        })
    }

    /// Turns on per-pass GPU timing for up to `passes` passes. Errors when the adapter has no
    /// timestamp queries.
    pub fn start_profiling(&self, passes: u32) -> Result<()> {
        if !self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Adapter("this adapter has no timestamp queries".into()));
        }
        *self.profiler.lock().unwrap() = Some(Profiler::new(&self.device, passes));
        Ok(())
    }

    /// Stops profiling and returns the time of every recorded pass, in recording order.
    pub async fn finish_profiling(&self) -> Result<Vec<KernelTiming>> {
        let profiler = self.profiler.lock().unwrap().take();
        match profiler {
            Some(p) => p.read(self).await,
            None => Ok(Vec::new()),
        }
    }
}

/// A 2-D grid of `n` workgroups (x * y >= n), for counts beyond one dimension's limit.
/// Kernels recover the linear index as `wg.y * num_workgroups.x + wg.x` and skip the excess.
pub fn grid(n: u32) -> (u32, u32) {
    if n == 0 {
        return (0, 0);
    }
    let x = n.min(MAX_GRID_DIM);
    (x, n.div_ceil(x))
}
