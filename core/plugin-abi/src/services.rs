//! The host's services, both sides of the table `tailor_host_api`:
//!
//! - host side: a [`HostServices`] implementation (the daemon's, or a proxy
//!   in an isolated child) becomes a `'static` [`HostApi`] with
//!   [`host_api`]; its C trampolines catch panics;
//! - plugin side: [`host`] gives a Rust stage the API its library was
//!   entered with (recorded by `export_plugin!`), with each service checked
//!   against the table's `struct_size` so an older host simply lacks it.

use crate::ffi::{self, HostApi, Sink, Status, Str};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

/// What a host offers its plugins.
pub trait HostServices: Send + Sync + 'static {
    /// A log line from a plugin (0 error .. 4 trace).
    fn log(&self, level: i32, message: &str);
    /// Progress of long work, `done` of `total` units.
    fn progress(&self, task: &str, done: u64, total: u64);
    /// True once the request's caller has gone away.
    fn is_cancelled(&self, request_id: u64) -> bool;
    /// Calls another configured stage by name, streaming its output to
    /// `out` (which returns `false` to stop it).
    fn call_stage(&self, stage: &str, request_json: &str, out: &mut dyn FnMut(&str) -> bool) -> Result<(), String>;
    /// CPU threads the plugin may use.
    fn cpu_threads(&self) -> u32;
    /// Runs `job(slot, slots)` for every slot of the process's kernel pool
    /// (`cpu_threads` of them) and returns when all are done. By default
    /// one slot, on the calling thread.
    fn parallel_for(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        job(0, 1);
    }
    /// The CUDA device the daemon serves on (`None`: the CPU).
    fn device(&self) -> Option<usize> {
        None
    }
    /// Reserves `bytes` of the daemon's device budget; false (nothing
    /// reserved) past it. By default nothing is granted.
    fn device_reserve(&self, bytes: u64) -> bool {
        let _ = bytes;
        false
    }
    /// Gives back `bytes` reserved earlier.
    fn device_release(&self, bytes: u64) {
        let _ = bytes;
    }
}

/// A `'static` host API table backed by `services` (leaked: plugins keep
/// the pointer for the life of the process, as they keep their code).
pub fn host_api(services: Arc<dyn HostServices>) -> &'static HostApi {
    let cpu_threads = services.cpu_threads();
    let device = services.device().and_then(|ordinal| i32::try_from(ordinal).ok()).unwrap_or(-1);
    let ctx = Box::into_raw(Box::new(services)) as *mut c_void;
    Box::leak(Box::new(HostApi {
        struct_size: std::mem::size_of::<HostApi>() as u32,
        abi_major: crate::ABI_MAJOR,
        abi_minor: crate::ABI_MINOR,
        cpu_threads,
        host_ctx: ctx,
        log: Some(log_trampoline),
        progress: Some(progress_trampoline),
        is_cancelled: Some(is_cancelled_trampoline),
        call_stage: Some(call_stage_trampoline),
        parallel_for: Some(parallel_for_trampoline),
        device,
        device_reserve: Some(device_reserve_trampoline),
        device_release: Some(device_release_trampoline),
    }))
}

/// The services behind a host context made by [`host_api`].
///
/// # Safety
/// `ctx` is the `host_ctx` of a table from [`host_api`] (never freed).
unsafe fn services<'a>(ctx: *mut c_void) -> Option<&'a Arc<dyn HostServices>> {
    // SAFETY: the caller's contract: ctx points to a leaked Box<Arc<…>>.
    unsafe { (ctx as *const Arc<dyn HostServices>).as_ref() }
}

unsafe extern "C" fn log_trampoline(ctx: *mut c_void, level: i32, message: Str) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the plugin passes a view valid for this call; ctx is ours.
        let (services, text) = unsafe { (services(ctx), message.as_str()) };
        if let Some(services) = services {
            services.log(level, text.unwrap_or("<non-UTF-8 log message>"));
        }
    }));
}

