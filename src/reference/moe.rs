//! A mixture-of-experts feed-forward block, forward and backward: the CPU reference for
//! issue 15's MoE. A linear router (no bias) scores `experts` per token; softmax; the `top_k`
//! most probable experts (ties to the lower index, the project's rank order) with their
//! probabilities renormalised over the chosen ones (Mixtral); each chosen expert is a SwiGLU
//! (`w2 (silu(w1 x) * (w3 x))`) and the block's output is their gate-weighted sum, in the
//! order the experts were chosen. The Switch Transformer load-balancing loss
//! `coef * E * sum_e f_e P_e` (f_e: the share of the token-expert assignments that went to e,
//! P_e: the mean router probability of e) is returned beside it; its gradient reaches the
//! router through P_e only (f_e counts). No token is dropped.

use super::{linear, ranks_before, silu, silu_grad};

/// The block's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeShape {
    pub dim: usize,
    /// Each expert's hidden width.
    pub hidden: usize,
    pub experts: usize,
    pub top_k: usize,
}

/// The block's weights, row-major: `router [experts, dim]`, `w1` and `w3 [experts, hidden,
/// dim]`, `w2 [experts, dim, hidden]`.
#[derive(Clone, Copy, Debug)]
pub struct MoeWeightsRef<'a> {
    pub router: &'a [f32],
    pub w1: &'a [f32],
    pub w3: &'a [f32],
    pub w2: &'a [f32],
}

/// What the forward keeps for the backward.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeForward {
    /// `[tokens, dim]`.
    pub y: Vec<f32>,
    /// Router softmax `[tokens, experts]`.
    pub probs: Vec<f32>,
    /// Chosen experts `[tokens, top_k]`, most probable first.
    pub chosen: Vec<u32>,
    /// Their renormalised probabilities `[tokens, top_k]`.
    pub gates: Vec<f32>,
    /// `w1 x` and `w3 x` of each chosen expert `[tokens, top_k, hidden]`.
    pub a1: Vec<f32>,
    pub a3: Vec<f32>,
    /// The load-balancing loss, already times its coefficient.
    pub aux_loss: f32,
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// The `k` highest of `p` in rank order (ties to the lower index).
fn top_k(p: &[f32], k: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..p.len() as u32).collect();
    order.sort_by(|&a, &b| {
        if ranks_before((p[a as usize], a), (p[b as usize], b)) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    order.truncate(k);
    order
}

fn expert(w: &[f32], e: usize, rows: usize, cols: usize) -> &[f32] {
    &w[e * rows * cols..(e + 1) * rows * cols]
}

/// The block on `x [tokens, dim]`, with load-balancing coefficient `aux_coef`.
pub fn moe_forward(x: &[f32], tokens: usize, w: MoeWeightsRef, s: MoeShape, aux_coef: f32) -> MoeForward {
    let (d, h, n_e, k) = (s.dim, s.hidden, s.experts, s.top_k);
    assert!(k >= 1 && k <= n_e && x.len() == tokens * d);
    let mut probs = linear(x, w.router, None, tokens, n_e, d);
    let (mut chosen, mut gates) = (Vec::with_capacity(tokens * k), Vec::with_capacity(tokens * k));
    let (mut a1, mut a3) = (vec![0f32; tokens * k * h], vec![0f32; tokens * k * h]);
    let mut y = vec![0f32; tokens * d];
    for t in 0..tokens {
        let p = &mut probs[t * n_e..(t + 1) * n_e];
        softmax(p);
        let top = top_k(p, k);
        let sum: f32 = top.iter().map(|&e| p[e as usize]).sum();
        let xt = &x[t * d..(t + 1) * d];
        for (slot, &e) in top.iter().enumerate() {
            let g = p[e as usize] / sum;
            let e = e as usize;
            let at = (t * k + slot) * h;
            let u1 = linear(xt, expert(w.w1, e, h, d), None, 1, h, d);
            let u3 = linear(xt, expert(w.w3, e, h, d), None, 1, h, d);
            let act: Vec<f32> = u1.iter().zip(&u3).map(|(&p1, &p3)| silu(p1) * p3).collect();
            let out = linear(&act, expert(w.w2, e, d, h), None, 1, d, h);
            for c in 0..d {
                y[t * d + c] += g * out[c];
            }
            a1[at..at + h].copy_from_slice(&u1);
            a3[at..at + h].copy_from_slice(&u3);
            gates.push(g);
        }
        chosen.extend(top);
    }
    let (share, mean_prob) = balance(&probs, &chosen, tokens, n_e);
    let aux_loss = aux_coef * n_e as f32 * share.iter().zip(&mean_prob).map(|(f, p)| f * p).sum::<f32>();
    MoeForward {
        y,
        probs,
        chosen,
        gates,
        a1,
        a3,
        aux_loss,
    }
}

/// Per expert: its share of the assignments, and its mean router probability.
fn balance(probs: &[f32], chosen: &[u32], tokens: usize, experts: usize) -> (Vec<f32>, Vec<f32>) {
    let mut share = vec![0f32; experts];
    for &e in chosen {
        share[e as usize] += 1.0;
    }
    let assignments = chosen.len().max(1) as f32;
    share.iter_mut().for_each(|f| *f /= assignments);
    let mut mean = vec![0f32; experts];
    for t in 0..tokens {
        for e in 0..experts {
            mean[e] += probs[t * experts + e];
        }
    }
    mean.iter_mut().for_each(|p| *p /= tokens.max(1) as f32);
    (share, mean)
}

/// Gradients of the block.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeGrads {
    pub dx: Vec<f32>,
    pub router: Vec<f32>,
    pub w1: Vec<f32>,
    pub w3: Vec<f32>,
    pub w2: Vec<f32>,
}

