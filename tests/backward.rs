//! The memory layer's backward: the CPU oracle against finite differences.

use memlayers::memory::{MemoryConfig, MemoryWeights};
use memlayers::reference::{self, memory_backward, memory_forward};
use memlayers::rng::Rng;

fn config(swilu: bool, v_dim: usize) -> MemoryConfig {
    MemoryConfig {
        d: 6,
        heads: 2,
        n_keys: 7,
        knn: 3,
        k_dim: 4,
        v_dim,
        swilu,
        value_proj: swilu || v_dim != 6,
        qk_norm: false,
    }
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
}

#[test]
fn reference_backward_matches_finite_differences() {
    for (swilu, v_dim) in [(true, 6), (false, 6), (false, 5)] {
        let c = config(swilu, v_dim);
        let mut rng = Rng::new(31 + v_dim as u64);
        let mut w = MemoryWeights::init(&c, &mut rng).unwrap();
        let mut values = MemoryWeights::init_values(&c, &mut rng);
        let rows = 3;
        let mut x = rng.vec_normal(rows * c.d, 1.0);
        let r = rng.vec_normal(rows * c.out_dim(), 1.0); // dL/d out
        let dims = w.lookup_dims(rows);
        let loss = |w: &MemoryWeights, values: &[f32], x: &[f32]| -> (f64, Vec<u32>) {
            let (out, lk) = memory_forward(x, &w.reference(values), dims);
            (
                out.iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum(),
                lk.indices,
            )
        };
        let grads = memory_backward(&x, &w.reference(&values), dims, &r);
        let (_, base_slots) = loss(&w, &values, &x);
        let mut params = vec![Param::X, Param::QueryW, Param::QueryB, Param::Keys, Param::Values];
        if swilu {
            params.extend([Param::SwiluW, Param::SwiluB]);
        }
        if c.value_proj {
            params.extend([Param::ProjW, Param::ProjB]);
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
            };
            let analytic = analytic.to_vec();
            // Every value row a token read, and random coordinates elsewhere.
            let picks: Vec<usize> = match param {
                Param::Values => (0..analytic.len())
                    .filter(|&i| analytic[i] != 0.0)
                    .take(40)
                    .collect(),
                _ => (0..12)
                    .map(|_| rng.below(analytic.len() as u64) as usize)
                    .collect(),
            };
            for i in picks {
                let eps = 1e-2f32;
                let mut eval = |delta: f32| {
                    let target: &mut f32 = match param {
                        Param::X => &mut x[i],
                        Param::QueryW => &mut w.query_w[i],
                        Param::QueryB => &mut w.query_b[i],
                        Param::Keys => &mut w.keys[i],
                        Param::Values => &mut values[i],
                        Param::SwiluW => &mut w.swilu.as_mut().unwrap().0[i],
                        Param::SwiluB => &mut w.swilu.as_mut().unwrap().1[i],
                        Param::ProjW => &mut w.value_proj.as_mut().unwrap().0[i],
                        Param::ProjB => &mut w.value_proj.as_mut().unwrap().1[i],
                    };
                    let old = *target;
                    *target = old + delta;
                    let result = loss(&w, &values, &x);
                    let target: &mut f32 = match param {
                        Param::X => &mut x[i],
                        Param::QueryW => &mut w.query_w[i],
                        Param::QueryB => &mut w.query_b[i],
                        Param::Keys => &mut w.keys[i],
                        Param::Values => &mut values[i],
                        Param::SwiluW => &mut w.swilu.as_mut().unwrap().0[i],
                        Param::SwiluB => &mut w.swilu.as_mut().unwrap().1[i],
                        Param::ProjW => &mut w.value_proj.as_mut().unwrap().0[i],
                        Param::ProjB => &mut w.value_proj.as_mut().unwrap().1[i],
                    };
                    *target = old;
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
                    "{param:?}[{i}] swilu={swilu} v_dim={v_dim}: analytic {a} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 60, "too few coordinates checked: {checked}");
    }
    let _ = reference::silu_grad(0.0);
}
