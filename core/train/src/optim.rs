//! AdamW (PyTorch's `torch.optim.AdamW`), the learning-rate schedule
//! (linear warmup, then constant, linear or cosine decay to zero, as
//! transformers' schedulers), and global-norm gradient clipping.

use crate::moments8::{self, Blockwise8};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tailor_tensor::cpu::pool::SpinPool;

/// AdamW's hyper-parameters.
#[derive(Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// β₁.
    pub beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// How the moments are kept between steps.
    #[serde(default)]
    pub state: StateBits,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, state: StateBits::F32 }
    }
}

/// As derived, but f32 moments print as they did before `state` existed:
/// a run's fingerprint is its settings' debug form, and a run checkpointed
/// by an earlier build must still resume.
impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut fields = f.debug_struct("AdamW");
        fields.field("beta1", &self.beta1).field("beta2", &self.beta2).field("eps", &self.eps);
        fields.field("weight_decay", &self.weight_decay);
        if self.state != StateBits::F32 {
            fields.field("state", &self.state);
        }
        fields.finish()
    }
}

/// How AdamW keeps its moments between steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBits {
    /// In f32: PyTorch's AdamW, 8 bytes per parameter.
    #[default]
    F32,
    /// In 8 bits per value, blockwise ([`crate::moments8`]): 2 bytes per
    /// parameter; tensors under [`moments8::MIN_VALUES`] values stay f32.
    Int8,
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
    /// Each parameter tensor's moments, in the order of the parameters.
    pub moments: Vec<Moments>,
}

/// One parameter tensor's first and second moments.
#[derive(Debug, Clone, PartialEq)]
pub enum Moments {
    /// In f32.
    F32 {
        /// First moment.
        m: Vec<f32>,
        /// Second moment.
        v: Vec<f32>,
    },
    /// In 8 bits, blockwise.
    Int8 {
        /// First moment.
        m: Blockwise8,
        /// Second moment.
        v: Blockwise8,
    },
}

impl Moments {
    /// Zero moments for `len` values, kept as `bits` asks (small tensors in f32).
    fn zeros(len: usize, bits: StateBits) -> Moments {
        match bits {
            StateBits::Int8 if len >= moments8::MIN_VALUES => {
                Moments::Int8 { m: Blockwise8::zeros(len), v: Blockwise8::zeros(len) }
            }
            _ => Moments::F32 { m: vec![0.0; len], v: vec![0.0; len] },
        }
    }

    /// Values they cover.
    pub fn len(&self) -> usize {
        match self {
            Moments::F32 { m, .. } => m.len(),
            Moments::Int8 { m, .. } => m.codes.len(),
        }
    }

