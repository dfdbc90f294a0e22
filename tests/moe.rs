//! The mixture-of-experts forward kernels (`moe.wgsl`) against the CPU reference
//! (`reference::moe`), over odd shapes; tolerances are `common::checks`' (f32 sums in the
//! same order, exp rounding aside).

mod common;
use common::{assert_close, gpu};
use memlayers::kernels::moe::{
    record_backward, record_combine, record_hidden, record_route, MoeActs, MoeDims, MoeWeightBuffers,
};
use memlayers::reference::linear;
use memlayers::reference::moe::{moe_backward, moe_forward, MoeShape, MoeWeightsRef};
use memlayers::rng::Rng;

#[test]
fn moe_forward_and_backward_kernels_match_the_reference() {
    let g = gpu();
    for (tokens, dim, hidden, experts, top_k, seed) in [
        (1usize, 1usize, 1usize, 1usize, 1usize, 1u64),
        (7, 5, 3, 4, 2, 2),
        (37, 32, 48, 8, 2, 3),
        (130, 33, 17, 16, 3, 4),
        (65, 16, 96, 5, 5, 5),
        // experts x tokens past the loop budget of one invocation (the load-balancing loss
        // sums by expert first), experts past one workgroup
        (800, 4, 2, 70, 2, 6),
    ] {
        let mut rng = Rng::new(seed);
        let x = rng.vec_normal(tokens * dim, 1.0);
        let router = rng.vec_normal(experts * dim, 1.0);
        let w1 = rng.vec_normal(experts * hidden * dim, 0.3);
        let w3 = rng.vec_normal(experts * hidden * dim, 0.3);
        let w2 = rng.vec_normal(experts * dim * hidden, 0.3);
        let dy = rng.vec_normal(tokens * dim, 1.0);
        let shape = MoeShape {
            dim,
            hidden,
            experts,
            top_k,
        };
        let weights = MoeWeightsRef {
            router: &router,
            w1: &w1,
            w3: &w3,
            w2: &w2,
        };
        let coef = 0.5 + 0.1 * seed as f32;
        let want = moe_forward(&x, tokens, weights, shape, coef);
        let want_grads = moe_backward(&x, tokens, weights, shape, &want, &dy, coef);
        let d = MoeDims {
            tokens: tokens as u32,
            dim: dim as u32,
            hidden: hidden as u32,
            experts: experts as u32,
            top_k: top_k as u32,
        };
        let f32s = |n: usize| g.storage("out", (n * 4) as u64);
        let logits = g.upload("logits", &linear(&x, &router, None, tokens, experts, dim));
        let (probs, chosen, gates) = (f32s(tokens * experts), f32s(tokens * top_k), f32s(tokens * top_k));
        let (a1, a3, y) = (
            f32s(tokens * top_k * hidden),
            f32s(tokens * top_k * hidden),
            f32s(tokens * dim),
        );
        let (xb, w1b, w3b, w2b) = (
            g.upload("x", &x),
            g.upload("w1", &w1),
            g.upload("w3", &w3),
            g.upload("w2", &w2),
        );
        let mut enc = g.device.create_command_encoder(&Default::default());
        record_route(g, &mut enc, d, &logits, (&probs, &chosen, &gates)).unwrap();
        record_hidden(g, &mut enc, d, (&xb, &w1b, &w3b, &chosen), (&a1, &a3)).unwrap();
        record_combine(g, &mut enc, d, (&a1, &a3, &chosen, &gates), &w2b, (&y, false)).unwrap();
        let (dyb, routerb) = (g.upload("dy", &dy), g.upload("router", &router));
        let acts = MoeActs {
            probs: &probs,
            chosen: &chosen,
            gates: &gates,
            a1: &a1,
            a3: &a3,
        };
        let wb = MoeWeightBuffers {
            router: &routerb,
            w1: &w1b,
            w3: &w3b,
            w2: &w2b,
        };
        let dxb = f32s(tokens * dim);
        let grads = record_backward(g, &mut enc, d, coef, (&xb, &dyb), acts, wb, &dxb).unwrap();
        g.queue.submit([enc.finish()]);
        let case = format!("{tokens} tokens, dim {dim}, hidden {hidden}, {experts} experts, top {top_k}");
        assert_close(
            &format!("probs ({case})"),
            &g.read_f32_blocking(&probs, tokens * experts).unwrap(),
            &want.probs,
        );
        assert_eq!(
            g.read_u32_blocking(&chosen, tokens * top_k).unwrap(),
            want.chosen,
            "chosen ({case})"
        );
        assert_close(
            &format!("gates ({case})"),
            &g.read_f32_blocking(&gates, tokens * top_k).unwrap(),
            &want.gates,
        );
        assert_close(
            &format!("a1 ({case})"),
            &g.read_f32_blocking(&a1, tokens * top_k * hidden).unwrap(),
            &want.a1,
        );
        assert_close(
            &format!("a3 ({case})"),
            &g.read_f32_blocking(&a3, tokens * top_k * hidden).unwrap(),
            &want.a3,
        );
        assert_close(
            &format!("y ({case})"),
            &g.read_f32_blocking(&y, tokens * dim).unwrap(),
            &want.y,
        );
        let read = |b: &wgpu::Buffer, n: usize| g.read_f32_blocking(b, n).unwrap();
        assert_close(
            &format!("aux loss ({case})"),
            &read(&grads.aux_loss, 1),
            &[want.aux_loss],
        );
        assert_close(&format!("dx ({case})"), &read(&dxb, tokens * dim), &want_grads.dx);
        assert_close(
            &format!("d router ({case})"),
            &read(&grads.router, experts * dim),
            &want_grads.router,
        );
        assert_close(
            &format!("d w1 ({case})"),
            &read(&grads.w1, w1.len()),
            &want_grads.w1,
        );
        assert_close(
            &format!("d w3 ({case})"),
            &read(&grads.w3, w3.len()),
            &want_grads.w3,
        );
        assert_close(
            &format!("d w2 ({case})"),
            &read(&grads.w2, w2.len()),
            &want_grads.w2,
        );
    }
}

#[test]
fn moe_kernels_refuse_impossible_shapes() {
    let g = gpu();
    let b = g.storage("b", 1024);
    let mut enc = g.device.create_command_encoder(&Default::default());
    let d = MoeDims {
        tokens: 4,
        dim: 4,
        hidden: 4,
        experts: 2,
        top_k: 3,
    };
    let e = record_route(g, &mut enc, d, &b, (&b, &b, &b)).unwrap_err();
    assert!(e.to_string().contains("top_k"), "{e}");
    let small = g.storage("small", 8);
    let d = MoeDims { top_k: 2, ..d };
    let e = record_route(g, &mut enc, d, &small, (&b, &b, &b)).unwrap_err();
    assert!(e.to_string().contains("router logits"), "{e}");
}
