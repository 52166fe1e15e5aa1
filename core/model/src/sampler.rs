//! Turning logits into the next token: repetition, presence and frequency
//! penalties, temperature, top-k, top-p, and a seeded generator so runs
//! repeat exactly.

use crate::error::{ModelError, Result};

/// How to pick tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1.0: off).
    pub top_p: f32,
    /// Divide positive / multiply negative logits of seen tokens (1.0: off).
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated at least once
    /// (OpenAI's `presence_penalty`, -2..=2; 0: off).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated
    /// (OpenAI's `frequency_penalty`, -2..=2; 0: off).
    pub frequency_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values outside their meaningful ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidParameter(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty must be > 0, got {}", self.repetition_penalty));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return bad(format!("{name} must be in [-2, 2], got {value}"));
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and good enough to draw tokens.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A stateful sampler for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// How often each token was sampled (for presence and frequency penalties).
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = Rng(params.seed);
        Ok(Sampler { params, rng, counts: std::collections::HashMap::new() })
    }

    /// Picks the next token from `logits` (modified in place) given the
    /// tokens of the sequence so far (the prompt's included; the presence
    /// and frequency penalties count only what this sampler picked).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        apply_repetition_penalty(logits, history, self.params.repetition_penalty);
        self.apply_occurrence_penalties(logits);
        let id = self.pick(logits);
        *self.counts.entry(id).or_insert(0) += 1;
        id
    }

    /// OpenAI's presence and frequency penalties over the tokens sampled so far.
    fn apply_occurrence_penalties(&self, logits: &mut [f32]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if presence == 0.0 && frequency == 0.0 {
            return;
        }
        for (&token, &count) in &self.counts {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit -= presence + frequency * count as f32;
            }
        }
    }

    /// Greedy, or a draw from the tempered, top-k and top-p filtered distribution.
    fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|(_, l)| ((l - max) * inv_t).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let keep = nucleus_len(&probs, self.params.top_p);
        let mass: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f32() * mass;
        for (i, p) in probs[..keep].iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return candidates[i].0;
            }
        }
        candidates[keep - 1].0
    }
}

/// Number of leading (sorted) probabilities needed to reach `top_p`.
fn nucleus_len(sorted_probs: &[f32], top_p: f32) -> usize {
    if top_p >= 1.0 {
        return sorted_probs.len();
    }
    let mut cumulative = 0.0;
    for (i, p) in sorted_probs.iter().enumerate() {
        cumulative += p;
        if cumulative >= top_p {
            return i + 1;
        }
    }
    sorted_probs.len()
}

fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    for (l, s) in logits.iter_mut().zip(seen) {
        if s {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` most likely tokens with their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    order.truncate(k);
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    order.into_iter().map(|t| (t, logits[t as usize] - log_sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy_picks(params: SamplingParams, steps: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(params).unwrap();
        (0..steps).map(|_| sampler.sample(&mut [1.0, 0.6, 0.0], &[])).collect()
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens() {
        let plain = SamplingParams::default();
        assert_eq!(greedy_picks(plain.clone(), 4), [0, 0, 0, 0]);
        // Presence: a token seen once loses 0.5 for good, however often it
        // comes back: 1.0 | 0.5 vs 0.6 | 0.5 vs 0.1 …
        let presence = SamplingParams { presence_penalty: 0.5, ..plain.clone() };
        assert_eq!(greedy_picks(presence, 4), [0, 1, 0, 0]);
        // Frequency: each use costs 0.3 more: 1.0, 0.7 | 0.6, 0.4 | 0.3 …
        let frequency = SamplingParams { frequency_penalty: 0.3, ..plain.clone() };
        assert_eq!(greedy_picks(frequency, 4), [0, 0, 1, 0]);
        let out_of_range = SamplingParams { frequency_penalty: 2.5, ..plain };
        assert!(Sampler::new(out_of_range).is_err());
    }
}
