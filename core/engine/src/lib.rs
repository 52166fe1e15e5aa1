//! Continuous batching: many generations share one model, one decode step
//! at a time. Requests queue up; between decode steps, waiting requests are
//! prefilled and join the running batch, and finished or abandoned ones
//! leave it. Every running sequence advances by one token per step through
//! [`Decoder::decode`], which reads the weights once for the whole batch
//! and gives each sequence the logits it would get alone (exactly, on the
//! CPU), so a request's output does not depend on what else is running.
//! The scheduler is written once over [`Decoder`]: the CPU's decoder
//! ([`Engine::start`]) or, with feature `cuda`, the decoder on a device
//! ([`Engine::start_on_device`]), where caches and adapters live in device
//! memory.
//!
//! One scheduler thread owns the sequences; callers talk to it through
//! channels. A caller that drops its [`Submission`] (or cancels it) ends its
//! request before its prefill or at the next step. Prompts that share a prefix with a recent one (a system
//! prompt, a RAG template) reuse its keys and values (`prefix`), exactly.

pub mod adapters;
mod prefix;

pub use adapters::{AdapterError, AdapterInfo, AdapterRegistry, RegistryOptions};

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tailor_model::{
    CpuDecoder, Decoder, DecoderCache, GenerateParams, Generation, Llama, Model, Sampler, Sequence, TokenEvent,
};

/// What a request's receiver gets, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// One generated token.
    Token(TokenEvent),
    /// The generation finished (stop token, length, or context).
    Done(Generation),
    /// The request could not run (bad parameters, prompt past the context, …).
    Failed(String),
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Most sequences decoded together; more wait in the queue.
    pub max_batch: usize,
    /// Bytes of prompt keys/values kept for prefix reuse (0: off).
    pub prefix_cache_bytes: usize,
    /// Prompt tokens prefilled between two decode steps: a longer prompt is
    /// prefilled in chunks of this size, so running streams keep flowing.
    pub prefill_chunk: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_batch: 16, prefix_cache_bytes: 128 << 20, prefill_chunk: 128 }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting to join the batch.
    pub waiting: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Decode steps run.
    pub steps: AtomicU64,
    /// Tokens decoded over all steps (÷ steps = mean batch size).
    pub decoded_tokens: AtomicU64,
    /// Prompts that reused a cached prefix.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens those reuses did not have to prefill.
    pub prefix_tokens: AtomicU64,
}

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    events: Outbox,
    cancelled: Arc<AtomicBool>,
}

/// Where one job's events go: its submission's channel, tagged with the
/// job's index in that submission.
#[derive(Clone)]
struct Outbox {
    channel: Sender<(usize, Event)>,
    index: usize,
}

impl Outbox {
    /// Sends an event; fails once the submission is gone.
    fn send(&self, event: Event) -> Result<(), mpsc::SendError<(usize, Event)>> {
        self.channel.send((self.index, event))
    }
}

/// A submitted request (one or several generations of one prompt): its
/// events, in order per generation, and the means to cancel it. Dropping it
/// cancels too; a cancelled request that has not been prefilled never is,
/// and a running one leaves the batch at the next step.
pub struct Submission {
    events: Receiver<(usize, Event)>,
    cancelled: Arc<AtomicBool>,
}

