//! The daemon's side of the plugin host services: logging, progress of
//! long work (shown on `/metrics`), cancellation of requests whose caller
//! went away, calls from one stage into another by name, the CPU budget,
//! and the process's one kernel pool (`parallel_for`: every in-process
//! plugin runs its kernels on it instead of a team of its own). In-process
//! plugins get these through the C table; isolated children get a proxy of
//! them over ipc-channel (`isolated.rs`), with a pool of their own.

use crate::stages::Registered;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tailor_plugin_abi::services::HostServices;
use tailor_tensor::cpu::pool::SpinPool;

/// Request ids handed out by the host itself (nested calls) start here, far
/// from the API's own ids.
const NESTED_IDS: u64 = 1 << 62;

/// Host services backed by the daemon's stages.
pub struct DaemonServices {
    stages: OnceLock<Vec<Arc<Registered>>>,
    cancelled: Mutex<HashSet<u64>>,
    /// Set at shutdown, after the grace: every request reads as cancelled.
    cancel_all: AtomicBool,
    tasks: Mutex<BTreeMap<String, (u64, u64)>>,
    cpu_threads: u32,
    next_nested: AtomicU64,
}

impl DaemonServices {
    /// Services granting plugins `cpu_threads` threads: the kernel pool
    /// they share is started with that many participants.
    pub fn new(cpu_threads: u32) -> Arc<DaemonServices> {
        let cpu_threads = start_kernel_pool(cpu_threads);
        Arc::new(DaemonServices {
            stages: OnceLock::new(),
            cancelled: Mutex::new(HashSet::new()),
            cancel_all: AtomicBool::new(false),
            tasks: Mutex::new(BTreeMap::new()),
            cpu_threads,
            next_nested: AtomicU64::new(NESTED_IDS),
        })
    }

    /// Makes the stages callable by name (once they all exist).
    pub fn attach(&self, stages: Vec<Arc<Registered>>) {
        let _ = self.stages.set(stages);
    }

    /// Marks a request as abandoned by its caller.
    pub fn cancel(&self, request_id: u64) {
        self.cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(request_id);
    }

    /// Cancels every request, running or to come (shutdown).
    pub fn cancel_all(&self) {
        self.cancel_all.store(true, Ordering::Relaxed);
    }

    /// Forgets a finished request.
    pub fn finished(&self, request_id: u64) {
        self.cancelled.lock().unwrap_or_else(|p| p.into_inner()).remove(&request_id);
    }

    /// (task, done, total) of every task that reported progress.
    pub fn tasks(&self) -> Vec<(String, u64, u64)> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.iter().map(|(name, &(done, total))| (name.clone(), done, total)).collect()
    }
}

impl HostServices for DaemonServices {
    fn log(&self, level: i32, message: &str) {
        let label = ["error", "warn", "info", "debug", "trace"].get(level.clamp(0, 4) as usize).copied();
        eprintln!("tailord: plugin {}: {message}", label.unwrap_or("info"));
    }

    fn progress(&self, task: &str, done: u64, total: u64) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(task.to_string(), (done, total));
        if done >= total {
            eprintln!("tailord: {task}: {done}/{total} done");
        }
    }

    fn is_cancelled(&self, request_id: u64) -> bool {
        self.cancel_all.load(Ordering::Relaxed)
            || self.cancelled.lock().unwrap_or_else(|p| p.into_inner()).contains(&request_id)
    }

    fn call_stage(&self, stage: &str, request_json: &str, out: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let stages = self.stages.get().ok_or("stages are still being created")?;
        let target = stages.iter().find(|s| s.name == stage).ok_or_else(|| format!("no stage named {stage:?}"))?;
        let id = self.next_nested.fetch_add(1, Ordering::Relaxed);
        target.call(id, request_json, out).map_err(|e| e.to_string())
    }

    fn cpu_threads(&self) -> u32 {
        self.cpu_threads
    }

    fn parallel_for(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        SpinPool::global().run(job);
    }
}

/// Starts this process's kernel pool with `threads` participants (the
/// caller of a job counts as one); returns the size it has.
pub fn start_kernel_pool(threads: u32) -> u32 {
    tailor_tensor::cpu::pool::set_global_threads(threads.max(1) as usize, 0);
    SpinPool::global().threads() as u32
}
