//! What the kernel test files share.
#![allow(dead_code)] // each test binary uses its own part

use tailor_tensor::DType;

/// Deterministic pseudo-random normals (no test dependency on `rand`).
pub struct Rng(pub u64);

impl Rng {
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// Every GGUF block format.
pub fn quantized_formats() -> Vec<DType> {
    DType::ALL.into_iter().filter(|d| d.is_gguf_block()).collect()
}

/// Asserts a device's `got` matches the CPU's `want` within `tolerance`
/// relative to `scale[i]` (the magnitude the value was summed from).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!((g - w).abs() <= tolerance * s.max(1e-3), "{what}[{i}]: GPU {g}, CPU {w} (scale {s})");
    }
}
