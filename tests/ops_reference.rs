//! The transformer ops' CPU oracle against finite differences (f64 sums of f32 forwards).

use memlayers::reference::ops::*;
use memlayers::rng::Rng;

/// Checks `analytic` = d <f(x), r> / dx at a few coordinates by central differences.
fn check(name: &str, x: &mut [f32], analytic: &[f32], mut f: impl FnMut(&[f32]) -> f64, rng: &mut Rng) {
    for _ in 0..16 {
        let i = rng.below(x.len() as u64) as usize;
        let eps = 1e-2f32;
        let old = x[i];
        x[i] = old + eps;
        let plus = f(x);
        x[i] = old - eps;
        let minus = f(x);
        x[i] = old;
        let fd = ((plus - minus) / (2.0 * eps as f64)) as f32;
        let a = analytic[i];
        assert!(
            (fd - a).abs() <= 2e-3 + 2e-2 * a.abs(),
            "{name}[{i}]: analytic {a} vs finite difference {fd}"
        );
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[test]
fn rmsnorm_gradients() {
    let mut rng = Rng::new(1);
    let (rows, d, eps) = (3, 7, 1e-5);
    let mut x = rng.vec_normal(rows * d, 1.0);
    let mut w = rng.vec_normal(d, 1.0);
    let r = rng.vec_normal(rows * d, 1.0);
    let (dx, dw) = rmsnorm_backward(&x, &w, eps, &r);
    let w0 = w.clone();
    check(
        "rmsnorm dx",
        &mut x,
        &dx,
        |x| dot(&rmsnorm(x, &w0, eps), &r),
        &mut rng,
    );
    let x0 = x.clone();
    check(
        "rmsnorm dw",
        &mut w,
        &dw,
        |w| dot(&rmsnorm(&x0, w, eps), &r),
        &mut rng,
    );
}

#[test]
fn rope_backward_is_the_inverse_rotation() {
    let mut rng = Rng::new(2);
    let (seq, heads, hd) = (5, 2, 8);
    let mut x = rng.vec_normal(seq * heads * hd, 1.0);
    let r = rng.vec_normal(x.len(), 1.0);
    let dx = rope(&r, seq, heads, hd, 10000.0, 0, true);
    check(
        "rope",
        &mut x,
        &dx,
        |x| dot(&rope(x, seq, heads, hd, 10000.0, 0, false), &r),
        &mut rng,
    );
    // Position 0 is the identity; interleaved pairs, not halves.
    let y = rope(&x, seq, heads, hd, 10000.0, 0, false);
    assert_eq!(&y[..heads * hd], &x[..heads * hd]);
}

#[test]
fn attention_gradients() {
    let mut rng = Rng::new(3);
    let a = AttentionDims {
        seq: 5,
        heads: 4,
        kv_heads: 2,
        head_dim: 6,
    };
    let mut q = rng.vec_normal(a.seq * a.heads * a.head_dim, 1.0);
    let mut k = rng.vec_normal(a.seq * a.kv_heads * a.head_dim, 1.0);
    let mut v = rng.vec_normal(a.seq * a.kv_heads * a.head_dim, 1.0);
    let r = rng.vec_normal(q.len(), 1.0);
    let (dq, dk, dv) = attention_backward(&q, &k, &v, a, &r);
    let (k0, v0) = (k.clone(), v.clone());
    check(
        "attention dq",
        &mut q,
        &dq,
        |q| dot(&attention(q, &k0, &v0, a).0, &r),
        &mut rng,
    );
    let q0 = q.clone();
    check(
        "attention dk",
        &mut k,
        &dk,
        |k| dot(&attention(&q0, k, &v0, a).0, &r),
        &mut rng,
    );
    let k0 = k.clone();
    check(
        "attention dv",
        &mut v,
        &dv,
        |v| dot(&attention(&q0, &k0, v, a).0, &r),
        &mut rng,
    );
}

#[test]
fn cross_entropy_gradients() {
    let mut rng = Rng::new(4);
    let (rows, vocab) = (4, 11);
    let mut logits = rng.vec_normal(rows * vocab, 2.0);
    let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
    targets[1] = memlayers::kernels::ops::IGNORE_TARGET; // counts for nothing, gradient included
    let (_, grad) = cross_entropy(&logits, &targets, vocab);
    check(
        "cross-entropy",
        &mut logits,
        &grad,
        |l| cross_entropy(l, &targets, vocab).0 as f64,
        &mut rng,
    );
}
