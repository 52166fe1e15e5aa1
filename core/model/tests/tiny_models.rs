//! Loading paths and bad input on tiny models tailor writes itself.

mod common;

use common::*;
use tailor_model::names::Proj;
use tailor_model::{generate, ConvertScope, GenerateParams, LoadOptions, Logits, Message, Model, ModelError};
use tailor_tensor::DType;

fn load(path: &std::path::Path) -> Result<Model, ModelError> {
    Model::load(path, LoadOptions::default())
}

fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.llama.new_cache();
    model.llama.forward(ids, &mut cache, Logits::Last).unwrap()
}

#[test]
fn gguf_and_hf_folder_of_the_same_weights_agree() {
    let dir = scratch_dir("agree");
    let from_gguf = load(&write_tiny_gguf(&dir, "llama", 11)).unwrap();
    let from_hf = load(&write_tiny_hf(&dir, 11)).unwrap();
    let ids = from_gguf.encode("hello world").unwrap();
    assert_eq!(ids, from_hf.encode("hello world").unwrap());
    let (a, b) = (logits(&from_gguf, &ids), logits(&from_hf, &ids));
    let max = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(max < 1e-5, "GGUF (un-permuted Q/K) and HF logits differ by {max}");
}

#[test]
fn qwen2_style_bias_and_unpermuted_rows_agree_with_hf() {
    let dir = scratch_dir("qwen2");
    let mut config = tiny_config(tiny_vocab().0.len());
    config.model_type = "qwen2".into();
    config.attention_bias = true;
    let from_gguf = load(&write_gguf(&dir, &config, "qwen2", 21)).unwrap();
    let from_hf = load(&write_hf(&dir, &config, 21)).unwrap();
    assert!(from_gguf.llama.config().attention_bias && from_hf.llama.config().attention_bias);
    let ids = from_gguf.encode("hello").unwrap();
    let (a, b) = (logits(&from_gguf, &ids), logits(&from_hf, &ids));
    let max = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(max < 1e-5, "qwen2 GGUF and HF logits differ by {max}");
}

#[test]
fn incremental_decoding_matches_full_forward() {
    let dir = scratch_dir("incremental");
    let model = load(&write_tiny_gguf(&dir, "llama", 12)).unwrap();
    let ids = model.encode("hello hello world").unwrap();
    let mut all_cache = model.llama.new_cache();
    let all = model.llama.forward(&ids, &mut all_cache, Logits::All).unwrap();
    let mut cache = model.llama.new_cache();
    let vocab = model.llama.config().vocab_size;
    for (i, id) in ids.iter().enumerate() {
        let step = model.llama.forward(&[*id], &mut cache, Logits::Last).unwrap();
        let want = &all[i * vocab..(i + 1) * vocab];
        let max = step.iter().zip(want).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(max < 1e-4, "position {i}: one-token steps differ from the batched pass by {max}");
    }
}

#[test]
fn quantizing_on_load_stays_close_to_f32() {
    let dir = scratch_dir("dtype");
    let path = write_tiny_gguf(&dir, "llama", 13);
    let reference = load(&path).unwrap();
    let ids = reference.encode("hello").unwrap();
    let want = logits(&reference, &ids);
    for (dtype, bound) in
        [(DType::F16, 1e-2), (DType::BF16, 5e-2), (DType::Q8_0, 5e-2), (DType::Q4_0, 0.5), (DType::Q4_1, 0.5)]
    {
        let model = Model::load(&path, LoadOptions { dtype: Some(dtype), ..LoadOptions::default() }).unwrap();
        let got = logits(&model, &ids);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < bound, "{dtype}: relative logit error {err} >= {bound}");
    }
}

/// QLoRA's scope: only the blocks' projections are converted to the
/// dtype; the embedding and lm_head keep the file's dtype, or take the
/// one given for them (every matrix the dtype otherwise).
#[test]
fn a_projections_scope_leaves_the_embedding_and_lm_head_as_stored_or_as_told() {
    let dir = scratch_dir("scope");
    let path = write_tiny_gguf(&dir, "llama", 13);
    let load_as =
        |scope| Model::load(&path, LoadOptions { dtype: Some(DType::Q4_0), scope, ..LoadOptions::default() }).unwrap();
    for (others, lm_head) in [(None, DType::F32), (Some(DType::BF16), DType::BF16)] {
        let projections = load_as(ConvertScope::Projections { others });
        assert_eq!(projections.llama.projection(0, Proj::Q).weight().dtype(), DType::Q4_0);
        assert_eq!(projections.llama.projection(1, Proj::Down).weight().dtype(), DType::Q4_0);
        assert_eq!(projections.llama.lm_head().weight().dtype(), lm_head);
    }
    let everything = load_as(ConvertScope::AllMatrices);
    assert_eq!(everything.llama.lm_head().weight().dtype(), DType::Q4_0);
}

