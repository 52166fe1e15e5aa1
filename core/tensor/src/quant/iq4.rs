//! iq4_nl and iq4_xs: 4-bit indices into one fixed non-linear table of
//! sixteen i8 values (denser near zero, where weights are), as ggml's
//! `block_iq4_nl` (32 elements, one f16 scale) and `block_iq4_xs` (256
//! elements, a 6-bit scale per 32 of them) lay them out. Index pairing is
//! q4_0's: byte `j` of a 32-element run holds element `j` in its low
//! nibble and `j + 16` in its high one.
//!
//! The quantizers are tailor's own (no importance matrix): the value of
//! largest magnitude sets the scale, each element takes the nearest table
//! value, and iq4_nl's scale is then refitted by least squares.

use super::f16_at;
use super::k_quants::signed_absmax;
use half::f16;

/// The table both formats index (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The table value of element `j` (0..32) of a 16-byte run of indices.
pub(crate) fn iq4_value(qs: &[u8], j: usize) -> i32 {
    let index = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    IQ4_VALUES[index as usize] as i32
}

/// The signed scale (−32..=31) of 32-element sub-block `i` of an iq4_xs
/// block: four low bits from `scales_l`, two high bits from `scales_h`.
pub(crate) fn iq4_xs_scale(b: &[u8], i: usize) -> i32 {
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + i / 2] >> (4 * (i % 2))) & 0x0F;
    let high = ((scales_h >> (2 * i)) & 3) as u8;
    (low | (high << 4)) as i32 - 32
}

// ---- iq4_nl: f16 d | u8 qs[16] ----

pub(super) fn dequant_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in y.iter_mut().enumerate() {
        *v = d * iq4_value(&b[2..18], j) as f32;
    }
}

pub(super) fn quant_iq4_nl(x: &[f32], out: &mut Vec<u8>) {
    let step = signed_absmax(x) / IQ4_VALUES[0] as f32;
    let indices = nearest_indices(x, step);
    // Least squares over the chosen indices: Σ x·v / Σ v².
    let (xv, vv) = x.iter().zip(&indices).fold((0f32, 0f32), |(xv, vv), (&v, &i)| {
        let level = IQ4_VALUES[i as usize] as f32;
        (xv + v * level, vv + level * level)
    });
    let d = if vv > 0.0 { xv / vv } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    push_indices(&indices, out);
}

// ---- iq4_xs: f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128] ----

pub(super) fn dequant_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, sub) in y.chunks_exact_mut(32).enumerate() {
        let step = d * iq4_xs_scale(b, i) as f32;
        let qs = &b[8 + 16 * i..24 + 16 * i];
        for (j, v) in sub.iter_mut().enumerate() {
            *v = step * iq4_value(qs, j) as f32;
        }
    }
}

pub(super) fn quant_iq4_xs(x: &[f32], out: &mut Vec<u8>) {
    let steps: Vec<f32> = x.chunks_exact(32).map(|s| signed_absmax(s) / IQ4_VALUES[0] as f32).collect();
    let d16 = f16::from_f32(signed_absmax(&steps) / -32.0);
    let d = d16.to_f32();
    let mut block = [0u8; 136];
    block[0..2].copy_from_slice(&d16.to_le_bytes());
    let mut scales_h = 0u16;
    let mut quants = Vec::with_capacity(128);
    for (i, (sub, &step)) in x.chunks_exact(32).zip(&steps).enumerate() {
        let scale = if d != 0.0 { ((step / d).round() as i32).clamp(-32, 31) } else { 0 };
        let stored = (scale + 32) as u8;
        block[4 + i / 2] |= (stored & 0x0F) << (4 * (i % 2));
        scales_h |= ((stored >> 4) as u16) << (2 * i);
        push_indices(&nearest_indices(sub, d * scale as f32), &mut quants);
    }
    block[2..4].copy_from_slice(&scales_h.to_le_bytes());
    block[8..].copy_from_slice(&quants);
    out.extend_from_slice(&block);
}

/// Each value's nearest table entry at `step` per unit.
fn nearest_indices(x: &[f32], step: f32) -> Vec<u8> {
    let inverse = if step != 0.0 { 1.0 / step } else { 0.0 };
    x.iter()
        .map(|&v| {
            let target = v * inverse;
            // The table is sorted: count the midpoints below the target.
            IQ4_VALUES.windows(2).filter(|pair| target > (pair[0] as f32 + pair[1] as f32) / 2.0).count() as u8
        })
        .collect()
}

/// Appends 32 indices, element `j` in the low nibble of byte `j % 16`
/// (`j < 16`) or its high nibble.
fn push_indices(indices: &[u8], out: &mut Vec<u8>) {
    for run in indices.chunks_exact(32) {
        out.extend((0..16).map(|j| run[j] | (run[j + 16] << 4)));
    }
}
