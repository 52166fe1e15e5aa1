//! Tiny random Llama models, written as real GGUF files and Hugging Face
//! folders, for tests that must not depend on downloaded weights.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tailor_model::gguf::{GgufWriter, MetaValue};
use tailor_model::weights::gguf_name;
use tailor_model::LlamaConfig;
use tailor_tensor::Tensor;

/// A deterministic pseudo-random generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32 - 0.5
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// GPT-2's byte-to-unicode table: the 256 base tokens of byte-level BPE.
pub fn byte_tokens() -> Vec<String> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut extra = 0;
    let mut map = vec![0u32; 256];
    for b in 0..256u32 {
        if printable.contains(&b) {
            map[b as usize] = b;
        } else {
            map[b as usize] = 256 + extra;
            extra += 1;
        }
    }
    printable.clear();
    map.iter().map(|c| char::from_u32(*c).unwrap().to_string()).collect()
}

/// A tiny config: 2 layers, GQA 4/2 heads of 16, vocab = 256 bytes + merges + 3 specials.
pub fn tiny_config(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        model_type: "llama".into(),
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(257),
        eos_token_ids: vec![258],
    }
}

/// The vocabulary: bytes, two merges, then `<|endoftext|> <|im_start|> <|im_end|>`.
pub fn tiny_vocab() -> (Vec<String>, Vec<String>, Vec<u64>) {
    let mut tokens = byte_tokens();
    let merges = vec!["h e".to_string(), "l l".to_string()];
    tokens.push("he".into());
    tokens.push("ll".into());
    let mut types = vec![1u64; tokens.len()];
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    (tokens, merges, types)
}

/// Random weights under Hugging Face names, with their shapes.
pub fn tiny_weights(config: &LlamaConfig, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng(seed);
    let names = tailor_model::convert::hf_tensor_names(config, true);
    let (h, q, kv, ff, v) =
        (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size, config.vocab_size);
    names
        .into_iter()
        .map(|name| {
            let shape = if name.contains("norm") {
                vec![h]
            } else if name.ends_with(".bias") {
                vec![if name.contains("q_proj") { q } else { kv }]
            } else if name.contains("q_proj") {
                vec![q, h]
            } else if name.contains("k_proj") || name.contains("v_proj") {
                vec![kv, h]
            } else if name.contains("o_proj") {
                vec![h, q]
            } else if name.contains("gate_proj") || name.contains("up_proj") {
                vec![ff, h]
            } else if name.contains("down_proj") {
                vec![h, ff]
            } else {
                vec![v, h]
            };
            let n: usize = shape.iter().product();
            let values = if name.contains("norm") {
                (0..n).map(|_| 1.0 + rng.uniform() * 0.2).collect()
            } else {
                rng.vec(n, 0.5)
            };
            (name, shape, values)
        })
        .collect()
}

/// llama.cpp's Q/K permutation (convert_hf_to_gguf's `permute`), written
/// independently of tailor's inverse: HF row `j·half + i` of each head goes
/// to GGUF row `2i + j`.
pub fn llamacpp_permute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * head_dim + j * half + i;
                let dst = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Writes a tiny GGUF (f32 weights, llama.cpp conventions) and returns its path.
pub fn write_tiny_gguf(dir: &Path, arch: &str, seed: u64) -> PathBuf {
    let config = tiny_config(tiny_vocab().0.len());
    write_gguf(dir, &config, arch, seed)
}

