//! The device: adapter choice, limits and features, the pipeline cache, buffers, dispatch,
//! readback and timestamp profiling. Knows nothing of kernels, memories or models: the
//! kernels' own choices for a device live with the kernels (`kernels::Gpu`).

mod adapter;
#[cfg(target_os = "linux")]
pub mod cpu_threads;
mod dispatch;
mod pipelines;
mod plan;
mod profiler;
mod readback;
mod resources;

#[cfg(not(target_arch = "wasm32"))]
pub use adapter::all_adapters;
pub use adapter::{
    describe_adapter, NO_ADAPTER_HELP, REQUIRED_INVOCATIONS, REQUIRED_STORAGE_BUFFERS,
    REQUIRED_WORKGROUP_STORAGE,
};
pub use dispatch::{grid, MAX_GRID_DIM};
pub use plan::StepPlan;
pub use profiler::{KernelTiming, Profiler};
pub use resources::Counts;

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// A wgpu device and queue plus what every kernel shares: cached pipelines, the counted buffer
/// factory, step plans, readback and the profiler.
pub struct Device {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    info: Option<wgpu::AdapterInfo>,
    pipelines: Mutex<pipelines::PipelineCache>,
    profiler: Mutex<Option<Profiler>>,
    /// The first error the device reported since the last read-back (devices this crate
    /// created only; a host's device keeps the host's error handling).
    device_error: Arc<Mutex<Option<String>>>,
    created: resources::Counters,
    /// The step plan being recorded into (`record_planned`), if any.
    active_plan: Mutex<Option<plan::ActivePlan>>,
    /// The compute pass a planned recording's dispatches go into, while it is open.
    open_pass: Mutex<Option<dispatch::OpenPass>>,
    /// Read-back staging buffers, reused.
    staging: Mutex<Vec<wgpu::Buffer>>,
    /// Bound where a kernel's optional output is absent (`unused_output`).
    unused_output: std::sync::OnceLock<wgpu::Buffer>,
    /// Bound where a kernel's optional input is absent (`unused_input`).
    unused_input: std::sync::OnceLock<wgpu::Buffer>,
    /// Threads of a CPU adapter pinned to one CPU each (`cpu_threads`; Linux).
    pinned_threads: Vec<i32>,
}

/// A driver's or wgpu's message on one line (they come with "Caused by:" paragraphs).
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Experimental features a caller asks for beside the device's own, and what it makes of
/// them once granted (`Device::open`).
pub struct ExperimentalRequest<T> {
    pub features: wgpu::Features,
    pub granted: T,
}

impl Device {
    /// Picks the best adapter (honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`) and creates a
    /// device with the limits the kernels need, raising the binding and buffer sizes to what
    /// the adapter offers so large value tables split into as few buffers as possible.
    /// Timestamp queries and subgroups are enabled where the adapter has them. `experimental`
    /// may ask for experimental features on the chosen adapter; when the adapter refuses them
    /// the device is made without, and the second value is `None`.
    pub async fn open<T>(
        experimental: impl FnOnce(&wgpu::Adapter) -> Option<ExperimentalRequest<T>>,
    ) -> Result<(Self, Option<T>)> {
        #[cfg(target_os = "linux")]
        let threads_before = cpu_threads::thread_ids();
        let instance = adapter::instance();
        let adapter = adapter::choose_adapter(&instance).await?;
        Self::open_on(
            adapter,
            experimental,
            #[cfg(target_os = "linux")]
            threads_before,
        )
        .await
    }

