//! GPU time per compute pass from timestamp queries (the benchmark's clock).

use super::Device;
use crate::error::Result;

/// One timed pass.
#[derive(Clone, Debug)]
pub struct KernelTiming {
    pub label: &'static str,
    pub seconds: f64,
}

impl KernelTiming {
    /// Seconds per run for each label, in order of first appearance, over `timings` that
    /// cover `runs` repetitions of the same work.
    pub fn per_label(timings: &[KernelTiming], runs: usize) -> Vec<(&'static str, f64)> {
        let mut out: Vec<(&'static str, f64)> = Vec::new();
        for t in timings {
            let seconds = t.seconds / runs.max(1) as f64;
            match out.iter_mut().find(|k| k.0 == t.label) {
                Some(k) => k.1 += seconds,
                None => out.push((t.label, seconds)),
            }
        }
        out
    }
}

/// Hands out begin/end timestamp slots to passes as they are recorded.
pub struct Profiler {
    query_set: wgpu::QuerySet,
    capacity: u32,
    labels: Vec<&'static str>,
}

impl Profiler {
    pub(super) fn new(device: &wgpu::Device, passes: u32) -> Self {
        let capacity = passes.clamp(1, 2048);
        Profiler {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity * 2,
            }),
            capacity,
            labels: Vec::new(),
        }
    }

    pub(super) fn next_writes(
        &mut self,
        label: &'static str,
    ) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32;
        if i >= self.capacity {
            return None;
        }
        self.labels.push(label);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    pub(super) async fn read(self, gpu: &Device) -> Result<Vec<KernelTiming>> {
        let n = self.labels.len() as u32;
        if n == 0 {
            return Ok(Vec::new());
        }
        let resolve = gpu.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: 16 * n as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        encoder.resolve_query_set(&self.query_set, 0..2 * n, &resolve, 0);
        gpu.queue.submit([encoder.finish()]);
        let bytes = gpu.read_bytes(&resolve, 0, 16 * n as u64).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(self
            .labels
            .iter()
            .enumerate()
            .map(|(i, &label)| KernelTiming {
                label,
                seconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period,
            })
            .collect())
    }
}
