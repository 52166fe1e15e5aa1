//! LoRA adapters against PEFT: the adapters under tests/reference/adapters
//! were made by PEFT itself (tests/reference/make_adapters.sh: rank 8 on
//! q,v; rank 16 all-linear; rsLoRA with regex targets; rank/alpha patterns
//! on some layers; DoRA), which also wrote its last-position logits and
//! greedy continuations on the converted SmolLM2 folder. On that f32 base
//! tailor must match the logits to 1e-4 relative and pick PEFT's greedy
//! token at each of the 64 positions (teacher-forced, so one exact tie
//! broken the other way does not hide the rest); on the Q4_1 GGUF (whose dequantized weights that folder holds)
//! the top-1 token. Then every kind of bad adapter is a typed error.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tailor_model::cache::{cache_dir, SMOLLM2_GGUF, SMOLLM2_HF};
use tailor_model::{sampler::argmax, ActiveAdapter, Adapter, AdapterLimits, LoadOptions, Logits, Model, ModelError};

const MAX_RELATIVE_ERROR: f32 = 1e-4;
/// On the Q4_1 file tailor quantizes activations to 8 bits in the prefill
/// as in decoding (as llama.cpp does). Measured on the llama.cpp reference
/// prompts of tests/gguf_smollm2.rs (2026-12-02, AMD EPYC, AVX2 kernels):
/// top-5 log-probabilities then sit up to 0.27 nats from the exact
/// dequantized computation, llama.cpp's up to 0.25. Two tokens' gap can
/// move by twice that, so a top-1 that PEFT ranks within this of its own is
/// a near-tie, not a fault.
const Q4_NEAR_TIE_NATS: f32 = 0.5;
/// Two logits closer than this (relative to the largest) are a tie that
/// float rounding may break either way (seen: 5e-6 on logits of 10).
const MAX_TIE: f32 = 1e-5;

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference")
}

fn adapter_dir(name: &str) -> PathBuf {
    reference_dir().join("adapters").join(name)
}

fn load(path: &Path) -> Model {
    assert!(path.exists(), "{} is missing: run `tailor models fetch` first", path.display());
    Model::load(path, LoadOptions::default()).expect("loading SmolLM2")
}

struct Reference {
    json: serde_json::Value,
    logits: Vec<f32>,
    vocab: usize,
}

/// PEFT's outputs for one prompt with one adapter.
struct Case<'a> {
    ids: Vec<u32>,
    greedy: Vec<u32>,
    logits: &'a [f32],
}

/// One adapter of the reference and its cases.
struct ReferenceAdapter<'a> {
    name: String,
    cases: Vec<Case<'a>>,
}

