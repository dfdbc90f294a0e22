//! Reading GPU buffers back to the host. Always async underneath (the only way on the web);
//! native programs get blocking wrappers.

use super::Device;
use crate::error::{Error, Result};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// Largest staging buffer kept for reuse; larger reads (whole value tables) get their own.
const KEEP_BYTES: u64 = 64 << 20;

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

#[derive(Default)]
struct MapState {
    result: Option<MapResult>,
    waker: Option<Waker>,
}

/// Resolves when `map_async`'s callback has fired.
struct MapFuture(Arc<Mutex<MapState>>);

impl Future for MapFuture {
    type Output = MapResult;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<MapResult> {
        let mut state = self.0.lock().unwrap();
        match state.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Device {
    /// Copies `size` bytes at `offset` of `buffer` to the host. Submits the copy itself.
    pub async fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let padded = size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let staging = self.take_staging(padded);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
        self.queue.submit([encoder.finish()]);
        let state = Arc::new(Mutex::new(MapState::default()));
        let callback_state = state.clone();
        staging.map_async(wgpu::MapMode::Read, 0..padded, move |r| {
            let mut s = callback_state.lock().unwrap();
            s.result = Some(r);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.device_failure("poll failed", &e))?;
        MapFuture(state)
            .await
            .map_err(|e| self.device_failure("buffer map failed", &e))?;
        let view = staging
            .get_mapped_range(0..padded)
            .map_err(|e| self.device_failure("mapped range", &e))?;
        let out = view[..size as usize].to_vec();
        drop(view);
        staging.unmap();
        self.return_staging(staging);
        self.take_device_error()?;
        Ok(out)
    }

    /// A failed read-back as one line: the first error the device reported (what made the
    /// read fail, such as a lost device), else `what` and `e`.
    fn device_failure(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        match self.take_device_error() {
            Err(first) => first,
            Ok(()) => Error::Device(format!("{what}: {}", super::one_line(&e.to_string()))),
        }
    }

    /// A mappable buffer of at least `size` bytes: the smallest kept one that fits, or a new
    /// one (rounded up to a power of two, so reads of similar sizes share it).
    fn take_staging(&self, size: u64) -> wgpu::Buffer {
        let mut kept = self.staging.lock().unwrap();
        let best = (0..kept.len())
            .filter(|&i| kept[i].size() >= size)
            .min_by_key(|&i| kept[i].size());
        if let Some(i) = best {
            return kept.swap_remove(i);
        }
        drop(kept);
        let rounded = size.next_power_of_two().max(256);
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: if rounded <= KEEP_BYTES { rounded } else { size },
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Keeps a staging buffer of up to `KEEP_BYTES` for later reads (a few, the largest
    /// dropped first).
    fn return_staging(&self, buffer: wgpu::Buffer) {
        const KEEP: usize = 8;
        if buffer.size() > KEEP_BYTES {
            return;
        }
        let mut kept = self.staging.lock().unwrap();
        kept.push(buffer);
        if kept.len() > KEEP {
            kept.sort_by_key(|b| b.size());
            kept.pop();
        }
    }

    pub async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, 0, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub async fn read_u32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
        let bytes = self.read_bytes(buffer, 0, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocking `read_bytes` for native programs and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_bytes_blocking(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.read_bytes(buffer, offset, size))
    }

    /// Blocking `read_f32` for native programs and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(buffer, len))
    }

    /// Blocking `read_u32` for native programs and tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32_blocking(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
        pollster::block_on(self.read_u32(buffer, len))
    }
}
