//! Fine-tuning jobs on the stage's loaded base: created by request, run one
//! at a time on a background thread with tailor-train, persisted under
//! `jobs_dir` (so a restarted daemon resumes them from their last
//! checkpoint), and registered as an adapter of this stage when they
//! succeed, servable at once.
//!
//! Requests (`{"jobs": {"op": …}}`): `create` {training_file,
//! validation_file?, suffix?, seed?, hyperparameters? {n_epochs,
//! batch_size, learning_rate_multiplier}, r?, alpha?, targets?, dropout?,
//! method?},
//! `list`, `get` {id}, `events` {id}, `checkpoints` {id}, `cancel` {id}.
//! Training files are read only from the configured `data_dirs` (after
//! symlinks are resolved, regular files, at most `MAX_DATA_BYTES`), or
//! come inline as `training_data` / `validation_data` (files uploaded to
//! the daemon's `/v1/files`): each job keeps its own copy, so it resumes
//! after a restart even if the upload is deleted.
//! Between steps a job waits while the engine has requests, so training
//! yields the CPU to serving.
//!
//! `method`: `lora` (the default) trains an adapter on the loaded base;
//! `qlora` on the base in 4 bits — a quantized GGUF as loaded, a Hugging
//! Face folder as a private copy with NF4 projections, held while the job
//! runs — and the adapter then serves on the loaded base; `full` trains
//! every weight of a private f32 copy (16 bytes per weight while it runs:
//! small models) and writes a Hugging Face folder (`result_files`), which
//! is a new model, not an adapter of this stage.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tailor_engine::{AdapterRegistry, EngineStats};
use tailor_model::lora::Targets;
use tailor_model::names::Proj;
use tailor_model::{ConvertScope, LoadOptions, Model};
use tailor_plugin_abi::StageError;
use tailor_tensor::DType;
use tailor_train::data::{self, Dataset, Overlong};
use tailor_train::{Datasets, LoraSettings, TrainConfig, TrainError, Trainer};

/// Largest training or validation file read.
const MAX_DATA_BYTES: u64 = 256 << 20;
/// Longest example, in tokens.
const MAX_EXAMPLE_TOKENS: usize = 2048;
/// How often a yielding job looks whether serving has gone quiet.
const YIELD_POLL: Duration = Duration::from_millis(20);
/// A job's record, beside its run folder.
const JOB_FILE: &str = "job.json";
/// A job's copy of an uploaded training file.
const TRAINING_COPY: &str = "training.jsonl";
/// A job's copy of an uploaded validation file.
const VALIDATION_COPY: &str = "validation.jsonl";
/// Where a full fine-tune writes its model, in the job's folder.
const FULL_MODEL_DIR: &str = "model";

/// What a job trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// An adapter on the loaded base.
    #[default]
    Lora,
    /// An adapter on the base in 4 bits.
    Qlora,
    /// Every weight of a private f32 copy of the base.
    Full,
}

/// A job request (`{"jobs": {"op": …}}`).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum JobOp {
    Create(Box<CreateJob>),
    List,
    Get { id: String },
    Events { id: String },
    Checkpoints { id: String },
    Cancel { id: String },
}

/// What `create` takes (OpenAI's fields, plus LoRA settings).
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    training_file: String,
    validation_file: Option<String>,
    suffix: Option<String>,
    seed: Option<u64>,
    #[serde(default)]
    hyperparameters: Hyperparameters,
    r: Option<usize>,
    alpha: Option<f64>,
    targets: Option<Vec<String>>,
    dropout: Option<f64>,
    #[serde(default)]
    method: Method,
    /// An uploaded training file's text (the daemon's `/v1/files`), kept
    /// in the job's folder at creation; `training_file` is then its id.
    #[serde(default, skip_serializing)]
    training_data: Option<String>,
    /// The same for the validation file.
    #[serde(default, skip_serializing)]
    validation_data: Option<String>,
}

/// OpenAI's supervised hyper-parameters (each may be a number or "auto").
#[derive(Deserialize, Serialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameters {
    n_epochs: Option<Value>,
    batch_size: Option<Value>,
    learning_rate_multiplier: Option<Value>,
}

/// A job's persistent record.
#[derive(Serialize, Deserialize, Clone)]
struct Job {
    id: String,
    status: String,
    created_at: u64,
    finished_at: Option<u64>,
    request: CreateJob,
    /// The adapter name it registers when it succeeds.
    adapter: String,
    trained_tokens: Option<u64>,
    error: Option<String>,
}

