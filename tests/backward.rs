//! The memory layer's backward: the CPU oracle against finite differences, and the GPU
//! backward against the oracle.

mod common;
use common::{assert_close, gpu, gpu_with};
use memlayers::memory::{MemoryConfig, MemoryLayer, MemoryWeights, ValueDtype, ValuePool};
use memlayers::reference::{self, memory_backward, memory_forward};
use memlayers::rng::Rng;

fn config(swilu: bool, v_dim: usize) -> MemoryConfig {
    config_norm(swilu, v_dim, false)
}

fn config_norm(swilu: bool, v_dim: usize, qk_norm: bool) -> MemoryConfig {
    MemoryConfig {
        d: 6,
        heads: 2,
        n_keys: 7,
        knn: 3,
        k_dim: 4,
        v_dim,
        swilu,
        value_proj: swilu || v_dim != 6,
        gated: false,
        peer: false,
        qk_norm,
    }
}

/// mem_gated: the output times sigmoid(gating(x)).
fn gated(c: MemoryConfig) -> MemoryConfig {
    MemoryConfig { gated: true, ..c }
}

/// Which tensor of the layer a finite difference perturbs.
#[derive(Clone, Copy, Debug)]
enum Param {
    X,
    QueryW,
    QueryB,
    Keys,
    Values,
    SwiluW,
    SwiluB,
    ProjW,
    ProjB,
    GateW,
    GateB,
}

impl Param {
    /// The tensor this parameter names: a layer weight, the value table, or the input.
    fn slot<'a>(
        self,
        w: &'a mut MemoryWeights,
        values: &'a mut Vec<f32>,
        x: &'a mut Vec<f32>,
    ) -> &'a mut Vec<f32> {
        match self {
            Param::X => x,
            Param::QueryW => &mut w.query_w,
            Param::QueryB => &mut w.query_b,
            Param::Keys => &mut w.keys,
            Param::Values => values,
            Param::SwiluW => &mut w.swilu.as_mut().unwrap().0,
            Param::SwiluB => &mut w.swilu.as_mut().unwrap().1,
            Param::ProjW => &mut w.value_proj.as_mut().unwrap().0,
            Param::ProjB => &mut w.value_proj.as_mut().unwrap().1,
            Param::GateW => &mut w.gating.as_mut().unwrap().0,
            Param::GateB => &mut w.gating.as_mut().unwrap().1,
        }
    }
}

