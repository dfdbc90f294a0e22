//! Buffers and bind groups, all created through the device so that they are counted (a step
//! that allocates shows), and handed out by the active step plan while one records.

use super::{plan, Device};
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// What a `Device` has created and recorded since it was made: the counting wrapper around the
/// device that shows whether a step allocates (every buffer and bind group of this crate is
/// created through `Device`, every dispatch recorded through `Device::run`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub buffers: u64,
    pub bind_groups: u64,
    pub dispatches: u64,
}

impl Counts {
    /// Each count divided by `n` (per step of `n` steps).
    pub fn per(self, n: u64) -> Counts {
        let n = n.max(1);
        Counts {
            buffers: self.buffers / n,
            bind_groups: self.bind_groups / n,
            dispatches: self.dispatches / n,
        }
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            buffers: self.buffers - o.buffers,
            bind_groups: self.bind_groups - o.bind_groups,
            dispatches: self.dispatches - o.dispatches,
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) buffers: AtomicU64,
    pub(super) bind_groups: AtomicU64,
    pub(super) dispatches: AtomicU64,
    pub(super) bytes: AtomicU64,
}

impl Device {
    /// A small storage buffer, made once, to bind where a kernel's optional output is
    /// absent (the kernel then never writes it): a writable binding needs a buffer that no
    /// other binding of the dispatch uses.
    pub fn unused_output(&self) -> &wgpu::Buffer {
        self.unused_output
            .get_or_init(|| self.placeholder("unused optional output"))
    }

    /// A 16-byte storage buffer, made once, to bind where a kernel's optional input is
    /// absent or too small for its view (the kernel then never reads it).
    pub fn unused_input(&self) -> &wgpu::Buffer {
        self.unused_input
            .get_or_init(|| self.placeholder("unused optional input"))
    }