unsafe extern "C" fn progress_trampoline(ctx: *mut c_void, task: Str, done: u64, total: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as in log_trampoline.
        let (services, task) = unsafe { (services(ctx), task.as_str()) };
        if let (Some(services), Ok(task)) = (services, task) {
            services.progress(task, done, total);
        }
    }));
}

unsafe extern "C" fn is_cancelled_trampoline(ctx: *mut c_void, request_id: u64) -> i32 {
    // SAFETY: ctx is ours.
    let cancelled =
        catch_unwind(AssertUnwindSafe(|| unsafe { services(ctx) }.is_some_and(|s| s.is_cancelled(request_id))));
    i32::from(cancelled.unwrap_or(false))
}

unsafe extern "C" fn device_reserve_trampoline(ctx: *mut c_void, bytes: u64) -> i32 {
    // SAFETY: ctx is ours.
    let granted = catch_unwind(AssertUnwindSafe(|| unsafe { services(ctx) }.is_some_and(|s| s.device_reserve(bytes))));
    i32::from(granted.unwrap_or(false))
}

unsafe extern "C" fn device_release_trampoline(ctx: *mut c_void, bytes: u64) {
    // SAFETY: ctx is ours.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if let Some(services) = unsafe { services(ctx) } {
            services.device_release(bytes);
        }
    }));
}

/// A plugin's slot function and job context, handed to the pool's threads.
struct PluginJob {
    slot: ffi::SlotFn,
    context: *mut c_void,
}

// SAFETY: the plugin's contract for `parallel_for`: its slot function may
// run on any thread, concurrently, with this context.
unsafe impl Sync for PluginJob {}

impl PluginJob {
    fn run(&self, index: usize, slots: usize) {
        // SAFETY: the plugin's slot function with its own context and slot
        // numbers in range; by contract it does not unwind.
        unsafe { (self.slot)(self.context, index as u32, slots as u32) }
    }
}

unsafe extern "C" fn parallel_for_trampoline(ctx: *mut c_void, slot: ffi::SlotFn, job_ctx: *mut c_void) {
    let plugin_job = PluginJob { slot, context: job_ctx };
    let job = |index: usize, slots: usize| plugin_job.run(index, slots);
    let ran = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx is ours.
        match unsafe { services(ctx) } {
            Some(services) => services.parallel_for(&job),
            None => job(0, 1),
        }
    }));
    if ran.is_err() {
        // Only the pool itself can fail here (a plugin's slots catch their
        // own panics). A job cannot be handed back half done, and a panic
        // must not cross the C boundary.
        eprintln!("tailor: the host's kernel pool failed mid-job; aborting");
        std::process::abort();
    }
}

/// Sends a chunk to a sink the plugin gave us.
///
/// # Safety
/// `sink` is null or valid for the duration of the call.
unsafe fn send(sink: *mut Sink, chunk: &str) -> Status {
    // SAFETY: the caller's contract.
    match unsafe { sink.as_ref() } {
        Some(Sink { ctx, emit: Some(emit) }) => unsafe { emit(*ctx, Str::from(chunk)) },
        _ => ffi::OK,
    }
}

unsafe extern "C" fn call_stage_trampoline(
    ctx: *mut c_void,
    stage: Str,
    request_json: Str,
    out: *mut Sink,
    error: *mut Sink,
) -> Status {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: views valid for this call; ctx is ours.
        let (services, stage, request) = unsafe { (services(ctx), stage.as_str(), request_json.as_str()) };
        let services = services.ok_or("no host services")?;
        let (stage, request) = stage.ok().zip(request.ok()).ok_or("stage name or request is not UTF-8")?;
        // SAFETY: `out` is valid for this call (plugin contract).
        services.call_stage(stage, request, &mut |chunk| unsafe { send(out, chunk) } == ffi::OK)
    }));
    let message: String = match outcome {
        Ok(Ok(())) => return ffi::OK,
        Ok(Err(message)) => message,
        Err(_) => "the host panicked in call_stage".into(),
    };
    // SAFETY: `error` is null or valid for this call.
    unsafe { send(error, &message) };
    ffi::ERR_INVALID
}