/// The stage's jobs.
pub struct Jobs {
    dir: PathBuf,
    data_dirs: Vec<PathBuf>,
    model: Arc<Model>,
    adapters: Arc<AdapterRegistry>,
    engine: Arc<EngineStats>,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, Job>,
    queue: Vec<String>,
    cancel: BTreeMap<String, Arc<AtomicBool>>,
}

impl Jobs {
    /// Opens `dir` (created if missing), requeues the jobs a previous run
    /// left queued or running, and starts the worker thread.
    pub fn start(
        dir: PathBuf,
        data_dirs: &[PathBuf],
        model: Arc<Model>,
        adapters: Arc<AdapterRegistry>,
        engine: Arc<EngineStats>,
    ) -> Result<Arc<Jobs>, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("jobs_dir {}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| format!("jobs_dir {}: {e}", dir.display()))?;
        let data_dirs = data_dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
        let jobs = Arc::new(Jobs {
            dir,
            data_dirs,
            model,
            adapters,
            engine,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        jobs.reload()?;
        let worker = jobs.clone();
        std::thread::Builder::new()
            .name("tailor-train".into())
            .spawn(move || worker.work())
            .map_err(|e| format!("starting the training thread: {e}"))?;
        Ok(jobs)
    }

    /// Reads every job record; unfinished ones go back in the queue, and
    /// finished ones' adapters are registered again.
    fn reload(&self) -> Result<(), String> {
        let mut state = self.lock();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(()) };
        let mut records: Vec<Job> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path().join(JOB_FILE)).ok())
            .filter_map(|text| serde_json::from_str(&text).ok())
            .collect();
        records.sort_by_key(|j| (j.created_at, j.id.clone()));
        for job in records {
            match job.status.as_str() {
                "queued" | "running" => state.queue.push(job.id.clone()),
                "succeeded" if job.request.method != Method::Full => {
                    let _ = self.adapters.register(&job.adapter, &self.run_dir(&job.id), false);
                }
                _ => {}
            }
            state.cancel.insert(job.id.clone(), Arc::new(AtomicBool::new(false)));
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(())
    }

    /// Answers a job request with one JSON object.
    pub fn handle(&self, op: JobOp) -> Result<Value, StageError> {
        match op {
            JobOp::Create(request) => self.create(*request),
            JobOp::List => {
                let state = self.lock();
                Ok(json!({"jobs": state.jobs.values().rev().map(|j| self.describe(j)).collect::<Vec<_>>()}))
            }
            JobOp::Get { id } => Ok(self.describe(&self.job(&id)?)),
            JobOp::Events { id } => self.events(&id),
            JobOp::Checkpoints { id } => self.checkpoints(&id),
            JobOp::Cancel { id } => self.cancel(&id),
        }
    }

