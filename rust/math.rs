//! Small element-wise math shared by the forward pass and the sampler, in run.c's operation
//! order (llama2.c parity depends on it).

/// `1 / sqrt(mean(x^2) + eps)`.
pub(crate) fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mut ss = 0.0f32;
    for v in x {
        ss += v * v;
    }
    ss /= x.len() as f32;
    ss += eps;
    1.0 / ss.sqrt()
}

/// `out = weight * (x / rms(x))`.
pub(crate) fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for ((o, &w), &v) in out.iter_mut().zip(weight).zip(x) {
        *o = w * (inv * v);
    }
}

/// `x = weight * (x / rms(x))`, for the final norm (run.c normalizes in place there).
pub(crate) fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = w * (inv * *v);
    }
}

/// Numerically stable softmax in place.
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `silu(h) * h2`, SwiGLU's gate.
#[inline]
pub(crate) fn swiglu(h: f32, h2: f32) -> f32 {
    let silu = h * (1.0 / (1.0 + (-h).exp()));
    silu * h2
}
