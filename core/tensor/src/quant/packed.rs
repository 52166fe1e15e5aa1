//! Pair-packed weights for the AVX-512 VNNI decode path.
//!
//! GGUF stores each 32-element block with its scales in front, which makes a
//! SIMD loop unpack one block at a time. At load time, rows of q4_0, q4_1
//! and q8_0 are rewritten two blocks at a time as
//! `[d0 d1 m0 m1 : f16 × 4][quants of both blocks]`, with the quants laid
//! out to match [`ActPair`]: `[b0[0..16] b1[0..16] b0[16..32] b1[16..32]]`.
//! Then one 512-bit `vpdpbusd` multiplies two blocks, and their four scales
//! convert in one instruction. Each block decodes as `d·q + m` with `q`
//! unsigned (`q4_0`: `m = −8d`; `q8_0`: `q = w + 128`, `m = −128d`), so one
//! kernel serves all three formats. Dequantization stays on the GGUF bytes.

use super::{f16_at, BlockQ8, QK};
use crate::DType;
use half::f16;

/// Two activation blocks in the layout pair-packed weights expect.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub struct ActPair {
    /// Quants: `[a0[0..16] a1[0..16] a0[16..32] a1[16..32]]`.
    pub qs: [i8; 64],
    /// The scale of the block each lane of a `vpdpbusd` result belongs to
    /// (`d0` in lanes 0-3 and 8-11, `d1` in 4-7 and 12-15).
    pub lanes: [f32; 16],
    /// `[d0, d1, s0, s1]`: scales and scaled sums of the two blocks.
    pub scales: [f32; 4],
}

/// How the quants of a pair are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    /// 4-bit quants, two per byte: 32 bytes per pair.
    Nibbles,
    /// 8-bit unsigned quants: 64 bytes per pair.
    Bytes,
}

impl PackedKind {
    /// Bytes per pair of blocks, scales included.
    pub fn pair_bytes(self) -> usize {
        match self {
            PackedKind::Nibbles => 8 + 32,
            PackedKind::Bytes => 8 + 64,
        }
    }
}

/// A matrix's rows in pair-packed form.
#[derive(Debug, Clone)]
pub struct PackedRows {
    /// Quant storage kind.
    pub kind: PackedKind,
    /// Bytes per row.
    pub row_bytes: usize,
    /// The packed rows.
    pub data: Vec<u8>,
    /// Every block's offset `m` again, as f32, `blocks` per row: the SIMD
    /// kernel adds `Σ m·s` once per row and token from these.
    pub offsets: Vec<f32>,
    /// Blocks per row.
    pub blocks: usize,
}

impl PackedRows {
    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Block offsets of row `r`.
    pub fn row_offsets(&self, r: usize) -> &[f32] {
        &self.offsets[r * self.blocks..(r + 1) * self.blocks]
    }
}

/// Packs rows of `dtype` (`rows × row_len` elements) if the format and row
/// length allow it: q4_0, q4_1, q8_0 with an even number of blocks per row.
pub fn pack_rows(dtype: DType, bytes: &[u8], row_len: usize) -> Option<PackedRows> {
    let kind = match dtype {
        DType::Q4_0 | DType::Q4_1 => PackedKind::Nibbles,
        DType::Q8_0 => PackedKind::Bytes,
        _ => return None,
    };
    if !row_len.is_multiple_of(2 * QK) {
        return None;
    }
    let pairs = row_len / (2 * QK);
    let block = dtype.type_size();
    let mut data = Vec::with_capacity(bytes.len() / (2 * block) * kind.pair_bytes());
    let mut offsets = Vec::with_capacity(bytes.len() / block);
    for pair in bytes.chunks_exact(2 * block) {
        let (b0, b1) = pair.split_at(block);
        pack_pair(dtype, b0, b1, &mut data);
        offsets.extend([b0, b1].map(|b| scale_and_offset(dtype, b).1.to_f32()));
    }
    Some(PackedRows { kind, row_bytes: pairs * kind.pair_bytes(), data, offsets, blocks: 2 * pairs })
}

/// Scale `d` and offset `m` of one block in the `d·q + m` form.
fn scale_and_offset(dtype: DType, b: &[u8]) -> (f16, f16) {
    let d = f16::from_le_bytes([b[0], b[1]]);
    match dtype {
        DType::Q4_1 => (d, f16::from_le_bytes([b[2], b[3]])),
        // Multiplying an f16 by a power of two is exact (barring overflow,
        // which a real scale never reaches).
        DType::Q4_0 => (d, f16::from_f32(-8.0 * f16_at(b, 0))),
        _ => (d, f16::from_f32(-128.0 * f16_at(b, 0))),
    }
}

