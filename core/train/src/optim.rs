//! AdamW (PyTorch's `torch.optim.AdamW`), the learning-rate schedule
//! (linear warmup, then constant, linear or cosine decay to zero, as
//! transformers' schedulers), and global-norm gradient clipping.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tailor_tensor::cpu::pool::SpinPool;

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// One parameter tensor and its gradient, as the optimizer sees them.
pub struct Param<'a> {
    /// The values, updated in place.
    pub value: &'a mut [f32],
    /// `∂loss/∂value`.
    pub grad: &'a [f32],
}

/// AdamW's moments for every parameter tensor, and the step count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdamState {
    /// Steps taken.
    pub step: u64,
    /// First moments, one vector per parameter tensor.
    pub m: Vec<Vec<f32>>,
    /// Second moments.
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// One step at learning rate `lr` over `params` (always the same
    /// tensors in the same order); moments are created on the first step.
    /// Large tensors are split over the thread pool: each element's update
    /// is its own, so the result does not depend on the split.
    pub fn step(&self, state: &mut AdamState, params: &mut [Param<'_>], lr: f32) {
        if state.m.len() != params.len() {
            state.m = params.iter().map(|p| vec![0.0; p.value.len()]).collect();
            state.v = state.m.clone();
        }
        state.step += 1;
        let t = state.step as i32;
        let update =
            Update { adamw: *self, lr, correction1: 1.0 - self.beta1.powi(t), correction2: 1.0 - self.beta2.powi(t) };
        for ((param, m), v) in params.iter_mut().zip(&mut state.m).zip(&mut state.v) {
            update.run_parallel(param.value, param.grad, m, v);
        }
    }
}

/// One AdamW step's constants.
#[derive(Clone, Copy)]
struct Update {
    adamw: AdamW,
    lr: f32,
    /// `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    correction1: f32,
    correction2: f32,
}

/// Elements from which a tensor's update is split over the pool.
const PARALLEL_MIN: usize = 1 << 16;

impl Update {
    /// [`Update::run`] on `values`, split in one part per pool thread.
    fn run_parallel(&self, values: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        let pool = SpinPool::global();
        if values.len() < PARALLEL_MIN || pool.threads() < 2 {
            return self.run(values, grads, m, v);
        }
        let part = values.len().div_ceil(pool.threads());
        let parts: Vec<Mutex<Option<Part<'_>>>> = values
            .chunks_mut(part)
            .zip(grads.chunks(part))
            .zip(m.chunks_mut(part).zip(v.chunks_mut(part)))
            .map(|((values, grads), (m, v))| Mutex::new(Some((values, grads, m, v))))
            .collect();
        pool.run(&|index, _| {
            let mine = parts.get(index).and_then(|p| p.lock().ok().and_then(|mut p| p.take()));
            if let Some((values, grads, m, v)) = mine {
                self.run(values, grads, m, v);
            }
        });
        // A part no thread took (a pool smaller than it said) runs here.
        for part in parts {
            if let Some((values, grads, m, v)) = part.into_inner().ok().flatten() {
                self.run(values, grads, m, v);
            }
        }
    }

    /// The update of each element: moments, bias correction, decoupled
    /// weight decay, then the step (PyTorch's order of operations).
    fn run(&self, values: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        let AdamW { beta1, beta2, eps, weight_decay } = self.adamw;
        for (((w, &g), m), v) in values.iter_mut().zip(grads).zip(m).zip(v) {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            let m_hat = *m / self.correction1;
            let v_hat = *v / self.correction2;
            *w -= self.lr * weight_decay * *w;
            *w -= self.lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

/// A tensor's share of one step: values, gradients, first and second moments.
type Part<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to zero at the last step.
    Linear,
    /// Follows half a cosine to zero at the last step.
    Cosine,
}

/// The learning rate at each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f32,
    /// Steps of linear warmup from zero.
    pub warmup: usize,
    /// Steps in the run.
    pub total: usize,
    /// Shape after warmup.
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of step `step` (0-based), as transformers'
    /// `get_{constant,linear,cosine}_schedule_with_warmup`.
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.peak * step as f32 / self.warmup.max(1) as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak * (1.0 - progress),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
        }
    }
}

/// Scales the gradients so that their global L2 norm is at most
/// `max_norm` (torch's `clip_grad_norm_`); returns the norm before.
pub fn clip_gradients(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let norm = grads.iter().flat_map(|g| g.iter()).map(|&g| g as f64 * g as f64).sum::<f64>().sqrt() as f32;
    if norm.is_finite() && norm > max_norm && max_norm > 0.0 {
        let factor = max_norm / (norm + 1e-6);
        grads.iter_mut().for_each(|g| g.iter_mut().for_each(|v| *v *= factor));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor large enough to be split over the pool gets exactly the
    /// update of one pass over it.
    #[test]
    fn a_split_update_equals_one_pass() {
        let n = 3 * PARALLEL_MIN + 17;
        let start: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let grads: Vec<f32> = (0..n).map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.4).collect();
        let update = Update {
            adamw: AdamW { weight_decay: 0.01, ..AdamW::default() },
            lr: 1e-3,
            correction1: 0.1,
            correction2: 0.001,
        };
        let (mut whole, mut split) = (start.clone(), start.clone());
        let (mut m1, mut v1) = (vec![0.01f32; n], vec![0.02f32; n]);
        let (mut m2, mut v2) = (m1.clone(), v1.clone());
        update.run(&mut whole, &grads, &mut m1, &mut v1);
        update.run_parallel(&mut split, &grads, &mut m2, &mut v2);
        assert!(whole.iter().zip(&split).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(m1 == m2 && v1 == v2 && whole != start, "the moments agree and the step moved the values");
    }

    #[test]
    fn warmup_then_cosine_reaches_zero() {
        let s = Schedule { peak: 1.0, warmup: 10, total: 110, decay: Decay::Cosine };
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(5), 0.5);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.5).abs() < 1e-6);
        assert!(s.lr(110).abs() < 1e-6);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // With bias correction, step 1 moves each weight by lr·sign(g).
        let mut w = vec![1.0f32, -2.0, 0.5];
        let g = vec![0.3f32, -4.0, 1e-3];
        let mut state = AdamState::default();
        AdamW::default().step(&mut state, &mut [Param { value: &mut w, grad: &g }], 0.1);
        for (after, before) in w.iter().zip([0.9f32, -1.9, 0.4]) {
            assert!((after - before).abs() < 1e-4, "{after} vs {before}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let norm = clip_gradients(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        assert!(((a[0] * a[0] + b[0] * b[0]).sqrt() - 1.0).abs() < 1e-5);
    }
}
