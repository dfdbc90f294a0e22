//! AdamW as torch.optim.AdamW computes it (decoupled weight decay first, then the Adam step
//! with bias corrections), and gradient-norm clipping as torch.nn.utils.clip_grad_norm_.

/// Hyper-parameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count (for the bias corrections).
    pub step: u32,
}

/// `min(1, max_norm / (norm + 1e-6))` for the L2 norm of all `grads` together.
pub fn clip_factor(grads: &[&[f32]], max_norm: f32) -> f32 {
    let ss: f64 = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| x as f64 * x as f64)
        .sum();
    (max_norm / (ss.sqrt() as f32 + 1e-6)).min(1.0)
}

/// One AdamW step on `param` with gradient `grad * clip`, moments `m`, `v` updated in place.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], clip: f32, s: AdamWStep) {
    let bc1 = 1.0 - (s.beta1 as f64).powi(s.step as i32);
    let bc2 = 1.0 - (s.beta2 as f64).powi(s.step as i32);
    let step_size = (s.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    for i in 0..param.len() {
        let g = grad[i] * clip;
        param[i] *= 1.0 - s.lr * s.weight_decay;
        m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
        v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + s.eps;
        param[i] -= step_size * m[i] / denom;
    }
}