fn pack_pair(dtype: DType, b0: &[u8], b1: &[u8], out: &mut Vec<u8>) {
    let (d0, m0) = scale_and_offset(dtype, b0);
    let (d1, m1) = scale_and_offset(dtype, b1);
    for v in [d0, d1, m0, m1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    match dtype {
        DType::Q4_1 => {
            out.extend_from_slice(&b0[4..20]);
            out.extend_from_slice(&b1[4..20]);
        }
        DType::Q4_0 => {
            out.extend_from_slice(&b0[2..18]);
            out.extend_from_slice(&b1[2..18]);
        }
        _ => {
            let q = |b: &[u8], i: usize| (b[2 + i] as i8 as i16 + 128) as u8;
            out.extend((0..16).map(|i| q(b0, i)));
            out.extend((0..16).map(|i| q(b1, i)));
            out.extend((16..32).map(|i| q(b0, i)));
            out.extend((16..32).map(|i| q(b1, i)));
        }
    }
}

/// Rearranges quantized activations into pairs (`acts.len()` is even).
pub fn pair_activations(acts: &[BlockQ8], out: &mut Vec<ActPair>) {
    out.clear();
    out.extend(acts.chunks_exact(2).map(|p| {
        let mut qs = [0i8; 64];
        qs[..16].copy_from_slice(&p[0].qs[..16]);
        qs[16..32].copy_from_slice(&p[1].qs[..16]);
        qs[32..48].copy_from_slice(&p[0].qs[16..]);
        qs[48..].copy_from_slice(&p[1].qs[16..]);
        let (d0, d1) = (p[0].d, p[1].d);
        let lanes = [d0, d0, d0, d0, d1, d1, d1, d1, d0, d0, d0, d0, d1, d1, d1, d1];
        ActPair { qs, lanes, scales: [d0, d1, p[0].s, p[1].s] }
    }));
}

/// The quant of element `i` (0..64 in pair order) of a packed pair.
fn packed_quant(kind: PackedKind, quants: &[u8], i: usize) -> i32 {
    match kind {
        PackedKind::Bytes => quants[i] as i32,
        PackedKind::Nibbles if i < 32 => (quants[i] & 0x0F) as i32,
        PackedKind::Nibbles => (quants[i - 32] >> 4) as i32,
    }
}

/// Scalar reference of the packed dot product.
pub fn dot_packed_scalar(kind: PackedKind, row: &[u8], acts: &[ActPair]) -> f32 {
    let mut total = 0f32;
    for (pair, a) in row.chunks_exact(kind.pair_bytes()).zip(acts) {
        let (d, m) = ([f16_at(pair, 0), f16_at(pair, 2)], [f16_at(pair, 4), f16_at(pair, 6)]);
        let mut isum = [0i32; 2];
        for i in 0..64 {
            // Pair order: 16 of block 0, 16 of block 1, then again.
            isum[(i / 16) % 2] += packed_quant(kind, &pair[8..], i) * a.qs[i] as i32;
        }
        for b in 0..2 {
            total += d[b] * a.scales[b] * isum[b] as f32 + m[b] * a.scales[2 + b];
        }
    }
    total
}

/// True when this CPU runs the VNNI kernel (detected once).
pub fn vnni_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(detect_vnni)
}

fn detect_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Row `r` of packed rows with the activations of tokens: `pairs` per token
/// and the blocks' scaled sums `s` (two per pair) per token.
#[derive(Clone, Copy)]
pub struct PackedDot<'a> {
    /// Quant storage kind.
    pub kind: PackedKind,
    /// The packed row.
    pub row: &'a [u8],
    /// Its block offsets ([`PackedRows::row_offsets`]).
    pub offsets: &'a [f32],
    /// Paired activations, token after token.
    pub acts: &'a [ActPair],
    /// Block sums `s` of the activations, token after token.
    pub sums: &'a [f32],
    /// Pairs per token.
    pub pairs: usize,
}

/// Dot product of a packed row with one token's paired activations: VNNI
/// when the CPU has it, else the scalar reference.
pub fn dot_packed(dot: PackedDot<'_>) -> f32 {
    let mut out = [0f32];
    dot_packed_tokens(dot, &mut out);
    out[0]
}

/// Block sums `s` of quantized activations, in the order [`PackedDot`] takes.
pub fn block_sums(acts: &[BlockQ8], out: &mut Vec<f32>) {
    out.extend(acts.iter().map(|b| b.s));
}

