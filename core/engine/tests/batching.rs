//! Continuous batching on the real SmolLM2: requests that run together
//! (joining and leaving the batch at different steps) produce exactly what
//! each produces alone, sampled ones included; a dropped receiver cancels;
//! bad requests fail alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use tailor_engine::{Engine, EngineOptions, Event};
use tailor_model::{generate, GenerateParams, LoadOptions, Logits, Message, Model, SamplingParams};

fn model() -> Arc<Model> {
    let path = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF);
    assert!(path.exists(), "fetch the model first: tailor models fetch ({} is missing)", path.display());
    Arc::new(Model::load(&path, LoadOptions::default()).expect("SmolLM2 loads"))
}

fn chat(model: &Model, question: &str) -> Vec<u32> {
    let messages = vec![
        Message { role: "system".into(), content: "You are a helpful assistant.".into() },
        Message { role: "user".into(), content: question.into() },
    ];
    model.encode_chat(&messages).expect("template")
}

fn params(max_tokens: usize, sampling: SamplingParams) -> GenerateParams {
    GenerateParams { max_tokens, sampling, ..GenerateParams::default() }
}

/// Tokens and finish reason from a receiver.
fn collect(events: tailor_engine::Submission) -> (Vec<u32>, String) {
    let mut tokens = Vec::new();
    for event in events {
        match event {
            Event::Token(t) => tokens.push(t.id),
            Event::Done(g) => {
                assert_eq!(g.tokens, tokens, "Done carries the streamed tokens");
                return (tokens, format!("{:?}", g.finish));
            }
            Event::Failed(e) => return (tokens, format!("failed: {e}")),
        }
    }
    (tokens, "no end event".into())
}

#[test]
fn batched_requests_match_their_solo_runs_token_for_token() {
    let model = model();
    let greedy = SamplingParams::default();
    let sampled = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 7, ..SamplingParams::default() };
    let requests = [
        (chat(&model, "What is the capital of France?"), params(24, greedy.clone())),
        (chat(&model, "Write a haiku about rain."), params(40, sampled)),
        (chat(&model, "List three colors."), params(7, greedy.clone())),
        (model.encode("1, 2, 3, 4,").expect("encode"), params(30, greedy.clone())),
        (chat(&model, "Who wrote Hamlet?"), params(33, greedy.clone())),
        (chat(&model, "Give me a word that rhymes with cat."), params(12, greedy)),
    ];
    let solo: Vec<(Vec<u32>, String)> = requests
        .iter()
        .map(|(prompt, p)| {
            let g = generate(&model, prompt, p, &mut |_| true).expect("solo generation");
            (g.tokens, format!("{:?}", g.finish))
        })
        .collect();
    // A batch of at most 4: the last two wait and join as others leave.
    let engine = Engine::start(model.clone(), EngineOptions { max_batch: 4, ..EngineOptions::default() });
    let receivers: Vec<_> = requests.iter().map(|(prompt, p)| engine.submit(prompt.clone(), p.clone())).collect();
    let batched: Vec<(Vec<u32>, String)> = receivers.into_iter().map(collect).collect();
    for (i, (solo, batched)) in solo.iter().zip(&batched).enumerate() {
        assert_eq!(solo, batched, "request {i}: batched output differs from its solo run");
    }
    let stats = engine.stats();
    let (steps, tokens) = (stats.steps.load(Ordering::Relaxed), stats.decoded_tokens.load(Ordering::Relaxed));
    println!("{steps} decode steps, {tokens} tokens: mean batch {:.2}", tokens as f64 / steps as f64);
    assert!(tokens as f64 / steps as f64 > 2.0, "requests were not batched");
    // The chat prompts share the template's system prompt: later ones reused it.
    assert!(stats.prefix_hits.load(Ordering::Relaxed) >= 3, "no prefix was reused");
    assert!(stats.prefix_tokens.load(Ordering::Relaxed) >= 30, "reused prefixes were short");
}

#[test]
fn a_prompt_prefilled_in_pieces_gives_exactly_the_full_prefill() {
    let model = model();
    let prompt = chat(&model, "Explain what a KV cache is, in one sentence.");
    let mut whole_cache = model.llama.new_cache();
    let whole = model.llama.forward(&prompt, &mut whole_cache, Logits::Last).expect("full prefill");
    let min = tailor_model::Llama::EXACT_PREFILL_MIN;
    for split in [min, 13, 20, prompt.len() - min - 1, prompt.len() - min] {
        let mut cache = model.llama.new_cache();
        model.llama.forward(&prompt, &mut cache, Logits::Last).expect("prefill of a longer prompt");
        cache.truncate(split); // as a reused prefix of another prompt would be
        let rest = model.llama.extend(&prompt[split..], &mut cache, Logits::Last).expect("extend");
        let differing = rest.iter().zip(&whole).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "logits after a reused prefix of {split} of {} tokens", prompt.len());
    }
}

