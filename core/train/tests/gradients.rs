//! The hand-written backward against finite differences of the serving
//! forward, on a tiny random decoder with LoRA on every projection.

mod common;

use common::{tiny_model, tiny_model_of_bf16_values, Lcg};
use tailor_model::lora::{dropout_seed, LoraDropout, Targets};
use tailor_model::{KvCache, Llama, Logits};
use tailor_tensor::DType;
use tailor_train::backward::{accumulate_full_gradients, accumulate_gradients, Checkpointing, Example, FullGrads};
use tailor_train::{LoraParams, LoraSettings};

fn settings() -> LoraSettings {
    LoraSettings { r: 3, alpha: 6.0, targets: Targets::AllLinear, use_rslora: false, dropout: 0.0 }
}

/// LoRA weights with B random too (PEFT starts B at zero, where A's
/// gradient vanishes and would check nothing).
fn random_lora(model: &Llama) -> LoraParams {
    let mut lora = LoraParams::new(model, settings().config(), 7).expect("targets");
    let mut rng = Lcg(99);
    for m in lora.modules_mut() {
        m.b.iter_mut().for_each(|b| *b = rng.uniform() * 0.4);
    }
    lora
}

fn example() -> Example {
    let tokens = vec![3, 17, 42, 8, 8, 25, 11, 49, 0, 30, 12];
    let targets = (0..tokens.len()).map(|t| t >= 5).collect();
    Example { tokens, targets }
}

