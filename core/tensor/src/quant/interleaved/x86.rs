//! The x86 kernels of [`super`], each for `T` tokens at once: a block's
//! quants are loaded and unpacked once, then every token runs exactly the
//! operations a lone token would, so results never depend on `T`.
//! Every function is compiled once per format and token count (const
//! generics), so no branch on the format is left in the loops, and each
//! helper serves one kernel, which it inlines into (measured: when a helper
//! stayed a call, or a closure lost the target features, a kernel ran 2-6x
//! slower).
//!
//! The kernels are written once and compiled twice, by `kernels!`: for
//! AVX2 (`maddubs` pair sums in i16, widened by `madd`) and for AVX-512
//! VNNI on 256-bit registers (`vpdpbusd`, four products straight into
//! each i32 lane). The integer sums are exact either way, and both weight
//! them by the same float operations in the same order, so both give the
//! same bits, but for q6_k, q3_k, q2_k and iq4_xs: AVX2 multiplies their
//! sub-block scales in integers, riding on the `madd` that widens its pair
//! sums, where VNNI's sums reach i32 with no such step and take one float
//! step per sub-block (`super::reference::SubBlockScaling`; each matches its own
//! scalar reference).

use super::{
    quants_layout, BlockQ8, HalvesLayout, InterleavedRows, IQ4XS_SCALES, IQ4XS_SUB_BYTES, Q4K_MINS, Q4K_QUANTS,
    Q4K_SCALES, Q5K_HIGH, Q6K_QUAD_BYTES,
};
use crate::DType;
use std::arch::x86_64::*;

// Declared before `kernels!`, which expands its macro.
#[macro_use]
mod integer;

/// How far ahead of the block it starts a kernel asks for the group's
/// bytes while decoding streams it from memory. Sapphire Rapids (2
/// threads, 1B decode, tok/s): the 32-element formats went from two
/// blocks ahead (288 B for q4_0) to this, q4_0 28 → 33–34, iq4_nl 27 →
/// 32–33, iq4_xs 26 → 31–32, q8_0 (which took no hint) 20 → 22; q6_k
/// and q2_k, which took none, 19 → 22–23 and 27.5 → 38–39. 1 KiB and
/// 4 KiB were slower (q6_k 23, 21; q2_k 36–37, 38); q4_k, one block
/// ahead before (1,152 B), measured alike from one to eight blocks. On an
/// AMD EPYC (Zen 3) earlier sessions found q8_0 and q6_k faster without a
/// hint at one or two blocks ahead; this distance was not measured there.
/// q6_k asks for L2 only (`prefetcht1`): 1B Q6_K decode 23.4–23.7 →
/// 24.6–25.2 tok/s (three alternating pairs), and 24.7–25.6 → 25.6–27.0
/// once decode claimed rows in long chunks (`cpu::matmul`'s
/// `claim_rows`); Q2_K was 1–3 % slower that way (six pairs), Q3_K_M
/// alike, and q4_0, q8_0, iq4_nl, iq4_xs, Q4_K_M and Q5_K_M alike or
/// slower. In L2, 1 KiB was slower (Q4_K_M, Q6_K, Q2_K) and 3–4 KiB alike
/// or slower; the one-thread `group_kernels` stream (`STREAM_MIB`), where
/// 1 KiB into L1 was fastest, does not predict two threads. The AVX2
/// q6_k kernel takes the L2 hint too. On an AVX2-only AMD EPYC (family
/// 23), 1B decode, where that kernel is bound by its arithmetic more than
/// by memory, no hint at all was fastest (against the L1 hint, six
/// alternating pairs: Q6_K 13.2 → 14.1 tok/s; the L2 hint, and 1 or 4 KiB
/// ahead, between the two); but on an Intel Xeon the same AVX2 kernel,
/// one token streamed from memory on one thread (`group_kernels`,
/// `STREAM_MIB=1024`, its AVX2-form line), read 5.9–7.1 GB/s without a
/// hint against 10.3–11.3 with the L1 or the L2 one (alike there).
const STREAM_AHEAD: usize = 2048;

