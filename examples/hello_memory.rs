//! Hello, memory layer: build a small Memory+ layer, run it on the GPU, and check it against
//! the plain-Rust oracle.
//!
//! Run: `cargo run --release --example hello_memory`
//! (no GPU? `sudo apt-get install -y mesa-vulkan-drivers libvulkan1` and set WGPU_BACKEND=vulkan)

use memlayers::memory::as_stored;
use memlayers::{reference, Gpu, MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
use std::time::Instant;

fn main() -> memlayers::Result<()> {
    // 1. A device. `Gpu::new` picks the best adapter (WGPU_BACKEND / WGPU_ADAPTER_NAME are
    //    honoured); a host application would wrap its own with `Gpu::from_device`.
    let gpu = Gpu::new_blocking()?;
    println!("adapter: {}", gpu.adapter_name());

    // 2. A Memory+ layer: 4 heads, 256^2 = 65,536 values, 32 read per head.
    let config = MemoryConfig {
        n_keys: 256,
        k_dim: 128,
        ..MemoryConfig::memory_plus(256)
    };
    let mut rng = memlayers::rng::Rng::new(42);
    let weights = MemoryWeights::init(&config, &mut rng)?;
    let values = MemoryWeights::init_values(&config, &mut rng);
    println!(
        "memory: {} values x {} = {:.1} M parameters, {:.2} MFLOP per token",
        config.n_values(),
        config.v_dim,
        (config.n_values() * config.v_dim) as f64 / 1e6,
        config.flops_per_token() / 1e6
    );

    // 3. Upload: the layer's own parameters, and the value pool (shareable by many layers;
    //    f16 halves its memory, accumulation stays f32).
    let layer = MemoryLayer::new(&gpu, &weights)?;
    let pool = ValuePool::new(&gpu, &values, config.n_values(), config.v_dim, ValueDtype::F16)?;

    // 4. Run 64 tokens through it.
    let rows = 64;
    let x = rng.vec_normal(rows * config.d, 1.0);
    let t = Instant::now();
    let out = layer.forward_blocking(&gpu, &pool, &x, rows)?;
    println!(
        "forward of {rows} tokens: {:.1} ms (first call includes shader compilation)",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "token 0, head 0 reads slots {:?} with weights {:.3?}",
        &out.indices[..4],
        &out.weights[..4]
    );

    // 5. The same through the CPU oracle.
    let stored = as_stored(&values, ValueDtype::F16);
    let (want, lookup) = reference::memory_forward(
        &x,
        &memlayers::oracle::memory_params(&weights, &stored),
        memlayers::oracle::lookup_dims(&weights.config, rows),
    );
    let same = out
        .indices
        .iter()
        .zip(&lookup.indices)
        .filter(|(a, b)| a == b)
        .count();
    let max_diff = out
        .out
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "vs CPU oracle: {same}/{} selected slots equal, max |output difference| {max_diff:.2e}",
        out.indices.len()
    );
    Ok(())
}
