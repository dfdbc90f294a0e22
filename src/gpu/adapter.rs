//! Finding an adapter: what the kernels require of one, and the adapters a machine offers.

use super::MAX_GRID_DIM;
use crate::error::{Error, Result};

/// What every kernel here needs; these are WebGPU's default compute limits, so any browser
/// or native adapter that implements WebGPU offers them.
pub const REQUIRED_STORAGE_BUFFERS: u32 = 8;
pub const REQUIRED_INVOCATIONS: u32 = 256;
pub const REQUIRED_WORKGROUP_STORAGE: u32 = 16384;

/// Message shown whenever no adapter is found: how to get one on a machine without a GPU.
pub const NO_ADAPTER_HELP: &str = "no GPU adapter found. On Debian/Ubuntu without a GPU install \
Mesa's software Vulkan driver (lavapipe): `sudo apt-get install -y mesa-vulkan-drivers libvulkan1` \
and run with WGPU_BACKEND=vulkan";

/// A short description of an adapter, as `memlayers info` prints it.
pub fn describe_adapter(adapter: &wgpu::Adapter) -> String {
    let info = adapter.get_info();
    let l = adapter.limits();
    format!(
        "{} ({:?}, {:?}, driver {} {})\n  limits: max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
storage buffers/stage {}, invocations/workgroup {}, workgroup storage {} B, workgroups/dim {}\n  features: {:?}",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        l.max_storage_buffers_per_shader_stage,
        l.max_compute_invocations_per_workgroup,
        l.max_compute_workgroup_storage_size,
        l.max_compute_workgroups_per_dimension,
        adapter.features()
    )
}

pub(super) fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter this machine offers (honouring `WGPU_BACKEND`).
#[cfg(not(target_arch = "wasm32"))]
pub async fn all_adapters() -> Vec<wgpu::Adapter> {
    instance()
        .enumerate_adapters(wgpu::Backends::all().with_env())
        .await
}

pub(super) fn check_adapter(adapter: &wgpu::Adapter) -> Result<()> {
    let l = adapter.limits();
    let mut missing = Vec::new();
    if l.max_storage_buffers_per_shader_stage < REQUIRED_STORAGE_BUFFERS {
        missing.push(format!(
            "{REQUIRED_STORAGE_BUFFERS} storage buffers per stage (has {})",
            l.max_storage_buffers_per_shader_stage
        ));
    }
    if l.max_compute_invocations_per_workgroup < REQUIRED_INVOCATIONS {
        missing.push(format!(
            "{REQUIRED_INVOCATIONS} invocations per workgroup (has {})",
            l.max_compute_invocations_per_workgroup
        ));
    }
    if l.max_compute_workgroup_storage_size < REQUIRED_WORKGROUP_STORAGE {
        missing.push(format!(
            "{REQUIRED_WORKGROUP_STORAGE} B of workgroup storage (has {})",
            l.max_compute_workgroup_storage_size
        ));
    }
    if l.max_compute_workgroups_per_dimension < MAX_GRID_DIM {
        missing.push(format!(
            "{MAX_GRID_DIM} workgroups per dimension (has {})",
            l.max_compute_workgroups_per_dimension
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Adapter(format!(
            "`{}` cannot run memlayers kernels: needs {}",
            adapter.get_info().name,
            missing.join(", ")
        )))
    }
}

/// The adapter `WGPU_ADAPTER_NAME` names (native), else the best one `instance` offers
/// (honouring `WGPU_BACKEND`).
pub(super) async fn choose_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let adapters = instance
            .enumerate_adapters(wgpu::Backends::all().with_env())
            .await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
            .ok_or_else(|| {
                Error::Adapter(format!(
                    "WGPU_ADAPTER_NAME={wanted} matches none of the adapters {names:?}"
                ))
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Adapter(format!("{NO_ADAPTER_HELP} ({e})")))
}
