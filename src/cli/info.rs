//! `memlayers info`: every adapter, and the one `Gpu::new` chooses.

use memlayers::gpu::{all_adapters, describe_adapter, NO_ADAPTER_HELP};
use memlayers::{Gpu, Result};

pub fn run() -> Result<()> {
    let adapters = pollster::block_on(all_adapters());
    if adapters.is_empty() {
        println!("{NO_ADAPTER_HELP}");
    }
    for (i, a) in adapters.iter().enumerate() {
        println!("[{i}] {}", describe_adapter(a));
    }
    let gpu = Gpu::new_blocking()?;
    println!("\nmemlayers uses: {}", gpu.adapter_name());
    let l = gpu.limits();
    println!(
        "  device limits: storage binding {} MiB, buffer {} MiB; timestamps: {}",
        l.max_storage_buffer_binding_size >> 20,
        l.max_buffer_size >> 20,
        gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    );
    Ok(())
}