#[test]
fn reference_backward_matches_finite_differences() {
    for (swilu, v_dim, qk_norm, with_gate) in [
        (true, 6, false, false),
        (false, 6, false, false),
        (false, 5, false, false),
        (true, 6, true, false),
        (false, 6, true, false),
        (true, 6, false, true),
        (false, 5, false, true),
    ] {
        let c = config_norm(swilu, v_dim, qk_norm);
        let c = if with_gate { gated(c) } else { c };
        let mut rng = Rng::new(31 + v_dim as u64);
        let mut w = MemoryWeights::init(&c, &mut rng).unwrap();
        let mut values = MemoryWeights::init_values(&c, &mut rng);
        let rows = 3;
        let mut x = rng.vec_normal(rows * c.d, 1.0);
        let r = rng.vec_normal(rows * c.out_dim(), 1.0); // dL/d out
        let dims = memlayers::oracle::lookup_dims(&w.config, rows);
        let loss = |w: &MemoryWeights, values: &[f32], x: &[f32]| -> (f64, Vec<u32>) {
            let (out, lk) = memory_forward(x, &memlayers::oracle::memory_params(w, values), dims);
            (
                out.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum(),
                lk.indices,
            )
        };
        let grads = memory_backward(&x, &memlayers::oracle::memory_params(&w, &values), dims, &r);
        let (_, base_slots) = loss(&w, &values, &x);
        let mut params = vec![Param::X, Param::QueryW, Param::QueryB, Param::Keys, Param::Values];
        if swilu {
            params.extend([Param::SwiluW, Param::SwiluB]);
        }
        if c.value_proj {
            params.extend([Param::ProjW, Param::ProjB]);
        }
        if c.gated {
            params.extend([Param::GateW, Param::GateB]);
        }
        let mut checked = 0;
        for param in params {
            let analytic: &[f32] = match param {
                Param::X => &grads.x,
                Param::QueryW => &grads.query_w,
                Param::QueryB => &grads.query_b,
                Param::Keys => &grads.keys,
                Param::Values => &grads.values,
                Param::SwiluW => &grads.swilu.as_ref().unwrap().0,
                Param::SwiluB => &grads.swilu.as_ref().unwrap().1,
                Param::ProjW => &grads.value_proj.as_ref().unwrap().0,
                Param::ProjB => &grads.value_proj.as_ref().unwrap().1,
                Param::GateW => &grads.gating.as_ref().unwrap().0,
                Param::GateB => &grads.gating.as_ref().unwrap().1,
            };
            let analytic = analytic.to_vec();
            // Every value row a token read, and random coordinates elsewhere.
            let picks: Vec<usize> = match param {
                Param::Values => (0..analytic.len())
                    .filter(|&i| analytic[i] != 0.0)
                    .take(40)
                    .collect(),
                Param::GateB => vec![0],
                _ => (0..12)
                    .map(|_| rng.below(analytic.len() as u64) as usize)
                    .collect(),
            };
            for i in picks {
                let eps = 1e-2f32;
                let mut eval = |delta: f32| {
                    let old = param.slot(&mut w, &mut values, &mut x)[i];
                    param.slot(&mut w, &mut values, &mut x)[i] = old + delta;
                    let result = loss(&w, &values, &x);
                    param.slot(&mut w, &mut values, &mut x)[i] = old;
                    result
                };
                let (plus, s1) = eval(eps);
                let (minus, s2) = eval(-eps);
                if s1 != base_slots || s2 != base_slots {
                    continue; // the perturbation changed the top-k: not differentiable there
                }
                let fd = ((plus - minus) / (2.0 * eps as f64)) as f32;
                let a = analytic[i];
                // f32 forward, eps 1e-2: rounding error ~1e-5 / 1e-2 and curvature ~eps^2.
                assert!(
                    (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                    "{param:?}[{i}] swilu={swilu} v_dim={v_dim} qk_norm={qk_norm}: analytic {a} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 60, "too few coordinates checked: {checked}");
    }
    let _ = reference::silu_grad(0.0);
}

#[test]
fn gpu_backward_matches_oracle() {
    // Both product top-k kernels (per invocation and per workgroup) and both value-gradient
    // reductions (a column or 4 columns an invocation), whichever the adapter's tuning picks
    // first.
    let other = gpu_with(|t| {
        t.topk_per_invocation = !t.topk_per_invocation;
        t.value_grad_quads = !t.value_grad_quads;
    });
    for g in [gpu(), &other] {
        backward_matches_oracle_on(g);
    }
}

fn backward_matches_oracle_on(g: &memlayers::Gpu) {
    let configs = [
        (config(true, 6), 5),
        (config(false, 6), 7),
        (config(false, 5), 3),
        (gated(config(true, 6)), 5),
        (gated(config(false, 5)), 6),
        (
            MemoryConfig {
                d: 24,
                heads: 4,
                n_keys: 50,
                knn: 16,
                k_dim: 18,
                v_dim: 24,
                swilu: true,
                value_proj: true,
                gated: false,
                peer: false,
                qk_norm: false,
            },
            37,
        ),
        (
            MemoryConfig {
                d: 33,
                heads: 3,
                n_keys: 20,
                knn: 7,
                k_dim: 10,
                v_dim: 33,
                swilu: false,
                value_proj: false,
                gated: false,
                peer: false,
                qk_norm: false,
            },
            70,
        ),
        (
            MemoryConfig {
                d: 16,
                heads: 1,
                n_keys: 300,
                knn: 64,
                k_dim: 8,
                v_dim: 16,
                swilu: true,
                value_proj: true,
                gated: false,
                peer: false,
                qk_norm: false,
            },
            9,
        ),
    ];
    for (i, (c, rows)) in configs.into_iter().enumerate() {
        let mut rng = Rng::new(50 + i as u64);
        let weights = MemoryWeights::init(&c, &mut rng).unwrap();
        let values = MemoryWeights::init_values(&c, &mut rng);
        let x = rng.vec_normal(rows * c.d, 1.0);
        let d_out = rng.vec_normal(rows * c.out_dim(), 1.0);
        let want = memory_backward(
            &x,
            &memlayers::oracle::memory_params(&weights, &values),
            memlayers::oracle::lookup_dims(&weights.config, rows),
            &d_out,
        );

        let layer = MemoryLayer::new(g, &weights).unwrap();
        let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
        let (xb, db) = (g.upload("x", &x), g.upload("d_out", &d_out));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let acts = layer
            .record_forward(g, &mut enc, &pool, &xb, rows as u32)
            .unwrap();
        let grads = layer
            .record_backward(g, &mut enc, &pool, &xb, &acts, &db)
            .unwrap();
        g.queue.submit([enc.finish()]);
        let read = |b: &wgpu::Buffer, n: usize| g.read_f32_blocking(b, n).unwrap();
        let what = |name: &str| format!("grad {name}, config {i} {c:?}, {:?}", g.tuning());
        assert_close(&what("input"), &read(&grads.x, want.x.len()), &want.x);
        assert_close(
            &what("query_w"),
            &read(&grads.query_w, want.query_w.len()),
            &want.query_w,
        );
        assert_close(
            &what("query_b"),
            &read(&grads.query_b, want.query_b.len()),
            &want.query_b,
        );
        assert_close(&what("keys"), &read(&grads.keys, want.keys.len()), &want.keys);
        if let (Some((w, b)), Some((ww, wb))) = (&grads.swilu, &want.swilu) {
            assert_close(&what("swilu w"), &read(w, ww.len()), ww);
            assert_close(&what("swilu b"), &read(b, wb.len()), wb);
        }
        if let (Some((w, b)), Some((ww, wb))) = (&grads.value_proj, &want.value_proj) {
            assert_close(&what("value_proj w"), &read(w, ww.len()), ww);
            assert_close(&what("value_proj b"), &read(b, wb.len()), wb);
        }
        if let (Some((w, b)), Some((ww, wb))) = (&grads.gating, &want.gating) {
            assert_close(&what("gating w"), &read(w, ww.len()), ww);
            assert_close(&what("gating b"), &read(b, wb.len()), wb);
        }
        assert_eq!(grads.gating.is_some(), want.gating.is_some());
        assert_eq!(grads.swilu.is_some(), want.swilu.is_some());
        assert_eq!(grads.value_proj.is_some(), want.value_proj.is_some());
        // The value gradient assembled from what the GPU computed (dy per token, the selected
        // slots and weights) must be the oracle's.
        let bag = c.heads * c.knn;
        let dy = read(&grads.bag_out, rows * c.v_dim);
        let slots = g.read_u32_blocking(&acts.indices, rows * bag).unwrap();
        let w = read(&acts.weights, rows * bag);
        let mut dv = vec![0f32; values.len()];
        for e in 0..rows * bag {
            let (r, s) = (e / bag, slots[e] as usize);
            for col in 0..c.v_dim {
                dv[s * c.v_dim + col] += w[e] * dy[r * c.v_dim + col];
            }
        }
        assert_close(&what("values (from dy)"), &dv, &want.values);
        let sparse = pollster::block_on(grads.values.to_dense(g, c.n_values())).unwrap();
        assert_close(&what("values"), &sparse, &want.values);
    }
}

/// The value gradient's two reductions give the same bits, and the oracle's sums (to rounding:
/// adapters may compile `fma` as a multiply and an add):
/// random bags over few slots (long runs) and many, row widths that are and are not multiples
/// of 4 and of 32.
#[test]
fn value_gradient_reductions_agree_bit_for_bit() {
    use memlayers::kernels::value_grads::ValueGrads;
    let (columns, quads) = (
        gpu_with(|t| t.value_grad_quads = false),
        gpu_with(|t| t.value_grad_quads = true),
    );
    let mut rng = Rng::new(21);
    for &(rows, bag, v_dim, n_values) in &[
        (1, 1, 4, 1),
        (7, 3, 12, 5),
        (50, 16, 32, 4096),
        (33, 8, 36, 40),
        (20, 5, 33, 9),
        (64, 4, 256, 300),
        (300, 2, 8, 3),
    ] {
        let n = rows * bag;
        let indices: Vec<u32> = (0..n).map(|_| rng.below(n_values as u64) as u32).collect();
        let weights = rng.vec_normal(n, 1.0);
        let dy = rng.vec_normal(rows * v_dim, 1.0);
        let mut want = vec![0f32; n_values * v_dim];
        for (e, &slot) in indices.iter().enumerate() {
            for c in 0..v_dim {
                let at = slot as usize * v_dim + c;
                want[at] = weights[e].mul_add(dy[(e / bag) * v_dim + c], want[at]);
            }
        }
        let run = |g: &memlayers::Gpu| {
            let (ib, wb, db) = (
                g.upload("indices", &indices),
                g.upload("weights", &weights),
                g.upload("dy", &dy),
            );
            let mut enc = g.device.create_command_encoder(&Default::default());
            let sparse = ValueGrads {
                rows: rows as u32,
                bag: bag as u32,
                v_dim: v_dim as u32,
                n_values: n_values as u32,
                max_per_slot: n as u32,
                indices: &ib,
                weights: &wb,
                dy: &db,
            }
            .record(g, &mut enc)
            .unwrap();
            g.queue.submit([enc.finish()]);
            pollster::block_on(sparse.to_dense(g, n_values)).unwrap()
        };
        let (a, b) = (run(&columns), run(&quads));
        let what = format!("{rows} rows x bag {bag}, v_dim {v_dim}, {n_values} slots");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&a), bits(&b), "{what}: the two reductions");
        assert_close(&what, &a, &want);
    }
}

#[test]
fn gpu_backward_is_bit_identical_across_runs() {
    let g = gpu();
    let c = MemoryConfig {
        d: 20,
        heads: 4,
        n_keys: 12,
        knn: 8,
        k_dim: 8,
        v_dim: 20,
        swilu: true,
        value_proj: true,
        gated: false,
        peer: false,
        qk_norm: false,
    };
    let rows = 40; // 144 slots, 1280 bag entries: many slots are read by several tokens
    let mut rng = Rng::new(77);
    let weights = MemoryWeights::init(&c, &mut rng).unwrap();
    let values = MemoryWeights::init_values(&c, &mut rng);
    let x = rng.vec_normal(rows * c.d, 1.0);
    let d_out = rng.vec_normal(rows * c.d, 1.0);
    let layer = MemoryLayer::new(g, &weights).unwrap();
    let pool = ValuePool::new(g, &values, c.n_values(), c.v_dim, ValueDtype::F16).unwrap();
    let run = || {
        let (xb, db) = (g.upload("x", &x), g.upload("d_out", &d_out));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let acts = layer
            .record_forward(g, &mut enc, &pool, &xb, rows as u32)
            .unwrap();
        let grads = layer
            .record_backward(g, &mut enc, &pool, &xb, &acts, &db)
            .unwrap();
        g.queue.submit([enc.finish()]);
        let mut all: Vec<u32> = Vec::new();
        for (b, n) in [
            (&grads.x, rows * c.d),
            (&grads.query_w, weights.query_w.len()),
            (&grads.keys, weights.keys.len()),
        ] {
            all.extend(g.read_f32_blocking(b, n).unwrap().iter().map(|v| v.to_bits()));
        }
        let dense = pollster::block_on(grads.values.to_dense(g, c.n_values())).unwrap();
        all.extend(dense.iter().map(|v| v.to_bits()));
        all
    };
    assert_eq!(run(), run());
}

/// PEER (peer_variant): the oracle against finite differences, and the GPU against the oracle.
#[test]
fn peer_backward_matches_finite_differences_and_the_gpu() {
    let g = gpu();
    for (i, gate) in [false, true].into_iter().enumerate() {
        let c = MemoryConfig {
            peer: true,
            gated: gate,
            ..config(true, 6)
        };
        let mut rng = Rng::new(90 + i as u64);
        let w = MemoryWeights::init(&c, &mut rng).unwrap();
        let mut u = MemoryWeights::init_values(&c, &mut rng);
        let mut v = MemoryWeights::init_values(&c, &mut rng);
        let rows = 4;
        let mut x = rng.vec_normal(rows * c.d, 1.0);
        let r = rng.vec_normal(rows * c.d, 1.0);
        let dims = memlayers::oracle::lookup_dims(&c, rows);
        let loss = |u: &[f32], v: &[f32], x: &[f32]| -> (f64, Vec<u32>) {
            let (out, lk) = memory_forward(x, &peer_params(&w, u, v), dims);
            (
                out.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum(),
                lk.indices,
            )
        };
        let want = memory_backward(&x, &peer_params(&w, &u, &v), dims, &r);
        let (_, base) = loss(&u, &v, &x);
        let mut checked = 0;
        for which in 0..3 {
            let analytic = match which {
                0 => want.x.clone(),
                1 => want.values_u.clone().unwrap(),
                _ => want.values.clone(),
            };
            let picks: Vec<usize> = if which == 0 {
                (0..analytic.len()).collect()
            } else {
                (0..analytic.len())
                    .filter(|&k| analytic[k] != 0.0)
                    .take(30)
                    .collect()
            };
            for k in picks {
                let eps = 1e-2f32;
                let mut eval = |delta: f32| {
                    let t = match which {
                        0 => &mut x,
                        1 => &mut u,
                        _ => &mut v,
                    };
                    t[k] += delta;
                    let out = loss(&u, &v, &x);
                    let t = match which {
                        0 => &mut x,
                        1 => &mut u,
                        _ => &mut v,
                    };
                    t[k] -= delta;
                    out
                };
                let (plus, s1) = eval(eps);
                let (minus, s2) = eval(-eps);
                if s1 != base || s2 != base {
                    continue;
                }
                let fd = ((plus - minus) / (2.0 * eps as f64)) as f32;
                let a = analytic[k];
                assert!(
                    (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
                    "PEER gate={gate} tensor {which}[{k}]: analytic {a} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "too few coordinates checked: {checked}");

        // The GPU against the oracle.
        let layer = MemoryLayer::new(g, &w).unwrap();
        let pool_u = ValuePool::new(g, &u, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
        let pool_v = ValuePool::new(g, &v, c.n_values(), c.v_dim, ValueDtype::F32).unwrap();
        let (xb, db) = (g.upload("x", &x), g.upload("d_out", &r));
        let mut enc = g.device.create_command_encoder(&Default::default());
        let (acts, _) = layer
            .record_forward_peer(g, &mut enc, (&pool_u, &pool_v), &xb, rows as u32, None)
            .unwrap();
        let grads = layer
            .record_backward_peer(g, &mut enc, (&pool_u, &pool_v), &xb, &acts, &db)
            .unwrap();
        g.queue.submit([enc.finish()]);
        let read = |b: &wgpu::Buffer, n: usize| g.read_f32_blocking(b, n).unwrap();
        let (out, _) = memory_forward(&x, &peer_params(&w, &u, &v), dims);
        assert_close("PEER output", &read(&acts.out, out.len()), &out);
        assert_close("PEER grad x", &read(&grads.x, want.x.len()), &want.x);
        assert_close(
            "PEER grad query_w",
            &read(&grads.query_w, want.query_w.len()),
            &want.query_w,
        );
        assert_close("PEER grad keys", &read(&grads.keys, want.keys.len()), &want.keys);
        let dense = |rows: &memlayers::kernels::value_grads::SparseRows| {
            pollster::block_on(rows.to_dense(g, c.n_values())).unwrap()
        };
        assert_close("PEER grad values_v", &dense(&grads.values), &want.values);
        assert_close(
            "PEER grad values_u",
            &dense(grads.values_u.as_ref().unwrap()),
            want.values_u.as_ref().unwrap(),
        );
        if let (Some((gw, gb)), Some((ww, wb))) = (&grads.gating, &want.gating) {
            assert_close("PEER grad gating w", &read(gw, ww.len()), ww);
            assert_close("PEER grad gating b", &read(gb, wb.len()), wb);
        }
    }
}

/// The oracle's view of a PEER layer: tables values_u and values_v.
fn peer_params<'a>(
    w: &'a MemoryWeights,
    u: &'a [f32],
    v: &'a [f32],
) -> memlayers::reference::MemoryParamsRef<'a> {
    memlayers::reference::MemoryParamsRef {
        values_u: Some(u),
        ..memlayers::oracle::memory_params(w, v)
    }
}
