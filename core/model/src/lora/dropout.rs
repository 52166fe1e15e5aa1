//! PEFT's `lora_dropout` for training: the LoRA path of a projection sees
//! `x ⊙ m / (1 − p)` while the frozen base sees `x` itself, with a mask `m`
//! of its own for every module and pass (PEFT: one `nn.Dropout` per module).
//!
//! The mask is not stored: each element's keep/drop draw comes from a
//! counter-based hash of (seed, layer, projection, element index), so the
//! backward, and a forward recomputed for activation checkpointing, draw
//! the very same mask, and a resumed run the same as an uninterrupted one.

use crate::error::{ModelError, Result};
use crate::names::Proj;

/// Dropout on the LoRA inputs of one training pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraDropout {
    /// An element is dropped when its 16-bit draw is below this
    /// (`p · 65536`, rounded).
    threshold: u32,
    /// `1 / (1 − p)` for the quantised `p`: the kept elements' factor.
    keep_scale: f32,
    /// The pass's seed (a run's seed mixed with its step and micro-batch).
    seed: u64,
}

impl LoraDropout {
    /// Dropout with probability `p` (`0 ≤ p < 1`) for the pass `seed`;
    /// `None` when `p` is 0 (no dropout, no cost).
    pub fn new(p: f64, seed: u64) -> Result<Option<LoraDropout>> {
        if !(0.0..1.0).contains(&p) {
            return Err(ModelError::InvalidParameter(format!("lora dropout {p} must be in [0, 1)")));
        }
        let threshold = (p * 65536.0).round() as u32;
        if threshold == 0 {
            return Ok(None);
        }
        let threshold = threshold.min(65535);
        let keep_scale = (65536.0 / f64::from(65536 - threshold)) as f32;
        Ok(Some(LoraDropout { threshold, keep_scale, seed }))
    }

    /// `out = x ⊙ m / (1 − p)` with the mask of projection `proj` of `layer`
    /// (`x` and `out` of one length). Applied to a gradient it is also the
    /// backward of the same dropout.
    pub fn apply(&self, layer: usize, proj: Proj, x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), out.len(), "dropout input and output differ in length");
        let stream = self.seed ^ ((layer as u64) << 40) ^ ((proj.index() as u64) << 32);
        for (chunk, (xs, outs)) in x.chunks(4).zip(out.chunks_mut(4)).enumerate() {
            let bits = mix(stream.wrapping_add((chunk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            for (lane, (&v, o)) in xs.iter().zip(outs.iter_mut()).enumerate() {
                let draw = ((bits >> (16 * lane)) & 0xFFFF) as u32;
                *o = if draw < self.threshold { 0.0 } else { v * self.keep_scale };
            }
        }
    }
}

/// The seed of one pass: a run's seed, its optimizer step and micro-batch.
pub fn dropout_seed(run_seed: u64, step: usize, micro_batch: usize) -> u64 {
    mix(mix(run_seed ^ 0xD120_0C7E) ^ ((step as u64) << 20) ^ micro_batch as u64)
}

/// SplitMix64's finaliser: a bijective mix of all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_about_p_and_keeps_the_expectation() {
        let dropout = LoraDropout::new(0.1, 7).expect("valid").expect("not zero");
        let x = vec![1.0f32; 100_000];
        let mut out = vec![0f32; x.len()];
        dropout.apply(3, Proj::V, &x, &mut out);
        let dropped = out.iter().filter(|&&v| v == 0.0).count() as f64 / x.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005, "dropped {dropped}");
        let mean = out.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn masks_repeat_per_module_and_differ_across_modules_and_passes() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 + 1.0).collect();
        let run = |p: f64, seed: u64, layer: usize, proj: Proj| {
            let mut out = vec![0f32; x.len()];
            LoraDropout::new(p, seed).expect("valid").expect("not zero").apply(layer, proj, &x, &mut out);
            out
        };
        assert_eq!(run(0.5, 1, 2, Proj::Q), run(0.5, 1, 2, Proj::Q));
        assert_ne!(run(0.5, 1, 2, Proj::Q), run(0.5, 1, 2, Proj::K));
        assert_ne!(run(0.5, 1, 2, Proj::Q), run(0.5, 1, 3, Proj::Q));
        assert_ne!(run(0.5, 1, 2, Proj::Q), run(0.5, 2, 2, Proj::Q));
        assert_ne!(dropout_seed(1, 2, 0), dropout_seed(1, 2, 1));
        assert_ne!(dropout_seed(1, 2, 0), dropout_seed(1, 3, 0));
        assert!(LoraDropout::new(0.0, 1).expect("valid").is_none());
        assert!(LoraDropout::new(1.0, 1).is_err());
        assert!(LoraDropout::new(f64::NAN, 1).is_err());
    }
}
