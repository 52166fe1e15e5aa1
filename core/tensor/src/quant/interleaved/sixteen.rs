//! Sixteen rows per 512-bit register, one token per instruction: the
//! prefill of the k-quants (q2_k … q6_k) and iq4_xs on AVX-512 VNNI, two
//! groups at a time.
//!
//! The token-pair kernel ([`super::wide`]) meets a quad of rows with two
//! tokens per `vpdpbusd` and pays for it per act block and pair: each
//! row's eight bytes doubled, two permutes and an add to fold the lanes
//! of a row back together, and for q6_k/q3_k/q2_k a float step by the
//! sub-block scales per eight rows and half. Here the runs of two
//! adjacent groups are rearranged once per block into registers that hold
//! four elements of each of sixteen rows (a permute per register, shared
//! by every token of the tile), so one broadcast dword of a token's
//! activations meets sixteen rows: each lane is a row's exact sum at
//! once, and one conversion and FMA scale sixteen rows of a half. The
//! layout in memory is the groups' own (no second copy); lanes come out
//! in the groups' lane order ([`super::LANE_ROWS`]), so their stored
//! scales apply as they are. The integer sums are exact and scaled by the same
//! operations in the same order as the 256-bit kernel's, so every token
//! gets, bit for bit, what [`super::dot_group`] gives it alone.
//!
//! Sixteen tokens per call: each token's sums stay in a register, and
//! the unpacking and rearranging of a block is shared by twice as many
//! tokens as at eight. The kernels' loops over tokens run eight at a time
//! ([`kernel`]'s `eights`): LLVM unrolls those, and keeps the sums in
//! registers, but not a loop of sixteen. q6_k and q3_k are unpacked as
//! `q + 32`, so each chain starts at the token's `−32·Σ a`
//! ([`BlockQ8::offset_sums`], one broadcast load) instead of a
//! `vpdpwssd` per token and act block, and iq4_xs's at `−128·Σ a`
//! ([`BlockQ8::offset_sum`]) instead of a `vpmaddwd`; q2_k's mins are a
//! pass of their own, which leaves the main loop's registers to the sums.
//! The tokens' activations come in tile order ([`tile_order`]): a
//! sub-block's blocks of a tile's tokens side by side, read at fixed
//! distances from one address. q4_k/q5_k load each sub-block's quants
//! afresh (an L1 hit for the second sub-block of a chunk): held over both
//! sub-blocks, those eight registers pushed the sums to memory.
//!
//! One thread, 2048 × 2048, 64 tokens, Sapphire Rapids (`group_kernels`):
//! token pairs → this kernel at eight tokens (an earlier session, another
//! host): q6_k 125 → 145, q3_k 119 → 141, q2_k 130 → 163, q4_k 149 → 170,
//! q5_k 134 → 149, iq4_xs 170 → 184 GMAC/s; eight tokens → sixteen with
//! the offsets above (one run, this host): q6_k 119 → 158, q3_k 114 →
//! 161, q2_k 131 → 160, q4_k 150 → 159, q5_k 137 → 155, iq4_xs 166 → 195
//! (→ 206 with its offset from the block); tile order and q4_k/q5_k's
//! loads per sub-block (alternating builds, another day): q4_k ~165 →
//! 206, q5_k ~158 → 183, iq4_xs ~221 → 236, q2_k ~161 → 197, q6_k and
//! q3_k unchanged within the noise. Tried there: a super block's q6_k/
//! q3_k/q2_k operands unpacked into L1 and read by each eight of tokens
//! in turn (sums never leave registers): q3_k +8 %, q6_k and q2_k within
//! the noise, model prefill unchanged, so not kept. Then q4_k/q5_k with
//! one activation scale per super block (its multiply leaves the token
//! loop) and q5_k's fifth bits placed by GFNI ([`kernel`]'s `k_runs`):
//! q5_k ~186 → 197–204, q4_k ~220 → 225 GMAC/s (neither alone gained).
//! Tried: one chain of eight `vpdpbusd` for q4_k with its mins in the loop
//! (slower than two chains there; with the mins in a pass of their own,
//! one chain is best). Then q6_k/q3_k/q2_k's halves weighted in f32
//! (`block += (d·sc)·chain`, a conversion and an FMA) instead of in
//! integers (`vpmulld`, two µops on port 0, and an add), in every kernel
//! of those formats: q6_k two groups 161–184 → 172–187, token pairs
//! 112–125 → 120–131, 256-bit VNNI 95–98 → 101–106 GMAC/s (three
//! alternating pairs); the AVX2 form, which weighted i16 pairs by the
//! scales for free in its `madd`, now widens with ones and converts per
//! half: q6_k 68–70 → 63–65 (−7 %), decode unchanged. 1B Q6_K prefill
//! +5 % (three alternating pairs), Q3_K_M and Q2_K within the noise.
//! iq4_xs then took one activation scale per super block as well (as
//! llama.cpp's `q8_K` for it): 233–234 → 246–262 GMAC/s, 1B IQ4_XS
//! prefill 284–297 → 304–311 tok/s (three alternating pairs).