#[test]
fn a_dropped_receiver_cancels_and_bad_requests_fail_alone() {
    let model = model();
    let engine = Engine::start(model.clone(), EngineOptions::default());
    let long = engine.submit(chat(&model, "Tell me a long story."), params(200, SamplingParams::default()));
    let overflow = engine.submit(vec![1; model.llama.context_length() + 1], params(4, SamplingParams::default()));
    let bad_sampling = SamplingParams { temperature: -1.0, ..SamplingParams::default() };
    let invalid = engine.submit(chat(&model, "Hi"), params(4, bad_sampling));
    let short = engine.submit(chat(&model, "What is the capital of France?"), params(4, SamplingParams::default()));
    for _ in 0..2 {
        assert!(matches!(long.recv(), Ok(Event::Token(_))));
    }
    drop(long);
    let (_, overflow_end) = collect(overflow);
    assert!(overflow_end.starts_with("failed:") && overflow_end.contains("context"), "{overflow_end}");
    let (_, invalid_end) = collect(invalid);
    assert!(invalid_end.starts_with("failed:"), "{invalid_end}");
    let (tokens, end) = collect(short);
    assert_eq!((tokens.len(), end.as_str()), (4, "Length"));
    // The cancelled sequence leaves the batch at its next step.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.stats().running.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(engine.stats().running.load(Ordering::Relaxed), 0, "the cancelled request kept running");
}

#[test]
fn long_prompts_prefilled_in_chunks_match_their_solo_runs_and_streams_keep_flowing() {
    let model = model();
    let story = "The lighthouse keeper wrote down every ship that passed. ".repeat(30);
    let long = chat(&model, &format!("{story}\nHow many ships are mentioned?"));
    let other = chat(&model, "Count from one to ten.");
    assert!(long.len() > 300, "{} tokens", long.len());
    let greedy = SamplingParams::default();
    let solo = |prompt: &[u32], n| generate(&model, prompt, &params(n, greedy.clone()), &mut |_| true).unwrap().tokens;
    let (long_solo, other_solo) = (solo(&long, 8), solo(&other, 40));
    // Chunks of 16 tokens: the long prompt takes 20-odd scheduling turns, and
    // the stream already running gets a token in each of them.
    let options = EngineOptions { prefill_chunk: 16, prefix_cache_bytes: 0, ..EngineOptions::default() };
    let engine = Engine::start(model.clone(), options);
    let streaming = engine.submit(other.clone(), params(40, greedy.clone()));
    assert!(matches!(streaming.recv(), Ok(Event::Token(_))), "the first stream started");
    let steps_before = engine.stats().steps.load(Ordering::Relaxed);
    let chunked = engine.submit(long.clone(), params(8, greedy));
    let (long_tokens, end) = collect(chunked);
    assert_eq!((long_tokens, end.as_str()), (long_solo, "Length"), "chunked prefill changed the output");
    let steps = engine.stats().steps.load(Ordering::Relaxed) - steps_before;
    let chunks = (long.len() - 8) / 16;
    assert!(steps as usize >= chunks, "{steps} decode steps while {chunks} chunks were prefilled");
    let finished = streaming.into_iter().find_map(|event| match event {
        Event::Done(generation) => Some(generation.tokens),
        Event::Failed(e) => panic!("{e}"),
        Event::Token(_) => None,
    });
    assert_eq!(finished, Some(other_solo), "the running stream's output changed");
}

#[test]
fn several_generations_of_one_prompt_run_together_each_as_alone() {
    let model = model();
    let prompt = chat(&model, "Write a haiku about rain.");
    let seeds = [11u64, 12, 13];
    let with_seed = |seed| params(20, SamplingParams { temperature: 0.9, seed, ..SamplingParams::default() });
    let solo: Vec<Vec<u32>> = seeds
        .iter()
        .map(|&seed| generate(&model, &prompt, &with_seed(seed), &mut |_| true).expect("solo generation").tokens)
        .collect();
    let engine = Engine::start(model.clone(), EngineOptions::default());
    let submission = engine.submit_many(prompt, seeds.iter().map(|&seed| with_seed(seed)).collect());
    let mut streamed = vec![Vec::new(); seeds.len()];
    let mut ended = 0;
    while ended < seeds.len() {
        match submission.recv_indexed_timeout(std::time::Duration::from_secs(60)).expect("an event") {
            (index, Event::Token(t)) => streamed[index].push(t.id),
            (index, Event::Done(g)) => {
                assert_eq!(g.tokens, streamed[index], "generation {index}: Done carries its streamed tokens");
                ended += 1;
            }
            (index, Event::Failed(e)) => panic!("generation {index} failed: {e}"),
        }
    }
    assert_eq!(streamed, solo, "each generation is exactly its solo run");
    assert!(streamed[0] != streamed[1] && streamed[1] != streamed[2], "the seeds differ, so do the samples");
    let stats = engine.stats();
    let (steps, tokens) = (stats.steps.load(Ordering::Relaxed), stats.decoded_tokens.load(Ordering::Relaxed));
    assert!(tokens as f64 / steps as f64 > 2.0, "the generations were not batched: {tokens} tokens in {steps} steps");
}
