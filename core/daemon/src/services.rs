//! The daemon's side of the plugin host services: logging, progress of
//! long work (shown on `/metrics`), cancellation of requests whose caller
//! went away, calls from one stage into another by name, the CPU budget,
//! the process's one kernel pool (`parallel_for`: every in-process
//! plugin runs its kernels on it instead of a team of its own), and the
//! device the daemon serves on with the device-memory budget every plugin
//! draws on (`device_reserve` / `device_release`, ABI 1.4). In-process
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
    device: DeviceBudget,
}

/// The CUDA device plugins may run kernels on and the bytes of its memory
/// they may hold together.
#[derive(Debug, Default)]
pub struct DeviceBudget {
    /// The device (`None`: the CPU).
    pub ordinal: Option<usize>,
    /// Bytes all plugins may reserve together.
    pub bytes: u64,
    /// Bytes reserved now.
    reserved: AtomicU64,
}

impl DeviceBudget {
    /// Device `ordinal` (or the CPU) with a budget of `bytes`.
    pub fn new(ordinal: Option<usize>, bytes: u64) -> DeviceBudget {
        DeviceBudget { ordinal, bytes, reserved: AtomicU64::new(0) }
    }

    /// Reserves `bytes` when they fit; false (nothing reserved) otherwise.
    pub fn reserve(&self, bytes: u64) -> bool {
        let fits = |reserved: u64| reserved.checked_add(bytes).filter(|&total| total <= self.bytes);
        self.ordinal.is_some() && self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok()
    }

    /// Gives back `bytes` (never below zero: a plugin returning more than
    /// it took cannot lend the others its share).
    pub fn release(&self, bytes: u64) {
        let _ = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(bytes)));
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }
}

impl DaemonServices {
    /// Services granting plugins `cpu_threads` threads (the kernel pool
    /// they share is started with that many participants) and `device`.
    pub fn new(cpu_threads: u32, device: DeviceBudget) -> Arc<DaemonServices> {
        let cpu_threads = start_kernel_pool(cpu_threads);
        Arc::new(DaemonServices {
            stages: OnceLock::new(),
            cancelled: Mutex::new(HashSet::new()),
            cancel_all: AtomicBool::new(false),
            tasks: Mutex::new(BTreeMap::new()),
            cpu_threads,
            next_nested: AtomicU64::new(NESTED_IDS),
            device,
        })
    }

    /// The device plugins share and its budget.
    pub fn device_budget(&self) -> &DeviceBudget {
        &self.device
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

    fn device(&self) -> Option<usize> {
        self.device.ordinal
    }

    fn device_reserve(&self, bytes: u64) -> bool {
        self.device.reserve(bytes)
    }

    fn device_release(&self, bytes: u64) {
        self.device.release(bytes);
    }
}

/// Starts this process's kernel pool with `threads` participants (the
/// caller of a job counts as one); returns the size it has.
pub fn start_kernel_pool(threads: u32) -> u32 {
    tailor_tensor::cpu::pool::set_global_threads(threads.max(1) as usize, 0);
    SpinPool::global().threads() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_budget_grants_up_to_its_bytes_and_the_cpu_grants_nothing() {
        let budget = DeviceBudget::new(Some(0), 100);
        assert!(budget.reserve(60) && budget.reserve(40));
        assert!(!budget.reserve(1), "100 of 100 bytes are held");
        budget.release(40);
        assert_eq!(budget.reserved(), 60);
        assert!(!budget.reserve(u64::MAX), "an overflowing request is refused, not wrapped");
        budget.release(1000);
        assert_eq!(budget.reserved(), 0, "releasing more than held stops at zero");
        let cpu = DeviceBudget::new(None, 100);
        assert!(!cpu.reserve(1), "serving on the CPU, no device memory is granted");
    }
}
