//! Two tokens per 512-bit register for the prefill of every interleaved
//! format on AVX-512 VNNI.
//!
//! On Sapphire Rapids a 512-bit `vpdpbusd` issues as often as a 256-bit
//! one (two a cycle, ports 0 and 5, measured), so one that meets a quad of
//! rows with two tokens at once does twice the work per instruction. The
//! tokens go in pairs ([`PairedTokens`], built once per matrix product and
//! token block): a pair's activation runs interleaved so that one
//! 128-bit broadcast load gives each 64-bit lane its token's run, and the
//! pair's scales side by side so that one 64-bit broadcast gives each lane
//! its token's. Each row's eight bytes of a quad are doubled into adjacent
//! 64-bit lanes once per block, for every pair of the tile; two permutes
//! and an add then leave sixteen exact integer sums, row `i / 2` of token
//! `i % 2` in lane `i`, scaled by the same operations in the same order as
//! the 256-bit kernel's, so results are bit for bit the same.
//!
//! Measured on Sapphire Rapids, one thread, 2048 × 2048, 64 tokens
//! (`group_kernels`, same run): q4_0 119 → 142, q8_0 126 → 146, iq4_xs
//! 110–126 → 138–155, q6_k 79 → 104, q3_k 88 → 104, q2_k 91 → 103,
//! q4_k 109 → 125, q5_k 92 → 117 GMAC/s. Each block's quants are unpacked by the 256-bit kernel's
//! helpers and doubled with one `vpermq` per run; a decode (one token)
//! keeps the 256-bit kernel. The k-quants and iq4_xs now take
//! [`super::sixteen`]'s kernel for pairs of groups (faster still: no
//! doubling, no folding); this one serves the 32-element formats and a
//! group left without a neighbour.

use super::BlockQ8;

/// Two tokens' activations of one 32-element block, arranged for the
/// kernel's broadcast loads.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct PairBlock {
    /// Run `k` (eight quants) of the first token, then of the second, for
    /// `k` in `0..4`.
    pub qs: [i8; 64],
    /// Each token's `−64·Σ a` twice (first, first, second, second): the
    /// start of the signed formats' chains.
    pub start: [i32; 4],
    /// The tokens' scales `d`.
    pub d: [f32; 2],
    /// The tokens' `s` (`d·Σ a`).
    pub s: [f32; 2],
    /// Each token's half sums (first 16 quants, last 16) twice: first,
    /// first, second, second (the 16-element formats' chain starts and
    /// q2_k's mins).
    pub halves: [[i16; 2]; 4],
}

/// Tokens' activation blocks paired up for [`super::dot_group_tokens`]'s
/// 512-bit kernel: pair after pair, block after block. An odd token count
/// pairs the last token with itself (the lanes are independent, so its
/// copy changes nothing).
#[derive(Debug, Clone, Default)]
pub struct PairedTokens {
    /// Tokens paired.
    pub tokens: usize,
    /// Blocks per token.
    pub blocks: usize,
    /// `tokens.div_ceil(2)` pairs of `blocks` each.
    pub pairs: Vec<PairBlock>,
}

impl PairedTokens {
    /// Pairs `tokens` tokens whose `blocks` activation blocks each lie back
    /// to back in `acts` (reusing this value's memory).
    pub fn fill(&mut self, acts: &[BlockQ8], tokens: usize, blocks: usize) {
        assert_eq!(acts.len(), tokens * blocks, "PairedTokens: {} blocks for {tokens} tokens", acts.len());
        self.tokens = tokens;
        self.blocks = blocks;
        self.pairs.clear();
        for first in (0..tokens).step_by(2) {
            let second = (first + 1).min(tokens - 1);
            for b in 0..blocks {
                let (x, y) = (&acts[first * blocks + b], &acts[second * blocks + b]);
                self.pairs.push(pair_block(x, y));
            }
        }
    }

    /// The blocks of pair `p`.
    pub fn pair(&self, p: usize) -> &[PairBlock] {
        &self.pairs[p * self.blocks..(p + 1) * self.blocks]
    }
}