/// QLoRA's bases: NF4 and its double-quantized form (an 8-bit scale code
/// per block) give logits near the f32 model's, the double-quantized ones
/// about as near as NF4's; rows that are not whole blocks fall back.
#[test]
fn nf4_and_double_quantized_nf4_bases_stay_near_the_f32_logits() {
    let dir = scratch_dir("nf4");
    let path = write_tiny_gguf(&dir, "llama", 15);
    let ids = [3, 9, 4, 12, 7, 5];
    let reference = logits(&load(&path).unwrap(), &ids);
    let relative_error = |dtype| {
        let scope = ConvertScope::Projections { others: None };
        let options = LoadOptions { dtype: Some(dtype), scope, ..LoadOptions::default() };
        let model = Model::load(&path, options).unwrap();
        assert_eq!(model.llama.projection(0, Proj::Q).weight().dtype(), dtype);
        // down_proj's rows (96) are not whole 64-blocks: q8_0, as llama.cpp falls back.
        assert_eq!(model.llama.projection(0, Proj::Down).weight().dtype(), DType::Q8_0);
        let got = logits(&model, &ids);
        let difference: f32 = got.iter().zip(&reference).map(|(g, r)| (g - r) * (g - r)).sum();
        (difference / reference.iter().map(|r| r * r).sum::<f32>()).sqrt()
    };
    let (nf4, nf4_dq) = (relative_error(DType::NF4), relative_error(DType::NF4DQ));
    eprintln!("relative logit error: nf4 {nf4:.3e}, nf4_dq {nf4_dq:.3e}");
    // Random 4-bit weights: synth.rs measures q4 types at 0.2–0.4 too.
    assert!(nf4 < 0.4 && nf4 > 0.0, "nf4 {nf4}");
    assert!(nf4_dq < 1.25 * nf4, "nf4_dq {nf4_dq} against nf4 {nf4}");
}

#[test]
fn generation_streams_stops_and_respects_limits() {
    let dir = scratch_dir("generate");
    let model = load(&write_tiny_gguf(&dir, "llama", 14)).unwrap();
    let prompt = model.encode_chat(&[Message::new("user", "hello")]).unwrap();
    let params = GenerateParams { max_tokens: 5, ..GenerateParams::default() };
    let mut count = 0;
    let out = generate(&model, &prompt, &params, &mut |_| {
        count += 1;
        true
    })
    .unwrap();
    assert!(out.tokens.len() <= 5 && count == out.tokens.len());
    let mut seen = 0;
    let cancelled = generate(&model, &prompt, &params, &mut |_| {
        seen += 1;
        false
    })
    .unwrap();
    assert!(cancelled.tokens.len() <= 1 && seen <= 1, "returning false from the callback cancels");
    // Same seed, same sampled text.
    let mut sampled = GenerateParams { max_tokens: 8, ..GenerateParams::default() };
    sampled.sampling.temperature = 0.9;
    sampled.sampling.top_k = 20;
    sampled.sampling.top_p = 0.9;
    sampled.sampling.seed = 7;
    let a = generate(&model, &prompt, &sampled, &mut |_| true).unwrap();
    let b = generate(&model, &prompt, &sampled, &mut |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens);
}

