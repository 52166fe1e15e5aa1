//! The row-interleaved kernels (`quant::interleaved`), AVX2 and its VNNI
//! form, each forced: against its scalar reference bit for bit, every
//! kernel's reference against the row kernel within f32
//! rounding, on whole groups and matrices with leftover rows; rows
//! dequantized from their group equal the GGUF bytes' own; a row's result
//! in a decode batch equal to its solo one; and the multi-token (prefill)
//! kernel giving each token exactly its one-token result, whatever the
//! prompt length or the pieces it is prefilled in.

mod common;

use common::{quantized_formats, Rng};
use tailor_tensor::cpu::{self, LinearScratch};
use tailor_tensor::quant::interleaved::InterleavedRows;
use tailor_tensor::quant::interleaved::{
    dot_group, dot_group_pairs, dot_group_reference, dot_group_tokens_on, dot_two_groups, interleave_rows, takes_pairs,
    takes_two_groups, tile_order, GroupKernel, PairedTokens, GROUP,
};
use tailor_tensor::quant::layout::WeightLayout;
use tailor_tensor::quant::{dequantize_row, quantize_activations_for, vec_dot, BlockQ8, DotImpl};
use tailor_tensor::{DType, Tensor};

/// The fast kernels this CPU runs (those it does not are named on stderr:
/// a machine with VNNI tests both).
fn fast_kernels() -> Vec<GroupKernel> {
    let all = [GroupKernel::Avx2, GroupKernel::Vnni];
    let (run, skipped): (Vec<_>, Vec<_>) = all.into_iter().partition(|k| k.is_supported());
    if !skipped.is_empty() {
        eprintln!("interleaved kernels this CPU cannot run, not tested here: {skipped:?}");
    }
    run
}

/// One token's eight sums on `kernel`.
fn dot_group_on(kernel: GroupKernel, rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    let mut out = [[0f32; GROUP]];
    dot_group_tokens_on(kernel, rows, g, acts, &mut out);
    out[0]
}

/// `tokens` tokens' random activations of `row_len` values each, quantized
/// for `dtype` and lying back to back, and the blocks each takes.
fn random_activations(rng: &mut Rng, dtype: DType, tokens: usize, row_len: usize) -> (Vec<BlockQ8>, usize) {
    let (mut all, mut acts) = (Vec::new(), Vec::new());
    for _ in 0..tokens {
        quantize_activations_for(dtype, &rng.vec(row_len), &mut acts).unwrap();
        all.extend_from_slice(&acts);
    }
    let per_token = all.len() / tokens;
    (all, per_token)
}

fn random_matrix(rng: &mut Rng, dtype: DType, rows: usize, row_len: usize) -> Tensor {
    Tensor::from_f32(rng.vec(rows * row_len), &[rows, row_len]).unwrap().to_dtype(dtype).unwrap()
}