impl Reference {
    fn read() -> Reference {
        let text = std::fs::read_to_string(reference_dir().join("adapters_reference.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let bytes = std::fs::read(reference_dir().join("adapters_logits.f32")).unwrap();
        let logits = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let vocab = json["vocab"].as_u64().unwrap() as usize;
        Reference { json, logits, vocab }
    }

    /// Every adapter's cases, in file order.
    fn adapters(&self) -> Vec<ReferenceAdapter<'_>> {
        let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        let mut row = 0;
        let mut out = Vec::new();
        for adapter in self.json["adapters"].as_array().unwrap() {
            let mut cases = Vec::new();
            for case in adapter["cases"].as_array().unwrap() {
                let logits = &self.logits[row * self.vocab..(row + 1) * self.vocab];
                cases.push(Case { ids: ids(&case["ids"]), greedy: ids(&case["greedy"]), logits });
                row += 1;
            }
            out.push(ReferenceAdapter { name: adapter["name"].as_str().unwrap().to_string(), cases });
        }
        out
    }
}

fn active(model: &Model, name: &str) -> ActiveAdapter {
    let adapter = Adapter::load(&adapter_dir(name), &model.llama, AdapterLimits::default())
        .unwrap_or_else(|e| panic!("loading adapter {name}: {e}"));
    ActiveAdapter::new(Arc::new(adapter), 1.0).unwrap()
}

fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn logits_and_greedy_match_peft_on_the_f32_base() {
    let reference = Reference::read();
    let model = load(&cache_dir().join(SMOLLM2_HF));
    let adapters = reference.adapters();
    assert_eq!(adapters.len(), 5, "the reference covers five adapters");
    let mut ties = 0;
    for ReferenceAdapter { name, cases } in adapters {
        let adapter = active(&model, &name);
        assert!(cases.len() >= 5, "{name}: five prompts");
        for (i, Case { ids, greedy: want_greedy, logits: want }) in cases.iter().enumerate() {
            let mut cache = model.llama.new_cache();
            let logits = model.llama.forward_adapted(ids, &mut cache, Logits::Last, Some(&adapter)).unwrap();
            let relative = relative_error(&logits, want);
            println!("{name} prompt {i}: relative max error {relative:.2e}");
            assert!(relative <= MAX_RELATIVE_ERROR, "{name} prompt {i}: relative max error {relative:e}");
            // The base model's logits differ: the adapter did something.
            let mut base_cache = model.llama.new_cache();
            let base = model.llama.forward(ids, &mut base_cache, Logits::Last).unwrap();
            assert!(relative_error(&base, want) > 10.0 * MAX_RELATIVE_ERROR, "{name}: the adapter changes nothing");

            // Teacher-forced along PEFT's greedy path: at every one of the
            // 64 positions tailor's top token is PEFT's, except where the
            // two leading logits tie within float rounding.
            let mut logits = logits;
            for (step, &want_token) in want_greedy.iter().enumerate() {
                let top = argmax(&logits);
                if top != want_token {
                    let gap = logits[top as usize] - logits[want_token as usize];
                    let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
                    println!("{name} prompt {i} step {step}: near-tie, gap {gap:.2e} on logits of {scale:.1}");
                    assert!(gap <= MAX_TIE * scale, "{name} prompt {i} step {step}: greedy token differs from PEFT");
                    ties += 1;
                }
                logits = model.llama.forward_adapted(&[want_token], &mut cache, Logits::Last, Some(&adapter)).unwrap();
            }
        }
    }
    assert!(ties <= 2, "{ties} near-ties: more than float rounding explains");
}

#[test]
fn top1_matches_peft_on_the_q4_1_base() {
    let reference = Reference::read();
    let model = load(&cache_dir().join(SMOLLM2_GGUF));
    let mut ties = 0;
    for ReferenceAdapter { name, cases } in reference.adapters() {
        let adapter = active(&model, &name);
        for (i, Case { ids, logits: want, .. }) in cases.iter().enumerate() {
            let mut cache = model.llama.new_cache();
            let logits = model.llama.forward_adapted(ids, &mut cache, Logits::Last, Some(&adapter)).unwrap();
            let relative = relative_error(&logits, want);
            let (ours, theirs) = (argmax(&logits), argmax(want));
            println!("{name} prompt {i} on Q4_1: relative max error {relative:.2e}, top-1 {ours} (PEFT {theirs})");
            if ours != theirs {
                let gap = logprob_gap(want, theirs, ours);
                println!("  near-tie: PEFT puts our top-1 {gap:.3} nats below its own");
                assert!(gap <= Q4_NEAR_TIE_NATS, "{name} prompt {i}: top-1 differs from PEFT on Q4_1 by {gap} nats");
                ties += 1;
            }
        }
    }
    // 26 cases. Measured: one near-tie on AMD EPYC with AVX2 kernels; two
    // (0.375 and 0.374 nats) on Zen 4 with AVX-512 (VNNI interleaved
    // prefill, AVX-512 softmax). Both within the bound above; a third would
    // be more than activation quantization explains.
    assert!(ties <= 2, "{ties} top-1 near-ties on Q4_1: more than activation quantization explains");
}

/// How far below `top` PEFT puts `other`, in nats (logits share the normaliser).
fn logprob_gap(logits: &[f32], top: u32, other: u32) -> f32 {
    logits[top as usize] - logits[other as usize]
}

#[test]
fn decode_batch_of_mixed_adapters_equals_each_alone() {
    let model = load(&cache_dir().join(SMOLLM2_GGUF));
    let names = ["r8-qv", "r16-all-linear", "dora"];
    let half = {
        let full = active(&model, "r16-all-linear");
        ActiveAdapter::new(full.adapter.clone(), 0.5).unwrap()
    };
    let mut adapters: Vec<Option<ActiveAdapter>> = names.iter().map(|n| Some(active(&model, n))).collect();
    adapters.push(None);
    adapters.push(Some(half));
    adapters.push(adapters[0].clone());
    let prompt = model.encode("The best way to learn a language is").unwrap();
    // Solo: each sequence alone through the batched path (batch of one).
    let solo: Vec<Vec<f32>> = adapters
        .iter()
        .map(|a| {
            let mut cache = model.llama.new_cache();
            model.llama.forward_adapted(&prompt, &mut cache, Logits::Last, a.as_ref()).unwrap();
            let mut buffers = tailor_model::DecodeBuffers::default();
            let one = std::slice::from_ref(a);
            model.llama.forward_decode_adapted(&[42], &mut [&mut cache], one, &mut buffers).unwrap().to_vec()
        })
        .collect();
    let mut caches: Vec<_> = adapters
        .iter()
        .map(|a| {
            let mut cache = model.llama.new_cache();
            model.llama.forward_adapted(&prompt, &mut cache, Logits::Last, a.as_ref()).unwrap();
            cache
        })
        .collect();
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let tokens = vec![42; adapters.len()];
    let mut buffers = tailor_model::DecodeBuffers::default();
    let batch = model.llama.forward_decode_adapted(&tokens, &mut refs, &adapters, &mut buffers).unwrap();
    let vocab = batch.len() / adapters.len();
    for (i, alone) in solo.iter().enumerate() {
        assert_eq!(&batch[i * vocab..(i + 1) * vocab], &alone[..], "row {i} differs from its solo run");
    }
    // Different adapters (and scales) gave different rows.
    assert_ne!(&batch[..vocab], &batch[3 * vocab..4 * vocab]);
    assert_ne!(&batch[vocab..2 * vocab], &batch[4 * vocab..5 * vocab]);
}

/// A writable copy of a committed adapter, to break.
fn copy_adapter(name: &str, test: &str) -> PathBuf {
    let dir = common::scratch_dir(test);
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir(name).join(file), dir.join(file)).unwrap();
    }
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
}