use super::{BlockQ8, GroupKernel, InterleavedRows, GROUP};
use crate::DType;

/// Tokens one call of a kernel takes (see the module's header).
const TWO_GROUP_TILE: usize = 16;

/// The largest tile of the tokens past the last whole one.
const REMAINDER_TILE: usize = 8;

/// Whether [`dot_two_groups`] takes `dtype` on this CPU: the k-quants and
/// iq4_xs, with AVX-512 VNNI; q4_k and q5_k also with GFNI (their kernel
/// places q5_k's fifth bits with `vgf2p8affineqb`; CPUs with VNNI and
/// without GFNI, Cascade Lake, give them the token-pair kernel).
pub fn takes_two_groups(dtype: DType) -> bool {
    let needs_gfni = matches!(dtype, DType::Q4K | DType::Q5K);
    GroupKernel::detect() == GroupKernel::Vnni && two_group_format(dtype).is_some() && (!needs_gfni || gfni())
}

/// Whether this CPU has GFNI (Galois-field instructions).
fn gfni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static GFNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *GFNI.get_or_init(|| is_x86_feature_detected!("gfni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Which compiled kernel [`dot_two_groups`] runs, by format.
fn two_group_format(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Q6K => Some(0),
        DType::Q3K => Some(1),
        DType::Q2K => Some(2),
        DType::Q4K => Some(3),
        DType::Q5K => Some(4),
        DType::IQ4XS => Some(5),
        _ => None,
    }
}

/// The tiles [`dot_two_groups`] cuts `tokens` tokens into, as (first
/// token, tokens): whole tiles of [`TWO_GROUP_TILE`], then the rest in
/// tiles of up to [`REMAINDER_TILE`]. A tile's place depends only on its
/// first token and on where the last whole tile ends, so the tokens from
/// any multiple of `TWO_GROUP_TILE` on are tiled as they would be alone.
fn tiles(tokens: usize) -> impl Iterator<Item = (usize, usize)> {
    let whole = tokens / TWO_GROUP_TILE * TWO_GROUP_TILE;
    let remainder =
        (whole..tokens).step_by(REMAINDER_TILE).map(move |first| (first, (tokens - first).min(REMAINDER_TILE)));
    (0..whole).step_by(TWO_GROUP_TILE).map(|first| (first, TWO_GROUP_TILE)).chain(remainder)
}

/// `acts` (`per_token` activation blocks for each token, token after
/// token) in the order [`dot_two_groups`] reads them, into `out`: by tile
/// ([`tiles`]), and within a tile of `T` tokens from token `f`, block `i`
/// of token `f + t` at `f·per_token + i·T + t`. A tile's tokens' blocks
/// for one sub-block then lie side by side, at fixed distances from one
/// address: the kernels read them without a pointer per token, in one
/// stream (one thread, 2048 × 2048, 64 tokens, `group_kernels`, Sapphire
/// Rapids, alternating builds: iq4_xs 178–219 → 224–236 GMAC/s). From a
/// multiple of sixteen tokens on, the order is that of those tokens alone.
pub fn tile_order(acts: &[BlockQ8], per_token: usize, out: &mut Vec<BlockQ8>) {
    out.clear();
    out.resize(acts.len(), BlockQ8::default());
    let tokens = acts.len() / per_token.max(1);
    for (first, count) in tiles(tokens) {
        let tile = &mut out[first * per_token..(first + count) * per_token];
        for t in 0..count {
            let token = &acts[(first + t) * per_token..(first + t + 1) * per_token];
            for (i, block) in token.iter().enumerate() {
                tile[i * count + t] = *block;
            }
        }
    }
}

/// The sums of groups `g` and `g + 1` (rows `8g..8g + 16`, in row order)
/// with `out.len()` tokens whose activations `tiled` holds in
/// [`tile_order`], where [`takes_two_groups`] says so: `out[t]` is, bit
/// for bit, what [`super::dot_group`] gives token `t` alone for each of
/// the two groups.
pub fn dot_two_groups(rows: &InterleavedRows, g: usize, tiled: &[BlockQ8], out: &mut [[f32; 2 * GROUP]]) {
    let per_token = rows.act_blocks();
    assert!(
        takes_two_groups(rows.dtype) && g + 1 < rows.groups && tiled.len() == out.len() * per_token,
        "dot_two_groups: groups {g}, {g}+1 of {}, {} act blocks for {} tokens",
        rows.groups,
        tiled.len(),
        out.len()
    );
    assert!(
        g != 0 || !super::shares_act_scales(rows.dtype) || scales_shared_tiled(tiled, out.len()),
        "dot_two_groups: {} takes activations with one scale per super block (quantize_activations_for)",
        rows.dtype
    );
    #[cfg(target_arch = "x86_64")]
    {
        let format = two_group_format(rows.dtype).unwrap_or(0);
        let groups = [rows.group(g), rows.group(g + 1)];
        for (first, count) in tiles(out.len()) {
            let tile = &tiled[first * per_token..(first + count) * per_token];
            let sums = &mut out[first..first + count];
            match count {
                TWO_GROUP_TILE => tile_of::<TWO_GROUP_TILE>(format, groups, tile, sums),
                8 => tile_of::<8>(format, groups, tile, sums),
                7 => tile_of::<7>(format, groups, tile, sums),
                6 => tile_of::<6>(format, groups, tile, sums),
                5 => tile_of::<5>(format, groups, tile, sums),
                4 => tile_of::<4>(format, groups, tile, sums),
                3 => tile_of::<3>(format, groups, tile, sums),
                2 => tile_of::<2>(format, groups, tile, sums),
                _ => tile_of::<1>(format, groups, tile, sums),
            }
        }
    }
}

/// [`super::scales_shared`] for `tokens` tokens' blocks in [`tile_order`]:
/// each token's super blocks (eight act blocks) share one scale.
fn scales_shared_tiled(tiled: &[BlockQ8], tokens: usize) -> bool {
    let per_token = tiled.len() / tokens.max(1);
    let per_super = crate::quant::QK_K / crate::quant::QK;
    per_token.is_multiple_of(per_super)
        && tiles(tokens).all(|(first, count)| {
            let tile = &tiled[first * per_token..(first + count) * per_token];
            (0..per_token).all(|i| {
                (0..count)
                    .all(|t| tile[i * count + t].d.to_bits() == tile[i / per_super * per_super * count + t].d.to_bits())
            })
        })
}

/// A tile of `T` tokens (`tile`: their blocks in [`tile_order`]) through
/// the kernel compiled for `format`, each token's sixteen sums into `out`
/// in row order.
#[cfg(target_arch = "x86_64")]
fn tile_of<const T: usize>(format: usize, groups: [&[u8]; 2], tile: &[BlockQ8], out: &mut [[f32; 2 * GROUP]]) {
    let tile = kernel::Tile::<T>::new(tile);
    // SAFETY: `takes_two_groups` (checked by the caller) detected AVX-512
    // F/BW/VL/VNNI with AVX2/FMA/F16C, and GFNI for q4_k/q5_k (formats 3
    // and 4, whose kernel is compiled with it); both groups hold `rows.blocks`
    // blocks, which is the tile's blocks per token over 8 (the caller
    // checked the act blocks per token), and the kernel reads that many of
    // each.
    let lanes = unsafe {
        match format {
            0 => kernel::dot_halves_two::<T, 0>(groups, tile),
            1 => kernel::dot_halves_two::<T, 1>(groups, tile),
            2 => kernel::dot_halves_two::<T, 2>(groups, tile),
            3 => kernel::dot_k_two::<T, false>(groups, tile),
            4 => kernel::dot_k_two::<T, true>(groups, tile),
            _ => kernel::dot_iq4_xs_two::<T>(groups, tile),
        }
    };
    out.copy_from_slice(&lanes);
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::super::x86::vnni::HALVES;
    use super::super::{
        HalvesLayout, InterleavedRows, IQ4XS_QUANTS, IQ4XS_SCALES, IQ4XS_SUB_BYTES, LANE_ROWS, Q4K_MINS, Q4K_QUANTS,
        Q4K_SCALES, Q5K_HIGH, Q6K_QUAD_BYTES,
    };
    use super::BlockQ8;
    use crate::DType;
    use std::arch::x86_64::*;

    /// A tile of `T` tokens' activation blocks in [`super::tile_order`]:
    /// every token's block `i` side by side.
    #[derive(Clone, Copy)]
    pub struct Tile<'a, const T: usize> {
        blocks: &'a [BlockQ8],
    }

    impl<'a, const T: usize> Tile<'a, T> {
        /// The tile of `blocks` (a whole number of blocks per token).
        pub fn new(blocks: &'a [BlockQ8]) -> Self {
            assert!(blocks.len().is_multiple_of(T), "a tile of {T} tokens from {} blocks", blocks.len());
            Tile { blocks }
        }

        /// Act blocks per token.
        fn per_token(self) -> usize {
            self.blocks.len() / T
        }

        /// Every token's block `i`.
        #[inline(always)]
        fn at(self, i: usize) -> &'a [BlockQ8; T] {
            self.blocks[i * T..].first_chunk::<T>().expect("a block of the tile")
        }
    }

    /// Lane `i` of a sixteen-row register: dword `EVENS[i]` of the two
    /// groups' runs (the first group's 16 dwords, then the second's), the
    /// first four elements of the run of row `LANE_ROWS[i % 8]`; `ODDS`
    /// its last four.
    const EVENS: [i32; 16] = lane_dwords(0);
    const ODDS: [i32; 16] = lane_dwords(1);

    const fn lane_dwords(half: i32) -> [i32; 16] {
        let mut index = [0; 16];
        let mut i = 0;
        while i < 16 {
            index[i] = 16 * (i / 8) as i32 + 2 * LANE_ROWS[i % 8] as i32 + half;
            i += 1;
        }
        index
    }

    /// Which lane holds row `i` of the two groups (rows 0..8 the first
    /// group's): [`LANE_ROWS`] is its own inverse.
    const ROW_LANES: [i32; 16] = {
        let mut index = [0; 16];
        let mut i = 0;
        while i < 16 {
            index[i] = 8 * (i / 8) as i32 + LANE_ROWS[i % 8] as i32;
            i += 1;
        }
        index
    };

    /// Sixteen sums from lane order to row order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn in_row_order(lanes: __m512) -> __m512 {
        _mm512_permutexvar_ps(_mm512_loadu_si512(ROW_LANES.as_ptr() as *const _), lanes)
    }

    /// Each token's `acc − mins` in row order: a kernel's result.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn row_sums<const T: usize>(acc: [__m512; T], mins: [__m512; T]) -> [[f32; 16]; T] {
        let mut out = [[0f32; 16]; T];
        for ((lanes, acc), mins) in out.iter_mut().zip(acc).zip(mins) {
            _mm512_storeu_ps(lanes.as_mut_ptr(), in_row_order(_mm512_sub_ps(acc, mins)));
        }
        out
    }

    /// Super block `b` of each group (blocks of `size` bytes).
    ///
    /// # Safety
    /// Both groups hold more than `b` blocks of `size` bytes.
    #[inline(always)]
    unsafe fn super_blocks(groups: [&[u8]; 2], b: usize, size: usize) -> (*const u8, *const u8) {
        (groups[0].as_ptr().add(b * size), groups[1].as_ptr().add(b * size))
    }

    /// Two 32-byte loads as one register (the first in the low half).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn joined(low: *const u8, high: *const u8) -> __m512i {
        let low = _mm512_castsi256_si512(_mm256_loadu_si256(low as *const __m256i));
        _mm512_inserti64x4::<1>(low, _mm256_loadu_si256(high as *const __m256i))
    }

    /// One group's four runs of an act block, both quads in one register
    /// each (row `r`'s eight bytes in 64-bit lane `r`), as the 256-bit
    /// kernel's `q6_k_runs`/`low_bit_runs` give them per quad.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn group_runs<const F: usize>(q: *const u8) -> [__m512i; 4] {
        if HALVES[F] == DType::Q6K {
            return q6_k_runs(q);
        }
        let two = _mm512_set1_epi8(3);
        let low = _mm512_loadu_si512(q as *const _);
        let parts = [low, _mm512_srli_epi16::<2>(low), _mm512_srli_epi16::<4>(low), _mm512_srli_epi16::<6>(low)];
        if HALVES[F] != DType::Q3K {
            return parts.map(|part| _mm512_and_si512(part, two));
        }
        // q3_k as `q + 32`, q6_k's offset: the 2-bit part ORed with 28 in
        // one step (`(part & 3) | 28`), then 4 more where the third bit is
        // set. Both quads share the act block's third bits: run k's is bit
        // k of a byte for quad 0 (the low half), bit 4 + k for quad 1.
        const LOW_OR_C: i32 = 0xF8;
        let (c28, four) = (_mm512_set1_epi8(28), _mm512_set1_epi8(4));
        let third = _mm512_broadcast_i64x4(_mm256_loadu_si256(q.add(64) as *const __m256i));
        let mut runs = parts.map(|part| _mm512_ternarylogic_epi32::<LOW_OR_C>(c28, part, two));
        for (k, run) in runs.iter_mut().enumerate() {
            let quad0 = _mm512_castsi256_si512(_mm256_set1_epi8(1 << k));
            let bit = _mm512_inserti64x4::<1>(quad0, _mm256_set1_epi8((1u8 << (4 + k)) as i8));
            *run = _mm512_mask_add_epi8(*run, _mm512_test_epi8_mask(third, bit), *run, four);
        }
        runs
    }

    /// A q6_k group's four runs (`q + 32`, 0..63) from each quad's three
    /// loads: two of low nibbles, one of high bit pairs (run k's at bits
    /// 2k..2k+2).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q6_k_runs(q: *const u8) -> [__m512i; 4] {
        let nibbles = _mm512_set1_epi8(0x0F);
        let pairs = _mm512_set1_epi8(0x30);
        let (low0, low1) = (joined(q, q.add(Q6K_QUAD_BYTES)), joined(q.add(32), q.add(32 + Q6K_QUAD_BYTES)));
        let high = joined(q.add(64), q.add(64 + Q6K_QUAD_BYTES));
        [
            _mm512_or_si512(_mm512_and_si512(low0, nibbles), _mm512_and_si512(_mm512_slli_epi16::<4>(high), pairs)),
            _mm512_or_si512(_mm512_and_si512(low1, nibbles), _mm512_and_si512(_mm512_slli_epi16::<2>(high), pairs)),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(low0), nibbles), _mm512_and_si512(high, pairs)),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(low1), nibbles),
                _mm512_and_si512(_mm512_srli_epi16::<2>(high), pairs),
            ),
        ]
    }

    /// The sixteen-row operands of a q6_k, q3_k or q2_k act block: per run
    /// `k`, elements `8k..8k+4` of every lane's row, then `8k+4..8k+8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn sixteen_rows<const F: usize>(first: *const u8, second: *const u8) -> [[__m512i; 2]; 4] {
        rearranged(group_runs::<F>(first), group_runs::<F>(second))
    }

    /// Two groups' runs (each group's four, row `r` in 64-bit lane `r`)
    /// as sixteen-row operands: per run `k`, elements `8k..8k+4` of every
    /// lane's row, then `8k+4..8k+8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rearranged(a: [__m512i; 4], b: [__m512i; 4]) -> [[__m512i; 2]; 4] {
        let evens = _mm512_loadu_si512(EVENS.as_ptr() as *const _);
        let odds = _mm512_loadu_si512(ODDS.as_ptr() as *const _);
        let mut w = [[_mm512_setzero_si512(); 2]; 4];
        for (k, halves) in w.iter_mut().enumerate() {
            *halves = [_mm512_permutex2var_epi32(a[k], evens, b[k]), _mm512_permutex2var_epi32(a[k], odds, b[k])];
        }
        w
    }

    /// Sixteen bytes, eight from each group, as i32 lanes (the first
    /// group's in lanes 0..8).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn joined_bytes(first: *const u8, second: *const u8) -> __m128i {
        _mm_unpacklo_epi64(_mm_loadl_epi64(first as *const __m128i), _mm_loadl_epi64(second as *const __m128i))
    }

    /// An act block's sixteen scale bytes per group at `at` (the first
    /// half's eight lanes, then the second's), both groups joined: the
    /// first halves', then the second halves'.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn scale_bytes(first: *const u8, second: *const u8, at: usize) -> (__m128i, __m128i) {
        (joined_bytes(first.add(at), second.add(at)), joined_bytes(first.add(at + 8), second.add(at + 8)))
    }

    /// Both groups' eight f16 at `offset` of their blocks as sixteen f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn f16x16(first: *const u8, second: *const u8) -> __m512 {
        let (low, high) = (_mm_loadu_si128(first as *const __m128i), _mm_loadu_si128(second as *const __m128i));
        _mm512_cvtph_ps(_mm256_set_m128i(high, low))
    }

    /// A token's activation dword `i` (elements `4i..4i+4`) in every lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn act_dword(a: &BlockQ8, i: usize) -> __m512i {
        _mm512_set1_epi32((a.qs.as_ptr().add(4 * i) as *const i32).read_unaligned())
    }

    /// Adds to each token's `block_acc` Σ_half (d·sc)·Σ q·a of an act
    /// block's sixteen rows: per half a chain of four `vpdpbusd`, converted
    /// and weighted by the rows' `scaled` (`d·sc`) in one FMA. With
    /// `OFFSET` (weights stored as `q + 32`) each chain starts at the
    /// token's `−32·Σ a` of the half, one broadcast load, so the chain is
    /// the exact `Σ (q + 32)·a − 32·Σ a`. Half by half, the loop over
    /// tokens has a short body, so it unrolls and the sums stay in
    /// registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn halves_tokens<const T: usize, const OFFSET: bool>(
        w: &[[__m512i; 2]; 4],
        scaled: &[__m512; 2],
        a: &[BlockQ8; T],
        block_acc: &mut [__m512; T],
    ) {
        if T <= 8 {
            half_tokens::<T, OFFSET>(&w[..2], scaled[0], 0, a, block_acc);
            half_tokens::<T, OFFSET>(&w[2..], scaled[1], 1, a, block_acc);
            return;
        }
        let [(a_low, low), (a_high, high)] = eights(a, block_acc);
        for (half, runs) in w.chunks_exact(2).enumerate() {
            half_tokens::<8, OFFSET>(runs, scaled[half], half, a_low, low);
            half_tokens::<8, OFFSET>(runs, scaled[half], half, a_high, high);
        }
    }

    /// A tile of sixteen tokens' activations and sums as its two eights:
    /// the kernels' loops over eight tokens unroll and keep their sums in
    /// registers, a loop over sixteen does not (its sums then go through
    /// memory at every step, ~10 % slower).
    #[inline(always)]
    fn eights<'a, S, const T: usize>(
        a: &'a [BlockQ8; T],
        sums: &'a mut [S; T],
    ) -> [(&'a [BlockQ8; 8], &'a mut [S; 8]); 2] {
        // Callers take this path for tiles of sixteen only (`T > 8`).
        let (a_low, a_high) = a.split_first_chunk::<8>().expect("a tile of sixteen");
        let (low, high) = sums.split_first_chunk_mut::<8>().expect("a tile of sixteen");
        let a_high = a_high.first_chunk::<8>().expect("a tile of sixteen");
        let high = high.first_chunk_mut::<8>().expect("a tile of sixteen");
        [(a_low, low), (a_high, high)]
    }

    /// [`halves_tokens`] for half `half` (its runs `runs`, rows' `d·sc`
    /// `scaled`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn half_tokens<const T: usize, const OFFSET: bool>(
        runs: &[[__m512i; 2]],
        scaled: __m512,
        half: usize,
        a: &[BlockQ8; T],
        block_acc: &mut [__m512; T],
    ) {
        for (a, block_acc) in a.iter().zip(block_acc.iter_mut()) {
            // Each i32 lane: 16 products, each within ±63·127 (q6_k), and
            // the offset, within ±32·2032.
            let mut chain = if OFFSET { _mm512_set1_epi32(a.offset_sums[half]) } else { _mm512_setzero_si512() };
            for (k, [evens, odds]) in (2 * half..).zip(runs) {
                chain = _mm512_dpbusd_epi32(chain, *evens, act_dword(a, 2 * k));
                chain = _mm512_dpbusd_epi32(chain, *odds, act_dword(a, 2 * k + 1));
            }
            *block_acc = _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(chain), *block_acc);
        }
    }

    /// One group's runs of a q4_k (`Q5`: q5_k) sub-block, both quads in
    /// one register each: the chunk's loads `loads` (row `r`'s eight bytes
    /// in 64-bit lane `r`), their low nibbles (sub-block `2c`) or high ones
    /// (`2c + 1`), q5_k's fifth bit added from the chunk's bits `bits` (run
    /// `k`: bit `2k` for the low nibbles, `2k + 1` for the high). The bit
    /// is moved to bit 4 of each byte, all others cleared, by one
    /// `vgf2p8affineqb` (a bit matrix per byte: row 3, the result's bit 4,
    /// picks source bit `p`), and ORed in by the `vpternlogd` that masks
    /// the nibble (`(n & 0x0F) | bit`): two instructions a run where a
    /// test into a mask and a masked add took three.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,gfni")]
    unsafe fn k_runs<const Q5: bool>(loads: &[__m512i; 4], bits: __m512i, high: bool) -> [__m512i; 4] {
        /// `vpternlogd`'s table for `(a & c) | b`.
        const A_AND_C_OR_B: i32 = 0xEC;
        let nibbles = _mm512_set1_epi8(0x0F);
        let mut runs = [_mm512_setzero_si512(); 4];
        for (k, (run, &load)) in runs.iter_mut().zip(loads).enumerate() {
            let shifted = if high { _mm512_srli_epi16::<4>(load) } else { load };
            *run = if Q5 {
                let source_bit = 2 * k + high as usize;
                let bit_to_four = _mm512_set1_epi64(((1u64 << source_bit) << 24) as i64);
                let fifth = _mm512_gf2p8affine_epi64_epi8::<0>(bits, bit_to_four);
                _mm512_ternarylogic_epi32::<A_AND_C_OR_B>(shifted, fifth, nibbles)
            } else {
                _mm512_and_si512(shifted, nibbles)
            };
        }
        runs
    }

    /// A group's four 32-byte loads of a q4_k chunk (quants at `q`), both
    /// quads joined per run.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn k_loads(q: *const u8) -> [__m512i; 4] {
        [0, 1, 2, 3].map(|k| joined(q.add(32 * k), q.add(128 + 32 * k)))
    }

    /// Sixteen unsigned bytes (eight per group) as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bytes_as_f32x16(first: *const u8, second: *const u8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(joined_bytes(first, second)))
    }

    /// Adds one 32-element sub-block's `scaled·dot` to each token's `acc`
    /// (the super block's act blocks share one scale, applied once per
    /// super block), `dot` from a chain of eight `vpdpbusd`; with `OFFSET`
    /// (iq4_xs's weights stored as `q + 128`) the chain starts at `−128·Σ
    /// a` ([`BlockQ8::offset_sum`]: one broadcast load). A short loop
    /// body, so it unrolls.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn sub_block_tokens<const T: usize, const OFFSET: bool>(
        w: &[[__m512i; 2]; 4],
        scaled: __m512,
        a: &[BlockQ8; T],
        acc: &mut [__m512; T],
    ) {
        if T > 8 {
            for (a, acc) in eights(a, acc) {
                sub_block_tokens::<8, OFFSET>(w, scaled, a, acc);
            }
            return;
        }
        for (a, acc) in a.iter().zip(acc.iter_mut()) {
            let mut dot = if OFFSET { _mm512_set1_epi32(a.offset_sum) } else { _mm512_setzero_si512() };
            for (k, [evens, odds]) in w.iter().enumerate() {
                dot = _mm512_dpbusd_epi32(dot, *evens, act_dword(a, 2 * k));
                dot = _mm512_dpbusd_epi32(dot, *odds, act_dword(a, 2 * k + 1));
            }
            *acc = _mm512_fmadd_ps(scaled, _mm512_cvtepi32_ps(dot), *acc);
        }
    }

    /// Each token's q4_k mins `Σ (dmin·m)·a.s` over the groups' blocks, in
    /// the kernel's order (a pass of its own: the quants play no part).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn k_mins<const T: usize>(groups: [&[u8]; 2], size: usize, tile: Tile<'_, T>) -> [__m512; T] {
        let mut mins = [_mm512_setzero_ps(); T];
        for b in 0..tile.per_token() / 8 {
            let (first, second) = super_blocks(groups, b, size);
            let dmin = f16x16(first.add(16), second.add(16));
            for j in 0..8 {
                let at = Q4K_MINS + 8 * j;
                let min_scaled = _mm512_mul_ps(dmin, bytes_as_f32x16(first.add(at), second.add(at)));
                for (mins, a) in mins.iter_mut().zip(tile.at(8 * b + j)) {
                    *mins = _mm512_fmadd_ps(min_scaled, _mm512_set1_ps(a.s), *mins);
                }
            }
        }
        mins
    }

    /// Sixteen sums per token of a q4_k (`Q5`: q5_k) pair of groups, as
    /// [`dot_halves_two`]'s, the 256-bit kernel's sums exactly: per
    /// sub-block a chain of eight `vpdpbusd`, `block += (d·sc)·dot`; per
    /// super block (whose act blocks share one scale) `acc += a.d·block`;
    /// `mins += (dmin·m)·a.s` in sub-block order; then `acc − mins`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,gfni")]
    pub unsafe fn dot_k_two<const T: usize, const Q5: bool>(groups: [&[u8]; 2], tile: Tile<'_, T>) -> [[f32; 16]; T] {
        let size = InterleavedRows::block_bytes(if Q5 { DType::Q5K } else { DType::Q4K });
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..tile.per_token() / 8 {
            let (first, second) = super_blocks(groups, b, size);
            let d = f16x16(first, second);
            let mut block_acc = [_mm512_setzero_ps(); T];
            // Sub-block by sub-block, each loading its chunk's quants
            // again (from L1): the chunk's loads held over both of its
            // sub-blocks took registers the tokens' sums needed.
            for j in 0..8 {
                let (c, high) = (j / 2, j % 2 == 1);
                let quants = Q4K_QUANTS + 256 * c;
                let loads = [k_loads(first.add(quants)), k_loads(second.add(quants))];
                // Read only for q5_k (past a q4_k block: never dereferenced).
                let h = Q5K_HIGH + 64 * c;
                let bits = if Q5 {
                    [joined(first.add(h), first.add(h + 32)), joined(second.add(h), second.add(h + 32))]
                } else {
                    [_mm512_setzero_si512(); 2]
                };
                let w = rearranged(k_runs::<Q5>(&loads[0], bits[0], high), k_runs::<Q5>(&loads[1], bits[1], high));
                let at = Q4K_SCALES + 8 * j;
                let scaled = _mm512_mul_ps(d, bytes_as_f32x16(first.add(at), second.add(at)));
                sub_block_tokens::<T, false>(&w, scaled, tile.at(8 * b + j), &mut block_acc);
            }
            for ((acc, block_acc), a) in acc.iter_mut().zip(block_acc).zip(tile.at(8 * b)) {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(a.d), block_acc, *acc);
            }
        }
        let mins = k_mins(groups, size, tile);
        row_sums(acc, mins)
    }

    /// The rows' `d·sc`: sixteen f32 `d` times sixteen i8 scales `scales`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn scaled_by(d: __m512, scales: __m128i) -> __m512 {
        _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(scales)))
    }

    /// Sixteen sums per token (group `groups[0]`'s rows, then
    /// `groups[1]`'s, in row order) of a q6_k, q3_k or q2_k pair of
    /// groups, the 256-bit kernel's sums exactly: per act block and half a
    /// chain of four `vpdpbusd` (q6_k and q3_k, unpacked as `q + 32`: each
    /// chain from `−32·Σ a`, so it is the exact Σ q·a), `block +=
    /// (d·sc)·chain`; per super block (whose act blocks share one scale)
    /// `acc += a.d·block`; q2_k less its mins ([`q2_k_mins`]).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_halves_two<const T: usize, const F: usize>(
        groups: [&[u8]; 2],
        tile: Tile<'_, T>,
    ) -> [[f32; 16]; T] {
        let dtype = HALVES[F];
        let layout = HalvesLayout::of(dtype);
        let size = InterleavedRows::block_bytes(dtype);
        let q2_k = dtype == DType::Q2K;
        let low_nibbles = _mm_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..tile.per_token() / 8 {
            let (first, second) = super_blocks(groups, b, size);
            let d = f16x16(first, second);
            let mut block_acc = [_mm512_setzero_ps(); T];
            for j in 0..8 {
                let (lo, hi) = scale_bytes(first, second, layout.scales + 16 * j);
                // q2_k: a byte holds the scale (low nibble) and the min (high).
                let (lo_scales, hi_scales) =
                    if q2_k { (_mm_and_si128(lo, low_nibbles), _mm_and_si128(hi, low_nibbles)) } else { (lo, hi) };
                let scaled = [scaled_by(d, lo_scales), scaled_by(d, hi_scales)];
                let quants = layout.quants + layout.act_bytes * j;
                let w = sixteen_rows::<F>(first.add(quants), second.add(quants));
                let a = tile.at(8 * b + j);
                if q2_k {
                    halves_tokens::<T, false>(&w, &scaled, a, &mut block_acc);
                } else {
                    halves_tokens::<T, true>(&w, &scaled, a, &mut block_acc);
                }
            }
            for ((acc, block_acc), a) in acc.iter_mut().zip(block_acc).zip(tile.at(8 * b)) {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(a.d), block_acc, *acc);
            }
        }
        let mins = if q2_k { q2_k_mins(groups, tile) } else { [_mm512_setzero_ps(); T] };
        row_sums(acc, mins)
    }

    /// Each token's q2_k mins, `Σ_b dmin·(a.d·Σ_j Σ_half m·Σ a)` in super
    /// block order, the 256-bit kernel's: a pass of its own (the quants
    /// play no part), which leaves the main loop's registers to the sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn q2_k_mins<const T: usize>(groups: [&[u8]; 2], tile: Tile<'_, T>) -> [__m512; T] {
        let layout = HalvesLayout::of(DType::Q2K);
        let size = InterleavedRows::block_bytes(DType::Q2K);
        let mut mins = [_mm512_setzero_ps(); T];
        for b in 0..tile.per_token() / 8 {
            let (first, second) = super_blocks(groups, b, size);
            let mut side = [_mm512_setzero_si512(); T];
            for j in 0..8 {
                let (lo, hi) = scale_bytes(first, second, layout.scales + 16 * j);
                // Both halves' mins (the bytes' high nibbles) of each lane as an i16 pair.
                let byte_pairs = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
                let min_pairs = _mm512_srli_epi16::<4>(_mm512_cvtepu8_epi16(byte_pairs));
                for (side, a) in side.iter_mut().zip(tile.at(8 * b + j)) {
                    let half_sums = _mm512_set1_epi32((a.half_sums.as_ptr() as *const i32).read_unaligned());
                    *side = _mm512_dpwssd_epi32(*side, min_pairs, half_sums);
                }
            }
            let dmin = f16x16(first.add(16), second.add(16));
            for ((mins, side), a) in mins.iter_mut().zip(side).zip(tile.at(8 * b)) {
                let a_d = _mm512_set1_ps(a.d);
                *mins = _mm512_fmadd_ps(dmin, _mm512_mul_ps(a_d, _mm512_cvtepi32_ps(side)), *mins);
            }
        }
        mins
    }

    /// One group's runs of an iq4_xs sub-block (quants at `q`), both quads
    /// in one register each: the nibbles of its two loads looked up in
    /// the iq4 table, offset by 128 to unsigned bytes for `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn iq4_runs(q: *const u8) -> [__m512i; 4] {
        let nibbles = _mm512_set1_epi8(0x0F);
        let values = _mm_loadu_si128(crate::quant::IQ4_VALUES.as_ptr() as *const __m128i);
        let table = _mm512_xor_si512(_mm512_broadcast_i32x4(values), _mm512_set1_epi8(-128));
        let (l0, l1) = (joined(q, q.add(64)), joined(q.add(32), q.add(96)));
        let (h0, h1) = (_mm512_srli_epi16::<4>(l0), _mm512_srli_epi16::<4>(l1));
        [l0, l1, h0, h1].map(|n| _mm512_shuffle_epi8(table, _mm512_and_si512(n, nibbles)))
    }

    /// Sixteen sums per token of an iq4_xs pair of groups, as
    /// [`dot_halves_two`]'s, the 256-bit kernel's sums exactly: per
    /// 32-element sub-block `block += (d·sc)·dot`; per super block (whose
    /// act blocks share one scale) `acc += a.d·block`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_iq4_xs_two<const T: usize>(groups: [&[u8]; 2], tile: Tile<'_, T>) -> [[f32; 16]; T] {
        let size = InterleavedRows::block_bytes(DType::IQ4XS);
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..tile.per_token() / 8 {
            let (first, second) = super_blocks(groups, b, size);
            let d = f16x16(first, second);
            let mut block_acc = [_mm512_setzero_ps(); T];
            for j in 0..8 {
                let quants = IQ4XS_QUANTS + IQ4XS_SUB_BYTES * j;
                let w = rearranged(iq4_runs(first.add(quants)), iq4_runs(second.add(quants)));
                let at = IQ4XS_SCALES + 8 * j;
                let scaled = scaled_by(d, joined_bytes(first.add(at), second.add(at)));
                sub_block_tokens::<T, true>(&w, scaled, tile.at(8 * b + j), &mut block_acc);
            }
            for ((acc, block_acc), a) in acc.iter_mut().zip(block_acc).zip(tile.at(8 * b)) {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(a.d), block_acc, *acc);
            }
        }
        row_sums(acc, [_mm512_setzero_ps(); T])
    }
}