    /// `open` on adapter `index` of `all_adapters` (as `memlayers info` lists them). Opening
    /// the same index twice gives two devices on one adapter.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn open_index<T>(
        index: usize,
        experimental: impl FnOnce(&wgpu::Adapter) -> Option<ExperimentalRequest<T>>,
    ) -> Result<(Self, Option<T>)> {
        #[cfg(target_os = "linux")]
        let threads_before = cpu_threads::thread_ids();
        let mut adapters = all_adapters().await;
        let count = adapters.len();
        if count == 0 {
            return Err(Error::Adapter(NO_ADAPTER_HELP.into()));
        }
        if index >= count {
            return Err(Error::Adapter(format!(
                "no adapter {index}: this machine has {count} (0..{count}; `memlayers info` lists them)"
            )));
        }
        Self::open_on(
            adapters.swap_remove(index),
            experimental,
            #[cfg(target_os = "linux")]
            threads_before,
        )
        .await
    }

    /// The device on `adapter`; `threads_before` are the process's threads before the
    /// adapter was looked for (Linux), so that the threads a CPU adapter starts can be told.
    async fn open_on<T>(
        adapter: wgpu::Adapter,
        experimental: impl FnOnce(&wgpu::Adapter) -> Option<ExperimentalRequest<T>>,
        #[cfg(target_os = "linux")] threads_before: Vec<i32>,
    ) -> Result<(Self, Option<T>)> {
        adapter::check_adapter(&adapter)?;
        let a = adapter.limits();
        let required_limits = wgpu::Limits {
            max_storage_buffers_per_shader_stage: REQUIRED_STORAGE_BUFFERS,
            max_compute_invocations_per_workgroup: REQUIRED_INVOCATIONS,
            max_compute_workgroup_size_x: REQUIRED_INVOCATIONS,
            max_compute_workgroup_storage_size: REQUIRED_WORKGROUP_STORAGE,
            max_compute_workgroups_per_dimension: MAX_GRID_DIM,
            max_storage_buffer_binding_size: a.max_storage_buffer_binding_size,
            max_buffer_size: a.max_buffer_size,
            ..wgpu::Limits::downlevel_defaults()
        }
        .using_alignment(a.clone());
        // Optional: timestamp queries (only the benchmark uses them) and subgroups (kernel
        // variants that have a fallback).
        let info = adapter.get_info();
        let required_features =
            adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        let request = |features: wgpu::Features, experimental: bool| {
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("memlayers"),
                required_features: features,
                required_limits: required_limits.clone(),
                // Safety: experimental features are enabled only when the caller asks for
                // some (the kernels ask for cooperative matrices, used by one kernel that
                // runs only when f16-input GEMMs are asked for, and tested against the oracle).
                experimental_features: if experimental {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                ..Default::default()
            })
        };
        // A device with the experimental features if the adapter grants them, else one without.
        let wanted = experimental(&adapter);
        let granted = match &wanted {
            Some(w) => request(required_features | w.features, true).await.ok(),
            None => None,
        };
        let (granted, (device, queue)) = match granted {
            Some(pair) => (wanted.map(|w| w.granted), pair),
            None => (
                None,
                request(required_features, false)
                    .await
                    .map_err(|e| Error::Device(format!("request_device failed: {e}")))?,
            ),
        };
        let mut gpu = Self::from_device(device, queue);
        // Validation errors become `Error::Device` at the next read-back instead of a panic
        // (native wgpu's default) or a console warning and silently skipped work (browsers).
        let first_error = gpu.device_error.clone();
        gpu.device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = first_error.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        // A lost device says so first (what follows from it is validation errors).
        let lost = gpu.device_error.clone();
        gpu.device.set_device_lost_callback(move |reason, message| {
            let mut slot = lost.lock().unwrap();
            let lost = format!("the device was lost ({reason:?}) {message}")
                .trim_end()
                .to_string();
            *slot = Some(match slot.take() {
                Some(later) => format!("{lost}; then: {later}"),
                None => lost,
            });
        });
        #[cfg(target_os = "linux")]
        if info.device_type == wgpu::DeviceType::Cpu && cpu_threads::enabled() {
            let started = cpu_threads::started_unnamed(&threads_before, &cpu_threads::thread_ids());
            gpu.pinned_threads = cpu_threads::spread(&started);
            log::debug!(
                "pinned the adapter's threads {:?} to one CPU each",
                gpu.pinned_threads
            );
        }
        gpu.info = Some(info);
        Ok((gpu, granted))
    }

    /// Wraps a device and queue that a host application created. The device must have been
    /// created with at least WebGPU's default compute limits (`wgpu::Limits::default()`).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Device {
            device,
            queue,
            info: None,
            pipelines: Mutex::new(Default::default()),
            profiler: Mutex::new(None),
            device_error: Arc::new(Mutex::new(None)),
            created: Default::default(),
            active_plan: Mutex::new(None),
            open_pass: Mutex::new(None),
            staging: Mutex::new(Vec::new()),
            unused_output: std::sync::OnceLock::new(),
            unused_input: std::sync::OnceLock::new(),
            pinned_threads: Vec::new(),
        }
    }

    /// The threads a CPU adapter started for this device that were pinned to one CPU each,
    /// in creation order (`gpu::cpu_threads`; Linux only, else empty).
    pub fn pinned_threads(&self) -> &[i32] {
        &self.pinned_threads
    }

    /// Whether the device reported an error that no read-back has taken yet.
    pub(crate) fn device_error_pending(&self) -> bool {
        self.device_error.lock().unwrap().is_some()
    }

    /// The first error the device reported since the last call, as an `Error::Device`.
    /// Every read-back calls this, so results computed by rejected work never come back
    /// looking valid.
    pub fn take_device_error(&self) -> Result<()> {
        match self.device_error.lock().unwrap().take() {
            Some(e) => Err(Error::Device(format!("the GPU rejected work: {}", one_line(&e)))),
            None => Ok(()),
        }
    }

    /// Fewest lanes a subgroup can have on this device: 0 when the device lacks the
    /// `subgroups` feature, or when its adapter is unknown (a host's device).
    pub fn subgroup_min_size(&self) -> u32 {
        match &self.info {
            Some(info) if self.device.features().contains(wgpu::Features::SUBGROUP) => info.subgroup_min_size,
            _ => 0,
        }
    }

    /// The adapter's description, when this device chose the adapter itself.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.info.as_ref()
    }

    pub fn adapter_name(&self) -> String {
        self.info
            .as_ref()
            .map(|i| format!("{} ({:?})", i.name, i.backend))
            .unwrap_or_else(|| "host-provided device".into())
    }

    pub fn limits(&self) -> wgpu::Limits {
        self.device.limits()
    }

    /// Largest storage binding, capped at what a buffer can hold.
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.device.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size)
    }
}