impl Submission {
    /// The next event, waiting for it.
    pub fn recv(&self) -> Result<Event, mpsc::RecvError> {
        self.events.recv().map(|(_, event)| event)
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Result<Event, mpsc::RecvTimeoutError> {
        self.events.recv_timeout(timeout).map(|(_, event)| event)
    }

    /// The next event of any of its generations, with that generation's
    /// index (its place in [`Engine::submit_many`]'s list), waiting at most
    /// `timeout`.
    pub fn recv_indexed_timeout(&self, timeout: std::time::Duration) -> Result<(usize, Event), mpsc::RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// Asks the scheduler to drop this request (before its prefill, or at
    /// the next decode step).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

impl Drop for Submission {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl Iterator for Submission {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv().ok()
    }
}

/// The scheduler: submit requests, read their events.
pub struct Engine {
    jobs: Mutex<Option<Sender<Job>>>,
    stats: Arc<EngineStats>,
    worker: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the scheduler thread over `model` on the CPU.
    pub fn start(model: Arc<Model>, options: EngineOptions) -> Engine {
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let counters = stats.clone();
        let run = move || {
            let decoder = CpuDecoder::new(&model.llama);
            Scheduler::new(&model, decoder, queue, options, counters).run();
        };
        let worker = std::thread::Builder::new().name("tailor-engine".into()).spawn(run).ok();
        Engine { jobs: Mutex::new(Some(jobs)), stats, worker }
    }

    /// Starts the scheduler thread over `model` on `backend`'s device: its
    /// weights are uploaded first (a typed error, before any request, when
    /// the device cannot take them: the caller may start on the CPU
    /// instead), then every prefill and decode step runs there, with up
    /// to `device.adapter_slots` adapters kept in device memory.
    #[cfg(feature = "cuda")]
    pub fn start_on_device<E>(
        model: Arc<Model>,
        backend: tailor_tensor::cuda::backend::Backend<E>,
        options: EngineOptions,
        device: tailor_model::device::DeviceOptions,
    ) -> tailor_model::Result<Engine>
    where
        E: tailor_tensor::cuda::backend::Executor + 'static,
        tailor_tensor::cuda::backend::Backend<E>: Send,
    {
        use tailor_model::device::{DeviceDecoder, DeviceLlama};
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let counters = stats.clone();
        let (uploaded, upload_result) = mpsc::sync_channel(1);
        let run = move || {
            let weights = match DeviceLlama::upload(&model.llama, &backend) {
                Ok(weights) => weights,
                Err(e) => return drop(uploaded.send(Err(e))),
            };
            let _ = uploaded.send(Ok(()));
            let decoder = DeviceDecoder::with_options(weights, device);
            Scheduler::new(&model, decoder, queue, options, counters).run();
        };
        let worker = std::thread::Builder::new()
            .name("tailor-engine".into())
            .spawn(run)
            .map_err(|e| tailor_model::ModelError::InvalidParameter(format!("the engine thread: {e}")))?;
        let engine = Engine { jobs: Mutex::new(Some(jobs)), stats, worker: Some(worker) };
        match upload_result.recv() {
            Ok(Ok(())) => Ok(engine),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(tailor_model::ModelError::InvalidParameter("the engine thread ended during upload".into())),
        }
    }

    /// Queues a generation; its events arrive through the returned
    /// submission. Dropping it cancels the request.
    pub fn submit(&self, prompt: Vec<u32>, params: GenerateParams) -> Submission {
        self.submit_many(prompt, vec![params])
    }

    /// Queues one generation of `prompt` per entry of `params` (OpenAI's
    /// `n`: typically the same settings with other seeds); they join the
    /// batch together and their events arrive tagged with their index.
    pub fn submit_many(&self, prompt: Vec<u32>, params: Vec<GenerateParams>) -> Submission {
        let (channel, receiver) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        for (index, params) in params.into_iter().enumerate() {
            let events = Outbox { channel: channel.clone(), index };
            let job = Job { prompt: prompt.clone(), params, events: events.clone(), cancelled: cancelled.clone() };
            // Counted before sending, so the scheduler's decrement never comes first.
            self.stats.waiting.fetch_add(1, Ordering::Relaxed);
            let sent = match self.jobs.lock() {
                Ok(jobs) => jobs.as_ref().map(|j| j.send(job).is_ok()),
                Err(_) => None,
            };
            if sent != Some(true) {
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = events.send(Event::Failed("the generation engine has stopped".into()));
            }
        }
        Submission { events: receiver, cancelled }
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The counters, shared (for work that yields to serving while it runs).
    pub fn stats_handle(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }
}

impl Drop for Engine {
    /// Lets running sequences finish, then stops the thread.
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Time a long prompt's prefill may take between two decode steps of the
/// running batch (it stops after the layer that crosses it).
const PREFILL_SLICE: std::time::Duration = std::time::Duration::from_millis(100);

/// A request whose long prompt is being prefilled, a slice per turn.
struct Prefill<D: Decoder> {
    job: Job,
    /// Keys and values of the prompt's first `cache.len()` tokens (and, of
    /// the chunk under way, of its layers run so far).
    cache: D::Cache,
    /// The chunk under way, between two of its slices.
    piece: Option<D::Chunk>,
}

/// Where a request stands after a scheduling turn.
enum Started<D: Decoder> {
    /// In the decode batch.
    Running(Box<Running<D::Cache>>),
    /// More of its prompt to prefill.
    Prefilling(Box<Prefill<D>>),
    /// Finished, failed or cancelled (its caller has been told, if anyone listens).
    Ended,
}

/// A sequence in the running batch.
struct Running<C> {
    sequence: Sequence<C>,
    next: u32,
    events: Outbox,
    cancelled: Arc<AtomicBool>,
}

struct Scheduler<'m, D: Decoder> {
    model: &'m Model,
    decoder: RefCell<D>,
    queue: Receiver<Job>,
    max_batch: usize,
    /// Prompt tokens prefilled per turn for a long prompt.
    prefill_chunk: usize,
    stats: Arc<EngineStats>,
    prefixes: RefCell<prefix::PrefixCache<D::Cache>>,
}

impl<'m, D: Decoder> Scheduler<'m, D> {
    fn new(
        model: &'m Model,
        decoder: D,
        queue: Receiver<Job>,
        options: EngineOptions,
        stats: Arc<EngineStats>,
    ) -> Scheduler<'m, D> {
        Scheduler {
            model,
            decoder: RefCell::new(decoder),
            queue,
            max_batch: options.max_batch.max(1),
            prefill_chunk: options.prefill_chunk.max(Llama::EXACT_PREFILL_MIN),
            stats,
            prefixes: RefCell::new(prefix::PrefixCache::new(options.prefix_cache_bytes)),
        }
    }

    /// The scheduling loop. Each turn: take new requests, start those that
    /// fit (a long prompt is prefilled in chunks, a slice of layers per
    /// turn, one such prompt at a time), then one decode step for the
    /// running batch. So a running stream waits about [`PREFILL_SLICE`]
    /// (plus one layer) between two tokens, however long a prompt joins.
    fn run(self) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Running<D::Cache>> = Vec::new();
        let mut prefilling: Option<Prefill<D>> = None;
        loop {
            if running.is_empty() && waiting.is_empty() && prefilling.is_none() {
                match self.queue.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return, // the engine was dropped and nothing is left
                }
            }
            waiting.extend(self.queue.try_iter());
            while running.len() + usize::from(prefilling.is_some()) < self.max_batch {
                let Some(job) = waiting.front() else { break };
                if prefilling.is_some() && self.is_long(job) {
                    break; // in order: it waits for the chunked one to finish
                }
                let Some(job) = waiting.pop_front() else { break };
                self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
                self.place(self.begin(job), &mut running, &mut prefilling);
            }
            if let Some(prefill) = prefilling.take() {
                self.place(self.prefill_slice(prefill), &mut running, &mut prefilling);
            }
            self.stats.running.store(running.len(), Ordering::Relaxed);
            if !running.is_empty() {
                self.step(&mut running);
                self.stats.running.store(running.len(), Ordering::Relaxed);
            }
        }
    }

