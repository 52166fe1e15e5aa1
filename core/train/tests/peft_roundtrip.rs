//! An adapter `tailor train` wrote (tests/reference/train/trained, made by
//! tests/reference/make_peft_roundtrip.sh) loads in PEFT with no missing or
//! unexpected keys, and PEFT's logits with it match tailor's within 1e-4
//! relative on the converted SmolLM2 folder.

use std::path::PathBuf;
use tailor_model::cache::{cache_dir, SMOLLM2_HF};
use tailor_model::{ActiveAdapter, Adapter, AdapterLimits, LoadOptions, Logits, Message, Model};

const MAX_RELATIVE_ERROR: f64 = 1e-4;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/train")
}

#[test]
fn peft_loads_a_tailor_adapter_and_agrees_on_its_logits() {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("trained_reference.json")).unwrap())
            .unwrap();
    for field in ["missing_keys", "unexpected_keys", "key_warnings"] {
        assert_eq!(report[field].as_array().map(Vec::len), Some(0), "PEFT reported {field}: {}", report[field]);
    }
    assert_eq!(report["tensors"], 420, "rank-2 LoRA on 7 projections × 30 layers: A and B each");

    let path = cache_dir().join(SMOLLM2_HF);
    assert!(path.exists(), "{} is missing: run `tailor models fetch` first", path.display());
    let model = Model::load(&path, LoadOptions::default()).expect("loading SmolLM2");
    let adapter = Adapter::load(&reference_dir().join("trained"), &model.llama, AdapterLimits::default()).unwrap();
    let active = ActiveAdapter::new(std::sync::Arc::new(adapter), 1.0).unwrap();
    let vocab = report["vocab"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(reference_dir().join("trained_logits.f32")).unwrap();
    let peft: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    for (i, case) in report["cases"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(model.encode_chat(&messages).unwrap(), ids, "tailor renders the chat as transformers does");
        let mut cache = model.llama.new_cache();
        let logits = model.llama.forward_adapted(&ids, &mut cache, Logits::Last, Some(&active)).unwrap();
        let expected = &peft[i * vocab..(i + 1) * vocab];
        let diff: f64 = logits.iter().zip(expected).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
        let norm: f64 = expected.iter().map(|b| (*b as f64).powi(2)).sum();
        let error = (diff / norm).sqrt();
        eprintln!("prompt {i}: relative error {error:.2e}");
        assert!(error <= MAX_RELATIVE_ERROR, "prompt {i}: relative error {error:.2e}");
    }
}
