//! Transformer ops of lingua's LMTransformer (docs/reference.md, "The transformer"), forward and backward,
//! in plain Rust: the oracle for the GPU ops.

/// RMSNorm over rows of `d`: `y = x * rsqrt(mean(x^2) + eps) * w`, in f32.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * r * g)
        })
        .collect()
}

/// Backward of `rmsnorm`: returns (dx, dw).
pub fn rmsnorm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    let mut dw = vec![0f32; d];
    for (r_i, row) in x.chunks(d).enumerate() {
        let g = &dy[r_i * d..(r_i + 1) * d];
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        let dot: f32 = (0..d).map(|j| g[j] * w[j] * row[j]).sum();
        for j in 0..d {
            dw[j] += g[j] * row[j] * r;
            dx[r_i * d + j] = r * w[j] * g[j] - row[j] * r * r * r * dot / d as f32;
        }
    }
    (dx, dw)
}

/// cos and sin of every (position, pair) for positions `0..max_pos`, `[max_pos, head_dim / 2]`,
/// computed as lingua/torch do in f32 (inverse frequency `1 / theta^(2m / head_dim)` and angle
/// `t * inv_freq` in f32), then cos/sin of that f32 angle rounded from f64.
pub fn rope_tables(max_pos: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(max_pos * half);
    let mut sin = Vec::with_capacity(max_pos * half);
    for t in 0..max_pos {
        for m in 0..half {
            let inv_freq = 1.0f32 / theta.powf((2 * m) as f32 / head_dim as f32);
            let angle = (t as f32 * inv_freq) as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Interleaved RoPE on `x [seq, heads, head_dim]` at positions `pos0..pos0 + seq`: dims
/// (2m, 2m + 1) rotate by the angle of (position, m); `inverse` rotates back (the backward).
pub fn rope(
    x: &[f32],
    seq: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    pos0: usize,
    inverse: bool,
) -> Vec<f32> {
    let half = head_dim / 2;
    let (cos, sin) = rope_tables(pos0 + seq, head_dim, theta);
    let mut y = x.to_vec();
    for t in 0..seq {
        for h in 0..heads {
            for m in 0..half {
                let i = (t * heads + h) * head_dim + 2 * m;
                let at = (pos0 + t) * half + m;
                let (c, s) = (cos[at], if inverse { -sin[at] } else { sin[at] });
                let (a, b) = (x[i], x[i + 1]);
                y[i] = a * c - b * s;
                y[i + 1] = a * s + b * c;
            }
        }
    }
    y
}

/// Shapes of causal grouped-query attention on one sequence.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal attention: `q [seq, heads, hd]`, `k, v [seq, kv_heads, hd]`; query head h reads kv
/// head `h / (heads / kv_heads)`; scale 1/sqrt(hd). Returns (out [seq, heads, hd], the
/// softmax's log-sum-exp per (position, head)).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], a: AttentionDims) -> (Vec<f32>, Vec<f32>) {
    let (hd, group) = (a.head_dim, a.heads / a.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; a.seq * a.heads * hd];
    let mut lse = vec![0f32; a.seq * a.heads];
    for i in 0..a.seq {
        for h in 0..a.heads {
            let kvh = h / group;
            let qi = &q[(i * a.heads + h) * hd..][..hd];
            let s: Vec<f32> = (0..=i)
                .map(|j| {
                    let kj = &k[(j * a.kv_heads + kvh) * hd..][..hd];
                    qi.iter().zip(kj).map(|(x, y)| x * y).sum::<f32>() * scale
                })
                .collect();
            let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = s.iter().map(|x| (x - m).exp()).sum();
            lse[i * a.heads + h] = m + sum.ln();
            for (j, sj) in s.iter().enumerate() {
                let p = (sj - m).exp() / sum;
                let vj = &v[(j * a.kv_heads + kvh) * hd..][..hd];
                for c in 0..hd {
                    out[(i * a.heads + h) * hd + c] += p * vj[c];
                }
            }
        }
    }
    (out, lse)
}

/// Backward of `attention`: returns (dq, dk, dv).
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    a: AttentionDims,
    d_out: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, group) = (a.head_dim, a.heads / a.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let (out, lse) = attention(q, k, v, a);
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    for i in 0..a.seq {
        for h in 0..a.heads {
            let kvh = h / group;
            let qo = (i * a.heads + h) * hd;
            let doi = &d_out[qo..qo + hd];
            let big_d: f32 = doi.iter().zip(&out[qo..qo + hd]).map(|(x, y)| x * y).sum();
            for j in 0..=i {
                let ko = (j * a.kv_heads + kvh) * hd;
                let s: f32 = (0..hd).map(|c| q[qo + c] * k[ko + c]).sum::<f32>() * scale;
                let p = (s - lse[i * a.heads + h]).exp();
                let dp: f32 = (0..hd).map(|c| doi[c] * v[ko + c]).sum();
                let ds = p * (dp - big_d);
                for c in 0..hd {
                    dv[ko + c] += p * doi[c];
                    dq[qo + c] += ds * k[ko + c] * scale;
                    dk[ko + c] += ds * q[qo + c] * scale;
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Mean cross-entropy of `logits [rows, vocab]` against `targets`, in f32; also
/// dL/dlogits = (softmax - onehot) / rows. Rows whose target is `IGNORE_TARGET` count for
/// nothing (torch's ignore_index); `rows` is the number of the others.
pub fn cross_entropy(logits: &[f32], targets: &[u32], vocab: usize) -> (f32, Vec<f32>) {
    let rows = targets
        .iter()
        .filter(|&&t| t != crate::constants::IGNORE_TARGET)
        .count()
        .max(1);
    let mut loss = 0f32;
    let mut grad = vec![0f32; logits.len()];
    for (r, &t) in targets.iter().enumerate() {
        if t == crate::constants::IGNORE_TARGET {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|x| (x - m).exp()).sum();
        let lse = m + sum.ln();
        loss += lse - row[t as usize];
        for c in 0..vocab {
            let p = (row[c] - lse).exp();
            grad[r * vocab + c] = (p - if c == t as usize { 1.0 } else { 0.0 }) / rows as f32;
        }
    }
    (loss / rows as f32, grad)
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `y[r, c] = sigmoid(g[r]) * x[r, c]` (lingua's mem_gated).
pub fn row_gate(g: &[f32], x: &[f32], cols: usize) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| sigmoid(g[i / cols]) * v)
        .collect()
}

/// The backward of `row_gate` for `dy`: `(dx, dg)`.
pub fn row_gate_backward(g: &[f32], x: &[f32], dy: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let dx = row_gate(g, dy, cols);
    let dg = g
        .iter()
        .enumerate()
        .map(|(r, &gr)| {
            let s = sigmoid(gr);
            let dot: f32 = (0..cols).map(|c| dy[r * cols + c] * x[r * cols + c]).sum();
            s * (1.0 - s) * dot
        })
        .collect();
    (dx, dg)
}

/// erf in f64: its Maclaurin series below 2.5, the continued fraction of erfc above.
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let r = if z < 2.5 {
        let (mut term, mut sum, mut n) = (z, z, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -z * z / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(z) = exp(-z^2) / sqrt(pi) * 1 / (z + 1/2 / (z + 1 / (z + 3/2 / (z + ...))))
        let mut f = z;
        for k in (1..60).rev() {
            f = z + (k as f64 / 2.0) / f;
        }
        1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / f
    };
    r.copysign(x)
}

/// The exact GELU, `x * Phi(x)`, and its derivative.
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (x * 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

pub fn gelu_grad(x: f32) -> f32 {
    let x = x as f64;
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let density = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (cdf + x * density) as f32
}