#[test]
fn groups_equal_their_scalar_reference_and_the_row_dots() {
    let mut rng = Rng(21);
    let mut acts = Vec::new();
    for dtype in quantized_formats() {
        let shapes =
            if dtype.block_size() == 256 { [(8, 256), (19, 512), (24, 768)] } else { [(8, 32), (19, 96), (24, 576)] };
        for (rows, row_len) in shapes {
            let w = random_matrix(&mut rng, dtype, rows, row_len);
            let grouped = interleave_rows(dtype, w.bytes(), rows, row_len).expect("interleavable");
            assert_eq!(grouped.rows(), rows / GROUP * GROUP);
            let (mut from_gguf, mut from_groups) = (vec![0f32; row_len], vec![0f32; row_len]);
            for r in 0..grouped.rows() {
                dequantize_row(dtype, w.row_bytes(r), &mut from_gguf).unwrap();
                grouped.dequantize_row(r, &mut from_groups);
                assert_eq!(from_groups, from_gguf, "{dtype} row {r} dequantized from its group");
            }
            quantize_activations_for(dtype, &rng.vec(row_len), &mut acts).unwrap();
            for g in 0..grouped.groups {
                for kernel in fast_kernels() {
                    let forced = dot_group_on(kernel, &grouped, g, &acts);
                    let reference = dot_group_reference(kernel, &grouped, g, &acts);
                    let what = format!("{dtype} {rows}x{row_len} group {g} on {kernel:?}");
                    assert_eq!(forced.map(f32::to_bits), reference.map(f32::to_bits), "{what}");
                }
                let (fast, detected) = (dot_group(&grouped, g, &acts), GroupKernel::detect());
                let reference = dot_group_reference(detected, &grouped, g, &acts);
                assert_eq!(fast.map(f32::to_bits), reference.map(f32::to_bits), "{dtype} {rows}x{row_len} group {g}");
                // Every kernel's arithmetic (its scalar reference, on any CPU)
                // against the row kernel. The k-quants sum sixteen or more
                // scaled sub-blocks (q4_k minus a sum of mins): f32 rounding
                // near 1e-5 of the result.
                let bound = if dtype.block_size() == 256 { 1e-4 } else { 1e-5 };
                for kernel in [GroupKernel::Scalar, GroupKernel::Avx2, GroupKernel::Vnni] {
                    let sums = dot_group_reference(kernel, &grouped, g, &acts);
                    for (i, value) in sums.into_iter().enumerate() {
                        let row = vec_dot(dtype, w.row_bytes(g * GROUP + i), &acts, DotImpl::Scalar);
                        assert!(
                            (value - row).abs() <= bound * row.abs().max(1.0),
                            "{dtype} row {} on {kernel:?}'s reference: {value} vs {row}",
                            g * 8 + i
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn other_formats_and_short_matrices_keep_the_row_kernel() {
    let mut rng = Rng(22);
    let w = random_matrix(&mut rng, DType::BF16, 16, 256);
    assert!(interleave_rows(DType::BF16, w.bytes(), 16, 256).is_none());
    let w = random_matrix(&mut rng, DType::Q4_0, 7, 64);
    assert!(interleave_rows(DType::Q4_0, w.bytes(), 7, 64).is_none());
}

#[test]
fn a_row_in_a_decode_batch_equals_its_solo_result() {
    let mut rng = Rng(23);
    let mut scratch = LinearScratch::default();
    for dtype in quantized_formats() {
        let (rows, row_len, tokens) = (43, if dtype.block_size() == 256 { 512 } else { 192 }, 3);
        let w = random_matrix(&mut rng, dtype, rows, row_len).in_layout(WeightLayout::Interleaved);
        let x = rng.vec(tokens * row_len);
        let mut batch = vec![0f32; tokens * rows];
        cpu::linear(&x, tokens, &w, &mut batch, &mut scratch).unwrap();
        for t in 0..tokens {
            let mut solo = vec![0f32; rows];
            cpu::linear(&x[t * row_len..(t + 1) * row_len], 1, &w, &mut solo, &mut scratch).unwrap();
            assert_eq!(solo, batch[t * rows..(t + 1) * rows], "{dtype} token {t}");
        }
    }
}

#[test]
fn every_token_of_a_tile_gets_its_one_token_result() {
    let mut rng = Rng(24);
    for dtype in quantized_formats() {
        let (rows, row_len) = (16, if dtype.block_size() == 256 { 512 } else { 192 });
        let w = random_matrix(&mut rng, dtype, rows, row_len);
        let grouped = interleave_rows(dtype, w.bytes(), rows, row_len).expect("interleavable");
        // 1 to 17 tokens: whole tiles (four, or eight on VNNI's 32-element
        // kernel) and every remainder.
        for tokens in 1..18 {
            let (all, per_token) = random_activations(&mut rng, dtype, tokens, row_len);
            for (g, kernel) in (0..grouped.groups).flat_map(|g| fast_kernels().into_iter().map(move |k| (g, k))) {
                let mut out = vec![[0f32; GROUP]; tokens];
                dot_group_tokens_on(kernel, &grouped, g, &all, &mut out);
                for (t, sums) in out.iter().enumerate() {
                    let solo = dot_group_on(kernel, &grouped, g, &all[t * per_token..(t + 1) * per_token]);
                    let what = format!("{dtype} {tokens} tokens on {kernel:?}, token {t}");
                    assert_eq!(sums.map(f32::to_bits), solo.map(f32::to_bits), "{what}");
                }
            }
        }
    }
}

#[test]
fn token_pairs_give_each_token_its_one_token_result() {
    let mut rng = Rng(25);
    let formats: Vec<DType> = quantized_formats().into_iter().filter(|&d| takes_pairs(d)).collect();
    if formats.is_empty() {
        eprintln!("no AVX-512 VNNI here: the token-pair kernel is not tested on this CPU");
    }
    let mut paired = PairedTokens::default();
    for dtype in formats {
        let (rows, row_len) = (16, if dtype.block_size() == 256 { 512 } else { 192 });
        let w = random_matrix(&mut rng, dtype, rows, row_len);
        let grouped = interleave_rows(dtype, w.bytes(), rows, row_len).expect("interleavable");
        // 1 to 37 tokens: whole tiles of eight pairs, every remainder, odd
        // counts (the last token paired with itself), from every even start.
        for tokens in 1..38 {
            let (all, per_token) = random_activations(&mut rng, dtype, tokens, row_len);
            paired.fill(&all, tokens, per_token);
            for (g, first) in (0..grouped.groups).flat_map(|g| (0..tokens).step_by(2).map(move |f| (g, f))) {
                let mut out = vec![[0f32; GROUP]; tokens - first];
                dot_group_pairs(&grouped, g, &paired, first, &mut out);
                for (t, sums) in (first..).zip(&out) {
                    let token = &all[t * per_token..(t + 1) * per_token];
                    let solo = dot_group_reference(GroupKernel::Vnni, &grouped, g, token);
                    let what = format!("{dtype} group {g}, {tokens} tokens from {first}, token {t}");
                    assert_eq!(sums.map(f32::to_bits), solo.map(f32::to_bits), "{what}");
                }
            }
        }
    }
}

#[test]
fn two_groups_at_once_give_each_token_its_one_token_result() {
    let mut rng = Rng(27);
    let formats: Vec<DType> = quantized_formats().into_iter().filter(|&d| takes_two_groups(d)).collect();
    if formats.is_empty() {
        eprintln!("no AVX-512 VNNI here: the two-group kernel is not tested on this CPU");
    }
    for dtype in formats {
        // Three groups: pairs (0, 1) and (1, 2), so each group sits in
        // either half of the registers; two super blocks per row.
        let (rows, row_len) = (24, 512);
        let w = random_matrix(&mut rng, dtype, rows, row_len);
        let grouped = interleave_rows(dtype, w.bytes(), rows, row_len).expect("interleavable");
        // 1 to 37 tokens: whole tiles of sixteen, the remainders' tiles of
        // eight and fewer.
        for tokens in 1..38 {
            let (all, per_token) = random_activations(&mut rng, dtype, tokens, row_len);
            let mut tiled = Vec::new();
            tile_order(&all, per_token, &mut tiled);
            for g in 0..grouped.groups - 1 {
                let mut out = vec![[0f32; 2 * GROUP]; tokens];
                dot_two_groups(&grouped, g, &tiled, &mut out);
                for (t, sums) in out.iter().enumerate() {
                    let token = &all[t * per_token..(t + 1) * per_token];
                    let solo = [g, g + 1].map(|g| dot_group_reference(GroupKernel::Vnni, &grouped, g, token));
                    let what = format!("{dtype} groups {g}, {}: {tokens} tokens, token {t}", g + 1);
                    let bits: Vec<u32> = solo.concat().into_iter().map(f32::to_bits).collect();
                    assert_eq!(sums.map(f32::to_bits)[..], bits[..], "{what}");
                }
            }
        }
    }
}

#[test]
fn a_prefill_in_pieces_equals_one_prefill() {
    let mut rng = Rng(25);
    let mut scratch = LinearScratch::default();
    for dtype in quantized_formats() {
        // 43 rows: five groups and three rows on the row kernel; 70 tokens:
        // past one block of cached tokens, split unevenly.
        let (rows, row_len, tokens) = (43, if dtype.block_size() == 256 { 512 } else { 192 }, 70);
        let w = random_matrix(&mut rng, dtype, rows, row_len).in_layout(WeightLayout::Interleaved);
        let x = rng.vec(tokens * row_len);
        let mut whole = vec![0f32; tokens * rows];
        cpu::linear_many_prefill(&x, tokens, &mut [(&w, &mut whole)], &mut scratch).unwrap();
        let mut pieces = vec![0f32; tokens * rows];
        for (start, end) in [(0, 9), (9, 50), (50, 70)] {
            let (xs, ys) = (&x[start * row_len..end * row_len], &mut pieces[start * rows..end * rows]);
            cpu::linear_many_prefill(xs, end - start, &mut [(&w, ys)], &mut scratch).unwrap();
        }
        assert_eq!(whole, pieces, "{dtype}");
        let mut one = vec![0f32; rows];
        cpu::linear(&x[..row_len], 1, &w, &mut one, &mut scratch).unwrap();
        if w.interleaved().is_some() {
            assert_eq!(one, whole[..rows], "{dtype}: token 0 alone");
        }
    }
}
