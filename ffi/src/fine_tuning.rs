//! Fine-tuning jobs on a running tailord (API 1.2): start one on a
//! generate stage's base, follow its status and loss per step, cancel it.
//! A job that succeeds names its adapter in `fine_tuned_model`, usable at
//! once as a chat's or completion's `model`.

use crate::args::{c_string, guard, optional_str, out_handle, read_params, required_str, Params};
use crate::client::{FineTuneEvent, FineTuneJob};
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use serde_json::json;
use std::ffi::{c_char, CString};

/// A fine-tuning request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_fine_tune_params {
    /// `sizeof` the struct the caller filled.
    pub struct_size: usize,
    /// The generate stage whose base is trained.
    pub model: *const c_char,
    /// JSONL on the daemon's machine, under the stage's `data_dirs`.
    pub training_file: *const c_char,
    /// Validation JSONL, or NULL.
    pub validation_file: *const c_char,
    /// Part of the adapter's name, or NULL ("ft").
    pub suffix: *const c_char,
    /// 0: the daemon's default.
    pub n_epochs: u32,
    /// 0: the daemon's default.
    pub batch_size: u32,
    /// <= 0: 1.
    pub learning_rate_multiplier: f32,
    /// LoRA rank; 0: the daemon's default.
    pub rank: u32,
    /// < 0: the daemon's default.
    pub seed: i64,
    /// API 1.5: "lora" (NULL: the default), "qlora" or "full".
    pub method: *const c_char,
}

// SAFETY: repr(C), struct_size first.
unsafe impl Params for tailor_fine_tune_params {
    fn defaults() -> Self {
        tailor_fine_tune_params {
            struct_size: std::mem::size_of::<Self>(),
            model: std::ptr::null(),
            training_file: std::ptr::null(),
            validation_file: std::ptr::null(),
            suffix: std::ptr::null(),
            n_epochs: 0,
            batch_size: 0,
            learning_rate_multiplier: 0.0,
            rank: 0,
            seed: -1,
            method: std::ptr::null(),
        }
    }
}

/// Default fine-tuning params.
#[no_mangle]
pub extern "C" fn tailor_fine_tune_default_params() -> tailor_fine_tune_params {
    tailor_fine_tune_params::defaults()
}

/// A job's state, its strings owned for C.
pub struct tailor_fine_tune_job {
    id: CString,
    status: CString,
    model: Option<CString>,
    error: Option<CString>,
    result: Option<CString>,
}

impl tailor_fine_tune_job {
    fn new(job: FineTuneJob) -> *mut tailor_fine_tune_job {
        let handle = tailor_fine_tune_job {
            id: c_string(&job.id),
            status: c_string(&job.status),
            model: job.fine_tuned_model.as_deref().map(c_string),
            error: job.error.as_deref().map(c_string),
            result: job.result.as_deref().map(c_string),
        };
        Box::into_raw(Box::new(handle))
    }
}

/// Starts a job; `*out_job` receives its first state.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_start(
    client: *mut tailor_client,
    params: *const tailor_fine_tune_params,
    out_job: *mut *mut tailor_fine_tune_job,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (slot, client, p) =
            unsafe { (out_handle(out_job, "out_job")?, client_ref(client)?, read_params(params, "params")?) };
        // SAFETY: the params' strings follow tailor.h's contract.
        let (model, training, validation, suffix, method) = unsafe {
            (
                required_str(p.model, "params->model")?,
                required_str(p.training_file, "params->training_file")?,
                optional_str(p.validation_file, "params->validation_file")?,
                optional_str(p.suffix, "params->suffix")?,
                optional_str(p.method, "params->method")?,
            )
        };
        let mut hyperparameters = json!({});
        if p.n_epochs > 0 {
            hyperparameters["n_epochs"] = json!(p.n_epochs);
        }
        if p.batch_size > 0 {
            hyperparameters["batch_size"] = json!(p.batch_size);
        }
        if p.learning_rate_multiplier > 0.0 {
            hyperparameters["learning_rate_multiplier"] = json!(p.learning_rate_multiplier);
        }
        let mut body = json!({"model": model, "training_file": training,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}});
        if let Some(file) = validation {
            body["validation_file"] = json!(file);
        }
        if let Some(suffix) = suffix {
            body["suffix"] = json!(suffix);
        }
        if p.seed >= 0 {
            body["seed"] = json!(p.seed);
        }
        let mut extras = json!({});
        if p.rank > 0 {
            extras["r"] = json!(p.rank);
        }
        if let Some(method) = method {
            extras["method"] = json!(method);
        }
        if extras != json!({}) {
            body["tailor"] = extras;
        }
        *slot = tailor_fine_tune_job::new(client.fine_tune_start(&body)?);
        Ok(())
    })
}