    fn place(&self, started: Started<D>, running: &mut Vec<Running<D::Cache>>, prefilling: &mut Option<Prefill<D>>) {
        match started {
            Started::Running(r) => running.push(*r),
            Started::Prefilling(p) => *prefilling = Some(*p),
            Started::Ended => {}
        }
    }

    /// Whether `job`'s prompt is prefilled in chunks (ignoring prefix reuse).
    fn is_long(&self, job: &Job) -> bool {
        job.prompt.len() > self.prefill_chunk + Llama::EXACT_PREFILL_MIN
    }

    /// A new request: checked, its cached prefix looked up, then started at
    /// once or, when more than a chunk is left to prefill, queued for chunks.
    fn begin(&self, job: Job) -> Started<D> {
        if job.cancelled.load(Ordering::Relaxed) {
            return Started::Ended; // its caller left while it waited
        }
        let context = self.model.llama.context_length();
        let checked = match job.prompt.len() >= context {
            true => Err(tailor_model::ModelError::ContextOverflow { tokens: job.prompt.len(), context }),
            false => Sampler::new(job.params.sampling.clone()).map(drop),
        };
        if let Err(e) = checked {
            let _ = job.events.send(Event::Failed(e.to_string()));
            return Started::Ended;
        }
        let adapter_key = job.params.adapter.as_ref().map(|a| a.cache_key());
        let decoder = self.decoder.borrow();
        let reused = self.prefixes.borrow_mut().lookup(&*decoder, &job.prompt, adapter_key);
        if let Some(cache) = &reused {
            self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
            self.stats.prefix_tokens.fetch_add(cache.len() as u64, Ordering::Relaxed);
        }
        let cache = match reused.map_or_else(|| decoder.new_cache(), Ok) {
            Ok(cache) => cache,
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return Started::Ended;
            }
        };
        drop(decoder);
        self.continue_prefill(Prefill { job, cache, piece: None }, true)
    }

    /// Spends up to [`PREFILL_SLICE`] on a long prompt, one layer of one
    /// chunk at a time (each chunk exactly as `Llama::extend` would run it);
    /// once only the last few tokens are left, the sequence starts.
    fn prefill_slice(&self, mut prefill: Prefill<D>) -> Started<D> {
        let started = std::time::Instant::now();
        while started.elapsed() < PREFILL_SLICE {
            if prefill.job.cancelled.load(Ordering::Relaxed) {
                return Started::Ended; // its caller left mid-prefill
            }
            match self.prefill_layer(&mut prefill) {
                Ok(true) => return self.continue_prefill(prefill, false),
                Ok(false) => {}
                Err(e) => {
                    let _ = prefill.job.events.send(Event::Failed(e.to_string()));
                    return Started::Ended;
                }
            }
        }
        Started::Prefilling(Box::new(prefill))
    }

    /// Runs one slice (on the CPU: one layer) of the current chunk,
    /// starting a chunk if none is under way; true when that finished a
    /// chunk.
    fn prefill_layer(&self, prefill: &mut Prefill<D>) -> tailor_model::Result<bool> {
        let mut decoder = self.decoder.borrow_mut();
        let piece = match prefill.piece.take() {
            Some(piece) => piece,
            None => {
                let done = prefill.cache.len();
                let len = (prefill.job.prompt.len() - done - Llama::EXACT_PREFILL_MIN).min(self.prefill_chunk);
                let adapter = prefill.job.params.adapter.as_ref();
                decoder.begin_chunk(&prefill.job.prompt[done..done + len], &prefill.cache, adapter)?
            }
        };
        prefill.piece = decoder.run_chunk(piece, &mut prefill.cache)?;
        Ok(prefill.piece.is_none())
    }

    /// Starts the sequence when few enough prompt tokens are left (the last
    /// `EXACT_PREFILL_MIN` or more go through `Sequence::start_from`), else
    /// leaves it for more chunks. A prompt that starts with at most a chunk
    /// to go is started at once.
    fn continue_prefill(&self, prefill: Prefill<D>, fresh: bool) -> Started<D> {
        let left = prefill.job.prompt.len() - prefill.cache.len();
        let min = Llama::EXACT_PREFILL_MIN;
        let start_now = if fresh { left <= self.prefill_chunk + min } else { left < 2 * min };
        if !start_now {
            return Started::Prefilling(Box::new(prefill));
        }
        match self.admit(prefill.job, prefill.cache) {
            Some(running) => Started::Running(Box::new(running)),
            None => Started::Ended,
        }
    }

    /// Prefills what is left of a request's prompt and streams its first
    /// token; `None` when it is already finished (or failed, or its caller
    /// left).
    fn admit(&self, job: Job, cache: D::Cache) -> Option<Running<D::Cache>> {
        let mut decoder = self.decoder.borrow_mut();
        let (mut sequence, mut logits) =
            match Sequence::start_on(self.model, &mut *decoder, &job.prompt, &job.params, cache) {
                Ok(started) => {
                    let adapter_key = job.params.adapter.as_ref().map(|a| a.cache_key());
                    self.prefixes.borrow_mut().insert(&*decoder, &job.prompt, adapter_key, started.0.cache());
                    started
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    return None;
                }
            };
        drop(decoder);
        match self.advance(&mut sequence, &mut logits, &job.events) {
            Some(next) => Some(Running { sequence, next, events: job.events, cancelled: job.cancelled }),
            None => {
                self.finish(sequence, &job.events);
                None
            }
        }
    }

    /// Hands one position's logits to a sequence and streams the outcome;
    /// returns the token to decode next, or `None` once the sequence ended
    /// (its `Done`/`Failed` already sent).
    fn advance(&self, sequence: &mut Sequence<D::Cache>, logits: &mut [f32], events: &Outbox) -> Option<u32> {
        let step = match sequence.accept(self.model, logits) {
            Ok(step) => step,
            Err(e) => {
                let _ = events.send(Event::Failed(e.to_string()));
                return None;
            }
        };
        if let Some(event) = step.event {
            if events.send(Event::Token(event)).is_err() {
                sequence.cancel(); // nobody is listening
                return None;
            }
        }
        step.next
    }

    /// One decode step for the whole batch; finished sequences leave it.
    fn step(&self, running: &mut Vec<Running<D::Cache>>) {
        running.retain(|r| !r.cancelled.load(Ordering::Relaxed));
        if running.is_empty() {
            return;
        }
        let tokens: Vec<u32> = running.iter().map(|r| r.next).collect();
        let adapters: Vec<_> = running.iter().map(|r| r.sequence.adapter().cloned()).collect();
        let mut decoder = self.decoder.borrow_mut();
        let mut caches: Vec<&mut D::Cache> = running.iter_mut().map(|r| r.sequence.cache_mut()).collect();
        let logits = match decoder.decode(&tokens, &mut caches, &adapters) {
            Ok(logits) => logits,
            Err(e) if e.is_out_of_memory() && running.len() > 1 => {
                // A failed step leaves every cache as it was: the sequence
                // holding the most memory fails alone, the rest step again.
                drop(decoder);
                let largest = (0..running.len()).max_by_key(|&i| running[i].sequence.cache().bytes());
                if let Some(shed) = largest.map(|i| running.swap_remove(i)) {
                    let _ = shed.events.send(Event::Failed(format!("decode step failed: {e}")));
                }
                return self.step(running);
            }
            Err(e) => {
                for r in running.drain(..) {
                    let _ = r.events.send(Event::Failed(format!("decode step failed: {e}")));
                }
                return;
            }
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.decoded_tokens.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        let vocab = logits.len() / tokens.len();
        let mut finished = Vec::new();
        for (i, (r, row)) in running.iter_mut().zip(logits.chunks_exact_mut(vocab)).enumerate() {
            match self.advance(&mut r.sequence, row, &r.events) {
                Some(next) => r.next = next,
                None => finished.push(i),
            }
        }
        for i in finished.into_iter().rev() {
            let done = running.swap_remove(i);
            self.finish(done.sequence, &done.events);
        }
    }

    /// Sends `Done` for a sequence that ended normally (a failed one has
    /// had its `Failed`; a cancelled one has nobody to tell).
    fn finish(&self, sequence: Sequence<D::Cache>, events: &Outbox) {
        if !sequence.is_done() {
            return;
        }
        match sequence.finish(self.model) {
            Ok(generation) if generation.finish != tailor_model::FinishReason::Cancelled => {
                let _ = events.send(Event::Done(generation));
            }
            Ok(_) => {}
            Err(e) => {
                let _ = events.send(Event::Failed(e.to_string()));
            }
        }
    }
}