    /// A 16-byte storage buffer that stands in for an absent one.
    fn placeholder(&self, label: &str) -> wgpu::Buffer {
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 16,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        })
    }

    /// Bytes of every buffer created so far (freed ones included): an upper bound of the
    /// device memory this crate's buffers have held.
    pub fn buffer_bytes_created(&self) -> u64 {
        self.created.bytes.load(Ordering::Relaxed)
    }

    /// Buffers and bind groups created and dispatches recorded so far.
    pub fn counts(&self) -> Counts {
        Counts {
            buffers: self.created.buffers.load(Ordering::Relaxed),
            bind_groups: self.created.bind_groups.load(Ordering::Relaxed),
            dispatches: self.created.dispatches.load(Ordering::Relaxed),
        }
    }

    /// Creates a buffer, counted.
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        self.created.buffers.fetch_add(1, Ordering::Relaxed);
        self.created.bytes.fetch_add(desc.size, Ordering::Relaxed);
        self.device.create_buffer(desc)
    }

    /// A buffer created holding `desc.contents` (mapped at creation, as wgpu's own helper
    /// does), except that a device that can no longer map it (a lost device) leaves the
    /// failure to the device's error, which the next read-back reports, instead of a panic.
    fn create_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor) -> wgpu::Buffer {
        let len = desc.contents.len() as u64;
        let buffer = self.create_buffer(&wgpu::BufferDescriptor {
            label: desc.label,
            size: len
                .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
                .max(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: desc.usage,
            mapped_at_creation: true,
        });
        match buffer.get_mapped_range_mut(..) {
            Ok(mut view) => {
                view.slice(..len as usize).copy_from_slice(desc.contents);
                drop(view);
                buffer.unmap();
            }
            Err(e) => {
                let mut first = self.device_error.lock().unwrap();
                if first.is_none() {
                    *first = Some(format!("writing {:?}: {e}", desc.label.unwrap_or("a buffer")));
                }
            }
        }
        buffer
    }

    /// A bind group for group 0 of `pipeline` with `buffers` at bindings 0, 1, 2, ...
    pub fn bind(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let numbered: Vec<(u32, &wgpu::Buffer)> =
            buffers.iter().enumerate().map(|(i, b)| (i as u32, *b)).collect();
        self.bind_at(pipeline, &numbered)
    }

    /// A bind group for group 0 of `pipeline` with each buffer at its binding number (for
    /// entry points that use only some of a module's bindings).
    pub fn bind_at(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        self.bind_group(pipeline, 0, buffers)
    }

    /// A bind group for group `group` of `pipeline`, each buffer at its binding number.
    pub fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        group: u32,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        self.planned(
            |plan| plan.bind_group(pipeline, group, buffers),
            || {
                let layout = pipeline.get_bind_group_layout(group);
                let entries: Vec<wgpu::BindGroupEntry> = buffers
                    .iter()
                    .map(|(binding, b)| wgpu::BindGroupEntry {
                        binding: *binding,
                        resource: b.as_entire_binding(),
                    })
                    .collect();
                self.created.bind_groups.fetch_add(1, Ordering::Relaxed);
                self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &entries,
                })
            },
            |plan, bind| {
                let key = plan::BindKey {
                    pipeline: pipeline.clone(),
                    group,
                    entries: buffers.iter().map(|(i, b)| (*i, (*b).clone())).collect(),
                };
                plan.keep_bind_group(key, bind);
            },
        )
    }

    /// What this thread's active step plan (if any) hands out for the next request
    /// (`reuse`); else a new object (`create`), which the plan keeps for later recordings
    /// (`keep`).
    fn planned<T>(
        &self,
        reuse: impl FnOnce(&mut plan::ActivePlan) -> Option<T>,
        create: impl FnOnce() -> T,
        keep: impl FnOnce(&mut plan::ActivePlan, &T),
    ) -> T {
        let mut guard = self.active_plan.lock().unwrap();
        let mut active = guard.as_mut().filter(|p| p.serves_this_thread());
        if let Some(reused) = active.as_mut().and_then(|plan| reuse(plan)) {
            return reused;
        }
        let created = create();
        if let Some(plan) = active {
            keep(plan, &created);
        }
        created
    }

    /// A storage buffer holding `data` (usable as kernel input and output, and copyable).
    /// Inside `record_planned`, the plan's buffer for this request, with `data` written to it.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        // A zero-length binding is invalid: keep at least one word.
        let contents: Vec<u8>;
        let contents = if bytes.len() < 4 {
            contents = vec![0u8; 4];
            &contents[..]
        } else {
            bytes
        };
        self.planned(
            |plan| plan.upload(&self.queue, contents),
            || {
                self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage: STORAGE_USAGE,
                })
            },
            |plan, buffer| plan.keep_buffer(buffer, Some(contents), false),
        )
    }

    /// A zeroed storage buffer of `bytes` bytes (at least 4). Inside `record_planned`, the
    /// plan's buffer for this request, cleared at the start of the recording.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.storage_buffer(label, bytes, true)
    }

    /// A storage buffer of `bytes` bytes that the caller writes in full before reading it.
    /// Fresh buffers are zero; inside `record_planned`, the plan's buffer for this request
    /// holds what the last recording left in it (and costs no clearing).
    pub fn scratch(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.storage_buffer(label, bytes, false)
    }

    fn storage_buffer(&self, label: &str, bytes: u64, zeroed: bool) -> wgpu::Buffer {
        let size = bytes.max(4).next_multiple_of(4);
        self.planned(
            |plan| plan.storage(size, zeroed),
            || {
                self.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                })
            },
            |plan, buffer| plan.keep_buffer(buffer, None, zeroed),
        )
    }

    /// A uniform buffer holding one parameter block. Inside `record_planned`, the plan's
    /// buffer for this request, rewritten when the block changed.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, params: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(params);
        self.planned(
            |plan| plan.uniform(&self.queue, bytes),
            || {
                self.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                })
            },
            |plan, buffer| plan.keep_uniform(buffer, bytes),
        )
    }
}
