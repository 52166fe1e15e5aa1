//! Fidelity against transformers: the HF folder that `tailor models fetch`
//! derives from SmolLM2 must give the same last-position logits (relative
//! max error ≤ 1e-4) and the same greedy 64-token continuations as
//! transformers (torch CPU, f32). The reference comes from
//! tests/reference/make_reference.sh.

use std::path::PathBuf;
use tailor_model::cache::{cache_dir, SMOLLM2_HF};
use tailor_model::{sampler::argmax, LoadOptions, Logits, Model};

const MAX_RELATIVE_ERROR: f32 = 1e-4;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference")
}

fn load_hf_model() -> Model {
    let dir = cache_dir().join(SMOLLM2_HF);
    assert!(dir.join("model.safetensors").exists(), "{} is missing: run `tailor models fetch` first", dir.display());
    Model::load(&dir, LoadOptions::default()).expect("loading the converted SmolLM2 folder")
}

#[test]
fn logits_and_greedy_match_transformers() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference_dir().join("smollm2_reference.json")).unwrap())
            .unwrap();
    let logits_bytes = std::fs::read(reference_dir().join("smollm2_logits.f32")).unwrap();
    let all_logits: Vec<f32> =
        logits_bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let vocab = reference["vocab"].as_u64().unwrap() as usize;
    let model = load_hf_model();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.len() >= 5, "the reference must cover at least 5 prompts");
    for (i, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        let want_ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        if let Some(messages) = case.get("messages") {
            let messages: Vec<tailor_model::Message> = serde_json::from_value(messages.clone()).unwrap();
            let template = model.template.as_ref().expect("SmolLM2 has a ChatML template");
            assert_eq!(template.render(&messages), text, "case {i}: chat template renders differently");
        }
        let ids = model.tokenizer.encode(text).unwrap();
        assert_eq!(ids, want_ids, "tokenization of case {i} differs from transformers");

        let mut cache = model.llama.new_cache();
        let logits = model.llama.forward(&ids, &mut cache, Logits::Last).unwrap();
        let want = &all_logits[i * vocab..(i + 1) * vocab];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_err = logits.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let relative = max_err / scale;
        println!("case {i}: {} tokens, relative max error {relative:.2e}", ids.len());
        assert!(relative <= MAX_RELATIVE_ERROR, "case {i}: relative max error {relative:e} > {MAX_RELATIVE_ERROR:e}");

        let want_greedy: Vec<u32> =
            case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut greedy = Vec::new();
        let mut next = argmax(&logits);
        for _ in 0..want_greedy.len() {
            greedy.push(next);
            next = argmax(&model.llama.forward(&[next], &mut cache, Logits::Last).unwrap());
        }
        assert_eq!(greedy, want_greedy, "case {i}: greedy continuation differs from transformers");
    }
}