/// The gradients of `sum(dy * y) + aux_loss` (the block's output gradient `dy [tokens, dim]`
/// and the load-balancing loss as `moe_forward` computed it).
pub fn moe_backward(
    x: &[f32],
    tokens: usize,
    w: MoeWeightsRef,
    s: MoeShape,
    fwd: &MoeForward,
    dy: &[f32],
    aux_coef: f32,
) -> MoeGrads {
    let (d, h, n_e, k) = (s.dim, s.hidden, s.experts, s.top_k);
    let mut g = MoeGrads {
        dx: vec![0f32; tokens * d],
        router: vec![0f32; n_e * d],
        w1: vec![0f32; w.w1.len()],
        w3: vec![0f32; w.w3.len()],
        w2: vec![0f32; w.w2.len()],
    };
    let (share, _) = balance(&fwd.probs, &fwd.chosen, tokens, n_e);
    for t in 0..tokens {
        let xt = &x[t * d..(t + 1) * d];
        let dyt = &dy[t * d..(t + 1) * d];
        let p = &fwd.probs[t * n_e..(t + 1) * n_e];
        // dL/d gate of each chosen expert, and the experts' own gradients.
        let mut d_gate = vec![0f32; k];
        for (slot, d_gate) in d_gate.iter_mut().enumerate() {
            let e = fwd.chosen[t * k + slot] as usize;
            let at = (t * k + slot) * h;
            let (u1, u3) = (&fwd.a1[at..at + h], &fwd.a3[at..at + h]);
            let act: Vec<f32> = u1.iter().zip(u3).map(|(&p1, &p3)| silu(p1) * p3).collect();
            let w2e = expert(w.w2, e, d, h);
            let out = linear(&act, w2e, None, 1, d, h);
            *d_gate = dyt.iter().zip(&out).map(|(a, b)| a * b).sum();
            let gate = fwd.gates[t * k + slot];
            let d_out: Vec<f32> = dyt.iter().map(|&v| gate * v).collect();
            let mut d_act = vec![0f32; h];
            for c in 0..d {
                for j in 0..h {
                    g.w2[e * d * h + c * h + j] += d_out[c] * act[j];
                    d_act[j] += d_out[c] * w2e[c * h + j];
                }
            }
            for j in 0..h {
                let da1 = d_act[j] * u3[j] * silu_grad(u1[j]);
                let da3 = d_act[j] * silu(u1[j]);
                for (i, &xi) in xt.iter().enumerate() {
                    let at_w = e * h * d + j * d + i;
                    g.w1[at_w] += da1 * xi;
                    g.w3[at_w] += da3 * xi;
                    g.dx[t * d + i] += da1 * w.w1[at_w] + da3 * w.w3[at_w];
                }
            }
        }
        // Through the renormalisation g_i = p_i / S (S: the chosen probabilities' sum), and
        // the load-balancing loss's d/dp[t, e] = coef * E * f_e / tokens.
        let chosen = &fwd.chosen[t * k..(t + 1) * k];
        let sum: f32 = chosen.iter().map(|&e| p[e as usize]).sum();
        let weighted: f32 = (0..k).map(|slot| d_gate[slot] * fwd.gates[t * k + slot]).sum();
        let mut dp: Vec<f32> = (0..n_e)
            .map(|e| aux_coef * n_e as f32 * share[e] / tokens as f32)
            .collect();
        for (slot, &e) in chosen.iter().enumerate() {
            dp[e as usize] += (d_gate[slot] - weighted) / sum;
        }
        // Softmax: dlogit_e = p_e (dp_e - sum_f p_f dp_f).
        let dot: f32 = (0..n_e).map(|e| p[e] * dp[e]).sum();
        for e in 0..n_e {
            let dl = p[e] * (dp[e] - dot);
            for (i, &xi) in xt.iter().enumerate() {
                g.router[e * d + i] += dl * xi;
                g.dx[t * d + i] += dl * w.router[e * d + i];
            }
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    struct Case {
        x: Vec<f32>,
        router: Vec<f32>,
        w1: Vec<f32>,
        w3: Vec<f32>,
        w2: Vec<f32>,
        dy: Vec<f32>,
        tokens: usize,
        shape: MoeShape,
    }

    impl Case {
        fn new(tokens: usize, shape: MoeShape, seed: u64) -> Self {
            let mut rng = Rng::new(seed);
            let (d, h, e) = (shape.dim, shape.hidden, shape.experts);
            Case {
                x: rng.vec_normal(tokens * d, 1.0),
                router: rng.vec_normal(e * d, 1.0),
                w1: rng.vec_normal(e * h * d, 0.5),
                w3: rng.vec_normal(e * h * d, 0.5),
                w2: rng.vec_normal(e * d * h, 0.5),
                dy: rng.vec_normal(tokens * d, 1.0),
                tokens,
                shape,
            }
        }

        fn weights(&self) -> MoeWeightsRef<'_> {
            MoeWeightsRef {
                router: &self.router,
                w1: &self.w1,
                w3: &self.w3,
                w2: &self.w2,
            }
        }

        /// The scalar the gradients are of, in f64 for the finite differences.
        fn loss(&self, coef: f32) -> (f64, Vec<u32>) {
            let f = moe_forward(&self.x, self.tokens, self.weights(), self.shape, coef);
            let l: f64 = f.y.iter().zip(&self.dy).map(|(&a, &b)| a as f64 * b as f64).sum();
            (l + f.aux_loss as f64, f.chosen)
        }
    }

    #[test]
    fn top_k_renormalises_and_the_output_is_the_gated_sum() {
        let s = MoeShape {
            dim: 3,
            hidden: 4,
            experts: 5,
            top_k: 2,
        };
        let c = Case::new(6, s, 1);
        let f = moe_forward(&c.x, c.tokens, c.weights(), s, 0.0);
        for t in 0..c.tokens {
            let p = &f.probs[t * 5..(t + 1) * 5];
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let (a, b) = (f.chosen[t * 2] as usize, f.chosen[t * 2 + 1] as usize);
            assert!(p.iter().enumerate().all(|(e, &v)| e == a || e == b || v <= p[b]));
            assert!(p[a] >= p[b]);
            assert!((f.gates[t * 2] + f.gates[t * 2 + 1] - 1.0).abs() < 1e-6);
        }
        // top_k = experts with one expert: a plain SwiGLU.
        let one = MoeShape {
            experts: 1,
            top_k: 1,
            ..s
        };
        let c = Case::new(4, one, 2);
        let f = moe_forward(&c.x, c.tokens, c.weights(), one, 0.3);
        let u1 = linear(&c.x, &c.w1, None, 4, 4, 3);
        let u3 = linear(&c.x, &c.w3, None, 4, 4, 3);
        let act: Vec<f32> = u1.iter().zip(&u3).map(|(&a, &b)| silu(a) * b).collect();
        let want = linear(&act, &c.w2, None, 4, 3, 4);
        for (a, b) in f.y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // One expert takes every assignment with probability 1: the loss is the coefficient.
        assert!((f.aux_loss - 0.3).abs() < 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Odd sizes; each coordinate is nudged both ways and compared where the choice of
        // experts stays as it was (a nudge across a tie has no derivative).
        for (tokens, s, seed) in [
            (
                5,
                MoeShape {
                    dim: 3,
                    hidden: 5,
                    experts: 4,
                    top_k: 2,
                },
                3,
            ),
            (
                3,
                MoeShape {
                    dim: 4,
                    hidden: 3,
                    experts: 3,
                    top_k: 1,
                },
                4,
            ),
            (
                4,
                MoeShape {
                    dim: 2,
                    hidden: 2,
                    experts: 5,
                    top_k: 3,
                },
                5,
            ),
        ] {
            let coef = 0.7;
            let mut c = Case::new(tokens, s, seed);
            let f = moe_forward(&c.x, tokens, c.weights(), s, coef);
            let g = moe_backward(&c.x, tokens, c.weights(), s, &f, &c.dy, coef);
            let eps = 1e-2f32;
            let (mut checked, mut total) = (0, 0);
            macro_rules! check {
                ($field:ident, $grad:expr, $name:expr) => {
                    for i in 0..c.$field.len() {
                        total += 1;
                        let keep = c.$field[i];
                        c.$field[i] = keep + eps;
                        let (up, chosen_up) = c.loss(coef);
                        c.$field[i] = keep - eps;
                        let (down, chosen_down) = c.loss(coef);
                        c.$field[i] = keep;
                        if chosen_up != f.chosen || chosen_down != f.chosen {
                            continue;
                        }
                        checked += 1;
                        let numeric = (up - down) / (2.0 * eps as f64);
                        let analytic = $grad[i] as f64;
                        assert!(
                            (numeric - analytic).abs() <= 2e-2 * (1.0 + numeric.abs()),
                            "{} [{i}] {s:?}: numeric {numeric}, analytic {analytic}",
                            $name
                        );
                    }
                };
            }
            check!(x, g.dx, "dx");
            check!(router, g.router, "router");
            check!(w1, g.w1, "w1");
            check!(w3, g.w3, "w3");
            check!(w2, g.w2, "w2");
            assert!(
                checked * 10 >= total * 9,
                "{checked} of {total} coordinates checked"
            );
        }
    }
}
