//! The AVX2 kernels' integer form for the formats whose sub-blocks carry an
//! integer scale of their own (q6_k, q3_k, q2_k's 16-element halves and
//! iq4_xs's sub-blocks): the scales multiplied in integers by the `madd`
//! that widens the `maddubs` sums, one float step per super block
//! (`super::super::reference::SubBlockScaling::Integer`). A macro apart
//! from `kernels!`, which expands it in each instruction set's module,
//! where these kernels use its helpers (`run_of`, `quad_operands`,
//! `q6_k_runs`, `low_bit_runs`, `prefetch_halves`, …).

/// The integer-form kernels for the target features `$features`.
macro_rules! integer_kernels {
    ($features:tt) => {
        /// The `pshufb` controls that spread a 16-byte load of an act block's
        /// scales (half 0's eight lanes, then half 1's) into the byte each
        /// `maddubs` pair sum of quad `q`, half `h` meets (index `2q + h`):
        /// each of the quad's four rows' scale four times, rows in seat order.
        const fn scale_spreads() -> [[i8; 16]; 4] {
            // The lane of each row (the inverse of `LANE_ROWS`).
            const LANE_OF_ROW: [i8; 8] = [0, 1, 4, 5, 2, 3, 6, 7];
            let mut out = [[0i8; 16]; 4];
            let mut i = 0;
            while i < 64 {
                let (q, h, byte) = (i / 32, (i / 16) % 2, i % 16);
                out[2 * q + h][byte] = 8 * h as i8 + LANE_OF_ROW[4 * q + byte / 4];
                i += 1;
            }
            out
        }

        /// The AVX2 kernels' form of [`dot_halves`], as llama.cpp's AVX2
        /// kernels for these formats weight their halves (`halves_scalar`,
        /// `SubBlockScaling::Integer`): each half's `maddubs` pair sums are
        /// widened by a `madd` with the rows' sub-block scales instead of
        /// ones, so a super block's sums stay in i32 (one per token and
        /// quad, two lanes per row, paired by one `hadd` at its end) and meet
        /// floats once, `acc += (d·a.d)·Σ`; the offset's part `offset·Σ sc·Σ
        /// a` (q2_k: the mins' `Σ m·Σ a`) is a `madd` per act block and token
        /// in a pass of its own. Quads are unpacked one at a time (both at
        /// once, with the offset's sums beside them, ran out of registers:
        /// q6_k 13.7 GMAC/s where this order gives 16.9, tiles of four).
        /// One thread, AVX2-only EPYC, against the per-half form (tile of
        /// four), prefill / decode GMAC/s: q6_k 15.7 → 19.0 / 10.2 → 10.8,
        /// q3_k 15.3 → 19.1 / 10.1 → 11.1, q2_k 17.0 → 20.0 / 14.2 → 14.5.
        /// An Intel Xeon's AVX2 units (the bench's AVX2-form line) gain at
        /// prefill, q6_k 51 → 65, q3_k 52 → 65, q2_k 59 → 68, and lose at one
        /// token in cache, q3_k 30 → 27, q2_k 40 → 34 (no tile's tokens
        /// share the scale spreads); streamed from memory, q2_k/q3_k 10.3 →
        /// 9.0 GB/s on one thread.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dot_halves_integer<const T: usize, const F: usize>(
            group: &[u8],
            acts: &[&[BlockQ8]; T],
        ) -> [__m256; T] {
            let dtype = HALVES[F];
            let layout = HalvesLayout::of(dtype);
            let size = InterleavedRows::block_bytes(dtype);
            let q2_k = dtype == DType::Q2K;
            let spreads = scale_spreads().map(|c| _mm_loadu_si128(c.as_ptr() as *const __m128i));
            let low_nibbles = _mm_set1_epi8(0x0F);
            let (mut acc, mut mins) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
            for b in 0..acts[0].len() / 8 {
                let block = group.as_ptr().add(b * size);
                prefetch_halves(dtype, block, size);
                // Per token, each quad's sums (two i32 lanes per row).
                let mut quads = [[_mm256_setzero_si256(); 2]; T];
                for j in 0..8 {
                    let q = block.add(layout.quants + layout.act_bytes * j);
                    let loaded = _mm_loadu_si128(block.add(layout.scales + 16 * j) as *const __m128i);
                    let scales = if q2_k { _mm_and_si128(loaded, low_nibbles) } else { loaded };
                    let a: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + j]);
                    for quad in 0..2 {
                        let w = if dtype == DType::Q6K {
                            q6_k_runs(q.add(Q6K_QUAD_BYTES * quad))
                        } else {
                            low_bit_runs::<F>(q.add(32 * quad), q.wrapping_add(64), quad)
                        };
                        let spread =
                            [0, 1].map(|h| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, spreads[2 * quad + h])));
                        for t in 0..T {
                            for half in 0..2 {
                                let (first, second) = (run_of(a[t], 2 * half), run_of(a[t], 2 * half + 1));
                                // Each i16 lane ≤ 2·63·127 (q6_k; less for q3_k, q2_k); two summed stay below 2¹⁵.
                                let pairs = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(w[2 * half], first),
                                    _mm256_maddubs_epi16(w[2 * half + 1], second),
                                );
                                let scaled = _mm256_madd_epi16(pairs, spread[half]);
                                quads[t][quad] = _mm256_add_epi32(quads[t][quad], scaled);
                            }
                        }
                    }
                }
                // Σ sc·Σ a (q2_k: Σ m·Σ a) per token, over the act blocks again.
                let mut side = [_mm256_setzero_si256(); T];
                for j in 0..8 {
                    let at = block.add(layout.scales + 16 * j);
                    let side_pairs = if q2_k {
                        q2_k_min_pairs(at)
                    } else {
                        let scales = _mm_loadu_si128(at as *const __m128i);
                        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(scales, _mm_srli_si128(scales, 8)))
                    };
                    for t in 0..T {
                        let a = &acts[t][8 * b + j];
                        let sums = _mm256_set1_epi32((a.half_sums.as_ptr() as *const i32).read_unaligned());
                        side[t] = _mm256_add_epi32(side[t], _mm256_madd_epi16(side_pairs, sums));
                    }
                }
                let d = f16x8(block);
                for t in 0..T {
                    let a_d = _mm256_set1_ps(acts[t][8 * b].d);
                    let rows = _mm256_hadd_epi32(quads[t][0], quads[t][1]);
                    let total = if q2_k {
                        rows
                    } else {
                        _mm256_sub_epi32(rows, _mm256_sll_epi32(side[t], _mm_cvtsi32_si128(layout.offset_shift)))
                    };
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, a_d), _mm256_cvtepi32_ps(total), acc[t]);
                    if q2_k {
                        let dmin = f16x8(block.add(16));
                        mins[t] = _mm256_fmadd_ps(dmin, _mm256_mul_ps(a_d, _mm256_cvtepi32_ps(side[t])), mins[t]);
                    }
                }
            }
            std::array::from_fn(|t| _mm256_sub_ps(acc[t], mins[t]))
        }

        /// iq4_xs on AVX2 in the integer form of `dot_halves_integer`
        /// (`iq4_xs_scalar`, `SubBlockScaling::Integer`): each sub-block's
        /// `maddubs` products (signs moved onto the activations, as
        /// `tile_sums_maddubs` does) widen by a `madd` with the rows'
        /// scales, a super block's sums stay in i32 per token and quad, and
        /// meet floats once, `acc += (d·a.d)·Σ`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dot_iq4_xs_integer<const T: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
            const F: usize = 6;
            let size = InterleavedRows::block_bytes(DType::IQ4XS);
            let (base, runs) = quants_layout(DType::IQ4XS);
            // A sub-block's eight scales spread as one half's of `dot_halves_integer`.
            let spreads = scale_spreads().map(|c| _mm_loadu_si128(c.as_ptr() as *const __m128i));
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..acts[0].len() / 8 {
                let block = group.as_ptr().add(b * size);
                let mut quads = [[_mm256_setzero_si256(); 2]; T];
                for sub in 0..8 {
                    let q = block.add(base + IQ4XS_SUB_BYTES * sub);
                    prefetch(q.wrapping_add(STREAM_AHEAD), IQ4XS_SUB_BYTES);
                    let scales = _mm_loadl_epi64(block.add(IQ4XS_SCALES + 8 * sub) as *const __m128i);
                    let spread = [0, 2].map(|i| _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, spreads[i])));
                    // iq4 quants have no fifth bits: `quad_operands` reads nothing at `h`.
                    let h = q.wrapping_sub(32);
                    let w = [quad_operands::<F>(q, h), quad_operands::<F>(q.add(32 * runs), h.wrapping_add(16))];
                    for k in 0..4 {
                        let magnitudes = [_mm256_sign_epi8(w[0][k], w[0][k]), _mm256_sign_epi8(w[1][k], w[1][k])];
                        for t in 0..T {
                            let run = run_of(&acts[t][8 * b + sub], k);
                            for quad in 0..2 {
                                // Each i16 lane ≤ 2·127·127; times a scale ≤ 32, two summed per i32.
                                let products =
                                    _mm256_maddubs_epi16(magnitudes[quad], _mm256_sign_epi8(run, w[quad][k]));
                                quads[t][quad] =
                                    _mm256_add_epi32(quads[t][quad], _mm256_madd_epi16(products, spread[quad]));
                            }
                        }
                    }
                }
                let d = f16x8(block);
                for t in 0..T {
                    let rows = _mm256_hadd_epi32(quads[t][0], quads[t][1]);
                    let da = _mm256_mul_ps(d, _mm256_set1_ps(acts[t][8 * b].d));
                    acc[t] = _mm256_fmadd_ps(da, _mm256_cvtepi32_ps(rows), acc[t]);
                }
            }
            acc
        }
    };
}