/// The host API this plugin library was entered with.
static PLUGIN_HOST: AtomicPtr<HostApi> = AtomicPtr::new(std::ptr::null_mut());

/// Records the host API at entry (called by `export_plugin!`).
///
/// # Safety
/// `host` is null or a table that outlives the process's use of the plugin.
pub unsafe fn set_plugin_host(host: *const HostApi) {
    if !host.is_null() {
        PLUGIN_HOST.store(host as *mut HostApi, Ordering::Release);
    }
}

/// The host's services, as seen from a Rust plugin (`None` before entry or
/// when the host passed none).
pub fn host() -> Option<Host> {
    let ptr = PLUGIN_HOST.load(Ordering::Acquire);
    // SAFETY: set_plugin_host's contract: the table lives as long as the plugin.
    unsafe { ptr.as_ref() }.map(Host)
}

/// A plugin's handle on its host's services.
#[derive(Clone, Copy)]
pub struct Host(&'static HostApi);

// SAFETY: the table is never written after the host made it, and the ABI
// lets a plugin call the host's services from any of its threads.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

/// A parallel-for over the host's kernel pool, shaped for tailor-tensor's
/// `pool::use_host_pool`.
pub type KernelRunner = Box<dyn Fn(&(dyn Fn(usize, usize) + Sync)) + Send + Sync>;

/// The host's kernel pool — its slot count and a runner — when the host
/// offers one (ABI 1.3), for a plugin to run its kernels on instead of
/// starting threads of its own.
pub fn host_kernel_pool() -> Option<(usize, KernelRunner)> {
    let host = host().filter(Host::offers_parallel_for)?;
    let runner = move |job: &(dyn Fn(usize, usize) + Sync)| {
        if !host.run_parallel(job) {
            job(0, 1);
        }
    };
    Some((host.cpu_threads() as usize, Box::new(runner)))
}

impl Host {
    /// True when the host's table is long enough to hold the field ending at `end`.
    fn has(&self, end: usize) -> bool {
        self.0.struct_size as usize >= end
    }

    /// CPU threads the host grants this plugin.
    pub fn cpu_threads(&self) -> u32 {
        self.0.cpu_threads.max(1)
    }

    /// Logs through the host (0 error .. 4 trace).
    pub fn log(&self, level: i32, message: &str) {
        if let (true, Some(log)) = (self.has(std::mem::offset_of!(HostApi, progress)), self.0.log) {
            // SAFETY: a host function with its own context and a view valid for the call.
            unsafe { log(self.0.host_ctx, level, Str::from(message)) };
        }
    }

    /// Reports progress of a long task.
    pub fn progress(&self, task: &str, done: u64, total: u64) {
        if let (true, Some(progress)) = (self.has(std::mem::offset_of!(HostApi, is_cancelled)), self.0.progress) {
            // SAFETY: as in `log`.
            unsafe { progress(self.0.host_ctx, Str::from(task), done, total) };
        }
    }

    /// True once the request's caller has gone away.
    pub fn is_cancelled(&self, request_id: u64) -> bool {
        if let (true, Some(check)) = (self.has(std::mem::offset_of!(HostApi, call_stage)), self.0.is_cancelled) {
            // SAFETY: as in `log`.
            return unsafe { check(self.0.host_ctx, request_id) } != 0;
        }
        false
    }

    /// Calls another stage of the host by name and collects its output.
    pub fn call_stage(&self, stage: &str, request_json: &str) -> Result<String, String> {
        let Some(call) = self.0.call_stage.filter(|_| self.has(std::mem::offset_of!(HostApi, parallel_for))) else {
            return Err("this host does not offer call_stage".into());
        };
        let (mut output, mut error) = (String::new(), String::new());
        let mut out = Sink { ctx: &mut output as *mut String as *mut c_void, emit: Some(append) };
        let mut err = Sink { ctx: &mut error as *mut String as *mut c_void, emit: Some(append) };
        // SAFETY: the sinks and views live across the call; `append` gets
        // back the String pointers we put in them.
        let status = unsafe { call(self.0.host_ctx, Str::from(stage), Str::from(request_json), &mut out, &mut err) };
        if status == ffi::OK {
            Ok(output)
        } else {
            Err(if error.is_empty() { format!("call_stage({stage}) failed with status {status}") } else { error })
        }
    }
}

impl Host {
    /// True when the host runs kernel jobs on its own pool (ABI 1.3).
    pub fn offers_parallel_for(&self) -> bool {
        self.has(std::mem::offset_of!(HostApi, device)) && self.0.parallel_for.is_some()
    }

    /// The CUDA device the daemon serves on, when it serves on one and
    /// offers its device budget (ABI 1.4); `None`: run on the CPU.
    pub fn device(&self) -> Option<usize> {
        let offers = self.has(std::mem::size_of::<HostApi>())
            && self.0.device_reserve.is_some()
            && self.0.device_release.is_some();
        usize::try_from(self.0.device).ok().filter(|_| offers)
    }

    /// Reserves `bytes` of the daemon's device budget; false (nothing
    /// reserved) past it, or when the host offers no device.
    pub fn device_reserve(&self, bytes: u64) -> bool {
        match self.0.device_reserve.filter(|_| self.device().is_some()) {
            // SAFETY: a host function with its own context.
            Some(reserve) => (unsafe { reserve(self.0.host_ctx, bytes) }) != 0,
            None => false,
        }
    }

    /// Gives back `bytes` reserved with [`Host::device_reserve`].
    pub fn device_release(&self, bytes: u64) {
        if let Some(release) = self.0.device_release.filter(|_| self.device().is_some()) {
            // SAFETY: as in `device_reserve`.
            unsafe { release(self.0.host_ctx, bytes) };
        }
    }

    /// Runs `job(slot, slots)` for every slot of the host's kernel pool;
    /// returns false (without running it) when the host offers none. A
    /// panic in a slot is caught there and raised again here, after every
    /// slot has finished.
    pub fn run_parallel(&self, job: &(dyn Fn(usize, usize) + Sync)) -> bool {
        let Some(parallel_for) = self.0.parallel_for.filter(|_| self.offers_parallel_for()) else {
            return false;
        };
        let context = SlotContext { job, panicked: AtomicBool::new(false) };
        // SAFETY: `run_slot` gets back the context we pass, which outlives
        // the call (the host returns only when every slot is done).
        unsafe { parallel_for(self.0.host_ctx, run_slot, &context as *const SlotContext as *mut c_void) };
        if context.panicked.load(Ordering::Relaxed) {
            panic!("a kernel job panicked");
        }
        true
    }
}

/// A job handed to the host's pool.
struct SlotContext<'a> {
    job: &'a (dyn Fn(usize, usize) + Sync),
    panicked: AtomicBool,
}

