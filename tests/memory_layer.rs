//! The whole memory layer on the GPU against the CPU oracle: Memory+, plain PKM, qk-norm,
//! f32 and f16 values, tables over one binding, batches over one grid dimension.

mod common;
use common::{assert_close, check_memory_layer, config, gpu, memory_layer_cases, Case};
use memlayers::memory::{MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
use memlayers::reference;
use memlayers::rng::Rng;

fn check(case: &Case, seed: u64) {
    pollster::block_on(check_memory_layer(gpu(), case, seed));
}

#[test]
fn memory_layer_matches_oracle_over_configs() {
    for (seed, case) in memory_layer_cases() {
        check(&case, seed);
    }
}

#[test]
fn memory_layer_reference_shape_one_batch() {
    // The reference's defaults at a small width: heads 4, knn 32, n_keys 1024, k_dim 512.
    let config = MemoryConfig {
        v_dim: 16,
        ..MemoryConfig::memory_plus(16)
    };
    check(
        &Case {
            config,
            rows: 6,
            dtype: ValueDtype::F16,
        },
        99,
    );
}

#[test]
fn batch_larger_than_one_grid_dimension() {
    // 70,000 rows x 1 head: more (token, head) workgroups and more bag rows than 65,535.
    let config = config(4, 1, 6, 2, 4, 4, false);
    check(
        &Case {
            config,
            rows: 70_000,
            dtype: ValueDtype::F32,
        },
        5,
    );
}

#[test]
fn value_table_larger_than_128_mib() {
    // 256^2 rows x 544 f32 = 142.6 MB > 128 MiB, the storage binding limit of lavapipe and of
    // WebGPU's defaults: on such adapters the pool splits it.
    let config = config(16, 2, 256, 8, 8, 544, true);
    let mut rng = Rng::new(3);
    let values = MemoryWeights::init_values(&config, &mut rng);
    let pool = ValuePool::new(gpu(), &values, config.n_values(), config.v_dim, ValueDtype::F32).unwrap();
    assert!(pool.bytes() > 128 << 20, "table is {} bytes", pool.bytes());
    if gpu().max_binding_bytes() <= 128 << 20 {
        assert!(
            pool.buffer_count() >= 2,
            "a table over the binding limit must be split"
        );
    }
    check(
        &Case {
            config,
            rows: 40,
            dtype: ValueDtype::F32,
        },
        3,
    );
}

#[test]
fn forward_is_bit_identical_across_runs() {
    let g = gpu();
    let c = config(40, 4, 90, 16, 24, 40, true);
    let mut rng = Rng::new(11);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    let x = rng.vec_normal(50 * c.d, 1.0);
    let layer = MemoryLayer::new(g, &weights).unwrap();
    let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
    let a = layer.forward_blocking(g, &pool, &x, 50).unwrap();
    let b = layer.forward_blocking(g, &pool, &x, 50).unwrap();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.out), bits(&b.out));
    assert_eq!(a.indices, b.indices);
}

/// The output added into a residual by the value projection's epilogue equals the residual
/// plus the output, bit for bit (Memory+ and plain layers; plain ones have no projection
/// and say they did not add).
#[test]
fn forward_into_a_residual_adds_the_output() {
    let g = gpu();
    for memory_plus in [true, false] {
        let c = config(40, 4, 90, 16, 24, 40, memory_plus);
        let mut rng = Rng::new(12);
        let weights = MemoryWeights::init(&c, &mut rng).unwrap();
        let values = MemoryWeights::init_values(&c, &mut rng);
        let (x, residual) = (
            rng.vec_normal(30 * c.d, 1.0),
            rng.vec_normal(30 * c.out_dim(), 1.0),
        );
        let layer = MemoryLayer::new(g, &weights).unwrap();
        let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
        let out = layer.forward_blocking(g, &pool, &x, 30).unwrap().out;
        let (xb, rb) = (g.upload("x", &x), g.upload("residual", &residual));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let (_, added) = layer
            .record_forward_into(g, &mut enc, &pool, &xb, 30, Some(&rb))
            .unwrap();
        g.queue.submit([enc.finish()]);
        assert_eq!(added, c.value_proj, "memory_plus {memory_plus}");
        if added {
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let want: Vec<f32> = residual.iter().zip(&out).map(|(r, o)| r + o).collect();
            assert_eq!(bits(&g.read_f32_blocking(&rb, want.len()).unwrap()), bits(&want));
        }
    }
}

#[test]
fn one_pool_serves_several_layers() {
    let g = gpu();
    let c = config(20, 2, 30, 4, 8, 20, true);
    let mut rng = Rng::new(21);
    let values = MemoryWeights::init_values(&c, &mut rng);
    let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
    let x = rng.vec_normal(9 * c.d, 1.0);
    for _ in 0..3 {
        let weights = MemoryWeights::init(&c, &mut rng).unwrap();
        let layer = MemoryLayer::new(g, &weights).unwrap();
        let got = layer.forward_blocking(g, &pool, &x, 9).unwrap();
        let (want, _) = reference::memory_forward(
            &x,
            &memlayers::oracle::memory_params(&weights, &values),
            memlayers::oracle::lookup_dims(&weights.config, 9),
        );
        assert_close("shared pool layer output", &got.out, &want);
    }
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let g = gpu();
    let mut bad = config(8, 2, 10, 11, 4, 8, true); // knn > n_keys
    assert!(MemoryWeights::init(&bad, &mut Rng::new(0)).is_err());
    bad.knn = 2;
    bad.k_dim = 5; // odd
    assert!(bad.validate().is_err());
    let ok = config(8, 2, 10, 2, 4, 8, true);
    let weights = MemoryWeights::init(&ok, &mut Rng::new(0)).unwrap();
    let layer = MemoryLayer::new(g, &weights).unwrap();
    let wrong_pool = ValuePool::new(g, &vec![0.0; 99 * 8], 99, 8, ValueDtype::F32).unwrap();
    assert!(layer.forward_blocking(g, &wrong_pool, &[0.0; 8], 1).is_err());
}

#[test]
fn device_errors_come_back_as_errors() {
    // A fresh device: the error must not leak into the other tests' shared one.
    let g = memlayers::Gpu::new_blocking().unwrap();
    let buffer = g.upload("x", &[1.0f32]);
    let _module = g.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("broken on purpose"),
        source: wgpu::ShaderSource::Wgsl("fn main( {".into()),
    });
    let err = g.read_f32_blocking(&buffer, 1).unwrap_err().to_string();
    assert!(err.contains("rejected"), "{err}");
    // Reported once: the next read-back of valid work succeeds.
    assert_eq!(g.read_f32_blocking(&buffer, 1).unwrap(), vec![1.0]);
}
