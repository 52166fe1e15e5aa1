//! Which extra copy of a quantized matrix the CPU kernels read.
//!
//! Two layouts serve quantized weights beside GGUF's row-at-a-time one:
//! the AVX-512 VNNI pair-packed rows of [`super::packed`] (q4_0, q4_1,
//! q8_0) and the eight-row interleaved groups of [`super::interleaved`]
//! (every GGUF block type). Which one pays is a matter of
//! measurement on a CPU, not of its vendor, so the choice is made here once
//! per process: by default the fastest measured for the features present,
//! or forced with
//! `TAILOR_WEIGHT_LAYOUT` (`auto`, `interleaved`, `packed`, `rows`) so
//! benchmarks and tests can run every path on any machine. A forced layout
//! the CPU cannot run falls back to the one it can, never to a fault.

use std::sync::OnceLock;

/// The environment variable that forces a layout.
pub const LAYOUT_ENV: &str = "TAILOR_WEIGHT_LAYOUT";

/// The extra copy quantized matrices get at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// None: GGUF's rows, read by the row kernels (and dequantized for prefill).
    Rows,
    /// AVX-512 VNNI pair-packed rows (q4_0, q4_1, q8_0 only).
    Packed,
    /// Eight-row interleaved groups (AVX2 kernels, or their AVX-512 VNNI form).
    Interleaved,
}

impl WeightLayout {
    /// The layout this process uses (read from the environment once).
    pub fn chosen() -> WeightLayout {
        static CHOSEN: OnceLock<WeightLayout> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let requested = std::env::var(LAYOUT_ENV).unwrap_or_default();
            let known = ["", "auto"].contains(&requested.trim()) || Self::parse(&requested).is_some();
            if !known {
                eprintln!("{LAYOUT_ENV}={requested:?} is not rows, packed, interleaved or auto: using auto");
            }
            Self::parse(&requested).unwrap_or_else(Self::fastest).runnable()
        })
    }

    /// The layout `name` forces (`None` for `auto`, empty or unknown).
    pub fn parse(name: &str) -> Option<WeightLayout> {
        match name.trim().to_ascii_lowercase().as_str() {
            "rows" => Some(WeightLayout::Rows),
            "packed" => Some(WeightLayout::Packed),
            "interleaved" => Some(WeightLayout::Interleaved),
            _ => None,
        }
    }

    /// The default: interleaved wherever AVX2 runs, VNNI or not. Measured
    /// on AMD EPYC (Zen 4, AVX-512 VNNI), 1B-shaped model, 2 threads,
    /// `tailor bench` 128-token prompt + 32 tokens, packed → interleaved:
    /// q4_0 prefill 30 → 128 tok/s, decode 20 → 37; q8_0 53 → 74 and
    /// 18.5 → 24; q4_k (no packed form: rows) 46 → 100 and 21 → 32.
    pub fn fastest() -> WeightLayout {
        if super::DotImpl::detect() == super::DotImpl::Avx2 {
            WeightLayout::Interleaved
        } else {
            WeightLayout::Rows
        }
    }

    /// This layout if this CPU runs its kernels, else the best it does run.
    pub fn runnable(self) -> WeightLayout {
        let avx2 = super::DotImpl::detect() == super::DotImpl::Avx2;
        match self {
            WeightLayout::Packed if super::packed::vnni_supported() => WeightLayout::Packed,
            WeightLayout::Interleaved | WeightLayout::Packed if avx2 => WeightLayout::Interleaved,
            _ => WeightLayout::Rows,
        }
    }

    /// Its name, as `TAILOR_WEIGHT_LAYOUT` spells it.
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Rows => "rows",
            WeightLayout::Packed => "packed",
            WeightLayout::Interleaved => "interleaved",
        }
    }
}
