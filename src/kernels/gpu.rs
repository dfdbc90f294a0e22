//! `Gpu`: a device (`gpu::Device`) with the kernels' choices for it: the per-adapter
//! variants (`Tuning`), the linear layers' arithmetic and matrix units, and the GEMM kernel a
//! timed trial chose. Everything of the device is reached through it (`Deref`).

use super::linear::{GemmKernel, GemmPrecision, MatrixConfig};
use super::tuning::Tuning;
use crate::error::Result;
use crate::gpu::{Device, ExperimentalRequest};

/// The device every kernel, memory layer, model and trainer records on.
pub struct Gpu {
    device: Device,
    tuning: Tuning,
    /// The linear layers' arithmetic (`set_gemm_precision`).
    gemm_precision: GemmPrecision,
    /// The matrix units' configuration, where the adapter has them and this `Gpu` enabled them.
    matrix: Option<MatrixConfig>,
    /// The GEMM kernel the timed trial chose for this device, once asked
    /// (`kernels::linear::choice::kernel`; cleared by `set_tuning`).
    pub(crate) timed_gemm: std::sync::OnceLock<GemmKernel>,
}

impl std::ops::Deref for Gpu {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

impl Gpu {
    /// Picks the best adapter (honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`; see
    /// `Device::open`) with the kernel variants for its kind. Cooperative matrices (and f16
    /// for them) are enabled where the matrix-unit GEMM can run, which it does only under
    /// `GemmPrecision::F16Inputs`.
    pub async fn new() -> Result<Self> {
        let (device, matrix) = Device::open(matrix_request).await?;
        Ok(Self::with_device_tuning(device, matrix))
    }

    /// `new` on adapter `index` as `memlayers info` lists them (`gpu::all_adapters`'
    /// order); the same index twice opens two devices on one adapter.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn on_adapter(index: usize) -> Result<Self> {
        let (device, matrix) = Device::open_index(index, matrix_request).await?;
        Ok(Self::with_device_tuning(device, matrix))
    }

    /// Blocking `on_adapter` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn on_adapter_blocking(index: usize) -> Result<Self> {
        pollster::block_on(Self::on_adapter(index))
    }

    /// A device this crate opened, with the kernel variants for its adapter.
    fn with_device_tuning(device: Device, matrix: Option<MatrixConfig>) -> Self {
        let tuning = device
            .adapter_info()
            .map(Tuning::for_adapter)
            .unwrap_or(Tuning::GPU);
        Gpu {
            matrix,
            tuning,
            ..Gpu::from(device)
        }
    }

    /// Blocking `new` for native programs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Wraps a device and queue that a host application created. The device must have been
    /// created with at least WebGPU's default compute limits (`wgpu::Limits::default()`).
    /// Kernel variants default to the GPU ones; see `set_tuning`.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Gpu::from(Device::from_device(device, queue))
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// Overrides the per-adapter kernel variants (e.g. a host app that knows its device is a
    /// CPU implementation).
    pub fn set_tuning(&mut self, tuning: Tuning) {
        self.tuning = tuning;
        self.timed_gemm = std::sync::OnceLock::new();
    }

    /// Whether this device can run `linear_subgroup.wgsl`: subgroups of at least 8 lanes.
    pub fn has_subgroup_gemm(&self) -> bool {
        self.subgroup_min_size() >= 8
    }

    /// The linear layers' arithmetic: `F32` (the default, exact) or `F16Inputs` (matrix units
    /// where the adapter has them).
    pub fn set_gemm_precision(&mut self, precision: GemmPrecision) {
        self.gemm_precision = precision;
    }

    pub fn gemm_precision(&self) -> GemmPrecision {
        self.gemm_precision
    }

    /// The matrix units' configuration the f16-input GEMM runs on, if this device has one.
    pub fn matrix_config(&self) -> Option<MatrixConfig> {
        self.matrix
    }
}

impl From<Device> for Gpu {
    /// A device with the GPU kernel variants, f32 GEMMs and no matrix units.
    fn from(device: Device) -> Self {
        Gpu {
            device,
            tuning: Tuning::GPU,
            gemm_precision: GemmPrecision::F32,
            matrix: None,
            timed_gemm: std::sync::OnceLock::new(),
        }
    }
}

/// The experimental features `Gpu` asks an adapter for: cooperative matrices (and f16 for
/// them) where the matrix-unit GEMM can run on it.
fn matrix_request(adapter: &wgpu::Adapter) -> Option<ExperimentalRequest<MatrixConfig>> {
    let matrix = MatrixConfig::pick(
        &adapter.cooperative_matrix_properties(),
        adapter.features(),
        &adapter.get_info(),
    )?;
    let mut features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    if matrix.f16_inputs {
        features |= wgpu::Features::SHADER_F16;
    }
    Some(ExperimentalRequest {
        features,
        granted: matrix,
    })
}
