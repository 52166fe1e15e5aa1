//! The GGUF types tailor reads against blocks llama.cpp's quantizer wrote
//! from f16 rows and ggml's own Python package (gguf-py) dequantized
//! (`tests/reference/make_quant_blocks.py`, run by hand; its outputs are
//! committed): tailor's dequantizer gives the same values bit for bit,
//! every dot-product path gives their dot product, and tailor's
//! quantizers write the same bytes from the same rows.

mod common;

use common::Rng;
use std::path::PathBuf;
use tailor_tensor::quant::{dequantize_row, quantize_activations, quantize_row, vec_dot, DotImpl};
use tailor_tensor::DType;

/// The types with committed reference blocks.
const TYPES: [DType; 7] = [DType::Q2K, DType::Q3K, DType::Q4K, DType::Q5K, DType::Q6K, DType::IQ4NL, DType::IQ4XS];

/// Elements per reference row.
const ROW: usize = 2048;

/// The committed file `dtype.ext`.
fn read(dtype: DType, ext: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/quant_blocks");
    let path = dir.join(format!("{}.{ext}", dtype.name()));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The raw blocks and the reference values of `dtype`.
fn reference(dtype: DType) -> (Vec<u8>, Vec<f32>) {
    let values = read(dtype, "f32").chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (read(dtype, "bin"), values)
}

/// Every block tailor's quantizer writes from the f16 rows llama.cpp
/// quantized is the block llama.cpp wrote, byte for byte.
#[test]
fn quantizers_write_llama_cpp_s_bytes() {
    for dtype in TYPES {
        let (blocks, _) = reference(dtype);
        let source: Vec<f32> = read(dtype, "source.f16")
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let mut ours = Vec::new();
        quantize_row(dtype, &source, &mut ours).unwrap();
        assert_eq!(ours.len(), blocks.len(), "{dtype}: sizes");
        let block_bytes = dtype.bytes_for(dtype.block_size()).unwrap();
        let differ =
            ours.chunks_exact(block_bytes).zip(blocks.chunks_exact(block_bytes)).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{dtype}: {differ} of {} blocks differ from llama.cpp's", blocks.len() / block_bytes);
    }
}

#[test]
fn dequantization_equals_ggml_bit_for_bit() {
    for dtype in TYPES {
        let (blocks, want) = reference(dtype);
        let row_bytes = dtype.bytes_for(ROW).unwrap();
        assert_eq!(blocks.len(), want.len() / ROW * row_bytes, "{dtype}: reference sizes");
        for (row, want) in blocks.chunks_exact(row_bytes).zip(want.chunks_exact(ROW)) {
            let mut got = vec![0f32; ROW];
            dequantize_row(dtype, row, &mut got).unwrap();
            let differ = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{dtype}: {differ} of {ROW} values differ from ggml's");
            assert!(want.iter().any(|v| *v != 0.0), "{dtype}: an all-zero reference proves nothing");
        }
    }
}

#[test]
fn dot_products_match_the_reference_values() {
    let mut rng = Rng(9);
    for dtype in TYPES {
        let (blocks, values) = reference(dtype);
        let row_bytes = dtype.bytes_for(ROW).unwrap();
        for (row, weights) in blocks.chunks_exact(row_bytes).zip(values.chunks_exact(ROW)) {
            let x = rng.vec(ROW);
            let mut acts = Vec::new();
            quantize_activations(&x, &mut acts).unwrap();
            // The exact product of the weights with the 8-bit activations.
            let dequantized: Vec<f32> = acts.iter().flat_map(|a| a.qs.map(|q| a.d * q as f32)).collect();
            let want: f64 = weights.iter().zip(&dequantized).map(|(w, a)| *w as f64 * *a as f64).sum();
            let scale: f64 = weights.iter().zip(&dequantized).map(|(w, a)| (*w as f64 * *a as f64).abs()).sum();
            for imp in [DotImpl::Scalar, DotImpl::detect()] {
                let got = vec_dot(dtype, row, &acts, imp) as f64;
                assert!((got - want).abs() <= 1e-5 * scale, "{dtype} {imp:?}: {got} vs {want} (scale {scale})");
            }
        }
    }
}
