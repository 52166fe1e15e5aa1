//! all-MiniLM-L6-v2 against sentence-transformers: every one of 1,200 texts
//! (passages, queries, and joined passages past 128 and 256 tokens) embeds
//! with cosine ≥ 0.9999 to the reference from
//! tests/reference/make_embedding_reference.py, in f32 and, where the CPU
//! has AVX-512 BF16, in the bf16 precision `Encoder::load` picks there.

use std::path::PathBuf;
use tailor_model::cache::{cache_dir, MINILM_DIR};
use tailor_model::{Encoder, EncoderPrecision};

const MIN_COSINE: f32 = 0.9999;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference")
}

fn load_encoder() -> Encoder {
    load_encoder_with(EncoderPrecision::fastest())
}

fn load_encoder_with(precision: EncoderPrecision) -> Encoder {
    let dir = cache_dir().join(MINILM_DIR);
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run `tailor models fetch` first", dir.display());
    Encoder::load_with(&dir, precision).expect("loading all-MiniLM-L6-v2")
}

/// The precisions this CPU runs: f32, and bf16 where it has the instructions.
fn precisions() -> Vec<EncoderPrecision> {
    let mut all = vec![EncoderPrecision::F32];
    if EncoderPrecision::fastest() != EncoderPrecision::F32 {
        all.push(EncoderPrecision::fastest());
    }
    all
}

#[test]
fn embeddings_match_sentence_transformers() {
    let texts: Vec<String> = std::fs::read_to_string(reference_dir().join("minilm_texts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    let bytes = std::fs::read(reference_dir().join("minilm_embeddings.f32")).unwrap();
    let reference: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    for precision in precisions() {
        let encoder = load_encoder_with(precision);
        assert_eq!(
            encoder.max_seq_length(),
            256,
            "sentence_bert_config.json's max_seq_length must win over tokenizer.json's 128"
        );
        assert!(texts.len() >= 1000 && reference.len() == texts.len() * encoder.dim());
        let (worst, long_texts) = lowest_cosine(&encoder, &texts, &reference);
        println!(
            "{precision:?}: {} texts ({long_texts} longer than 128 tokens), lowest cosine {worst:.6}",
            texts.len()
        );
        assert!(worst >= MIN_COSINE, "{precision:?}: lowest cosine {worst} < {MIN_COSINE}");
        assert!(long_texts >= 100, "the reference must exercise texts past 128 tokens");
    }
}

/// The lowest cosine of `texts`' embeddings (in batches of 32) to the
/// reference, and how many texts are longer than 128 tokens.
fn lowest_cosine(encoder: &Encoder, texts: &[String], reference: &[f32]) -> (f32, usize) {
    let dim = encoder.dim();
    let (mut worst, mut long_texts) = (1f32, 0);
    for (batch_index, batch) in texts.chunks(32).enumerate() {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let embeddings = encoder.embed(&refs).unwrap();
        for (i, e) in embeddings.iter().enumerate() {
            let index = batch_index * 32 + i;
            let want = &reference[index * dim..(index + 1) * dim];
            worst = worst.min(e.iter().zip(want).map(|(a, b)| a * b).sum());
        }
        long_texts += refs.iter().filter(|t| encoder.tokenizer().encode_with_special(t).unwrap().len() > 128).count();
    }
    (worst, long_texts)
}

#[test]
fn batching_does_not_change_embeddings() {
    let encoder = load_encoder();
    let texts = ["short", "a somewhat longer sentence about retrieval and grounding", ""];
    let together = encoder.embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = encoder.embed(&[text]).unwrap();
        let diff = alone[0].iter().zip(&together[i]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-5, "text {i}: batched and single embeddings differ by {diff}");
        let norm: f32 = alone[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embeddings are unit length");
    }
}

#[test]
fn precision_names_parse_and_bad_ones_are_errors() {
    assert_eq!("f32".parse::<EncoderPrecision>().unwrap(), EncoderPrecision::F32);
    assert_eq!("BF16".parse::<EncoderPrecision>().unwrap(), EncoderPrecision::Bf16);
    assert_eq!("auto".parse::<EncoderPrecision>().unwrap(), EncoderPrecision::fastest());
    for precision in [EncoderPrecision::F32, EncoderPrecision::Bf16] {
        assert_eq!(precision.to_string().parse::<EncoderPrecision>().unwrap(), precision);
    }
    let error = "fp8".parse::<EncoderPrecision>().unwrap_err().to_string();
    assert!(error.contains("fp8") && error.contains("f32, bf16 or auto"), "{error}");
}