/// The current state of job `id`.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_get(
    client: *mut tailor_client,
    id: *const c_char,
    out_job: *mut *mut tailor_fine_tune_job,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (slot, client, id) =
            unsafe { (out_handle(out_job, "out_job")?, client_ref(client)?, required_str(id, "id")?) };
        *slot = tailor_fine_tune_job::new(client.fine_tune_get(id)?);
        Ok(())
    })
}

/// Asks job `id` to stop.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_cancel(client: *mut tailor_client, id: *const c_char) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, id) = unsafe { (client_ref(client)?, required_str(id, "id")?) };
        client.fine_tune_cancel(id)
    })
}

/// The job's id; NULL for a NULL job.
///
/// # Safety
/// `job` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_id(job: *const tailor_fine_tune_job) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { job.as_ref() }.map_or(std::ptr::null(), |j| j.id.as_ptr())
}

/// "queued", "running", "succeeded", "failed" or "cancelled".
///
/// # Safety
/// `job` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_status(job: *const tailor_fine_tune_job) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { job.as_ref() }.map_or(std::ptr::null(), |j| j.status.as_ptr())
}

/// The trained model's name once the job succeeded; NULL before.
///
/// # Safety
/// `job` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_model(job: *const tailor_fine_tune_job) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { job.as_ref() }.and_then(|j| j.model.as_ref()).map_or(std::ptr::null(), |m| m.as_ptr())
}

/// Why the job failed; NULL unless it did.
///
/// # Safety
/// `job` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_error(job: *const tailor_fine_tune_job) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { job.as_ref() }.and_then(|j| j.error.as_ref()).map_or(std::ptr::null(), |m| m.as_ptr())
}

/// A succeeded full fine-tune's model folder (borrowed), or NULL.
///
/// # Safety
/// `job` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_result(job: *const tailor_fine_tune_job) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { job.as_ref() }.and_then(|j| j.result.as_ref()).map_or(std::ptr::null(), |m| m.as_ptr())
}

/// Frees a job state (NULL is fine).
///
/// # Safety
/// `job` is NULL or a live handle, freed once.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_job_free(job: *mut tailor_fine_tune_job) {
    if !job.is_null() {
        // SAFETY: made by Box::into_raw in this module; freed once (contract).
        drop(unsafe { Box::from_raw(job) });
    }
}

/// A job's log.
pub struct tailor_fine_tune_events {
    events: Vec<FineTuneEvent>,
}

/// The log of job `id`: one event per step (and the validation loss where
/// it was measured).
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_get(
    client: *mut tailor_client,
    id: *const c_char,
    out_events: *mut *mut tailor_fine_tune_events,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (slot, client, id) =
            unsafe { (out_handle(out_events, "out_events")?, client_ref(client)?, required_str(id, "id")?) };
        let events = client.fine_tune_events(id)?;
        *slot = Box::into_raw(Box::new(tailor_fine_tune_events { events }));
        Ok(())
    })
}

/// How many events.
///
/// # Safety
/// `events` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_count(events: *const tailor_fine_tune_events) -> usize {
    // SAFETY: the caller's contract.
    unsafe { events.as_ref() }.map_or(0, |e| e.events.len())
}

/// Event `index`'s step; 0 past the end.
///
/// # Safety
/// `events` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_step(events: *const tailor_fine_tune_events, index: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { events.as_ref() }.and_then(|e| e.events.get(index)).map_or(0, |e| e.step)
}

/// Event `index`'s training loss; NaN when it has none or past the end.
///
/// # Safety
/// `events` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_loss(events: *const tailor_fine_tune_events, index: usize) -> f64 {
    // SAFETY: the caller's contract.
    unsafe { events.as_ref() }.and_then(|e| e.events.get(index)).map_or(f64::NAN, |e| e.loss)
}

/// Event `index`'s validation loss; NaN when not measured or past the end.
///
/// # Safety
/// `events` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_eval_loss(
    events: *const tailor_fine_tune_events,
    index: usize,
) -> f64 {
    // SAFETY: the caller's contract.
    unsafe { events.as_ref() }.and_then(|e| e.events.get(index)).map_or(f64::NAN, |e| e.eval_loss)
}

/// Frees a log (NULL is fine).
///
/// # Safety
/// `events` is NULL or a live handle, freed once.
#[no_mangle]
pub unsafe extern "C" fn tailor_fine_tune_events_free(events: *mut tailor_fine_tune_events) {
    if !events.is_null() {
        // SAFETY: made by Box::into_raw in this module; freed once (contract).
        drop(unsafe { Box::from_raw(events) });
    }
}
