//! The memory layer's backward pass in plain Rust: the oracle for the GPU backward.
//!
//! Top-k indices are not differentiable; the selected scores are. So the query and only the
//! selected sub-key rows get gradients, through the softmax weights (docs/reference.md, "The memory layer").
//! The value gradient is dense here, as in the reference code (zero rows where no token read).

use super::*;

/// Gradients of one memory layer, named as the parameters (row-major, f32).
#[derive(Clone, Debug, Default)]
pub struct MemoryGradsRef {
    pub x: Vec<f32>,
    pub query_w: Vec<f32>,
    pub query_b: Vec<f32>,
    pub keys: Vec<f32>,
    /// `[n_values, v_dim]`, dense.
    pub values: Vec<f32>,
    pub swilu: Option<(Vec<f32>, Vec<f32>)>,
    pub value_proj: Option<(Vec<f32>, Vec<f32>)>,
    pub gating: Option<(Vec<f32>, Vec<f32>)>,
    /// PEER: `[n_values, d]`, dense.
    pub values_u: Option<Vec<f32>>,
}

/// d silu(g) / dg.
pub fn silu_grad(g: f32) -> f32 {
    let s = 1.0 / (1.0 + (-g).exp());
    s * (1.0 + g * (1.0 - s))
}

/// Backward of `l2_normalize`: with s = 1 / max(|v|, 1e-12) and u = v s,
/// dv = s (du - u <u, du>) when |v| > 1e-12, else s du.
pub fn l2_normalize_backward(v: &[f32], du: &[f32]) -> Vec<f32> {
    let mut ss = 0f32;
    for &x in v {
        ss = x.mul_add(x, ss);
    }
    let norm = ss.sqrt();
    let scale = 1.0 / norm.max(NORM_EPS);
    if norm <= NORM_EPS {
        return du.iter().map(|g| g * scale).collect();
    }
    let mut dot = 0f32;
    for (x, g) in v.iter().zip(du) {
        dot = (x * scale).mul_add(*g, dot);
    }
    v.iter()
        .zip(du)
        .map(|(x, g)| scale * (g - x * scale * dot))
        .collect()
}

