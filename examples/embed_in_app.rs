//! Use memlayers inside your own wgpu application.
//!
//! The host creates the device and owns the command encoder and the submission; memlayers
//! only records its dispatches into that encoder. Here the host also reads the result back
//! itself, with plain wgpu calls.
//!
//! Run: `cargo run --release --example embed_in_app`

use memlayers::{Gpu, MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- The host application's own wgpu setup -------------------------------------------
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        // WebGPU's default limits are all memlayers needs.
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))?;
    println!("host adapter: {}", adapter.get_info().name);

    // --- memlayers on that device ---------------------------------------------------------
    // wgpu handles are cheap clones: the host keeps its own.
    let mut gpu = Gpu::from_device(device.clone(), queue.clone());
    // A host that knows its adapter can pick the matching kernel variants.
    gpu.set_tuning(memlayers::kernels::Tuning::for_adapter(&adapter.get_info()));

    let config = MemoryConfig {
        n_keys: 64,
        knn: 8,
        k_dim: 32,
        ..MemoryConfig::memory_plus(64)
    };
    let mut rng = memlayers::rng::Rng::new(7);
    let weights = MemoryWeights::init(&config, &mut rng)?;
    let values = MemoryWeights::init_values(&config, &mut rng);
    let layer = MemoryLayer::new(&gpu, &weights)?;
    let pool = ValuePool::new(&gpu, &values, config.n_values(), config.v_dim, ValueDtype::F32)?;

    // The host's input buffer (any STORAGE buffer of [rows, d] f32).
    let rows = 16u32;
    let input: Vec<f32> = rng.vec_normal(rows as usize * config.d, 1.0);
    let x = gpu.upload("host input", &input);

    // --- One encoder, one submission, both owned by the host ------------------------------
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("host frame"),
    });
    let acts = layer.record_forward(&gpu, &mut encoder, &pool, &x, rows)?; // records, never submits
    let bytes = rows as u64 * config.d as u64 * 4;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&acts.out, 0, &staging, 0, bytes);
    queue.submit([encoder.finish()]);

    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map failed"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let out: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..)?);
    println!("memory layer output for token 0: {:.4?} ...", &out[..6]);
    Ok(())
}