/// Rewrites the weights file through `edit` on (key, shape, values).
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = parsed
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    edit(&mut tensors);
    common::write_safetensors(&path, &tensors);
}

fn load_err(model: &Model, dir: &Path, limits: AdapterLimits) -> ModelError {
    match Adapter::load(dir, &model.llama, limits) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => {
            println!("{e}");
            e
        }
    }
}

#[test]
fn bad_adapters_are_typed_errors() {
    let model = load(&cache_dir().join(SMOLLM2_GGUF));
    let limits = AdapterLimits::default();

    let dir = copy_adapter("r8-qv", "adapter_missing_config");
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    assert!(matches!(load_err(&model, &dir, limits), ModelError::MissingFile { .. }));

    let dir = copy_adapter("r8-qv", "adapter_peft_type");
    edit_config(&dir, |c| c["peft_type"] = "IA3".into());
    let e = load_err(&model, &dir, limits);
    assert!(matches!(&e, ModelError::Adapter { .. }) && e.to_string().contains("IA3"));

    let dir = copy_adapter("r8-qv", "adapter_modules_to_save");
    edit_config(&dir, |c| c["modules_to_save"] = serde_json::json!(["lm_head"]));
    assert!(load_err(&model, &dir, limits).to_string().contains("modules_to_save"));

    let dir = copy_adapter("r8-qv", "adapter_bias");
    edit_config(&dir, |c| c["bias"] = "all".into());
    assert!(load_err(&model, &dir, limits).to_string().contains("bias"));

    let dir = copy_adapter("r8-qv", "adapter_stray_key");
    edit_weights(&dir, |t| {
        t.push((
            "base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight".into(),
            vec![8, 576],
            vec![0.0; 8 * 576],
        ))
    });
    let e = load_err(&model, &dir, limits);
    assert!(matches!(&e, ModelError::AdapterKey { key, .. } if key.contains("qq_proj")), "{e}");

    let dir = copy_adapter("r8-qv", "adapter_layer_past_end");
    edit_weights(&dir, |t| {
        for (name, _, _) in t.iter_mut() {
            *name = name.replace("layers.29.", "layers.30.");
        }
    });
    assert!(matches!(load_err(&model, &dir, limits), ModelError::AdapterKey { .. }));

    let dir = copy_adapter("r8-qv", "adapter_shape");
    edit_weights(&dir, |t| {
        let a = t.iter_mut().find(|(n, _, _)| n.ends_with("layers.3.self_attn.v_proj.lora_A.weight")).unwrap();
        a.1 = vec![8, 288];
        a.2.truncate(8 * 288);
    });
    assert!(matches!(load_err(&model, &dir, limits), ModelError::WrongShape { .. }));

    let dir = copy_adapter("r8-qv", "adapter_missing_module");
    edit_weights(&dir, |t| t.retain(|(n, _, _)| !n.contains("layers.7.self_attn.q_proj")));
    assert!(load_err(&model, &dir, limits).to_string().contains("layers.7.self_attn.q_proj"));

    let dir = copy_adapter("r8-qv", "adapter_nan");
    edit_weights(&dir, |t| t[5].2[3] = f32::NAN);
    assert!(load_err(&model, &dir, limits).to_string().contains("NaN"));

    let dir = copy_adapter("r16-all-linear", "adapter_max_rank");
    let e = load_err(&model, &dir, AdapterLimits { max_rank: 8, ..limits });
    assert!(e.to_string().contains("max_rank"), "{e}");

    let dir = copy_adapter("r8-qv", "adapter_truncated");
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&model, &dir, limits);
    assert!(matches!(e, ModelError::Truncated { .. } | ModelError::Corrupt { .. }), "{e}");

    let dir = copy_adapter("r8-qv", "adapter_bin");
    std::fs::rename(dir.join("adapter_model.safetensors"), dir.join("adapter_model.bin")).unwrap();
    assert!(load_err(&model, &dir, limits).to_string().contains("pickled"));

    let dora = active(&model, "dora");
    assert!(ActiveAdapter::new(dora.adapter.clone(), 0.5).is_err(), "DoRA at another scale is refused");
}