fn expect_err(result: Result<Model, ModelError>) -> ModelError {
    match result {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

#[test]
fn truncated_gguf_is_a_typed_error_naming_the_file() {
    let dir = scratch_dir("truncated");
    let path = write_tiny_gguf(&dir, "llama", 1);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 200, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = expect_err(load(&path));
        assert!(matches!(err, ModelError::Truncated { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("tiny-llama.gguf"), "{err}");
    }
}

#[test]
fn corrupt_gguf_is_a_typed_error() {
    let dir = scratch_dir("corrupt");
    let path = write_tiny_gguf(&dir, "llama", 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    let err = expect_err(load(&path));
    assert!(matches!(err, ModelError::Corrupt { .. }) && err.to_string().contains("magic"), "{err}");
    // An absurd array length must not allocate or panic.
    let key = b"general.architecture";
    let mut fake = b"GGUF".to_vec();
    fake.extend(3u32.to_le_bytes());
    fake.extend(0u64.to_le_bytes());
    fake.extend(1u64.to_le_bytes());
    fake.extend((key.len() as u64).to_le_bytes());
    fake.extend(key);
    fake.extend(9u32.to_le_bytes());
    fake.extend(4u32.to_le_bytes());
    fake.extend(u64::MAX.to_le_bytes());
    std::fs::write(&path, &fake).unwrap();
    assert!(matches!(expect_err(load(&path)), ModelError::Truncated { .. }));
}

#[test]
fn unknown_architecture_is_named() {
    let dir = scratch_dir("arch");
    let err = expect_err(load(&write_tiny_gguf(&dir, "gptneox", 1)));
    assert!(matches!(err, ModelError::UnsupportedArchitecture { ref arch, .. } if arch == "gptneox"), "{err}");
    let folder = write_tiny_hf(&dir, 1);
    let config = std::fs::read_to_string(folder.join("config.json")).unwrap().replace("\"llama\"", "\"falcon\"");
    std::fs::write(folder.join("config.json"), config).unwrap();
    let err = expect_err(load(&folder));
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }) && err.to_string().contains("falcon"), "{err}");
}

#[test]
fn wrong_tensor_shape_names_the_tensor() {
    let dir = scratch_dir("shape");
    let folder = write_tiny_hf(&dir, 1);
    let config = std::fs::read_to_string(folder.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\":96", "\"intermediate_size\":80");
    std::fs::write(folder.join("config.json"), config).unwrap();
    let err = expect_err(load(&folder));
    assert!(matches!(err, ModelError::WrongShape { ref name, .. } if name.contains("mlp")), "{err}");
}

#[test]
fn missing_or_truncated_hf_files_are_typed_errors() {
    let dir = scratch_dir("hf-missing");
    let folder = write_tiny_hf(&dir, 1);
    let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let err = expect_err(load(&folder));
    assert!(matches!(err, ModelError::MissingFile { ref path, .. } if path.ends_with("tokenizer.json")), "{err}");

    let folder = write_tiny_hf(&dir, 1);
    std::fs::write(folder.join("model.safetensors"), &weights[..weights.len() - 100]).unwrap();
    let err = expect_err(load(&folder));
    assert!(matches!(err, ModelError::Truncated { .. } | ModelError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    std::fs::write(folder.join("model.safetensors"), b"not a safetensors file").unwrap();
    assert!(expect_err(load(&folder)).to_string().contains("model.safetensors"));

    std::fs::write(folder.join("config.json"), b"{ not json").unwrap();
    assert!(matches!(expect_err(load(&folder)), ModelError::Config { .. }));
    assert!(matches!(expect_err(load(&dir.join("nope.gguf"))), ModelError::MissingFile { .. }));
}

#[test]
fn empty_and_oversized_prompts_are_rejected() {
    let dir = scratch_dir("prompts");
    let model = load(&write_tiny_gguf(&dir, "llama", 1)).unwrap();
    assert!(matches!(model.encode(""), Err(ModelError::EmptyPrompt)));
    assert!(matches!(model.encode_chat(&[Message::new("user", "  ")]), Err(ModelError::EmptyPrompt)));
    let params = GenerateParams::default();
    assert!(matches!(generate(&model, &[], &params, &mut |_| true), Err(ModelError::EmptyPrompt)));
    let long = model.encode(&"hello ".repeat(100)).unwrap();
    assert!(long.len() > model.llama.context_length());
    let err = generate(&model, &long, &params, &mut |_| true).unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { context: 64, .. }), "{err}");
    let mut cache = model.llama.new_cache();
    assert!(matches!(model.llama.forward(&[100_000], &mut cache, Logits::Last), Err(ModelError::BadToken { .. })));
    let mut bad = GenerateParams::default();
    bad.sampling.top_p = 0.0;
    assert!(matches!(generate(&model, &long[..3], &bad, &mut |_| true), Err(ModelError::InvalidParameter(_))));
}

#[test]
fn sharded_safetensors_folder_loads_like_a_single_file() {
    let dir = scratch_dir("sharded");
    let folder = write_tiny_hf(&dir, 31);
    let single = load(&folder).unwrap();
    let ids = single.encode("hello").unwrap();
    let want = logits(&single, &ids);
    // Split the weights into two shards with an index, as large HF models are.
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(folder.join(f), sharded.join(f)).unwrap();
    }
    let config = tiny_config(tiny_vocab().0.len());
    let weights = tiny_weights(&config, 31);
    let (first, second) = weights.split_at(weights.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        write_safetensors(&sharded.join(&file), part);
        for (name, _, _) in part.iter() {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let from_shards = load(&sharded).unwrap();
    assert_eq!(logits(&from_shards, &ids), want);
}

#[test]
fn chat_templates_render_like_their_jinja() {
    use tailor_model::ChatTemplate;
    let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
    let chatml = ChatTemplate::detect(smol).unwrap();
    assert_eq!(
        chatml.render(&[Message::new("user", "Hi")]),
        "<|im_start|>system\nYou are SmolLM<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        chatml.render(&[Message::new("system", "S"), Message::new("user", "Hi")]),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let llama3 =
        ChatTemplate::detect("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}").unwrap();
    assert_eq!(
        llama3.render(&[Message::new("system", "S"), Message::new("user", "Hi")]),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert!(ChatTemplate::detect("{{ messages }}").is_none());
}
