//! Step plans. A step of fixed shape (a training step, a forward of `[batch, seq]`, a decode
//! step) asks for the same buffers, parameter blocks and bind groups, in the same order, every
//! time it is recorded. A `StepPlan` keeps what the first recording created and hands it back,
//! slot by slot, to every later recording made through `Device::record_planned`:
//!
//! - `Device::storage` returns the slot's buffer, cleared to zero at the start of the recording
//!   (a fresh buffer is zero too, so kernels see the same contents either way);
//! - `Device::scratch` returns the slot's buffer as the last recording left it: for buffers
//!   the step writes in full before reading them (most activations and gradients), which
//!   then cost no clearing;
//! - `Device::upload` returns the slot's buffer with the new data written through
//!   `queue.write_buffer` (skipped when the data are the same as last time);
//! - `Device::uniform` returns the slot's uniform buffer, rewritten only when its parameters
//!   changed (a decode step's position, an optimiser step's learning rate);
//! - `Device::bind_group` returns the slot's bind group when it binds the same buffers to the same
//!   pipeline.
//!
//! A slot whose request changed (another size, other buffers) is created anew, so a plan
//! recorded with another shape is still correct, only not free. After the first recording of a
//! shape, a step creates no buffer and no bind group (`tests/plan.rs` counts them).
//!
//! The buffers a recording returns (logits, losses, activations) belong to the plan: the next
//! recording with the same plan reuses them, so read them back before recording it again. A
//! recording through a plan must be submitted before the plan records again (its parameter
//! blocks are rewritten through the queue).

use super::Device;
use crate::error::Result;

/// What one recording of a fixed-shape step created, kept for the next recording.
#[derive(Default)]
pub struct StepPlan {
    slots: Slots,
}

impl StepPlan {
    pub fn new() -> Self {
        StepPlan::default()
    }