    fn create(&self, mut request: CreateJob) -> Result<Value, StageError> {
        let config = self.train_config(&request)?;
        let suffix = request.suffix.as_deref().unwrap_or("ft");
        if suffix.is_empty() || suffix.len() > 40 || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StageError::invalid("`suffix` must be 1-40 letters, digits or '-'"));
        }
        let id = new_job_id();
        let adapter = format!("{suffix}-{}", &id[id.len() - 8..]);
        // Validate now, so a bad file is the caller's 400 with its line.
        let checked = self.keep_uploads(&id, &mut request).and_then(|()| self.datasets(&id, &request));
        if let Err(e) = checked {
            let _ = std::fs::remove_dir_all(self.run_dir(&id));
            return Err(e);
        }
        drop(config);
        let job = Job {
            id: id.clone(),
            status: "queued".into(),
            created_at: now(),
            finished_at: None,
            request,
            adapter,
            trained_tokens: None,
            error: None,
        };
        self.save(&job)?;
        let mut state = self.lock();
        state.cancel.insert(id.clone(), Arc::new(AtomicBool::new(false)));
        state.jobs.insert(id.clone(), job.clone());
        state.queue.push(id);
        self.wake.notify_all();
        Ok(self.describe(&job))
    }

    fn cancel(&self, id: &str) -> Result<Value, StageError> {
        let mut state = self.lock();
        let job = state.jobs.get(id).cloned().ok_or_else(|| unknown(id))?;
        if matches!(job.status.as_str(), "succeeded" | "failed" | "cancelled") {
            return Err(StageError::invalid(format!("job {id} already {}", job.status)));
        }
        if let Some(flag) = state.cancel.get(id) {
            flag.store(true, Ordering::Relaxed);
        }
        if job.status == "queued" {
            state.queue.retain(|q| q != id);
            drop(state);
            return Ok(self.describe(&self.finish(id, "cancelled", None, None)));
        }
        Ok(self.describe(&job))
    }

    /// The worker: runs queued jobs one at a time, forever.
    fn work(self: Arc<Self>) {
        loop {
            let id = {
                let mut state = self.lock();
                while state.queue.is_empty() {
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                state.queue.remove(0)
            };
            self.run(&id);
        }
    }

    fn run(&self, id: &str) {
        let Ok(mut job) = self.job(id) else { return };
        let cancel = self.lock().cancel.get(id).cloned().unwrap_or_default();
        job.status = "running".into();
        let _ = self.save(&job);
        self.lock().jobs.insert(id.to_string(), job.clone());
        match self.train(&job, &cancel) {
            Ok(tokens) if job.request.method == Method::Full => {
                self.finish(id, "succeeded", None, Some(tokens));
            }
            Ok(tokens) => {
                let registered = self.adapters.register(&job.adapter, &self.run_dir(id), false);
                match registered {
                    Ok(_) => self.finish(id, "succeeded", None, Some(tokens)),
                    Err(e) => self.finish(id, "failed", Some(format!("registering the adapter: {e}")), Some(tokens)),
                };
            }
            Err(TrainError::Cancelled { .. }) => {
                self.finish(id, "cancelled", None, None);
            }
            Err(e) => {
                self.finish(id, "failed", Some(e.to_string()), None);
            }
        }
    }

    /// Trains (or resumes) a job to the end; the tokens it trained on.
    fn train(&self, job: &Job, cancel: &AtomicBool) -> Result<u64, TrainError> {
        let config = self.train_config(&job.request).map_err(|e| TrainError::Setting(e.message))?;
        let datasets = self.datasets(&job.id, &job.request).map_err(|e| TrainError::Setting(e.message))?;
        let epochs = config.epochs as u64;
        let tokens = datasets.train.tokens() as u64 * epochs;
        let out = self.run_dir(&job.id);
        let base = self.model.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut warn = |_: String| {};
        match job.request.method {
            Method::Lora | Method::Qlora => {
                let private = if job.request.method == Method::Qlora { self.four_bit_copy()? } else { None };
                let llama = private.as_ref().map_or(&self.model.llama, |m| &m.llama);
                let mut trainer = Trainer::new(llama, &base, config, datasets, &out, true, &mut warn)?;
                self.run_yielding(&mut trainer, cancel)?;
            }
            Method::Full => {
                let mut copy = Model::load(&self.model.source, LoadOptions::default())?;
                let mut trainer = Trainer::new_full(&mut copy.llama, &base, config, datasets, &out, true, &mut warn)?;
                self.run_yielding(&mut trainer, cancel)?;
                drop(trainer);
                tailor_model::merge::save_model(&copy, &out.join(FULL_MODEL_DIR), &|_, _| {})?;
            }
        }
        let metrics = out.join(tailor_train::trainer::METRICS_FILE);
        let curve = out.join("loss.png");
        tailor_train::plot::loss_curve(&metrics, &curve)?;
        Ok(tokens)
    }

    /// QLoRA's base: `None` when the loaded one is a GGUF (trained on its
    /// own blocks, as `tailor train --method qlora` does), else a copy of
    /// the Hugging Face folder with its projections in NF4 (the embedding
    /// and lm_head as stored, as in QLoRA).
    fn four_bit_copy(&self) -> Result<Option<Model>, TrainError> {
        if !self.model.source.is_dir() {
            return Ok(None);
        }
        let options = LoadOptions {
            dtype: Some(DType::NF4),
            scope: ConvertScope::Projections { others: None },
            ..Default::default()
        };
        Ok(Some(Model::load(&self.model.source, options)?))
    }

    /// Runs `trainer` to the end, waiting between steps while the engine
    /// has requests (serving first), stopping when `cancel` is set.
    fn run_yielding(&self, trainer: &mut Trainer<'_>, cancel: &AtomicBool) -> Result<(), TrainError> {
        let between_steps = || {
            while self.engine.running.load(Ordering::Relaxed) + self.engine.waiting.load(Ordering::Relaxed) > 0 {
                if cancel.load(Ordering::Relaxed) {
                    return true;
                }
                std::thread::sleep(YIELD_POLL);
            }
            cancel.load(Ordering::Relaxed)
        };
        trainer.run(&mut |_| {}, &between_steps)?;
        Ok(())
    }

    fn train_config(&self, request: &CreateJob) -> Result<TrainConfig, StageError> {
        let defaults = TrainConfig::default();
        let hp = &request.hyperparameters;
        let epochs = auto_or(&hp.n_epochs, "n_epochs", defaults.epochs as f64)?;
        let batch = auto_or(&hp.batch_size, "batch_size", defaults.batch_size as f64)?;
        let multiplier = auto_or(&hp.learning_rate_multiplier, "learning_rate_multiplier", 1.0)?;
        let in_range = (1.0..=100.0).contains(&epochs) && (1.0..=64.0).contains(&batch) && multiplier > 0.0;
        if !in_range || multiplier > 100.0 {
            return Err(StageError::invalid(
                "hyperparameters: n_epochs 1-100, batch_size 1-64, learning_rate_multiplier in (0, 100]",
            ));
        }
        let targets = match &request.targets {
            None => Targets::AllLinear,
            Some(names) => {
                if let Some(bad) = names.iter().find(|n| !Proj::ALL.iter().any(|p| p.module_name() == n.as_str())) {
                    return Err(StageError::invalid(format!("unknown target module {bad:?}")));
                }
                Targets::Names(names.clone())
            }
        };
        let r = request.r.unwrap_or(defaults.lora.r);
        if !(1..=256).contains(&r) {
            return Err(StageError::invalid("`r` must be 1-256"));
        }
        let dropout = request.dropout.unwrap_or(defaults.lora.dropout);
        if !(0.0..1.0).contains(&dropout) {
            return Err(StageError::invalid("`dropout` must be in [0, 1)"));
        }
        Ok(TrainConfig {
            lora: LoraSettings {
                r,
                alpha: request.alpha.unwrap_or(2.0 * r as f64),
                targets,
                use_rslora: false,
                dropout,
            },
            epochs: epochs as usize,
            batch_size: batch as usize,
            learning_rate: defaults.learning_rate * multiplier as f32,
            seed: request.seed.unwrap_or(defaults.seed),
            checkpoint_every: 5,
            ..defaults
        })
    }

    /// Writes the uploaded files a request carries into job `id`'s folder.
    fn keep_uploads(&self, id: &str, request: &mut CreateJob) -> Result<(), StageError> {
        let uploads =
            [(request.training_data.take(), TRAINING_COPY), (request.validation_data.take(), VALIDATION_COPY)];
        for (text, name) in uploads {
            let Some(text) = text else { continue };
            if text.len() as u64 > MAX_DATA_BYTES {
                return Err(StageError::invalid(format!("an uploaded file of more than {MAX_DATA_BYTES} bytes")));
            }
            let dir = self.run_dir(id);
            std::fs::create_dir_all(&dir).map_err(|e| StageError::internal(format!("job folder: {e}")))?;
            tailor_train::checkpoint::write_atomic(&dir.join(name), text.as_bytes())
                .map_err(|e| StageError::internal(format!("keeping the uploaded file: {e}")))?;
        }
        Ok(())
    }

    /// Job `id`'s data: its copies of uploaded files, or files under `data_dirs`.
    fn datasets(&self, id: &str, request: &CreateJob) -> Result<Datasets, StageError> {
        let train = self.dataset(id, TRAINING_COPY, &request.training_file)?;
        let eval = request.validation_file.as_deref().map(|f| self.dataset(id, VALIDATION_COPY, f)).transpose()?;
        Ok(Datasets { train, eval })
    }

    /// The job's copy `copy` when it has one (an uploaded file, named
    /// `file` in errors), else `file` from `data_dirs`.
    fn dataset(&self, id: &str, copy: &str, file: &str) -> Result<Dataset, StageError> {
        let kept = self.run_dir(id).join(copy);
        if !kept.is_file() {
            return self.data_file(file);
        }
        let text = std::fs::read_to_string(&kept).map_err(|e| StageError::internal(format!("{file}: {e}")))?;
        data::parse(&text, Path::new(file), &self.model, MAX_EXAMPLE_TOKENS, Overlong::Truncate)
            .map_err(|e| StageError::invalid(e.to_string()))
    }

    /// A training file, only from `data_dirs`.
    fn data_file(&self, file: &str) -> Result<Dataset, StageError> {
        let refuse =
            || StageError::invalid(format!("{file}: training files are read only from the configured data_dirs"));
        let path = Path::new(file).canonicalize().map_err(|_| refuse())?;
        if !self.data_dirs.iter().any(|d| path.starts_with(d)) {
            return Err(refuse());
        }
        let meta = std::fs::metadata(&path).map_err(|_| refuse())?;
        if !meta.is_file() || meta.len() > MAX_DATA_BYTES {
            return Err(StageError::invalid(format!("{file}: not a regular file of at most {MAX_DATA_BYTES} bytes")));
        }
        data::load(&path, &self.model, MAX_EXAMPLE_TOKENS, Overlong::Truncate)
            .map_err(|e| StageError::invalid(e.to_string()))
    }

    fn events(&self, id: &str) -> Result<Value, StageError> {
        let job = self.job(id)?;
        let text =
            std::fs::read_to_string(self.run_dir(id).join(tailor_train::trainer::METRICS_FILE)).unwrap_or_default();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|m| {
                let step = m["step"].as_u64().unwrap_or(0);
                let message = match (m.get("loss").and_then(Value::as_f64), m.get("eval_loss").and_then(Value::as_f64))
                {
                    (Some(loss), Some(eval)) => {
                        format!("Step {step}: training loss={loss:.4}, validation loss={eval:.4}")
                    }
                    (Some(loss), None) => format!("Step {step}: training loss={loss:.4}"),
                    (None, Some(eval)) => format!("Step {step}: validation loss={eval:.4}"),
                    (None, None) => format!("Step {step}"),
                };
                json!({"object": "fine_tuning.job.event", "id": format!("{}-{step}", job.id), "level": "info",
                    "type": "metrics", "message": message, "data": m})
            })
            .collect();
        Ok(json!({"events": events}))
    }

    fn checkpoints(&self, id: &str) -> Result<Value, StageError> {
        self.job(id)?;
        let root = self.run_dir(id).join(tailor_train::checkpoint::CHECKPOINTS);
        let mut steps: Vec<u64> = std::fs::read_dir(&root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        steps.sort_unstable();
        let list: Vec<Value> = steps
            .iter()
            .rev()
            .map(|step| {
                json!({"object": "fine_tuning.job.checkpoint", "id": format!("{id}-step-{step}"),
                "fine_tuning_job_id": id, "step_number": step})
            })
            .collect();
        Ok(json!({"checkpoints": list}))
    }

    fn finish(&self, id: &str, status: &str, error: Option<String>, tokens: Option<u64>) -> Job {
        let mut state = self.lock();
        let job = state.jobs.get_mut(id).expect("a job being finished is known");
        job.status = status.into();
        job.finished_at = Some(now());
        job.error = error;
        job.trained_tokens = tokens;
        let job = job.clone();
        drop(state);
        let _ = self.save(&job);
        job
    }

    /// The job as the API shows it (the daemon adds the stage's name to
    /// `fine_tuned_model`).
    fn describe(&self, job: &Job) -> Value {
        let hp = &job.request.hyperparameters;
        let auto = |v: &Option<Value>| v.clone().unwrap_or(json!("auto"));
        let full = job.request.method == Method::Full;
        json!({
            "object": "fine_tuning.job",
            "id": job.id,
            "status": job.status,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "training_file": job.request.training_file,
            "validation_file": job.request.validation_file,
            "adapter": (!full).then_some(&job.adapter),
            "fine_tuned_adapter": (job.status == "succeeded" && !full).then_some(&job.adapter),
            "train_method": job.request.method,
            "result_files": if full && job.status == "succeeded" {
                json!([self.run_dir(&job.id).join(FULL_MODEL_DIR)])
            } else {
                json!([])
            },
            "seed": job.request.seed.unwrap_or(TrainConfig::default().seed),
            "trained_tokens": job.trained_tokens,
            "hyperparameters": {"n_epochs": auto(&hp.n_epochs), "batch_size": auto(&hp.batch_size),
                "learning_rate_multiplier": auto(&hp.learning_rate_multiplier)},
            "error": job.error.as_ref().map(|m| json!({"code": "training_failed", "message": m, "param": null})),
        })
    }

    fn job(&self, id: &str) -> Result<Job, StageError> {
        self.lock().jobs.get(id).cloned().ok_or_else(|| unknown(id))
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn save(&self, job: &Job) -> Result<(), StageError> {
        let dir = self.run_dir(&job.id);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::internal(format!("job folder: {e}")))?;
        let text = serde_json::to_string_pretty(job).map_err(|e| StageError::internal(e.to_string()))?;
        tailor_train::checkpoint::write_atomic(&dir.join(JOB_FILE), text.as_bytes())
            .map_err(|e| StageError::internal(format!("saving job {}: {e}", job.id)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unknown(id: &str) -> StageError {
    StageError::not_found(format!("unknown fine-tuning job {id:?}"))
}

/// A hyper-parameter given as a number, or "auto"/absent for `default`.
fn auto_or(value: &Option<Value>, name: &str, default: f64) -> Result<f64, StageError> {
    match value {
        None => Ok(default),
        Some(Value::String(s)) if s == "auto" => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| StageError::invalid(format!("hyperparameters.{name} must be a number or \"auto\""))),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `ftjob-` and 24 hex digits from the clock and a counter.
fn new_job_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ftjob-{nanos:016x}{:08x}", (count as u32) ^ std::process::id())
}
