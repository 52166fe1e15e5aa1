//! AdamW's moments in 8 bits (`--optim adamw-8bit`), the idea of
//! bitsandbytes' 8-bit optimizers: each moment tensor is cut into blocks of
//! [`BLOCK`] values, each block stores its largest magnitude in f32 and
//! every value as an 8-bit code relative to it. The codes are small
//! floating-point numbers (an exponent and 3 mantissa bits), so a value a
//! thousand times smaller than its block's largest keeps the same relative
//! precision (±6 %) as the largest; the second moment, which only grows
//! through squares, has one more exponent bit instead of a sign. Two bytes
//! per parameter instead of eight: a full fine-tune holds weights,
//! gradients and moments in 10 bytes per parameter instead of 16.
//!
//! Each step decodes a block, runs the exact f32 update on it, and stores
//! the new moments' codes: the weights move as with f32 moments up to the
//! codes' rounding of the moments carried between steps.

/// Values per block (one f32 scale each: 1/64 byte per value).
pub const BLOCK: usize = 256;

/// Tensors with fewer values keep f32 moments (norm weights): their
/// memory is nothing, and bitsandbytes keeps them in 32 bits too.
pub const MIN_VALUES: usize = 4096;

/// A moment tensor in 8 bits: one code per value, one scale per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    /// One code per value.
    pub codes: Vec<u8>,
    /// Each block's largest magnitude.
    pub absmax: Vec<f32>,
}

impl Blockwise8 {
    /// All zeros, for `len` values.
    pub fn zeros(len: usize) -> Blockwise8 {
        Blockwise8 { codes: vec![0; len], absmax: vec![0.0; len.div_ceil(BLOCK)] }
    }
}

/// An 8-bit code: a sign bit (or not), exponent bits, 3 mantissa bits.
/// Code 0 is zero; magnitude code `e·8 + f` (other than 0) is
/// `2^(e − bias)·(1 + f/8)` times the block's scale, `bias` the largest
/// exponent, so that the scale itself is `e = bias, f = 0`.
#[derive(Debug, Clone, Copy)]
pub struct Code {
    exponent_bits: u32,
    signed: bool,
}

const MANTISSA_BITS: u32 = 3;

/// The first moment's code: a sign, 4 exponent bits (2⁻¹⁵ of the block's
/// largest and below round to zero).
pub const FIRST: Code = Code { exponent_bits: 4, signed: true };

/// The second moment's code: 5 exponent bits, no sign (values are never
/// negative); a positive value never rounds to zero, so no update divides
/// by a second moment that vanished in rounding.
pub const SECOND: Code = Code { exponent_bits: 5, signed: false };

impl Code {
    fn bias(self) -> i32 {
        (1 << self.exponent_bits) - 1
    }

    fn magnitude_mask(self) -> u32 {
        (1 << (self.exponent_bits + MANTISSA_BITS)) - 1
    }

    /// The code of `x` in a block scaled by `1/inverse_scale`.
    #[inline(always)]
    pub fn encode(self, x: f32, inverse_scale: f32) -> u8 {
        let u = (x.abs() * inverse_scale).to_bits();
        // Round to nearest on the 3 kept mantissa bits; a carry moves the exponent.
        let rounded = u + (1 << (22 - MANTISSA_BITS));
        let exponent = (rounded >> 23) as i32 - 127 + self.bias();
        let fraction = (rounded >> (23 - MANTISSA_BITS)) & ((1 << MANTISSA_BITS) - 1);
        let mut magnitude = if exponent > self.bias() {
            self.magnitude_mask()
        } else if exponent < 0 {
            0
        } else {
            ((exponent as u32) << MANTISSA_BITS) | fraction
        };
        if magnitude == 0 && !self.signed && u != 0 {
            magnitude = 1;
        }
        let sign = if self.signed && x.is_sign_negative() && magnitude != 0 { 1 << 7 } else { 0 };
        (magnitude | sign) as u8
    }

    /// The value of `code` in a block of scale `scale`.
    #[inline(always)]
    pub fn decode(self, code: u8, scale: f32) -> f32 {
        let magnitude = code as u32 & self.magnitude_mask();
        let exponent = (magnitude >> MANTISSA_BITS) as i32 - self.bias() + 127;
        let fraction = magnitude & ((1 << MANTISSA_BITS) - 1);
        let value = f32::from_bits(((exponent as u32) << 23) | (fraction << (23 - MANTISSA_BITS)));
        let value = if magnitude == 0 { 0.0 } else { value * scale };
        if self.signed && code & 0x80 != 0 {
            -value
        } else {
            value
        }
    }

    /// `values` (at most [`BLOCK`]) as codes; returns the block's scale.
    #[inline(always)]
    pub fn encode_block(self, values: &[f32], codes: &mut [u8]) -> f32 {
        let absmax = values.iter().fold(0f32, |max, v| max.max(v.abs()));
        let inverse = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
        codes.iter_mut().zip(values).for_each(|(c, &v)| *c = self.encode(v, inverse));
        absmax
    }

    /// `codes` of a block of scale `scale` into `values`.
    #[inline(always)]
    pub fn decode_block(self, codes: &[u8], scale: f32, values: &mut [f32]) {
        values.iter_mut().zip(codes).for_each(|(v, &c)| *v = self.decode(c, scale));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_to_a_value_that_encodes_back_to_it() {
        for code in [FIRST, SECOND] {
            for c in 0..=255u8 {
                if code.signed && c == 0x80 {
                    continue; // −0 is written as 0
                }
                if !code.signed || c & 0x7f != 0 || c == 0 {
                    let value = code.decode(c, 1.0);
                    assert!(value.abs() <= 2.0, "{c}: {value}");
                    assert_eq!(code.encode(value, 1.0), c, "{code:?} {c} = {value}");
                }
            }
        }
    }

    #[test]
    fn a_block_keeps_each_value_within_its_relative_precision() {
        let values: Vec<f32> = (0..BLOCK).map(|i| (i as f32 * 0.37).sin() * 10f32.powi(-(i as i32 % 4))).collect();
        for code in [FIRST, SECOND] {
            let values: Vec<f32> = values.iter().map(|v| if code.signed { *v } else { v.abs() }).collect();
            let mut codes = vec![0u8; BLOCK];
            let scale = code.encode_block(&values, &mut codes);
            let mut back = vec![0f32; BLOCK];
            code.decode_block(&codes, scale, &mut back);
            for (v, b) in values.iter().zip(&back) {
                // Half a step of 3 mantissa bits: 1/16 of the value; below 2^-15 of the scale, absolute.
                assert!((v - b).abs() <= v.abs() / 16.0 + scale * 2f32.powi(-15), "{v} -> {b}");
            }
            assert_eq!(back.iter().fold(0f32, |m, b| m.max(b.abs())), scale, "the largest is exact");
        }
    }

    #[test]
    fn a_tiny_positive_second_moment_never_rounds_to_zero() {
        assert_ne!(SECOND.encode(1e-30, 1.0), 0);
        assert_eq!(SECOND.encode(0.0, 1.0), 0);
        assert_eq!(FIRST.encode(1e-30, 1.0), 0);
        assert_eq!(FIRST.encode(-1e-30, 1.0), 0, "no negative zero code");
    }
}