/// The kernels for one instruction set: `$features` their target
/// features, `$vnni` whether the integer sums use `vpdpbusd`.
macro_rules! kernels {
    ($features:tt, $vnni:tt) => {
        /// The formats `dot_blocks32` runs, by the index it is compiled for:
        /// the 32-element ones, and iq4_xs, whose 32-element sub-blocks are
        /// iq4_nl blocks with a scale of their own.
        pub(in crate::quant::interleaved) const BLOCKS32: [DType; 7] =
            [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4NL, DType::IQ4XS];

        /// True for the formats whose quants are signed bytes.
        pub(in crate::quant::interleaved) const fn signed(dtype: DType) -> bool {
            matches!(dtype, DType::Q8_0 | DType::IQ4NL | DType::IQ4XS)
        }

        /// Eight activation bytes `8k..8k+8` of a block in each 64-bit lane.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn run_of(a: &BlockQ8, k: usize) -> __m256i {
            _mm256_set1_epi64x((a.qs.as_ptr().add(8 * k) as *const i64).read_unaligned())
        }

        /// Eight f16 at `p` as f32.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn f16x8(p: *const u8) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }

        /// Decoding streams each group from memory, so the kernels ask for
        /// what comes `bytes` from `p`, [`STREAM_AHEAD`] past the block
        /// they start. A hint: addresses past the group's end (or anywhere)
        /// never fault.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn prefetch(p: *const u8, bytes: usize) {
            for line in (0..bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8);
            }
        }

        /// [`prefetch`] into L2 only (`prefetcht1`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn prefetch_l2(p: *const u8, bytes: usize) {
            for line in (0..bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(line) as *const i8);
            }
        }

        /// The hint of a q6_k, q3_k or q2_k block at `block` (`bytes` long):
        /// q6_k's into L2 only (see [`STREAM_AHEAD`]), the others' into L1.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn prefetch_halves(dtype: DType, block: *const u8, bytes: usize) {
            if dtype == DType::Q6K {
                prefetch_l2(block.wrapping_add(STREAM_AHEAD), bytes);
            } else {
                prefetch(block.wrapping_add(STREAM_AHEAD), bytes);
            }
        }

        /// The quants of one quad (four rows) of a 32-element block, as the
        /// byte operands that meet activation runs 0..4. q4: two 32-byte loads,
        /// low nibbles for runs 0/1, high for 2/3. q5: the same with each
        /// byte's fifth bit added from the run's eight bytes of bits at `h`
        /// (per row: the low nibbles' byte, then the high nibbles'). iq4: the
        /// q4 nibbles looked up in the iq4 table (signed). q8_0: the four
        /// signed loads as they are.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn quad_operands<const F: usize>(
            q: *const u8,
            h: *const u8,
        ) -> [__m256i; 4] {
            let dtype = BLOCKS32[F];
            let load = |k: usize| _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
            let mask = _mm256_set1_epi8(0x0F);
            let low = |l: __m256i| _mm256_and_si256(l, mask);
            let high = |l: __m256i| _mm256_and_si256(_mm256_srli_epi16(l, 4), mask);
            // VNNI takes signed weights offset by 128 (unsigned bytes, one
            // operation per load here instead of the sign moves of
            // `tile_sums_maddubs`; `tile_sums` takes the offset back off
            // exactly).
            let offset = _mm256_set1_epi8(if $vnni { -128 } else { 0 });
            match dtype {
                DType::Q8_0 => [load(0), load(1), load(2), load(3)].map(|w| _mm256_xor_si256(w, offset)),
                DType::Q5_0 | DType::Q5_1 => {
                    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                    let fifth = _mm256_set1_epi8(0x10);
                    // Row s of the quad fills 64-bit lane s: its byte 2s (low) or 2s + 1 (high).
                    let low_of =
                        _mm256_setr_epi64x(0, 0x0202_0202_0202_0202, 0x0404_0404_0404_0404, 0x0606_0606_0606_0606);
                    let high_of = _mm256_add_epi8(low_of, _mm256_set1_epi8(1));
                    let spread = |k: usize, which: __m256i| {
                        let bits = _mm256_set1_epi64x((h.add(8 * k) as *const i64).read_unaligned());
                        let picked = _mm256_shuffle_epi8(bits, which);
                        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(picked, bit), bit), fifth)
                    };
                    let (l0, l1) = (load(0), load(1));
                    [
                        _mm256_or_si256(low(l0), spread(0, low_of)),
                        _mm256_or_si256(low(l1), spread(1, low_of)),
                        _mm256_or_si256(high(l0), spread(0, high_of)),
                        _mm256_or_si256(high(l1), spread(1, high_of)),
                    ]
                }
                DType::IQ4NL | DType::IQ4XS => {
                    let values = _mm_loadu_si128(crate::quant::IQ4_VALUES.as_ptr() as *const __m128i);
                    let table = _mm256_xor_si256(_mm256_broadcastsi128_si256(values), offset);
                    let (l0, l1) = (load(0), load(1));
                    [low(l0), low(l1), high(l0), high(l1)].map(|n| _mm256_shuffle_epi8(table, n))
                }
                _ => {
                    let (l0, l1) = (load(0), load(1));
                    [low(l0), low(l1), high(l0), high(l1)]
                }
            }
        }

        /// Σ q·a of block `b`'s eight rows for each token of the tile, in
        /// lane order: each quad's sums (two i32 lanes per row), paired up by
        /// one `hadd`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_sums<const T: usize, const F: usize>(
            w: &[[__m256i; 4]; 2],
            acts: &[&[BlockQ8]; T],
            b: usize,
        ) -> [__m256i; T] {
            if !$vnni {
                return tile_sums_maddubs::<T, F>(w, acts, b);
            }
            // One chain of four `vpdpbusd` per quad and token, each i32 lane
            // summing four products a step; the tokens' chains step together,
            // so 2·T independent ones hide the instruction's latency. Signed
            // weights came offset by 128 (see `quad_operands`): Σ w·a =
            // Σ (w + 128)·a − 128·Σ a, exactly, so their chains start at
            // −64·Σ a, which `hadd` pairs up.
            let start: [__m256i; T] = std::array::from_fn(|t| {
                if signed(BLOCKS32[F]) {
                    let halves = _mm256_set1_epi32((acts[t][b].half_sums.as_ptr() as *const i32).read_unaligned());
                    _mm256_madd_epi16(halves, _mm256_set1_epi16(-64))
                } else {
                    _mm256_setzero_si256()
                }
            });
            let mut quads = [start, start];
            for k in 0..4 {
                for t in 0..T {
                    let run = run_of(&acts[t][b], k);
                    for (sums, w) in quads.iter_mut().zip(w) {
                        sums[t] = _mm256_dpbusd_epi32(sums[t], w[k], run);
                    }
                }
            }
            std::array::from_fn(|t| _mm256_hadd_epi32(quads[0][t], quads[1][t]))
        }

        /// AVX2's `tile_sums`: at each of the four steps the quads' loads
        /// meet every token of the tile (`maddubs` takes unsigned weights,
        /// so signed ones are made unsigned once per step and their signs
        /// move onto each token's activations). Unsigned quants sum in i16
        /// over the four steps (each lane ≤ 2·31·127 for q5, four of them
        /// below 2¹⁵), signed ones widen to i32 at every step (one product
        /// pair reaches 2·127·127). Integer sums: the same values as one
        /// token at a time, with the tile's accumulators in registers.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_sums_maddubs<const T: usize, const F: usize>(
            w: &[[__m256i; 4]; 2],
            acts: &[&[BlockQ8]; T],
            b: usize,
        ) -> [__m256i; T] {
            let ones = _mm256_set1_epi16(1);
            let mut quads = [[_mm256_setzero_si256(); T]; 2];
            for k in 0..4 {
                if signed(BLOCKS32[F]) {
                    let magnitudes = [_mm256_sign_epi8(w[0][k], w[0][k]), _mm256_sign_epi8(w[1][k], w[1][k])];
                    for t in 0..T {
                        let run = run_of(&acts[t][b], k);
                        for (q, sums) in quads.iter_mut().enumerate() {
                            let products = _mm256_maddubs_epi16(magnitudes[q], _mm256_sign_epi8(run, w[q][k]));
                            sums[t] = _mm256_add_epi32(sums[t], _mm256_madd_epi16(products, ones));
                        }
                    }
                } else {
                    for t in 0..T {
                        let run = run_of(&acts[t][b], k);
                        for (q, sums) in quads.iter_mut().enumerate() {
                            sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(w[q][k], run));
                        }
                    }
                }
            }
            if !signed(BLOCKS32[F]) {
                for sums in quads.iter_mut() {
                    for sum in sums.iter_mut() {
                        *sum = _mm256_madd_epi16(*sum, ones);
                    }
                }
            }
            std::array::from_fn(|t| _mm256_hadd_epi32(quads[0][t], quads[1][t]))
        }

        /// Eight lanes per token for the 32-element formats.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dot_blocks32<const T: usize, const F: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
            let dtype = BLOCKS32[F];
            let size = InterleavedRows::block_bytes(dtype);
            let (base, runs) = quants_layout(dtype);
            let with_mins = matches!(dtype, DType::Q4_1 | DType::Q5_1);
            let mut acc = [_mm256_setzero_ps(); T];
            // iq4_xs (VNNI: AVX2 takes `dot_iq4_xs_integer`): the super
            // block's sums, scaled by the act blocks' one shared scale after
            // its last block (`quant::shares_act_scales`).
            let mut block_acc = [_mm256_setzero_ps(); T];
            for b in 0..acts[0].len() {
                let (block, d, q) = if dtype == DType::IQ4XS {
                    // Sub-block b % 8 of block b / 8: its rows' scales are d · sc.
                    let (block, sub) = (group.as_ptr().add(b / 8 * size), b % 8);
                    let q = block.add(base + IQ4XS_SUB_BYTES * sub);
                    prefetch(q.wrapping_add(STREAM_AHEAD), IQ4XS_SUB_BYTES);
                    let sc = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        block.add(IQ4XS_SCALES + 8 * sub) as *const __m128i,
                    )));
                    (block, _mm256_mul_ps(f16x8(block), sc), q)
                } else {
                    let block = group.as_ptr().add(b * size);
                    prefetch(block.wrapping_add(STREAM_AHEAD), size);
                    (block, f16x8(block), block.add(base))
                };
                let m = if with_mins { f16x8(block.add(16)) } else { d };
                let h = q.wrapping_sub(32);
                let w = [quad_operands::<F>(q, h), quad_operands::<F>(q.add(32 * runs), h.wrapping_add(16))];
                let sums = tile_sums::<T, F>(&w, acts, b);
                for (((acc, block_acc), token), sum) in acc.iter_mut().zip(&mut block_acc).zip(acts).zip(sums) {
                    let a = &token[b];
                    let dot = _mm256_cvtepi32_ps(sum);
                    if dtype == DType::IQ4XS {
                        *block_acc = _mm256_fmadd_ps(d, dot, *block_acc);
                        if b % 8 == 7 {
                            *acc = _mm256_fmadd_ps(_mm256_set1_ps(a.d), *block_acc, *acc);
                            *block_acc = _mm256_setzero_ps();
                        }
                        continue;
                    }
                    *acc = match dtype {
                        // Σ (q − 8)·a = Σ q·a − 8·Σ a.
                        DType::Q4_0 => _mm256_fmadd_ps(
                            d,
                            _mm256_fmsub_ps(_mm256_set1_ps(a.d), dot, _mm256_set1_ps(8.0 * a.s)),
                            *acc,
                        ),
                        DType::Q5_0 => _mm256_fmadd_ps(
                            d,
                            _mm256_fmsub_ps(_mm256_set1_ps(a.d), dot, _mm256_set1_ps(16.0 * a.s)),
                            *acc,
                        ),
                        DType::Q4_1 | DType::Q5_1 => {
                            let with_mins = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), *acc);
                            _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_set1_ps(a.d), dot), with_mins)
                        }
                        _ => _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_set1_ps(a.d), dot), *acc),
                    };
                }
            }
            acc
        }

        /// q5_k's fifth bits for one run and half: bit `bit` of each byte of
        /// `high_bits` moved to bit 4, the rest cleared (shifts by constants
        /// once the caller's loop over runs unrolls).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn fifth_bits(high_bits: __m256i, bit: i32) -> __m256i {
            let moved = if bit <= 4 {
                _mm256_sll_epi16(high_bits, _mm_cvtsi32_si128(4 - bit))
            } else {
                _mm256_srl_epi16(high_bits, _mm_cvtsi32_si128(bit - 4))
            };
            _mm256_and_si256(moved, _mm256_set1_epi8(0x10))
        }

        /// Σ q·a of a quad's four rows for one q4_k chunk's two sub-blocks,
        /// per token: (low nibbles with `lo`, high nibbles with `hi`). Each
        /// 32-byte load is unpacked once and meets every token in turn. With
        /// `Q5` (q5_k), each byte also gets its fifth bits from the quad's
        /// 32 bytes at `h` (run `k`: bits `2k` and `2k + 1`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn k_quad_tokens<const T: usize, const Q5: bool>(
            q: *const u8,
            h: *const u8,
            lo: &[&BlockQ8; T],
            hi: &[&BlockQ8; T],
        ) -> [(__m256i, __m256i); T] {
            let mask = _mm256_set1_epi8(0x0F);
            let high_bits = if Q5 { _mm256_loadu_si256(h as *const __m256i) } else { _mm256_setzero_si256() };
            let (mut p_lo, mut p_hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
            for k in 0..4 {
                let l = _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
                let (mut w_lo, mut w_hi) = (_mm256_and_si256(l, mask), _mm256_and_si256(_mm256_srli_epi16(l, 4), mask));
                if Q5 {
                    w_lo = _mm256_or_si256(w_lo, fifth_bits(high_bits, 2 * k as i32));
                    w_hi = _mm256_or_si256(w_hi, fifth_bits(high_bits, 2 * k as i32 + 1));
                }
                for t in 0..T {
                    if $vnni {
                        // i32 lanes straight away: four products per lane and step.
                        p_lo[t] = _mm256_dpbusd_epi32(p_lo[t], w_lo, run_of(lo[t], k));
                        p_hi[t] = _mm256_dpbusd_epi32(p_hi[t], w_hi, run_of(hi[t], k));
                        continue;
                    }
                    // Each i16 lane ≤ 2·31·127 (q5_k; q4_k 2·15·127); four summed stay below 2¹⁵.
                    p_lo[t] = _mm256_add_epi16(p_lo[t], _mm256_maddubs_epi16(w_lo, run_of(lo[t], k)));
                    p_hi[t] = _mm256_add_epi16(p_hi[t], _mm256_maddubs_epi16(w_hi, run_of(hi[t], k)));
                }
            }
            if $vnni {
                return std::array::from_fn(|t| (p_lo[t], p_hi[t]));
            }
            let ones = _mm256_set1_epi16(1);
            std::array::from_fn(|t| (_mm256_madd_epi16(p_lo[t], ones), _mm256_madd_epi16(p_hi[t], ones)))
        }

        /// AVX2's form of `k_quad_tokens`, one half at a time, both quads at
        /// once: the sums of the chunk's eight rows (quad 0 at `q` with its
        /// fifth bits at `h`, quad 1 128 and 32 bytes on) with each token's
        /// `acts`, for the low nibbles (`HI` false) or the high ones. Each
        /// token's activation run is broadcast once for both quads, and one
        /// half's sums per token leave registers for both quads' loads.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn k_half_tokens<const T: usize, const Q5: bool, const HI: bool>(
            q: *const u8,
            h: *const u8,
            acts: &[&BlockQ8; T],
        ) -> [[__m256i; T]; 2] {
            let mask = _mm256_set1_epi8(0x0F);
            let mut sums = [[_mm256_setzero_si256(); T]; 2];
            for k in 0..4 {
                let mut w = [_mm256_setzero_si256(); 2];
                for (quad, w) in w.iter_mut().enumerate() {
                    let l = _mm256_loadu_si256(q.add(128 * quad + 32 * k) as *const __m256i);
                    *w = if HI { _mm256_and_si256(_mm256_srli_epi16(l, 4), mask) } else { _mm256_and_si256(l, mask) };
                    if Q5 {
                        // Bit 2k (low half) or 2k + 1 (high half).
                        let high_bits = _mm256_loadu_si256(h.add(32 * quad) as *const __m256i);
                        *w = _mm256_or_si256(*w, fifth_bits(high_bits, 2 * k as i32 + HI as i32));
                    }
                }
                for t in 0..T {
                    let run = run_of(acts[t], k);
                    // As in `k_quad_tokens`: four steps stay below 2¹⁵ in i16.
                    for (quad, sums) in sums.iter_mut().enumerate() {
                        sums[t] = _mm256_add_epi16(sums[t], _mm256_maddubs_epi16(w[quad], run));
                    }
                }
            }
            let ones = _mm256_set1_epi16(1);
            for quad in sums.iter_mut() {
                for sum in quad.iter_mut() {
                    *sum = _mm256_madd_epi16(*sum, ones);
                }
            }
            sums
        }

        /// Eight bytes at `p` as eight f32 lanes.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn bytes_as_f32(p: *const u8) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        }

        /// The eight lanes of a q4_k (`Q5`: q5_k) group per token (see
        /// `k_scalar` for the order).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dot_k<const T: usize, const Q5: bool>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
            let size = InterleavedRows::block_bytes(if Q5 { DType::Q5K } else { DType::Q4K });
            let (mut acc, mut mins) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
            for b in 0..acts[0].len() / 8 {
                let block = group.as_ptr().add(b * size);
                let (d, dmin) = (f16x8(block), f16x8(block.add(16)));
                let mut block_acc = [_mm256_setzero_ps(); T];
                for c in 0..4 {
                    prefetch(block.wrapping_add(STREAM_AHEAD + c * size / 4), size / 4);
                    let q = block.add(Q4K_QUANTS + 256 * c);
                    let a_lo: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + 2 * c]);
                    let a_hi: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + 2 * c + 1]);
                    let mut x = [[(_mm256_setzero_si256(), _mm256_setzero_si256()); T]; 2];
                    // Read only for q5_k (past a q4_k block: never dereferenced).
                    let h = block.wrapping_add(Q5K_HIGH + 64 * c);
                    // A prefill tile on AVX2 goes half by half (measured on
                    // AMD EPYC Zen 3, group_kernels bench, 4 tokens: q5_k 61 →
                    // 66 GMAC/s, q4_k 72 → 76; tiles of 5 or more are no
                    // faster). A lone token keeps the quad form, which
                    // unpacks each load once for both halves: the half form
                    // loads and masks it twice and was no faster there.
                    if $vnni || T == 1 {
                        for (quad, sums) in x.iter_mut().enumerate() {
                            *sums = k_quad_tokens::<T, Q5>(q.add(128 * quad), h.wrapping_add(32 * quad), &a_lo, &a_hi);
                        }
                    } else {
                        let lo = k_half_tokens::<T, Q5, false>(q, h, &a_lo);
                        let hi = k_half_tokens::<T, Q5, true>(q, h, &a_hi);
                        for (quad, sums) in x.iter_mut().enumerate() {
                            for (t, sum) in sums.iter_mut().enumerate() {
                                *sum = (lo[quad][t], hi[quad][t]);
                            }
                        }
                    }
                    let scaled: [(__m256, __m256); 2] = std::array::from_fn(|half| {
                        let j = 2 * c + half;
                        let sc = bytes_as_f32(block.add(Q4K_SCALES + 8 * j));
                        let m = bytes_as_f32(block.add(Q4K_MINS + 8 * j));
                        (_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, m))
                    });
                    for t in 0..T {
                        let sums = [_mm256_hadd_epi32(x[0][t].0, x[1][t].0), _mm256_hadd_epi32(x[0][t].1, x[1][t].1)];
                        for (half, (a, sum)) in [a_lo[t], a_hi[t]].into_iter().zip(sums).enumerate() {
                            block_acc[t] = _mm256_fmadd_ps(scaled[half].0, _mm256_cvtepi32_ps(sum), block_acc[t]);
                            mins[t] = _mm256_fmadd_ps(scaled[half].1, _mm256_set1_ps(a.s), mins[t]);
                        }
                    }
                }
                // The super block's act blocks share one scale.
                for (t, (acc, block_acc)) in acc.iter_mut().zip(block_acc).enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(acts[t][8 * b].d), block_acc, *acc);
                }
            }
            std::array::from_fn(|t| _mm256_sub_ps(acc[t], mins[t]))
        }

        /// The formats `dot_halves` runs, by the index it is compiled for:
        /// 16-element sub-blocks, each with its own integer scale per row.
        pub(in crate::quant::interleaved) const HALVES: [DType; 3] = [DType::Q6K, DType::Q3K, DType::Q2K];

        /// A q6_k quad's four runs (`q + 32`, 0..63) from its three loads:
        /// two of low nibbles, one of high bit pairs (run k's at bits 2k..2k+2).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn q6_k_runs(q: *const u8) -> [__m256i; 4] {
            let mask = _mm256_set1_epi8(0x0F);
            let pairs = _mm256_set1_epi8(0x30);
            let load = |at: usize| _mm256_loadu_si256(q.add(at) as *const __m256i);
            let (low, high) = ([load(0), load(32)], load(64));
            // Run k: its nibbles, and its bit pair moved to bits 4..6.
            [
                _mm256_or_si256(_mm256_and_si256(low[0], mask), _mm256_and_si256(_mm256_slli_epi16(high, 4), pairs)),
                _mm256_or_si256(_mm256_and_si256(low[1], mask), _mm256_and_si256(_mm256_slli_epi16(high, 2), pairs)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low[0], 4), mask), _mm256_and_si256(high, pairs)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(low[1], 4), mask),
                    _mm256_and_si256(_mm256_srli_epi16(high, 2), pairs),
                ),
            ]
        }

        /// A q3_k or q2_k quad's four runs from its load of 2-bit quants (run
        /// k's at bits 2k..2k+2); q3_k (`high` not null) adds the third bit,
        /// bit `4·quad + k` of the act block's shared load at `high`, as bit 2
        /// (`q + 4`, 0..7).
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn low_bit_runs<const F: usize>(
            q: *const u8,
            high: *const u8,
            quad: usize,
        ) -> [__m256i; 4] {
            let two = _mm256_set1_epi8(3);
            let low = _mm256_loadu_si256(q as *const __m256i);
            let shifted = |v: __m256i, right: i32| _mm256_srl_epi16(v, _mm_cvtsi32_si128(right));
            let mut runs = [0, 1, 2, 3].map(|k| _mm256_and_si256(shifted(low, 2 * k), two));
            if HALVES[F] == DType::Q3K {
                let bits = _mm256_loadu_si256(high as *const __m256i);
                let four = _mm256_set1_epi8(4);
                for (k, run) in runs.iter_mut().enumerate() {
                    // Bit 4·quad + k to bit 2: right by 4·quad + k − 2, or left by 2 − k.
                    let at = (4 * quad + k) as i32;
                    let moved =
                        if at >= 2 { shifted(bits, at - 2) } else { _mm256_sll_epi16(bits, _mm_cvtsi32_si128(2 - at)) };
                    *run = _mm256_or_si256(*run, _mm256_and_si256(moved, four));
                }
            }
            runs
        }

        /// Adds to each token's `block_acc` Σ_half (d·sc)·(Σ q·a − offset·Σ
        /// a) of an act block's eight rows, in lane order, from both quads'
        /// runs, the integer exact, one FMA per half with the rows' `scaled`
        /// (`d·sc`); tokens' half sums (an i16 pair each) are at
        /// `a[t].half_sums`, and their `madd` with `start_weights[half]` is
        /// the offset's part. Each half's chain of two `vpdpbusd` per quad
        /// starts at that part (half of it in each of a row's two lanes),
        /// and `hadd` pairs the quads' lanes into one lane per row. VNNI
        /// only (`dot_tokens` sends AVX2 to `dot_halves_integer`). The loops
        /// over tokens have short bodies, so they unroll and the sums stay
        /// in registers (one long body kept them in memory: 25 % slower).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn halves_tokens<const T: usize>(
            runs: &[[__m256i; 4]; 2],
            scaled: &[__m256; 2],
            a: &[&BlockQ8; T],
            start_weights: [__m256i; 2],
            block_acc: &mut [__m256; T],
        ) {
            // No closures here: one loses the target features and stays a call.
            for half in 0..2 {
                for t in 0..T {
                    let sums = _mm256_set1_epi32((a[t].half_sums.as_ptr() as *const i32).read_unaligned());
                    let start = _mm256_madd_epi16(sums, start_weights[half]);
                    let (first, second) = (run_of(a[t], 2 * half), run_of(a[t], 2 * half + 1));
                    // Each i32 lane: start + Σ of 8 products ≤ 63·127 (q6_k).
                    let mut chains = [start; 2];
                    for (chain, w) in chains.iter_mut().zip(runs) {
                        *chain = _mm256_dpbusd_epi32(*chain, w[2 * half], first);
                        *chain = _mm256_dpbusd_epi32(*chain, w[2 * half + 1], second);
                    }
                    let per_row = _mm256_hadd_epi32(chains[0], chains[1]);
                    block_acc[t] = _mm256_fmadd_ps(scaled[half], _mm256_cvtepi32_ps(per_row), block_acc[t]);
                }
            }
        }

        /// The rows' `d·sc`: eight f32 `d` times eight i8 scales (the low
        /// bytes of `scales`), in the same lane order.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn scaled_by(d: __m256, scales: __m128i) -> __m256 {
            _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scales)))
        }

        /// q2_k: both halves' mins of each lane as an i16 pair (low, high),
        /// from the high nibbles of the act block's scale bytes at `at`.
        #[inline]
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn q2_k_min_pairs(at: *const u8) -> __m256i {
            let (lo, hi) = (_mm_loadl_epi64(at as *const __m128i), _mm_loadl_epi64(at.add(8) as *const __m128i));
            // The 16-bit shift brings each byte's high nibble down (the
            // neighbour's bits above it are masked off).
            let shifted = _mm_srli_epi16(_mm_unpacklo_epi8(lo, hi), 4);
            _mm256_and_si256(_mm256_cvtepu8_epi16(shifted), _mm256_set1_epi16(0x0F))
        }

        /// The eight lanes of a q6_k, q3_k or q2_k group per token on VNNI
        /// (`halves_scalar`, `SubBlockScaling::Float`). The activations share one scale
        /// per super block (`quant::shares_act_scales`), so each token's
        /// super block sums its halves' `(d·sc)·(Σ q·a − offset·Σ a)` in
        /// f32 and is scaled once: `acc += a.d·block`; q2_k's mins `Σ_half
        /// m·Σ a` in integers (`madd` of the min pairs with the half sums),
        /// weighted by `dmin`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dot_halves<const T: usize, const F: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
            let dtype = HALVES[F];
            let layout = HalvesLayout::of(dtype);
            let size = InterleavedRows::block_bytes(dtype);
            let q2_k = dtype == DType::Q2K;
            let offset = if q2_k { 0 } else { 1i32 << layout.offset_shift };
            // Both of a row's chains start at half the offset's part.
            let lane_offset = -offset / 2;
            // `madd` of a token's half sums (an i16 pair) with these gives each half's offset part.
            let start_weights = [_mm256_set1_epi32(lane_offset & 0xFFFF), _mm256_set1_epi32(lane_offset << 16)];
            let (mut acc, mut mins) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
            let low_nibbles = _mm_set1_epi8(0x0F);
            for b in 0..acts[0].len() / 8 {
                let block = group.as_ptr().add(b * size);
                prefetch_halves(dtype, block, size);
                let d = f16x8(block);
                let mut block_acc = [_mm256_setzero_ps(); T];
                // q2_k: Σ m·Σ a.
                let mut side = [_mm256_setzero_si256(); T];
                for j in 0..8 {
                    let q = block.add(layout.quants + layout.act_bytes * j);
                    let at = block.add(layout.scales + 16 * j);
                    let (lo, hi) =
                        (_mm_loadl_epi64(at as *const __m128i), _mm_loadl_epi64(at.add(8) as *const __m128i));
                    // q2_k: a byte holds the scale (low nibble) and the min (high).
                    let (lo, hi) =
                        if q2_k { (_mm_and_si128(lo, low_nibbles), _mm_and_si128(hi, low_nibbles)) } else { (lo, hi) };
                    let scaled = [scaled_by(d, lo), scaled_by(d, hi)];
                    let runs = if dtype == DType::Q6K {
                        [q6_k_runs(q), q6_k_runs(q.add(Q6K_QUAD_BYTES))]
                    } else {
                        [
                            low_bit_runs::<F>(q, q.wrapping_add(64), 0),
                            low_bit_runs::<F>(q.add(32), q.wrapping_add(64), 1),
                        ]
                    };
                    let a: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + j]);
                    halves_tokens(&runs, &scaled, &a, start_weights, &mut block_acc);
                    if q2_k {
                        let min_pairs = q2_k_min_pairs(at);
                        for t in 0..T {
                            let sums = _mm256_set1_epi32((a[t].half_sums.as_ptr() as *const i32).read_unaligned());
                            side[t] = _mm256_add_epi32(side[t], _mm256_madd_epi16(min_pairs, sums));
                        }
                    }
                }
                for t in 0..T {
                    let a_d = _mm256_set1_ps(acts[t][8 * b].d);
                    acc[t] = _mm256_fmadd_ps(a_d, block_acc[t], acc[t]);
                    if q2_k {
                        let dmin = f16x8(block.add(16));
                        mins[t] = _mm256_fmadd_ps(dmin, _mm256_mul_ps(a_d, _mm256_cvtepi32_ps(side[t])), mins[t]);
                    }
                }
            }
            std::array::from_fn(|t| _mm256_sub_ps(acc[t], mins[t]))
        }

        integer_kernels!($features);

        /// The eight lanes' sums of a group for each of `T` tokens (lane order
        /// [`super::LANE_ROWS`]).
        #[target_feature(enable = $features)]
        pub(in crate::quant::interleaved) unsafe fn dot_tokens<const T: usize>(
            dtype: DType,
            group: &[u8],
            acts: &[&[BlockQ8]; T],
        ) -> [[f32; 8]; T] {
            let lanes = match dtype {
                DType::Q4K => dot_k::<T, false>(group, acts),
                DType::Q5K => dot_k::<T, true>(group, acts),
                DType::Q6K if $vnni => dot_halves::<T, 0>(group, acts),
                DType::Q3K if $vnni => dot_halves::<T, 1>(group, acts),
                DType::Q2K if $vnni => dot_halves::<T, 2>(group, acts),
                DType::Q6K => dot_halves_integer::<T, 0>(group, acts),
                DType::Q3K => dot_halves_integer::<T, 1>(group, acts),
                DType::Q2K => dot_halves_integer::<T, 2>(group, acts),
                DType::Q4_0 => dot_blocks32::<T, 0>(group, acts),
                DType::Q4_1 => dot_blocks32::<T, 1>(group, acts),
                DType::Q5_0 => dot_blocks32::<T, 2>(group, acts),
                DType::Q5_1 => dot_blocks32::<T, 3>(group, acts),
                DType::IQ4NL => dot_blocks32::<T, 5>(group, acts),
                DType::IQ4XS if $vnni => dot_blocks32::<T, 6>(group, acts),
                DType::IQ4XS => dot_iq4_xs_integer::<T>(group, acts),
                _ => dot_blocks32::<T, 4>(group, acts),
            };
            lanes.map(|v| {
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), v);
                out
            })
        }
    };
}

/// AVX2 + FMA + F16C.
pub(super) mod avx2 {
    use super::*;
    kernels!("avx2,fma,f16c", false);
}

/// The same with AVX-512 VNNI's `vpdpbusd` (on 256-bit registers).
pub(super) mod vnni {
    use super::*;
    kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", true);
}