#[test]
fn an_adapted_prompt_prefilled_in_pieces_equals_one_prefill() {
    let model = load(&cache_dir().join(SMOLLM2_GGUF));
    let adapter = active(&model, "r16-all-linear");
    let prompt = model.encode_chat(&[tailor_model::Message::new("user", "Say hello.")]).unwrap();
    let mut cache = model.llama.new_cache();
    let full = model.llama.forward_adapted(&prompt, &mut cache, Logits::Last, Some(&adapter)).unwrap();
    for split in [8, 12, 20, prompt.len() - 8] {
        let mut cache = model.llama.new_cache();
        model.llama.forward_adapted(&prompt[..split], &mut cache, Logits::Last, Some(&adapter)).unwrap();
        let rest = model.llama.extend_adapted(&prompt[split..], &mut cache, Logits::Last, Some(&adapter)).unwrap();
        assert_eq!(rest, full, "prefix of {split} tokens, then the rest: not what one prefill gives");
    }
}

#[test]
fn a_merged_folder_gives_what_the_adapter_gives_at_run_time() {
    let model = load(&cache_dir().join(SMOLLM2_HF));
    let prompt = model.encode("The capital of France is").unwrap();
    for name in ["dora", "rank-pattern"] {
        let adapter = active(&model, name);
        let out = common::scratch_dir(&format!("merged-{name}"));
        let report = tailor_model::merge::merge_adapter(&model, &adapter.adapter, &out, &|_, _| {}).unwrap();
        assert!(!report.base_was_quantized);
        let merged = Model::load(&out, LoadOptions::default()).unwrap();
        let mut cache = model.llama.new_cache();
        let want = model.llama.forward_adapted(&prompt, &mut cache, Logits::Last, Some(&adapter)).unwrap();
        let mut cache = merged.llama.new_cache();
        let got = merged.llama.forward(&prompt, &mut cache, Logits::Last).unwrap();
        let relative = relative_error(&got, &want);
        println!("{name}: merged vs run-time adapter, relative max error {relative:.2e}");
        assert!(relative <= MAX_RELATIVE_ERROR, "{name}: {relative:e}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