/// The summed cross-entropy of the example's targets, through the serving
/// forward (`forward_adapted`, all logits), in f64.
fn serving_loss(model: &Llama, lora: &LoraParams, example: &Example) -> f64 {
    let adapter = lora.active(model).expect("adapter");
    let mut cache = KvCache::new(model.config().num_hidden_layers, model.config().kv_dim());
    let logits = model.forward_adapted(&example.tokens, &mut cache, Logits::All, Some(&adapter)).expect("forward");
    let vocab = model.config().vocab_size;
    let mut loss = 0f64;
    for t in 1..example.tokens.len() {
        if !example.targets[t] {
            continue;
        }
        let row = &logits[(t - 1) * vocab..t * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let log_sum = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        loss += log_sum - row[example.tokens[t] as usize] as f64;
    }
    loss
}

fn gradients(model: &Llama, lora: &LoraParams, checkpointing: Checkpointing) -> (f64, LoraParams) {
    let mut lora = lora.clone();
    lora.zero_grads();
    let adapter = lora.active(model).expect("adapter");
    let loss =
        accumulate_gradients(model, &mut lora, &adapter, None, &[&example()], 1.0, checkpointing).expect("backward");
    (loss, lora)
}

/// Compares a few entries of every A and B gradient in `grads` with
/// central differences of `loss_of` around `lora`.
fn check_finite_differences(lora: &LoraParams, grads: &LoraParams, loss_of: impl Fn(&LoraParams) -> f64) {
    let eps = 1e-2f32;
    let mut checked = 0;
    let mut worst = 0f64;
    for (i, module) in grads.modules().iter().enumerate() {
        for (part, analytic) in [("A", &module.grad_a), ("B", &module.grad_b)] {
            // A few entries of each matrix, spread over it.
            for k in [0, analytic.len() / 3, analytic.len() - 1] {
                let at = |delta: f32| {
                    let mut moved = lora.clone();
                    let m = &mut moved.modules_mut()[i];
                    let values = if part == "A" { &mut m.a } else { &mut m.b };
                    values[k] += delta;
                    loss_of(&moved)
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                let error = (analytic[k] as f64 - numeric).abs() / (numeric.abs() + 1e-2);
                worst = worst.max(error);
                assert!(
                    error < 2e-2,
                    "layer {} {:?} {part}[{k}]: backward {} vs finite difference {numeric}",
                    module.layer,
                    module.proj,
                    analytic[k]
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 7 * 2 * 3);
    eprintln!("{checked} entries checked, worst relative error {worst:.2e}");
}

#[test]
fn lora_gradients_match_finite_differences_of_the_serving_forward() {
    let model = tiny_model(5);
    let lora = random_lora(&model);
    let (loss, grads) = gradients(&model, &lora, Checkpointing::Off);
    let reference = serving_loss(&model, &lora, &example());
    assert!((loss - reference).abs() < 1e-4 * reference.abs(), "training loss {loss} vs serving loss {reference}");

    check_finite_differences(&lora, &grads, |moved| serving_loss(&model, moved, &example()));
}

/// A base stored in bf16 trains with its products in bf16 where the CPU
/// has AVX-512 BF16 (forward and backward round their activations to
/// bf16): its LoRA gradients stay within that rounding of the gradients of
/// the same weights held in f32.
#[test]
fn lora_gradients_on_a_bf16_base_are_those_of_its_values_in_f32_to_bf16_rounding() {
    let stored = tiny_model_of_bf16_values(5, Some(DType::BF16));
    let widened = tiny_model_of_bf16_values(5, None);
    assert_eq!(stored.projection(0, tailor_model::names::Proj::Q).weight().dtype(), DType::BF16);
    let lora = random_lora(&widened);
    let ((loss, grads), (reference_loss, reference)) =
        (gradients(&stored, &lora, Checkpointing::Off), gradients(&widened, &lora, Checkpointing::Off));
    assert!((loss - reference_loss).abs() < 1e-2 * reference_loss.abs(), "loss {loss} vs {reference_loss}");
    let (mut difference, mut norm) = (0f64, 0f64);
    for (module, want) in grads.modules().iter().zip(reference.modules()) {
        for (got, want) in [(&module.grad_a, &want.grad_a), (&module.grad_b, &want.grad_b)] {
            difference += got.iter().zip(want.iter()).map(|(g, w)| (*g as f64 - *w as f64).powi(2)).sum::<f64>();
            norm += want.iter().map(|w| (*w as f64).powi(2)).sum::<f64>();
        }
    }
    let relative = (difference / norm).sqrt();
    eprintln!("bf16 base: relative gradient error {relative:.2e}");
    assert!(relative < 2e-2, "bf16 base's LoRA gradients off by {relative:.2e} of their norm");
}

/// With `lora_dropout` the loss is that of a forward whose LoRA inputs are
/// masked (a fixed mask per pass seed): its gradients against finite
/// differences of that very forward, and the same after recomputation.
#[test]
fn lora_dropout_gradients_match_finite_differences_of_the_dropped_out_forward() {
    let model = tiny_model(5);
    let lora = random_lora(&model);
    let dropout = LoraDropout::new(0.3, dropout_seed(42, 3, 1)).expect("valid p");
    assert!(dropout.is_some());
    let run = |params: &LoraParams, checkpointing| {
        let mut params = params.clone();
        params.zero_grads();
        let adapter = params.active(&model).expect("adapter");
        let loss = accumulate_gradients(&model, &mut params, &adapter, dropout, &[&example()], 1.0, checkpointing)
            .expect("backward");
        (loss, params)
    };
    let (loss, grads) = run(&lora, Checkpointing::Off);
    let (undropped, _) = gradients(&model, &lora, Checkpointing::Off);
    assert!((loss - undropped).abs() > 1e-4 * undropped, "dropout changed nothing: {loss} vs {undropped}");
    check_finite_differences(&lora, &grads, |moved| run(moved, Checkpointing::Off).0);
    let (loss_recomputed, recomputed) = run(&lora, Checkpointing::Layers);
    assert_eq!(loss, loss_recomputed);
    for (a, b) in grads.modules().iter().zip(recomputed.modules()) {
        assert_eq!((&a.grad_a, &a.grad_b), (&b.grad_a, &b.grad_b), "a recomputed forward draws the same masks");
    }
}

#[test]
fn layer_checkpointing_gives_the_same_gradients() {
    let model = tiny_model(6);
    let lora = random_lora(&model);
    let (loss_kept, kept) = gradients(&model, &lora, Checkpointing::Off);
    let (loss_recomputed, recomputed) = gradients(&model, &lora, Checkpointing::Layers);
    assert_eq!(loss_kept, loss_recomputed);
    for (a, b) in kept.modules().iter().zip(recomputed.modules()) {
        assert_eq!(a.grad_a, b.grad_a);
        assert_eq!(a.grad_b, b.grad_b);
    }
}

#[test]
fn gradients_scale_and_accumulate() {
    let model = tiny_model(8);
    let lora = random_lora(&model);
    let mut twice = lora.clone();
    twice.zero_grads();
    let adapter = twice.active(&model).expect("adapter");
    for _ in 0..2 {
        accumulate_gradients(&model, &mut twice, &adapter, None, &[&example()], 0.5, Checkpointing::Off)
            .expect("backward");
    }
    let (_, once) = gradients(&model, &lora, Checkpointing::Off);
    for (a, b) in twice.modules().iter().zip(once.modules()) {
        for (x, y) in a.grad_b.iter().zip(&b.grad_b) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{x} vs {y}");
        }
    }
}

#[test]
fn a_packed_batch_gets_the_sum_of_its_examples_gradients() {
    let model = tiny_model(9);
    let lora = random_lora(&model);
    let first = example();
    let second = Example { tokens: vec![5, 6, 7, 8, 40, 41], targets: vec![false, false, true, true, true, true] };
    let mut packed = lora.clone();
    packed.zero_grads();
    let adapter = packed.active(&model).expect("adapter");
    let loss = accumulate_gradients(&model, &mut packed, &adapter, None, &[&first, &second], 1.0, Checkpointing::Off)
        .expect("backward");
    let mut separate = lora.clone();
    separate.zero_grads();
    let mut separate_loss = 0.0;
    for e in [&first, &second] {
        separate_loss += accumulate_gradients(&model, &mut separate, &adapter, None, &[e], 1.0, Checkpointing::Off)
            .expect("backward");
    }
    assert!((loss - separate_loss).abs() < 1e-5 * loss, "{loss} vs {separate_loss}");
    for (a, b) in packed.modules().iter().zip(separate.modules()) {
        // Within 1e-4 of each matrix's largest gradient (sums in another order).
        for (ours, theirs) in [(&a.grad_a, &b.grad_a), (&a.grad_b, &b.grad_b)] {
            let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (x, y) in ours.iter().zip(theirs) {
                assert!((x - y).abs() <= 1e-4 * scale, "packed {x} vs separate {y}");
            }
        }
    }
}

/// The base's loss through the serving forward (no adapter).
fn base_loss(model: &Llama, example: &Example) -> f64 {
    let mut cache = KvCache::new(model.config().num_hidden_layers, model.config().kv_dim());
    let logits = model.forward(&example.tokens, &mut cache, Logits::All).expect("forward");
    let vocab = model.config().vocab_size;
    (1..example.tokens.len())
        .filter(|&t| example.targets[t])
        .map(|t| {
            let row = &logits[(t - 1) * vocab..t * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let log_sum = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            log_sum - row[example.tokens[t] as usize] as f64
        })
        .sum()
}

#[test]
fn full_gradients_match_finite_differences_of_the_serving_forward() {
    let mut model = tiny_model(11);
    let example = example();
    let mut grads = FullGrads::new(&model);
    let loss = accumulate_full_gradients(&model, &mut grads, &[&example], 1.0, Checkpointing::Off).expect("backward");
    assert!((loss - base_loss(&model, &example)).abs() < 1e-4 * loss);
    let named: Vec<(String, Vec<f32>)> = grads.named_mut().into_iter().map(|(n, g)| (n, g.to_vec())).collect();
    assert_eq!(named.len(), 3 + 2 * 9, "embedding, final norm, lm_head, and 9 weights per layer");
    let eps = 1e-2f32;
    let (mut checked, mut worst) = (0, 0f64);
    for (name, analytic) in &named {
        // The entries with the largest gradients (a used embedding row among them).
        let mut order: Vec<usize> = (0..analytic.len()).collect();
        order.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
        for &k in &order[..3] {
            let mut at = |delta: f32| {
                let mut params = model.parameters_mut().expect("weights");
                let (_, values) = params.iter_mut().find(|(n, _)| n == name).expect("a weight of that name");
                values[k] += delta;
                drop(params);
                model.sync_tied();
                base_loss(&model, &example)
            };
            let plus = at(eps);
            let minus = at(-2.0 * eps);
            at(eps);
            let numeric = (plus - minus) / (2.0 * eps as f64);
            let error = (analytic[k] as f64 - numeric).abs() / (numeric.abs() + 1e-2);
            worst = worst.max(error);
            assert!(error < 2e-2, "{name}[{k}]: backward {} vs finite difference {numeric}", analytic[k]);
            checked += 1;
        }
    }
    eprintln!("{checked} weight entries checked, worst relative error {worst:.2e}");
}

/// A batch predicting more positions than the head holds at once (it runs
/// on 128 at a time) has the gradients of its examples taken one by one,
/// summed: the chunks cover every position once, in place.
#[test]
fn a_batch_past_the_heads_chunk_has_the_summed_gradients_of_its_examples() {
    let model = tiny_model(13);
    let mut rng = Lcg(9);
    let examples: Vec<Example> = (0..12)
        .map(|_| {
            let tokens: Vec<u32> = (0..26).map(|_| ((rng.uniform() + 0.5) * 49.9) as u32).collect();
            Example { targets: vec![true; tokens.len()], tokens }
        })
        .collect();
    assert!(examples.iter().map(Example::target_count).sum::<usize>() > 2 * 128);
    let mut batched = FullGrads::new(&model);
    let all: Vec<&Example> = examples.iter().collect();
    let loss = accumulate_full_gradients(&model, &mut batched, &all, 1.0, Checkpointing::Off).expect("backward");
    let mut one_by_one = FullGrads::new(&model);
    let mut summed_loss = 0.0;
    for example in &examples {
        summed_loss +=
            accumulate_full_gradients(&model, &mut one_by_one, &[example], 1.0, Checkpointing::Off).expect("backward");
    }
    assert!((loss - summed_loss).abs() < 1e-5 * summed_loss, "{loss} vs {summed_loss}");
    for ((name, a), (_, b)) in batched.named_mut().into_iter().zip(one_by_one.named_mut()) {
        let norm = b.iter().map(|v| v * v).sum::<f32>().sqrt();
        let error = a.iter().zip(b.iter()).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
        assert!(error <= 1e-5 * norm, "{name}: {error} of {norm}");
    }
}