/// Backward of `memory_forward` for `d_out [rows, out_dim]`.
pub fn memory_backward(x: &[f32], p: &MemoryParamsRef, d: LookupDims, d_out: &[f32]) -> MemoryGradsRef {
    let (rows, dm, v) = (d.rows, p.d, p.v_dim);
    let (half, qw, bag) = (d.k_dim / 2, d.heads * d.k_dim, d.heads * d.knn);
    // Forward, keeping what the backward needs.
    let q = linear(x, p.query_w, Some(p.query_b), rows, qw, dm);
    let lk = lookup(&q, p.keys, d);
    let peer = p
        .values_u
        .map(|u| (u, peer_activations(x, u, &lk, rows, bag, dm)));
    let y = match &peer {
        Some((_, (_, act))) => embedding_bag(&lk.indices, act, p.values, rows, bag, v),
        None => embedding_bag(&lk.indices, &lk.weights, p.values, rows, bag, v),
    };
    let g = p.swilu.map(|(w1, b1)| linear(x, w1, Some(b1), rows, v, dm));
    let h = match &g {
        Some(g) => silu_gate(&y, g),
        None => y.clone(),
    };
    let mut out = MemoryGradsRef {
        x: vec![0.0; rows * dm],
        query_w: vec![0.0; qw * dm],
        query_b: vec![0.0; qw],
        keys: vec![0.0; p.keys.len()],
        values: vec![0.0; p.values.len()],
        values_u: p.values_u.map(|u| vec![0.0; u.len()]),
        ..Default::default()
    };
    // mem_gated: out = sigmoid(z) * ungated, z = x Wg^T + bg.
    let ungated = match p.value_proj {
        Some((wo, bo)) => linear(&h, wo, Some(bo), rows, bo.len(), v),
        None => h.clone(),
    };
    let gated_d_out;
    let d_out = match p.gating {
        Some((gw, gb)) => {
            let cols = ungated.len() / rows;
            let z = linear(x, gw, Some(gb), rows, 1, dm);
            let (d_ungated, dz) = ops::row_gate_backward(&z, &ungated, d_out, cols);
            let (mut dgw, mut dgb) = (vec![0f32; dm], vec![0f32; 1]);
            for r in 0..rows {
                dgb[0] += dz[r];
                for k in 0..dm {
                    dgw[k] += dz[r] * x[r * dm + k];
                    out.x[r * dm + k] += dz[r] * gw[k];
                }
            }
            out.gating = Some((dgw, dgb));
            gated_d_out = d_ungated;
            &gated_d_out[..]
        }
        None => d_out,
    };
    // value_proj: out = h Wo^T + bo.
    let dh = match p.value_proj {
        Some((wo, bo)) => {
            let od = bo.len();
            let (mut dwo, mut dbo, mut dh) = (vec![0f32; od * v], vec![0f32; od], vec![0f32; rows * v]);
            for r in 0..rows {
                for o in 0..od {
                    let go = d_out[r * od + o];
                    dbo[o] += go;
                    for c in 0..v {
                        dwo[o * v + c] += go * h[r * v + c];
                        dh[r * v + c] += go * wo[o * v + c];
                    }
                }
            }
            out.value_proj = Some((dwo, dbo));
            dh
        }
        None => d_out.to_vec(),
    };
    // swilu: h = y * silu(g), g = x W1^T + b1.
    let dy = match (p.swilu, &g) {
        (Some((w1, _)), Some(g)) => {
            let (mut dw1, mut db1, mut dy) = (vec![0f32; v * dm], vec![0f32; v], vec![0f32; rows * v]);
            for r in 0..rows {
                for c in 0..v {
                    let i = r * v + c;
                    dy[i] = dh[i] * silu(g[i]);
                    let dg = dh[i] * y[i] * silu_grad(g[i]);
                    db1[c] += dg;
                    for k in 0..dm {
                        dw1[c * dm + k] += dg * x[r * dm + k];
                        out.x[r * dm + k] += dg * w1[c * dm + k];
                    }
                }
            }
            out.swilu = Some((dw1, db1));
            dy
        }
        _ => dh,
    };
    // Bag, softmax, scores, query. With qk-norm the scores see normalised query halves and
    // key rows; their gradients pass back through the normalisation at the end.
    let normalize_rows = |a: &[f32]| -> Vec<f32> { a.chunks(half).flat_map(l2_normalize).collect() };
    let (qs, ks) = if d.qk_norm {
        (normalize_rows(&q), normalize_rows(p.keys))
    } else {
        (q.clone(), p.keys.to_vec())
    };
    let mut dq = vec![0f32; rows * qw];
    for r in 0..rows {
        for hd in 0..d.heads {
            let e0 = (r * d.heads + hd) * d.knn;
            let dw: Vec<f32> = (0..d.knn)
                .map(|j| {
                    let slot = lk.indices[e0 + j] as usize;
                    let vr = &p.values[slot * v..(slot + 1) * v];
                    // PEER: the bag weighs v rows by a = w gelu(s), s = <x, u>.
                    let weight = peer
                        .as_ref()
                        .map_or(lk.weights[e0 + j], |(_, (_, act))| act[e0 + j]);
                    let mut dot = 0f32;
                    for c in 0..v {
                        dot += dy[r * v + c] * vr[c];
                        out.values[slot * v + c] += weight * dy[r * v + c];
                    }
                    match &peer {
                        Some((u, (dots, _))) => {
                            let s = dots[e0 + j];
                            let ds = dot * lk.weights[e0 + j] * ops::gelu_grad(s);
                            let du = out.values_u.as_mut().expect("PEER has a values_u gradient");
                            for c in 0..dm {
                                du[slot * dm + c] += ds * x[r * dm + c];
                                out.x[r * dm + c] += ds * u[slot * dm + c];
                            }
                            dot * ops::gelu(s)
                        }
                        None => dot,
                    }
                })
                .collect();
            let wsum: f32 = (0..d.knn).map(|j| lk.weights[e0 + j] * dw[j]).sum();
            let qo = r * qw + hd * d.k_dim;
            for (j, &dwj) in dw.iter().enumerate() {
                let ds = lk.weights[e0 + j] * (dwj - wsum);
                let slot = lk.indices[e0 + j] as usize;
                for (p_half, key) in [(0, slot / d.n_keys), (1, slot % d.n_keys)] {
                    let krow = ((hd * 2 + p_half) * d.n_keys + key) * half;
                    for c in 0..half {
                        dq[qo + p_half * half + c] += ds * ks[krow + c];
                        out.keys[krow + c] += ds * qs[qo + p_half * half + c];
                    }
                }
            }
        }
    }
    if d.qk_norm {
        let back = |raw: &[f32], grad: &[f32]| -> Vec<f32> {
            raw.chunks(half)
                .zip(grad.chunks(half))
                .flat_map(|(v, g)| l2_normalize_backward(v, g))
                .collect()
        };
        dq = back(&q, &dq);
        out.keys = back(p.keys, &out.keys);
    }
    for r in 0..rows {
        for o in 0..qw {
            let go = dq[r * qw + o];
            out.query_b[o] += go;
            for k in 0..dm {
                out.query_w[o * dm + k] += go * x[r * dm + k];
                out.x[r * dm + k] += go * p.query_w[o * dm + k];
            }
        }
    }
    out
}
