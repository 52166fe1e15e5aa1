//! The cost of serving many adapters at once, on SmolLM2 (Q4_1): aggregate
//! decode tok/s of 16 sequences stepping together on the bare base, all
//! sharing one rank-16 all-linear adapter, and each with its own (16
//! distinct copies of that adapter, so 16 sets of weights are read per
//! step), in alternating rounds of one run; then the time to first token
//! when the adapter must first be loaded from disk (cold) against one
//! already resident. Goals (issue 11): distinct ≥ 0.85× base, ≥ 0.95× shared.
//!
//! `SHAPE=1b` runs the same on a 1B-shaped Llama (hidden 2048, FFN 8192,
//! 16 layers, 32/8 heads; seeded random weights quantized to Q4_0 at load)
//! with a seeded random rank-16 all-linear adapter in f16: the regime where
//! an adapter is small next to its base, unlike SmolLM2-135M, whose Q4_1
//! weights are 85 MB and one f16 rank-16 all-linear adapter 9.8 MB.
//!
//!   [STEPS=32 ROUNDS=5 BATCH=16 SHAPE=smollm2|1b] cargo bench -p tailor-engine --bench adapters

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tailor_model::{ActiveAdapter, Adapter, AdapterLimits, DecodeBuffers, KvCache, Llama, LoadOptions, Logits, Model};

fn main() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (steps, rounds, batch) = (env("STEPS", 32), env("ROUNDS", 5), env("BATCH", 16));
    let (llama, folder, prompt) = match std::env::var("SHAPE").as_deref() {
        Ok("1b") => synthetic::one_b(),
        _ => smollm2(),
    };
    let load = || Arc::new(Adapter::load(&folder, &llama, AdapterLimits::default()).expect("adapter"));
    let shared = ActiveAdapter::new(load(), 1.0).expect("scale");
    let distinct: Vec<_> = (0..batch).map(|_| Some(ActiveAdapter::new(load(), 1.0).expect("scale"))).collect();
    let setups: [(&str, Vec<Option<ActiveAdapter>>); 3] = [
        ("bare base", vec![None; batch]),
        ("one shared adapter", vec![Some(shared.clone()); batch]),
        ("distinct adapters", distinct),
    ];
    let mut prefilled = llama.new_cache();
    llama.forward(&prompt, &mut prefilled, Logits::Last).expect("prefill");
    let mut rates = vec![Vec::new(); setups.len()];
    for _ in 0..rounds {
        for (i, (_, adapters)) in setups.iter().enumerate() {
            rates[i].push(decode_rate(&llama, &prefilled, adapters, steps));
        }
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!(
        "{batch} sequences, rank-16 all-linear adapter ({:.1} MB in memory each), {steps} steps, median of {rounds} rounds",
        shared.adapter.memory_bytes() as f64 / 1e6
    );
    for ((name, _), rate) in setups.iter().zip(&medians) {
        println!("  {name:<20} {rate:7.1} tok/s  {:.3}x base  {:.3}x shared", rate / medians[0], rate / medians[1]);
    }
    let (cold, warm) = first_token_times(&llama, &folder, &shared, &prompt, rounds);
    println!(
        "  time to first token: cold (load adapter + prefill) {:.1} ms, resident {:.1} ms ({:.2}x)",
        cold * 1e3,
        warm * 1e3,
        cold / warm
    );
}

/// SmolLM2 (Q4_1), the committed rank-16 all-linear adapter, a short prompt.
fn smollm2() -> (Llama, PathBuf, Vec<u32>) {
    let path = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF);
    let model = Model::load(&path, LoadOptions::default()).expect("SmolLM2 (tailor models fetch)");
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/adapters/r16-all-linear");
    let prompt = model.encode("Once upon a time, in a land far away,").expect("encode");
    (model.llama, folder, prompt)
}

/// Tokens per second of `steps` decode steps, sequence `i` with
/// `adapters[i]`, every sequence starting from a copy of `prefilled` (the
/// prompt's keys and values: decode speed does not depend on their values,
/// and one prefill keeps the 1B runs short).
fn decode_rate(model: &Llama, prefilled: &KvCache, adapters: &[Option<ActiveAdapter>], steps: usize) -> f64 {
    let mut caches: Vec<KvCache> = adapters.iter().map(|_| prefilled.clone()).collect();
    let tokens = vec![42u32; adapters.len()];
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let mut buffers = DecodeBuffers::default();
    model.forward_decode_adapted(&tokens, &mut refs, adapters, &mut buffers).expect("warm-up step");
    let start = Instant::now();
    for _ in 0..steps {
        model.forward_decode_adapted(&tokens, &mut refs, adapters, &mut buffers).expect("decode step");
    }
    (steps * adapters.len()) as f64 / start.elapsed().as_secs_f64()
}