/// Writes `config`'s model as GGUF under the architecture name `arch`.
pub fn write_gguf(dir: &Path, config: &LlamaConfig, arch: &str, seed: u64) -> PathBuf {
    let (tokens, merges, types) = tiny_vocab();
    let permuted = arch == "llama";
    let mut w = GgufWriter::new();
    let s = |v: &str| MetaValue::Str(v.to_string());
    let u = |v: usize| MetaValue::U64(v as u64);
    w.meta("general.architecture", s(arch))
        .meta(&format!("{arch}.block_count"), u(config.num_hidden_layers))
        .meta(&format!("{arch}.context_length"), u(config.max_position_embeddings))
        .meta(&format!("{arch}.embedding_length"), u(config.hidden_size))
        .meta(&format!("{arch}.feed_forward_length"), u(config.intermediate_size))
        .meta(&format!("{arch}.attention.head_count"), u(config.num_attention_heads))
        .meta(&format!("{arch}.attention.head_count_kv"), u(config.num_key_value_heads))
        .meta(&format!("{arch}.rope.freq_base"), MetaValue::F64(config.rope_theta))
        .meta(&format!("{arch}.attention.layer_norm_rms_epsilon"), MetaValue::F64(1e-5))
        .meta("tokenizer.ggml.model", s("gpt2"))
        .meta("tokenizer.ggml.pre", s("smollm"))
        .meta("tokenizer.ggml.tokens", MetaValue::Array(tokens.iter().map(|t| s(t)).collect()))
        .meta("tokenizer.ggml.merges", MetaValue::Array(merges.iter().map(|t| s(t)).collect()))
        .meta("tokenizer.ggml.token_type", MetaValue::Array(types.iter().map(|t| MetaValue::U64(*t)).collect()))
        .meta("tokenizer.ggml.bos_token_id", u(257))
        .meta("tokenizer.ggml.eos_token_id", u(258))
        .meta(
            "tokenizer.chat_template",
            s("{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'}}"),
        );
    for (name, shape, values) in tiny_weights(config, seed) {
        let cols = shape.get(1).copied().unwrap_or(1);
        let values = if permuted && name.contains("q_proj") {
            llamacpp_permute(&values, shape[0], cols, config.num_attention_heads)
        } else if permuted && name.contains("k_proj") {
            llamacpp_permute(&values, shape[0], cols, config.num_key_value_heads)
        } else {
            values
        };
        w.tensor(&gguf_name(&name), Tensor::from_f32(values, &shape).unwrap());
    }
    let path = dir.join(format!("tiny-{arch}.gguf"));
    std::fs::write(&path, w.to_bytes()).unwrap();
    path
}

/// Writes the same tiny model as a Hugging Face folder (weights in HF order).
pub fn write_tiny_hf(dir: &Path, seed: u64) -> PathBuf {
    write_hf(dir, &tiny_config(tiny_vocab().0.len()), seed)
}

/// Writes `config`'s model as a Hugging Face folder.
pub fn write_hf(dir: &Path, config: &LlamaConfig, seed: u64) -> PathBuf {
    let folder = dir.join("tiny-hf");
    std::fs::create_dir_all(&folder).unwrap();
    // The tokenizer comes from a GGUF of its own, so a GGUF the caller has
    // loaded (and mapped) is never rewritten under it.
    let gguf = write_gguf(&folder, &tiny_config(tiny_vocab().0.len()), "tokenizer-source", seed);
    let file = tailor_model::gguf::GgufFile::open(&gguf).unwrap();
    let tokenizer = tailor_model::tokenizer::gguf_tokenizer_json(&file).unwrap();
    std::fs::write(folder.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(folder.join("config.json"), config.to_hf_json().to_string()).unwrap();
    write_safetensors(&folder.join("model.safetensors"), &tiny_weights(config, seed));
    folder
}

/// Writes named f32 tensors as one safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// A fresh scratch directory under the target folder.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two layers, 4 query heads over 2 KV heads of 32 (the device kernels'
/// head layout), rows a multiple of 32.
pub fn device_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 128,
        intermediate_size: 192,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        ..tiny_config(tiny_vocab().0.len())
    }
}

/// A rank-4 adapter on q, v, o and down (seeded).
pub fn write_adapter(folder: &Path, config: &LlamaConfig, seed: u64) {
    std::fs::create_dir_all(folder).unwrap();
    let adapter_config = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none",
        "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}"#;
    std::fs::write(folder.join("adapter_config.json"), adapter_config).unwrap();
    let mut rng = Rng(seed);
    let mut tensors = Vec::new();
    for layer in 0..config.num_hidden_layers {
        for (path, out, inp) in [
            ("self_attn.q_proj", config.q_dim(), config.hidden_size),
            ("self_attn.v_proj", config.kv_dim(), config.hidden_size),
            ("self_attn.o_proj", config.hidden_size, config.q_dim()),
            ("mlp.down_proj", config.hidden_size, config.intermediate_size),
        ] {
            let key = format!("base_model.model.model.layers.{layer}.{path}");
            tensors.push((format!("{key}.lora_A.weight"), vec![4, inp], rng.vec(4 * inp, 0.2)));
            tensors.push((format!("{key}.lora_B.weight"), vec![out, 4], rng.vec(out * 4, 0.2)));
        }
    }
    write_safetensors(&folder.join("adapter_model.safetensors"), &tensors);
}
