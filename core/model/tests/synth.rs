//! Synthetic models (`tailor models synth`): every GGUF weight type loads
//! and runs through the real decoder, prefill (gemm) and decode (row
//! kernels: integer dots, f16/bf16 read as stored) alike, and gives the
//! logits of the same weights in f32 within that type's rounding. A width
//! that is not whole 256-blocks falls back as llama.cpp does (q4_k → q5_0).

use std::path::PathBuf;
use tailor_model::cache::{cache_dir, SMOLLM2_GGUF};
use tailor_model::gguf::GgufFile;
use tailor_model::synth::{synthesize, SynthShape};
use tailor_model::{LoadOptions, Logits, Model};
use tailor_tensor::DType;

fn template() -> GgufFile {
    let path = cache_dir().join(SMOLLM2_GGUF);
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}: run `tailor models fetch` first"))
}

fn small(hidden: usize) -> SynthShape {
    SynthShape { hidden, intermediate: 2 * hidden, layers: 2, heads: 4, kv_heads: 2, context: 512 }
}

fn write(dir: &str, shape: SynthShape, dtype: DType) -> Model {
    let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-{dir}-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join(format!("{dtype}.gguf"));
    let writer = synthesize(&template(), shape, dtype, 7, &|_, _| {}).unwrap();
    let mut file = std::fs::File::create(&path).unwrap();
    writer.write_to(&mut file).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let want = dtype.for_rows_of(shape.hidden);
    assert_eq!(file.tensors["blk.1.ffn_up.weight"].dtype, want, "{dtype}");
    assert_eq!(file.tensors["blk.1.attn_norm.weight"].dtype, DType::F32);
    Model::load(&path, LoadOptions::default()).unwrap()
}

/// Last-position logits after a prefill of all but one token (the gemm
/// path), then of a one-token decode step (the row kernels).
fn logits(model: &Model) -> (Vec<f32>, Vec<f32>) {
    let ids = model.tokenizer.encode("The quick brown fox jumps over the lazy dog and runs away").unwrap();
    let mut cache = model.llama.new_cache();
    let prefill = model.llama.forward(&ids[..ids.len() - 1], &mut cache, Logits::Last).unwrap();
    let decode = model.llama.forward(&ids[ids.len() - 1..], &mut cache, Logits::Last).unwrap();
    (prefill, decode)
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f32 = want.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

#[test]
fn every_weight_type_runs_and_tracks_f32() {
    let shape = small(256);
    let reference = write("types", shape, DType::F32);
    let (want_prefill, want_decode) = logits(&reference);
    assert_eq!(reference.llama.config().hidden_size, 256);
    // About 1.5× what each type measured (2026-12-02): the error roughly
    // doubles per bit dropped (f16 4.9e-4, bf16 4.4e-3, q8_0 1.7e-2, q6_k
    // 5.3e-2, q5_0/q5_1 1.1e-1, q4_* 1.9e-1 to 2.3e-1; this random
    // network's logits are small, so relative errors look large). The
    // types added 2026-12-03 measured q5_k 1.1e-1, iq4_nl 2.1e-1, iq4_xs
    // 2.3e-1, q3_k 4.0e-1, q2_k 8.3e-1. f16 on a CPU with AVX-512 FP16
    // multiplies in f16 (activations rounded to f16, f16 sums of 16
    // products): 1.1e-3 there (2026-12-04), still 4× under bf16.
    let bounds = [
        (DType::F16, 1.8e-3),
        (DType::BF16, 8e-3),
        (DType::Q8_0, 3e-2),
        (DType::Q6K, 8e-2),
        (DType::Q5_0, 0.16),
        (DType::Q5_1, 0.16),
        (DType::Q4_0, 0.35),
        (DType::Q4_1, 0.3),
        (DType::Q4K, 0.3),
        (DType::Q5K, 0.16),
        (DType::Q3K, 0.6),
        (DType::Q2K, 1.2),
        (DType::IQ4NL, 0.32),
        (DType::IQ4XS, 0.33),
    ];
    for (dtype, bound) in bounds {
        let model = write("types", shape, dtype);
        let (prefill, decode) = logits(&model);
        let (e_prefill, e_decode) = (relative_error(&prefill, &want_prefill), relative_error(&decode, &want_decode));
        println!("{dtype}: relative logit error prefill {e_prefill:.2e}, decode {e_decode:.2e}");
        assert!(e_prefill < bound && e_decode < bound, "{dtype}: {e_prefill} / {e_decode} >= {bound}");
    }
}

#[test]
fn k_quants_of_a_narrow_model_fall_back_to_q5_0() {
    // 192 is not a multiple of 256: every matrix with 192-wide rows is q5_0
    // (and the 384-wide down projection too), and the model runs.
    let model = write("narrow", small(192), DType::Q4K);
    let (prefill, decode) = logits(&model);
    assert!(prefill.iter().chain(&decode).all(|v| v.is_finite()));
}
