//! A small, seeded mutation fuzzer for the file readers: each target runs
//! for a time budget (`TAILOR_FUZZ_SECS`, default 5 s; CI sets more) on
//! mutations of a valid input (bit flips, interesting integers written over
//! counts and offsets, truncation, duplicated spans), and fails on the first
//! input that panics, saving it for a rerun. Errors are the expected outcome;
//! panics and hangs are the bugs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: deterministic for a seed.
pub struct Mutator(u64);

impl Mutator {
    /// A mutator seeded with `seed` (non-zero).
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `input` with one to four mutations.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if out.is_empty() {
                out.push(0);
            }
            let at = self.below(out.len());
            match self.below(5) {
                0 => out[at] ^= 1 << self.below(8),
                1 => {
                    const INTERESTING: [u64; 7] = [0, 1, 0x7f, 0xffff_ffff, 0x8000_0000_0000_0000, u64::MAX, 1 << 40];
                    let value = INTERESTING[self.below(INTERESTING.len())].to_le_bytes();
                    let width = [1, 2, 4, 8][self.below(4)];
                    for (i, b) in value.iter().take(width).enumerate() {
                        if let Some(slot) = out.get_mut(at + i) {
                            *slot = *b;
                        }
                    }
                }
                2 => out.truncate(at),
                3 => {
                    let len = self.below(64).min(out.len() - at);
                    let span = out[at..at + len].to_vec();
                    let to = self.below(out.len());
                    out.splice(to..to, span);
                }
                _ => out[at] = self.next() as u8,
            }
        }
        out
    }
}

/// The time budget of one target.
pub fn budget() -> Duration {
    let secs = std::env::var("TAILOR_FUZZ_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

/// Runs `target` on mutations of `seed_input` until the budget is spent;
/// returns the number of executions. A panic fails the test, naming the
/// input saved under `crashes`.
pub fn fuzz(name: &str, seed_input: &[u8], crashes: &Path, target: &dyn Fn(&[u8])) -> usize {
    quiet_caught_panics();
    let mut mutator = Mutator::new(0x5eed ^ name.len() as u64);
    let started = Instant::now();
    let mut executions = 0;
    target(seed_input); // the valid input itself must not panic either
    while started.elapsed() < budget() {
        let input = mutator.mutate(seed_input);
        executions += 1;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input))).is_err() {
            let saved: PathBuf = crashes.join(format!("{name}-crash-{executions}"));
            std::fs::create_dir_all(crashes).ok();
            std::fs::write(&saved, &input).ok();
            panic!("fuzz target {name}: input {executions} panicked; saved as {}", saved.display());
        }
    }
    println!("fuzz {name}: {executions} executions in {:?}, no panic", started.elapsed());
    executions
}

/// Panics that the code under test catches itself (a library's, turned into
/// a typed error) would print thousands of lines: only the fuzzer's own
/// verdicts and test assertions are printed.
fn quiet_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let from_tests = info.location().is_some_and(|l| l.file().contains("tests/"));
            if from_tests {
                default(info);
            }
        }));
    });
}