/// One slot of a [`Host::run_parallel`] job; panics stop here, short of the
/// C boundary.
unsafe extern "C" fn run_slot(ctx: *mut c_void, slot: u32, slots: u32) {
    // SAFETY: ctx is the SlotContext run_parallel passed, alive for the job.
    let Some(context) = (unsafe { (ctx as *const SlotContext).as_ref() }) else { return };
    if catch_unwind(AssertUnwindSafe(|| (context.job)(slot as usize, slots as usize))).is_err() {
        context.panicked.store(true, Ordering::Relaxed);
    }
}

/// A sink function that appends chunks to the `String` behind `ctx`.
unsafe extern "C" fn append(ctx: *mut c_void, chunk: Str) -> Status {
    // SAFETY: ctx is the &mut String a Host::call_stage sink was made with,
    // alive for that call; the host passes a view valid for this call.
    match (unsafe { (ctx as *mut String).as_mut() }, unsafe { chunk.as_str() }) {
        (Some(buffer), Ok(text)) => {
            buffer.push_str(text);
            ffi::OK
        }
        _ => ffi::ERR_INVALID,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A host whose pool is four scoped threads, counting the jobs it ran,
    /// serving on `device` with a 10-byte device budget.
    #[derive(Default)]
    struct FourThreads {
        jobs: AtomicUsize,
        device: Option<usize>,
        reserved: AtomicUsize,
    }

    impl HostServices for FourThreads {
        fn log(&self, _: i32, _: &str) {}
        fn progress(&self, _: &str, _: u64, _: u64) {}
        fn is_cancelled(&self, _: u64) -> bool {
            false
        }
        fn call_stage(&self, _: &str, _: &str, _: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
            Err("none".into())
        }
        fn cpu_threads(&self) -> u32 {
            4
        }
        fn parallel_for(&self, job: &(dyn Fn(usize, usize) + Sync)) {
            self.jobs.fetch_add(1, Ordering::Relaxed);
            std::thread::scope(|scope| (0..4).for_each(|slot| drop(scope.spawn(move || job(slot, 4)))));
        }
        fn device(&self) -> Option<usize> {
            self.device
        }
        fn device_reserve(&self, bytes: u64) -> bool {
            let bytes = bytes as usize;
            let fits = |r: usize| (r + bytes <= 10).then_some(r + bytes);
            self.reserved.fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits).is_ok()
        }
        fn device_release(&self, bytes: u64) {
            self.reserved.fetch_sub(bytes as usize, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_plugin_job_runs_on_the_host_pool_and_its_panics_stay_on_the_plugin_side() {
        let services = Arc::new(FourThreads::default());
        let host = Host(host_api(services.clone()));
        assert!(host.offers_parallel_for());
        let slots: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        assert!(host.run_parallel(&|slot, count| {
            assert_eq!(count, 4);
            slots[slot].fetch_add(1, Ordering::Relaxed);
        }));
        assert!(slots.iter().all(|s| s.load(Ordering::Relaxed) == 1), "every slot ran once");
        // A panicking slot: the others still run, and the panic is raised
        // again on the plugin's side of the boundary, after the job.
        let finished = AtomicUsize::new(0);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            host.run_parallel(&|slot, _| {
                if slot == 2 {
                    panic!("slot 2 fails");
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(outcome.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 3);
        assert_eq!(services.jobs.load(Ordering::Relaxed), 2);
        // An older host's table (without parallel_for) offers none.
        let mut older = HostApi { ..*host.0 };
        older.struct_size = std::mem::offset_of!(HostApi, parallel_for) as u32;
        let older = Host(Box::leak(Box::new(older)));
        assert!(!older.offers_parallel_for() && !older.run_parallel(&|_, _| unreachable!()));
    }

    #[test]
    fn the_device_budget_passes_through_the_table_and_an_older_host_offers_none() {
        let services = Arc::new(FourThreads { device: Some(1), ..FourThreads::default() });
        let host = Host(host_api(services.clone()));
        assert_eq!(host.device(), Some(1));
        assert!(host.device_reserve(6));
        assert!(!host.device_reserve(6), "6 + 6 bytes exceed the budget of 10");
        host.device_release(6);
        assert!(host.device_reserve(10));
        assert_eq!(services.reserved.load(Ordering::Relaxed), 10);
        // An ABI 1.3 host's table ends before `device`: the CPU, nothing granted.
        let mut older = HostApi { ..*host.0 };
        older.struct_size = std::mem::offset_of!(HostApi, device) as u32;
        let older = Host(Box::leak(Box::new(older)));
        assert_eq!(older.device(), None);
        assert!(!older.device_reserve(1));
        // A host on the CPU says so.
        let cpu = Host(host_api(Arc::new(FourThreads::default())));
        assert_eq!(cpu.device(), None);
        assert!(!cpu.device_reserve(1));
    }
}