/// Dot products of one packed row with the activations of `out.len()`
/// tokens. The row is loaded and unpacked once per group of tokens; each
/// token's result is exactly what [`dot_packed`] gives it.
pub fn dot_packed_tokens(dot: PackedDot<'_>, out: &mut [f32]) {
    let PackedDot { kind, row, offsets, acts, sums, pairs } = dot;
    assert!(acts.len() >= pairs * out.len(), "dot_packed_tokens: fewer activations than tokens");
    assert!(sums.len() >= 2 * pairs * out.len() && offsets.len() >= 2 * pairs, "dot_packed_tokens: short sums");
    #[cfg(target_arch = "x86_64")]
    {
        if vnni_supported() {
            let mut t = 0;
            while t < out.len() {
                let left = out.len() - t;
                let group = if left >= 8 {
                    8
                } else if left >= 4 {
                    4
                } else {
                    1
                };
                let tokens = &acts[t * pairs..(t + group) * pairs];
                let token_sums = &sums[t * 2 * pairs..(t + group) * 2 * pairs];
                let args = (kind, row, offsets, tokens, token_sums, pairs);
                // SAFETY: the features were just detected; the kernel reads
                // `pairs` pairs of `row` (the callers' rows hold that many)
                // and of each of the `group` tokens' activations and sums,
                // and 2·pairs offsets (asserted).
                unsafe {
                    match group {
                        8 => out[t..t + 8].copy_from_slice(&vnni::dot::<8>(args)),
                        4 => out[t..t + 4].copy_from_slice(&vnni::dot::<4>(args)),
                        _ => out[t] = vnni::dot::<1>(args)[0],
                    }
                }
                t += group;
            }
            return;
        }
    }
    for (t, y) in out.iter_mut().enumerate() {
        *y = dot_packed_scalar(kind, row, &acts[t * pairs..(t + 1) * pairs]);
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{ActPair, PackedKind};
    use std::arch::x86_64::*;

    /// (kind, row, row offsets, activations, activation sums, pairs per token).
    pub(super) type Args<'a> = (PackedKind, &'a [u8], &'a [f32], &'a [ActPair], &'a [f32], usize);

    /// `T` tokens at once: each token's float operations are exactly the
    /// one-token sequence, so results do not depend on `T`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,avx2,fma")]
    pub(super) unsafe fn dot<const T: usize>(args: Args<'_>) -> [f32; T] {
        let (kind, row, offsets, acts, sums, pairs) = args;
        assert!(row.len() >= pairs * kind.pair_bytes(), "packed row shorter than its activations");
        assert!(acts.len() >= pairs * T, "fewer activation pairs than tokens need");
        assert!(sums.len() >= 2 * pairs * T && offsets.len() >= 2 * pairs, "fewer block sums than tokens need");
        // Lane l of the dpbusd result sums quants 4l..4l+4: lanes 0-3 and
        // 8-11 belong to block 0, 4-7 and 12-15 to block 1.
        let lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        let step = kind.pair_bytes();
        for p in 0..pairs {
            let pair = row.as_ptr().add(p * step);
            let dm = _mm_cvtph_ps(_mm_loadl_epi64(pair as *const __m128i));
            let quants = match kind {
                PackedKind::Nibbles => {
                    let v = _mm256_loadu_si256(pair.add(8) as *const __m256i);
                    let lo = _mm256_and_si256(v, low_nibbles);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
                    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
                }
                PackedKind::Bytes => _mm512_loadu_si512(pair.add(8) as *const __m512i),
            };
            // The weight scales d0, d1 spread over their lanes, shared by all tokens.
            let weight_lanes = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(dm));
            for (t, acc) in acc.iter_mut().enumerate() {
                let a = acts.get_unchecked(t * pairs + p);
                let lane_scales = _mm512_mul_ps(weight_lanes, _mm512_loadu_ps(a.lanes.as_ptr()));
                let act = _mm512_loadu_si512(a.qs.as_ptr() as *const __m512i);
                let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), quants, act);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), lane_scales, *acc);
            }
        }
        // The blocks' offset terms Σ m·s, sixteen blocks per step, go into
        // the same accumulators (every lane is summed in the end).
        let blocks = 2 * pairs;
        for (t, acc) in acc.iter_mut().enumerate() {
            let token_sums = sums.as_ptr().add(t * blocks);
            for start in (0..blocks).step_by(16) {
                let mask: __mmask16 = if blocks - start >= 16 { 0xFFFF } else { (1u16 << (blocks - start)) - 1 };
                let m = _mm512_maskz_loadu_ps(mask, offsets.as_ptr().add(start));
                let s = _mm512_maskz_loadu_ps(mask, token_sums.add(start));
                *acc = _mm512_fmadd_ps(m, s, *acc);
            }
        }
        let mut out = [0f32; T];
        for group in (0..T).step_by(4) {
            let mut four = [_mm512_setzero_ps(); 4];
            let n = (T - group).min(4);
            four[..n].copy_from_slice(&acc[group..group + n]);
            let mut totals = [0f32; 4];
            _mm_storeu_ps(totals.as_mut_ptr(), reduce4(four));
            out[group..group + n].copy_from_slice(&totals[..n]);
        }
        out
    }

    /// Reduces four tokens' accumulators at once (a tree of horizontal
    /// adds). Each token's sum is formed in the same order whichever four
    /// tokens share the call.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
    unsafe fn reduce4(acc: [__m512; 4]) -> __m128 {
        let half = |v: __m512| _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
        let h01 = _mm256_hadd_ps(half(acc[0]), half(acc[1]));
        let h23 = _mm256_hadd_ps(half(acc[2]), half(acc[3]));
        let q = _mm256_hadd_ps(h01, h23);
        _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps::<1>(q))
    }
}