/// Median seconds to the first token's logits: loading the adapter from
/// disk then prefilling, against prefilling with it resident.
fn first_token_times(
    model: &Llama,
    folder: &std::path::Path,
    resident: &ActiveAdapter,
    prompt: &[u32],
    rounds: usize,
) -> (f64, f64) {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let adapter = Adapter::load(folder, model, AdapterLimits::default()).expect("adapter");
        let adapter = ActiveAdapter::new(Arc::new(adapter), 1.0).expect("scale");
        let mut cache = model.new_cache();
        model.forward_adapted(prompt, &mut cache, Logits::Last, Some(&adapter)).expect("prefill");
        cold.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut cache = model.new_cache();
        model.forward_adapted(prompt, &mut cache, Logits::Last, Some(resident)).expect("prefill");
        warm.push(start.elapsed().as_secs_f64());
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    (cold[rounds / 2], warm[rounds / 2])
}

/// A 1B-shaped decoder and adapter made of seeded random numbers.
mod synthetic {
    use std::path::{Path, PathBuf};
    use tailor_model::llama::BuildOptions;
    use tailor_model::names::{Proj, GLOBAL_TENSORS, LAYER_NORMS};
    use tailor_model::weights::WeightSource;
    use tailor_model::{Llama, LlamaConfig};
    use tailor_tensor::{DType, Tensor};

    /// Weights by name, drawn when asked for (small normal values; norms 1).
    struct RandomWeights {
        config: LlamaConfig,
    }

    fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    impl RandomWeights {
        fn shape(&self, name: &str) -> Option<Vec<usize>> {
            let c = &self.config;
            if name == GLOBAL_TENSORS[0].0 {
                return Some(vec![c.vocab_size, c.hidden_size]);
            }
            if name == GLOBAL_TENSORS[1].0 || LAYER_NORMS.iter().any(|(n, _)| name.ends_with(&format!("{n}.weight"))) {
                return Some(vec![c.hidden_size]);
            }
            let proj = Proj::ALL.into_iter().find(|p| name.ends_with(&format!("{}.weight", p.hf_path())))?;
            let (out, inp) = proj.shape(c);
            Some(vec![out, inp])
        }
    }

    impl WeightSource for RandomWeights {
        fn get(&self, name: &str) -> tailor_model::Result<Tensor> {
            let shape = self.shape(name).ok_or_else(|| tailor_model::ModelError::MissingTensor {
                path: PathBuf::from("synthetic"),
                name: name.to_string(),
            })?;
            let n = shape.iter().product();
            let seed = name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
            let data = if shape.len() == 1 { vec![1.0; n] } else { values(seed, n, 0.02) };
            Ok(Tensor::from_f32(data, &shape)?)
        }
        fn contains(&self, name: &str) -> bool {
            self.shape(name).is_some()
        }
        fn path(&self) -> &Path {
            Path::new("synthetic")
        }
    }

    /// The 1B shape of the speed issue (hidden 2048, FFN 8192, 16 layers,
    /// 32 heads, 8 KV heads, SmolLM2's vocabulary), Q4_0; a rank-16
    /// all-linear f16 adapter written to a scratch folder; a 16-token prompt.
    pub fn one_b() -> (Llama, PathBuf, Vec<u32>) {
        let config = LlamaConfig {
            model_type: "llama".into(),
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 64,
            vocab_size: 49152,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![0],
        };
        eprintln!("building a 1B-shaped model from random weights (Q4_0) ...");
        let weights = RandomWeights { config: config.clone() };
        let options = BuildOptions { dtype: Some(DType::Q4_0), scope: Default::default(), progress: &|_, _| {} };
        let llama = Llama::load(config.clone(), &weights, options).expect("synthetic model");
        let folder = write_adapter(&config);
        (llama, folder, (1..17).collect())
    }

    /// A PEFT folder: rank 16, alpha 32, every projection of every layer, f16.
    fn write_adapter(config: &LlamaConfig) -> PathBuf {
        let folder = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthetic-adapter-1b");
        std::fs::create_dir_all(&folder).expect("scratch folder");
        let adapter_config =
            r#"{"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": "all-linear", "bias": "none"}"#;
        std::fs::write(folder.join("adapter_config.json"), adapter_config).expect("adapter config");
        let mut tensors = Vec::new();
        for layer in 0..config.num_hidden_layers {
            for proj in Proj::ALL {
                let (out, inp) = proj.shape(config);
                let key = format!("base_model.model.{}", proj.module(layer));
                let seed = (layer * 7 + proj.index()) as u64;
                tensors.push((format!("{key}.lora_A.weight"), vec![16, inp], values(seed, 16 * inp, 0.02)));
                tensors.push((format!("{key}.lora_B.weight"), vec![out, 16], values(seed + 1000, out * 16, 0.02)));
            }
        }
        let views: Vec<(String, F16View)> = tensors
            .into_iter()
            .map(|(name, shape, v)| {
                let bytes = v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
                (name, F16View { shape, bytes })
            })
            .collect();
        safetensors::serialize_to_file(views, None, &folder.join("adapter_model.safetensors"))
            .expect("adapter weights");
        folder
    }

    struct F16View {
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl safetensors::View for F16View {
        fn dtype(&self) -> safetensors::Dtype {
            safetensors::Dtype::F16
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            std::borrow::Cow::Borrowed(&self.bytes)
        }
        fn data_len(&self) -> usize {
            self.bytes.len()
        }
    }
}