fn pair_block(x: &BlockQ8, y: &BlockQ8) -> PairBlock {
    let mut qs = [0i8; 64];
    for k in 0..4 {
        qs[16 * k..16 * k + 8].copy_from_slice(&x.qs[8 * k..8 * k + 8]);
        qs[16 * k + 8..16 * k + 16].copy_from_slice(&y.qs[8 * k..8 * k + 8]);
    }
    let start = |a: &BlockQ8| -64 * (a.half_sums[0] as i32 + a.half_sums[1] as i32);
    PairBlock {
        qs,
        start: [start(x), start(x), start(y), start(y)],
        d: [x.d, y.d],
        s: [x.s, y.s],
        halves: [x.half_sums, x.half_sums, y.half_sums, y.half_sums],
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod kernel {
    use super::super::x86::vnni::{
        bytes_as_f32, f16x8, fifth_bits, low_bit_runs, q2_k_min_pairs, q6_k_runs, quad_operands, scaled_by, signed,
        BLOCKS32, HALVES,
    };
    use super::super::{
        quants_layout, HalvesLayout, InterleavedRows, IQ4XS_SCALES, IQ4XS_SUB_BYTES, LANE_ROWS, Q4K_MINS, Q4K_QUANTS,
        Q4K_SCALES, Q5K_HIGH, Q6K_QUAD_BYTES,
    };
    use super::PairBlock;
    use crate::DType;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Sixteen lanes per pair: lane `i` holds row `i / 2` (in row order) of
    /// token `i % 2`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_pairs<const P: usize, const F: usize>(group: &[u8], pairs: &[&[PairBlock]; P]) -> [[f32; 16]; P] {
        let dtype = BLOCKS32[F];
        let size = InterleavedRows::block_bytes(dtype);
        let (base, runs) = quants_layout(dtype);
        let with_mins = matches!(dtype, DType::Q4_1 | DType::Q5_1);
        let mut acc = [_mm512_setzero_ps(); P];
        // iq4_xs: the super block's sums, scaled by the act blocks' one
        // shared scale after its last block (`quant::shares_act_scales`).
        let mut block_acc = [_mm512_setzero_ps(); P];
        // `b` walks the group's blocks (by byte offset) and every pair's at once.
        #[allow(clippy::needless_range_loop)]
        for b in 0..pairs[0].len() {
            let (block, d, q) = if dtype == DType::IQ4XS {
                let (block, sub) = (group.as_ptr().add(b / 8 * size), b % 8);
                let q = block.add(base + IQ4XS_SUB_BYTES * sub);
                let sc = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                    block.add(IQ4XS_SCALES + 8 * sub) as *const __m128i
                )));
                (block, _mm256_mul_ps(f16x8(block), sc), q)
            } else {
                let block = group.as_ptr().add(b * size);
                (block, f16x8(block), block.add(base))
            };
            let d = by_row_ps(d);
            let m = if with_mins { by_row_ps(f16x8(block.add(16))) } else { d };
            let h = q.wrapping_sub(32);
            let w = doubled(&[quad_operands::<F>(q, h), quad_operands::<F>(q.add(32 * runs), h.wrapping_add(16))]);
            for p in 0..P {
                let a = &pairs[p][b];
                let start = if signed(dtype) {
                    _mm512_broadcast_i32x4(_mm_loadu_si128(a.start.as_ptr() as *const __m128i))
                } else {
                    _mm512_setzero_si512()
                };
                let dot = _mm512_cvtepi32_ps(pair_sums(&w, a, start, 0..4));
                let a_d = pair_of(&a.d);
                if dtype == DType::IQ4XS {
                    block_acc[p] = _mm512_fmadd_ps(d, dot, block_acc[p]);
                    if b % 8 == 7 {
                        acc[p] = _mm512_fmadd_ps(a_d, block_acc[p], acc[p]);
                        block_acc[p] = _mm512_setzero_ps();
                    }
                    continue;
                }
                acc[p] = match dtype {
                    DType::Q4_0 => _mm512_fmadd_ps(
                        d,
                        _mm512_fmsub_ps(a_d, dot, _mm512_mul_ps(_mm512_set1_ps(8.0), pair_of(&a.s))),
                        acc[p],
                    ),
                    DType::Q5_0 => _mm512_fmadd_ps(
                        d,
                        _mm512_fmsub_ps(a_d, dot, _mm512_mul_ps(_mm512_set1_ps(16.0), pair_of(&a.s))),
                        acc[p],
                    ),
                    DType::Q4_1 | DType::Q5_1 => {
                        let with_mins = _mm512_fmadd_ps(m, pair_of(&a.s), acc[p]);
                        _mm512_fmadd_ps(d, _mm512_mul_ps(a_d, dot), with_mins)
                    }
                    _ => _mm512_fmadd_ps(d, _mm512_mul_ps(a_d, dot), acc[p]),
                };
            }
        }
        let mut out = [[0f32; 16]; P];
        for (lanes, v) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        }
        out
    }

    // The helpers below serve the kernels above and inline into them (no
    // closures in the kernels: one loses the target features and stays a
    // call).

    /// Both quads' runs doubled for a pair: row r's eight bytes (64-bit
    /// lane r of a quad's run) into lanes 2r and 2r + 1, one per token.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn doubled(quads: &[[__m256i; 4]; 2]) -> [[__m512i; 4]; 2] {
        let index = _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3);
        let mut w = [[_mm512_setzero_si512(); 4]; 2];
        for (doubled_quad, quad) in w.iter_mut().zip(quads) {
            for (run, &loaded) in doubled_quad.iter_mut().zip(quad) {
                *run = _mm512_permutexvar_epi64(index, _mm512_castsi256_si512(loaded));
            }
        }
        w
    }

    /// The exact sums of activation runs `runs` of pair `a` with both
    /// quads' doubled runs `w`, each chain starting at `start`: the two
    /// dwords of every (row, token) qword added, lane `i` row `i / 2` of
    /// token `i % 2`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pair_sums(w: &[[__m512i; 4]; 2], a: &PairBlock, start: __m512i, runs: Range<usize>) -> __m512i {
        let mut chains = [start, start];
        for k in runs {
            let run = _mm512_broadcast_i32x4(_mm_loadu_si128(a.qs.as_ptr().add(16 * k) as *const __m128i));
            for (chain, w) in chains.iter_mut().zip(w) {
                *chain = _mm512_dpbusd_epi32(*chain, w[k], run);
            }
        }
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        _mm512_add_epi32(
            _mm512_permutex2var_epi32(chains[0], evens, chains[1]),
            _mm512_permutex2var_epi32(chains[0], odds, chains[1]),
        )
    }

    /// Lane `i` of the sixteen: row `i / 2`'s value, from eight lanes in
    /// lane order (row `r` in lane `LANE_ROWS[r]`).
    const BY_ROW: [i32; 16] = [0, 0, 1, 1, 4, 4, 5, 5, 2, 2, 3, 3, 6, 6, 7, 7];

    /// Eight f32 in lane order as sixteen lanes by row ([`BY_ROW`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn by_row_ps(v: __m256) -> __m512 {
        debug_assert_eq!(LANE_ROWS, [0, 1, 4, 5, 2, 3, 6, 7]);
        _mm512_permutexvar_ps(_mm512_loadu_si512(BY_ROW.as_ptr() as *const _), _mm512_castps256_ps512(v))
    }

    /// Eight i32 in lane order as sixteen lanes by row ([`BY_ROW`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn by_row_epi32(v: __m256i) -> __m512i {
        _mm512_permutexvar_epi32(_mm512_loadu_si512(BY_ROW.as_ptr() as *const _), _mm512_castsi256_si512(v))
    }

    /// Two f32 broadcast to the even and the odd lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn pair_of(v: &[f32; 2]) -> __m512 {
        _mm512_castpd_ps(_mm512_set1_pd(f64::from_bits((v.as_ptr() as *const u64).read_unaligned())))
    }

    /// The q6_k, q3_k or q2_k kernel (`HALVES[F]`) for `P` pairs, lanes as
    /// [`dot_pairs`]'s: per act block and half, each pair's two chains of
    /// two `vpdpbusd` start at the offset's part (`madd` of the pair's
    /// half sums), the sixteen exact sums weighted by the rows' `d·sc`
    /// into the super block's `block`; then `acc += a.d·block` (q2_k also
    /// `mins += dmin·(a.d·Σ m·Σ a)`), as the 256-bit kernel.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_halves_pairs<const P: usize, const F: usize>(
        group: &[u8],
        pairs: &[&[PairBlock]; P],
    ) -> [[f32; 16]; P] {
        let dtype = HALVES[F];
        let layout = HalvesLayout::of(dtype);
        let size = InterleavedRows::block_bytes(dtype);
        let q2_k = dtype == DType::Q2K;
        let half_offset = if q2_k { 0 } else { -(1i32 << layout.offset_shift) / 2 };
        // `madd` of a token's half sums (an i16 pair) with these gives each half's start.
        let start_weights = [_mm512_set1_epi32(half_offset & 0xFFFF), _mm512_set1_epi32(half_offset << 16)];
        let low_nibbles = _mm_set1_epi8(0x0F);
        let (mut acc, mut mins) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
        for b in 0..pairs[0].len() / 8 {
            let block = group.as_ptr().add(b * size);
            let d = f16x8(block);
            let mut block_acc = [_mm512_setzero_ps(); P];
            let mut side = [_mm512_setzero_si512(); P];
            for j in 0..8 {
                let q = block.add(layout.quants + layout.act_bytes * j);
                let at = block.add(layout.scales + 16 * j);
                let (lo, hi) = (_mm_loadl_epi64(at as *const __m128i), _mm_loadl_epi64(at.add(8) as *const __m128i));
                let (lo, hi) =
                    if q2_k { (_mm_and_si128(lo, low_nibbles), _mm_and_si128(hi, low_nibbles)) } else { (lo, hi) };
                let scaled = [by_row_ps(scaled_by(d, lo)), by_row_ps(scaled_by(d, hi))];
                let min_pairs = if q2_k { by_row_epi32(q2_k_min_pairs(at)) } else { _mm512_setzero_si512() };
                let quads = if dtype == DType::Q6K {
                    [q6_k_runs(q), q6_k_runs(q.add(Q6K_QUAD_BYTES))]
                } else {
                    [low_bit_runs::<F>(q, q.wrapping_add(64), 0), low_bit_runs::<F>(q.add(32), q.wrapping_add(64), 1)]
                };
                let w = doubled(&quads);
                for p in 0..P {
                    let a = &pairs[p][8 * b + j];
                    let halves = _mm512_broadcast_i32x4(_mm_loadu_si128(a.halves.as_ptr() as *const __m128i));
                    for half in 0..2 {
                        let start =
                            if q2_k { _mm512_setzero_si512() } else { _mm512_madd_epi16(halves, start_weights[half]) };
                        let sums = pair_sums(&w, a, start, 2 * half..2 * half + 2);
                        block_acc[p] = _mm512_fmadd_ps(scaled[half], _mm512_cvtepi32_ps(sums), block_acc[p]);
                    }
                    if q2_k {
                        // Lane i: token i % 2's half sums, an i16 pair.
                        let token_halves = _mm512_set1_epi64((a.halves.as_ptr().add(1) as *const i64).read_unaligned());
                        side[p] = _mm512_add_epi32(side[p], _mm512_madd_epi16(min_pairs, token_halves));
                    }
                }
            }
            let dmin = by_row_ps(f16x8(block.add(16)));
            for p in 0..P {
                let a_d = pair_of(&pairs[p][8 * b].d);
                acc[p] = _mm512_fmadd_ps(a_d, block_acc[p], acc[p]);
                if q2_k {
                    mins[p] = _mm512_fmadd_ps(dmin, _mm512_mul_ps(a_d, _mm512_cvtepi32_ps(side[p])), mins[p]);
                }
            }
        }
        let mut out = [[0f32; 16]; P];
        for ((lanes, acc), mins) in out.iter_mut().zip(acc).zip(mins) {
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_sub_ps(acc, mins));
        }
        out
    }

    /// The q4_k (`Q5`: q5_k) kernel for `P` pairs, lanes as [`dot_pairs`]'s:
    /// per 64-element chunk, the low nibbles (sub-block `2c`) and then the
    /// high ones (`2c + 1`) meet every pair, each sub-block's sixteen exact
    /// sums scaled as the 256-bit kernel does: `block += (d·sc)·dot` and
    /// `mins += (dmin·m)·a.s` per sub-block, `acc += a.d·block` per super
    /// block (whose act blocks share one scale); then `acc − mins`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_k_pairs<const P: usize, const Q5: bool>(
        group: &[u8],
        pairs: &[&[PairBlock]; P],
    ) -> [[f32; 16]; P] {
        let size = InterleavedRows::block_bytes(if Q5 { DType::Q5K } else { DType::Q4K });
        let mask = _mm256_set1_epi8(0x0F);
        let (mut acc, mut mins) = ([_mm512_setzero_ps(); P], [_mm512_setzero_ps(); P]);
        for b in 0..pairs[0].len() / 8 {
            let block = group.as_ptr().add(b * size);
            let (d, dmin) = (f16x8(block), f16x8(block.add(16)));
            let mut block_acc = [_mm512_setzero_ps(); P];
            for j in 0..8 {
                // Sub-block j: chunk j / 2, its low nibbles (even j) or high ones.
                let (c, high) = (j / 2, j % 2 == 1);
                let q = block.add(Q4K_QUANTS + 256 * c);
                // Read only for q5_k (past a q4_k block: never dereferenced).
                let h = block.wrapping_add(Q5K_HIGH + 64 * c);
                let mut quads = [[_mm256_setzero_si256(); 4]; 2];
                for (quad, runs) in quads.iter_mut().enumerate() {
                    let high_bits = if Q5 {
                        _mm256_loadu_si256(h.add(32 * quad) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    };
                    for (k, run) in runs.iter_mut().enumerate() {
                        let l = _mm256_loadu_si256(q.add(128 * quad + 32 * k) as *const __m256i);
                        let mut nibbles = if high {
                            _mm256_and_si256(_mm256_srli_epi16(l, 4), mask)
                        } else {
                            _mm256_and_si256(l, mask)
                        };
                        if Q5 {
                            nibbles = _mm256_or_si256(nibbles, fifth_bits(high_bits, 2 * k as i32 + high as i32));
                        }
                        *run = nibbles;
                    }
                }
                let w = doubled(&quads);
                let scaled = _mm256_mul_ps(d, bytes_as_f32(block.add(Q4K_SCALES + 8 * j)));
                let min_scaled = _mm256_mul_ps(dmin, bytes_as_f32(block.add(Q4K_MINS + 8 * j)));
                let (scaled, min_scaled) = (by_row_ps(scaled), by_row_ps(min_scaled));
                for p in 0..P {
                    let a = &pairs[p][8 * b + j];
                    let sums = pair_sums(&w, a, _mm512_setzero_si512(), 0..4);
                    block_acc[p] = _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(sums), block_acc[p]);
                    mins[p] = _mm512_fmadd_ps(min_scaled, pair_of(&a.s), mins[p]);
                }
            }
            for ((acc, block_acc), pair) in acc.iter_mut().zip(block_acc).zip(pairs) {
                *acc = _mm512_fmadd_ps(pair_of(&pair[8 * b].d), block_acc, *acc);
            }
        }
        let mut out = [[0f32; 16]; P];
        for ((lanes, acc), mins) in out.iter_mut().zip(acc).zip(mins) {
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_sub_ps(acc, mins));
        }
        out
    }
}
