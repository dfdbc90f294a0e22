//! The device: a CPU adapter's worker pool (the last unnamed threads its driver started) is
//! pinned one thread per CPU (`gpu::cpu_threads`, Linux).
#![cfg(target_os = "linux")]

use memlayers::gpu::cpu_threads::{enabled, thread_cpus};
use memlayers::Gpu;

#[test]
fn a_cpu_adapters_worker_threads_are_pinned_one_to_each_cpu() {
    let gpu = Gpu::new_blocking().unwrap_or_else(|e| panic!("GPU tests need a wgpu adapter: {e}"));
    let cpus = thread_cpus(std::process::id() as i32);
    let cpu_adapter = gpu
        .adapter_info()
        .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu);
    let pinned = gpu.pinned_threads();
    if !(cpu_adapter && enabled() && cpus.len() >= 2) {
        assert!(pinned.is_empty(), "pinned {pinned:?} on {}", gpu.adapter_name());
        return;
    }
    // Mesa's CPU drivers start a worker per CPU, none of them named: one pinned per CPU.
    assert!(
        pinned.len() == cpus.len(),
        "pinned {pinned:?}, {} CPUs, on {}",
        cpus.len(),
        gpu.adapter_name()
    );
    for (i, &t) in pinned.iter().enumerate() {
        assert_eq!(thread_cpus(t), [cpus[i]], "thread {t}");
    }
}