    /// Buffers (storage and uniform) and bind groups the plan holds.
    pub fn len(&self) -> (usize, usize) {
        let s = &self.slots;
        (s.buffers.len() + s.uniforms.len(), s.binds.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[derive(Default)]
pub(super) struct Slots {
    buffers: Vec<PlannedBuffer>,
    uniforms: Vec<PlannedBytes>,
    binds: Vec<PlannedBind>,
}

struct PlannedBuffer {
    buffer: wgpu::Buffer,
    /// `Some`: the data last written to it (`upload`).
    uploaded: Option<Vec<u8>>,
    /// Cleared at the start of each recording (`storage`; not `scratch`, whose contents
    /// the step writes before it reads them).
    zeroed: bool,
}

struct PlannedBytes {
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
}

pub(super) struct BindKey {
    pub pipeline: wgpu::ComputePipeline,
    pub group: u32,
    pub entries: Vec<(u32, wgpu::Buffer)>,
}

struct PlannedBind {
    key: BindKey,
    group: wgpu::BindGroup,
}

/// The plan being recorded into, with how far the recording has got.
pub(super) struct ActivePlan {
    /// The recording thread: requests from other threads (other recordings on a shared
    /// `Device`) are not the plan's.
    thread: std::thread::ThreadId,
    slots: Slots,
    next_buffer: usize,
    next_uniform: usize,
    next_bind: usize,
}

impl ActivePlan {
    /// Whether the calling thread is the one recording through this plan.
    pub fn serves_this_thread(&self) -> bool {
        self.thread == std::thread::current().id()
    }

    /// The next storage slot (zeroed or scratch), if the plan's buffer there is one of
    /// `size` bytes.
    pub fn storage(&mut self, size: u64, zeroed: bool) -> Option<wgpu::Buffer> {
        let i = self.next_buffer;
        self.next_buffer += 1;
        match self.slots.buffers.get(i) {
            Some(b) if b.uploaded.is_none() && b.zeroed == zeroed && b.buffer.size() == size => {
                Some(b.buffer.clone())
            }
            _ => None,
        }
    }

    /// The next uploaded slot, if the plan's buffer there has the size of `bytes`; the data
    /// are written into it unless they are what it already holds.
    pub fn upload(&mut self, queue: &wgpu::Queue, bytes: &[u8]) -> Option<wgpu::Buffer> {
        let i = self.next_buffer;
        self.next_buffer += 1;
        let slot = self.slots.buffers.get_mut(i)?;
        match &mut slot.uploaded {
            Some(last) if slot.buffer.size() == bytes.len() as u64 => {
                if last.as_slice() != bytes {
                    queue.write_buffer(&slot.buffer, 0, bytes);
                    last.clear();
                    last.extend_from_slice(bytes);
                }
                Some(slot.buffer.clone())
            }
            _ => None,
        }
    }

    /// Puts a buffer created for the slot just asked for (`storage` or `upload` returned None).
    pub fn keep_buffer(&mut self, buffer: &wgpu::Buffer, uploaded: Option<&[u8]>, zeroed: bool) {
        let slot = PlannedBuffer {
            buffer: buffer.clone(),
            uploaded: uploaded.map(<[u8]>::to_vec),
            zeroed,
        };
        place(&mut self.slots.buffers, self.next_buffer - 1, slot);
    }

    /// The next uniform slot with the parameter block `bytes` in it (rewritten when it
    /// changed), if the slot exists with the same size.
    pub fn uniform(&mut self, queue: &wgpu::Queue, bytes: &[u8]) -> Option<wgpu::Buffer> {
        let i = self.next_uniform;
        self.next_uniform += 1;
        let slot = self.slots.uniforms.get_mut(i)?;
        if slot.bytes.len() != bytes.len() {
            return None;
        }
        if slot.bytes != bytes {
            queue.write_buffer(&slot.buffer, 0, bytes);
            slot.bytes.copy_from_slice(bytes);
        }
        Some(slot.buffer.clone())
    }

    pub fn keep_uniform(&mut self, buffer: &wgpu::Buffer, bytes: &[u8]) {
        let slot = PlannedBytes {
            buffer: buffer.clone(),
            bytes: bytes.to_vec(),
        };
        place(&mut self.slots.uniforms, self.next_uniform - 1, slot);
    }

    /// The next bind-group slot, if it binds `buffers` to `group` of `pipeline` (compared in
    /// place: nothing is allocated when it does).
    pub fn bind_group(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        group: u32,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> Option<wgpu::BindGroup> {
        let i = self.next_bind;
        self.next_bind += 1;
        let b = self.slots.binds.get(i)?;
        let k = &b.key;
        let same = &k.pipeline == pipeline
            && k.group == group
            && k.entries.len() == buffers.len()
            && k.entries
                .iter()
                .zip(buffers)
                .all(|((i, x), (j, y))| i == j && x == *y);
        same.then(|| b.group.clone())
    }

    pub fn keep_bind_group(&mut self, key: BindKey, group: &wgpu::BindGroup) {
        let slot = PlannedBind {
            key,
            group: group.clone(),
        };
        place(&mut self.slots.binds, self.next_bind - 1, slot);
    }
}

/// Sets `slots[i]`, where `i` is at most one past the end.
fn place<T>(slots: &mut Vec<T>, i: usize, slot: T) {
    if i < slots.len() {
        slots[i] = slot;
    } else {
        debug_assert_eq!(i, slots.len());
        slots.push(slot);
    }
}

impl Device {
    /// Runs `record` (which records a step into `encoder`) with `plan` supplying the buffers,
    /// parameter blocks and bind groups that `storage`, `upload`, `uniform` and `bind_group`
    /// hand out on this thread. The plan's storage buffers are cleared at the start of
    /// `encoder`, so they start at zero as fresh buffers do. Inside another `record_planned`
    /// on this `Device`, the outer plan serves (or, from another thread, none does).
    pub fn record_planned<R>(
        &self,
        plan: &mut StepPlan,
        encoder: &mut wgpu::CommandEncoder,
        record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<R>,
    ) -> Result<R> {
        {
            let mut active = self.active_plan.lock().unwrap();
            if active.is_some() {
                drop(active);
                return record(encoder);
            }
            for b in &plan.slots.buffers {
                if b.zeroed {
                    encoder.clear_buffer(&b.buffer, 0, None);
                }
            }
            *active = Some(ActivePlan {
                thread: std::thread::current().id(),
                slots: std::mem::take(&mut plan.slots),
                next_buffer: 0,
                next_uniform: 0,
                next_bind: 0,
            });
        }
        let result = record(encoder);
        self.end_open_pass();
        let done = self
            .active_plan
            .lock()
            .unwrap()
            .take()
            .expect("the plan is active");
        let mut slots = done.slots;
        // A recording that asked for fewer slots than the last leaves the rest unused.
        slots.buffers.truncate(done.next_buffer);
        slots.uniforms.truncate(done.next_uniform);
        slots.binds.truncate(done.next_bind);
        plan.slots = slots;
        result
    }

    /// Runs `f` as if no step plan were recording and no profiling were on (work of the
    /// library's own that a recording may trigger, such as the timed trial of the GEMM
    /// kernels): what `f` creates and dispatches stays out of the plan and the profile.
    pub(crate) fn outside_plan<R>(&self, f: impl FnOnce() -> R) -> R {
        let plan = {
            let mut active = self.active_plan.lock().unwrap();
            if active.as_ref().is_some_and(|p| p.serves_this_thread()) {
                active.take()
            } else {
                None
            }
        };
        let profiler = self.profiler.lock().unwrap().take();
        let result = f();
        *self.profiler.lock().unwrap() = profiler;
        if plan.is_some() {
            *self.active_plan.lock().unwrap() = plan;
        }
        result
    }
}