    /// Whether they cover no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AdamW {
    /// One step at learning rate `lr` over `params` (always the same
    /// tensors in the same order); moments are created on the first step.
    /// Large tensors are split over the thread pool: each element's update
    /// is its own (each 8-bit block's), so the result does not depend on
    /// the split.
    pub fn step(&self, state: &mut AdamState, params: &mut [Param<'_>], lr: f32) {
        let fits = state.moments.len() == params.len()
            && state.moments.iter().zip(params.iter()).all(|(m, p)| m.len() == p.value.len());
        if !fits {
            state.moments = params.iter().map(|p| Moments::zeros(p.value.len(), self.state)).collect();
        }
        state.step += 1;
        let t = state.step as i32;
        let update =
            Update { adamw: *self, lr, correction1: 1.0 - self.beta1.powi(t), correction2: 1.0 - self.beta2.powi(t) };
        for (param, moments) in params.iter_mut().zip(&mut state.moments) {
            match moments {
                Moments::F32 { m, v } => update.run_parallel(param.value, param.grad, m, v),
                Moments::Int8 { m, v } => update.run_parallel_8bit(param.value, param.grad, m, v),
            }
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
        let part = part_length(values.len(), 1);
        let parts = values
            .chunks_mut(part)
            .zip(grads.chunks(part))
            .zip(m.chunks_mut(part).zip(v.chunks_mut(part)))
            .map(|((values, grads), (m, v))| (values, grads, m, v))
            .collect();
        over_pool(parts, &|(values, grads, m, v)| self.run(values, grads, m, v));
    }

    /// [`Update::run_8bit`] on `values`, split in one part (of whole
    /// blocks) per pool thread.
    fn run_parallel_8bit(&self, values: &mut [f32], grads: &[f32], m: &mut Blockwise8, v: &mut Blockwise8) {
        let part = part_length(values.len(), moments8::BLOCK);
        let blocks = part / moments8::BLOCK;
        let parts = values
            .chunks_mut(part)
            .zip(grads.chunks(part))
            .zip(m.codes.chunks_mut(part).zip(m.absmax.chunks_mut(blocks)))
            .zip(v.codes.chunks_mut(part).zip(v.absmax.chunks_mut(blocks)))
            .map(|(((values, grads), m), v)| (values, grads, m, v))
            .collect();
        over_pool(parts, &|(values, grads, m, v)| self.run_8bit(values, grads, m, v));
    }

    /// The update of each element: moments, bias correction, decoupled
    /// weight decay, then the step (PyTorch's order of operations).
    #[inline(always)]
    fn run(&self, values: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        let AdamW { beta1, beta2, eps, weight_decay, .. } = self.adamw;
        for (((w, &g), m), v) in values.iter_mut().zip(grads).zip(m).zip(v) {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            let m_hat = *m / self.correction1;
            let v_hat = *v / self.correction2;
            *w -= self.lr * weight_decay * *w;
            *w -= self.lr * m_hat / (v_hat.sqrt() + eps);
        }
    }

    /// [`Update::run`] block by block on 8-bit moments: each block's
    /// moments decoded, updated in f32, and stored as codes again. The
    /// same code compiled for AVX2 where the CPU has it (8 lanes instead
    /// of SSE's 4; Rust never fuses a multiply and an add on its own, so
    /// both give the same bits).
    fn run_8bit(&self, values: &mut [f32], grads: &[f32], m: Codes<'_>, v: Codes<'_>) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, the only feature the function is compiled for.
            return unsafe { self.run_8bit_avx2(values, grads, m, v) };
        }
        self.run_8bit_portable(values, grads, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_8bit_avx2(&self, values: &mut [f32], grads: &[f32], m: Codes<'_>, v: Codes<'_>) {
        self.run_8bit_portable(values, grads, m, v)
    }

    #[inline(always)]
    fn run_8bit_portable(&self, values: &mut [f32], grads: &[f32], m: Codes<'_>, v: Codes<'_>) {
        let (mut m_block, mut v_block) = ([0f32; moments8::BLOCK], [0f32; moments8::BLOCK]);
        let blocks = values.chunks_mut(moments8::BLOCK).zip(grads.chunks(moments8::BLOCK));
        let m_blocks = m.0.chunks_mut(moments8::BLOCK).zip(m.1.iter_mut());
        let v_blocks = v.0.chunks_mut(moments8::BLOCK).zip(v.1.iter_mut());
        for (((values, grads), (m_codes, m_scale)), (v_codes, v_scale)) in blocks.zip(m_blocks).zip(v_blocks) {
            let (m_values, v_values) = (&mut m_block[..values.len()], &mut v_block[..values.len()]);
            moments8::FIRST.decode_block(m_codes, *m_scale, m_values);
            moments8::SECOND.decode_block(v_codes, *v_scale, v_values);
            self.run(values, grads, m_values, v_values);
            *m_scale = moments8::FIRST.encode_block(m_values, m_codes);
            *v_scale = moments8::SECOND.encode_block(v_values, v_codes);
        }
    }
}

/// A part's 8-bit moment: codes and their blocks' scales.
type Codes<'a> = (&'a mut [u8], &'a mut [f32]);

/// The length of each part when `len` values are split over the pool, a
/// multiple of `align` (the whole when small or on one thread).
fn part_length(len: usize, align: usize) -> usize {
    let threads = SpinPool::global().threads();
    if len < PARALLEL_MIN || threads < 2 {
        return len.max(1).div_ceil(align) * align;
    }
    len.div_ceil(threads).div_ceil(align).max(1) * align
}

/// Runs `work` on every part, one part per pool thread (parts no thread
/// took, on a pool smaller than it said, run here).
fn over_pool<T: Send>(parts: Vec<T>, work: &(dyn Fn(T) + Sync)) {
    let pool = SpinPool::global();
    let slots: Vec<Mutex<Option<T>>> = parts.into_iter().map(|p| Mutex::new(Some(p))).collect();
    if slots.len() > 1 {
        pool.run(&|index, _| {
            if let Some(part) = slots.get(index).and_then(|p| p.lock().ok().and_then(|mut p| p.take())) {
                work(part);
            }
        });
    }
    for slot in slots {
        if let Some(part) = slot.into_inner().ok().flatten() {
            work(part);
        }
    }
}

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

    /// `n` start values and gradients, and an update with weight decay
    /// and the bias corrections `corrections`.
    fn fixture(n: usize, corrections: (f32, f32)) -> (Vec<f32>, Vec<f32>, Update) {
        let start = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let grads = (0..n).map(|i| ((i * 104_729) % 997) as f32 * 1e-3 - 0.4).collect();
        let adamw = AdamW { weight_decay: 0.01, ..AdamW::default() };
        (start, grads, Update { adamw, lr: 1e-3, correction1: corrections.0, correction2: corrections.1 })
    }

    /// A tensor large enough to be split over the pool gets exactly the
    /// update of one pass over it.
    #[test]
    fn a_split_update_equals_one_pass() {
        let n = 3 * PARALLEL_MIN + 17;
        let (start, grads, update) = fixture(n, (0.1, 0.001));
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

    /// The AVX2 compilation of the 8-bit update (taken on this CPU when it
    /// has AVX2) and the portable one give the same bits.
    #[test]
    fn both_compilations_of_the_8bit_update_agree() {
        let n = 5 * moments8::BLOCK + 77;
        let (start, grads, update) = fixture(n, (0.19, 0.002));
        let mut runs = Vec::new();
        for portable in [true, false] {
            let (mut values, mut m, mut v) = (start.clone(), Blockwise8::zeros(n), Blockwise8::zeros(n));
            for _ in 0..3 {
                let (mc, vc) = ((&mut m.codes[..], &mut m.absmax[..]), (&mut v.codes[..], &mut v.absmax[..]));
                if portable {
                    update.run_8bit_portable(&mut values, &grads, mc, vc);
                } else {
                    update.run_8bit(&mut values, &grads, mc, vc);
                }
            }
            runs.push((values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), m, v));
        }
        assert!(runs[0] == runs[1]);
    }

    /// On a noisy quadratic, AdamW with 8-bit moments takes nearly the
    /// steps of AdamW with f32 moments, and both reach the minimum.
    #[test]
    fn eight_bit_moments_follow_f32_adamw() {
        let n = 3 * moments8::MIN_VALUES + 5;
        let target: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 2e-3 - 1.0).collect();
        let mut finals = Vec::new();
        for state in [StateBits::F32, StateBits::Int8] {
            let adamw = AdamW { state, ..AdamW::default() };
            let (mut w, mut adam) = (vec![0f32; n], AdamState::default());
            for step in 0..300u32 {
                let noise = |i: usize| ((i as u32 ^ step).wrapping_mul(2_654_435_761) >> 16) as f32 / 65536.0 - 0.5;
                let grad: Vec<f32> =
                    w.iter().zip(&target).enumerate().map(|(i, (w, t))| w - t + 0.1 * noise(i)).collect();
                adamw.step(&mut adam, &mut [Param { value: &mut w, grad: &grad }], 0.02);
            }
            assert!(matches!(adam.moments[0], Moments::F32 { .. }) == (state == StateBits::F32));
            finals.push(w);
        }
        let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
        let scale = distance(&target, &vec![0.0; n]);
        assert!(distance(&finals[0], &target) < 0.05 * scale, "f32 reaches the minimum");
        assert!(distance(&finals[1], &target) < 0.05 * scale, "8-bit reaches the minimum");
        assert!(distance(&finals[0], &finals[1]) < 0.02 * scale, "and the two runs stay together");
    }

    /// The settings' debug form is a run's fingerprint: with f32 moments
    /// it reads as before the moments' width was a setting.
    #[test]
    fn f32_adamw_prints_as_before_the_state_setting() {
        assert_eq!(
            format!("{:?}", AdamW::default()),
            "AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }"
        );
        let eight_bit = AdamW { state: StateBits::Int8, ..AdamW::default() };
        assert!(format!("{eight_bit:?}").ends_with("weight_decay: 0.0, state: Int8 }"));
    }
}
