//! A small fork-join pool for the latency-bound kernels of decoding.
//!
//! Decoding one token runs a few hundred short parallel matrix-vector
//! products; rayon parks idle workers, and waking them costs more than the
//! products themselves. Here workers spin briefly on an epoch counter before
//! parking, so back-to-back jobs start within nanoseconds (llama.cpp's thread
//! pool works the same way). Long compute-bound jobs (gemm) stay on rayon.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Spins before a worker parks (a few tens of microseconds).
const SPIN_LIMIT: u32 = 1 << 16;
/// Spins between two offers of the core to other threads.
const YIELD_EVERY: u32 = 256;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    threads: usize,
    /// The job of the current epoch; written only by the thread in `run`
    /// while every worker is idle.
    job: UnsafeCell<Option<*const Job>>,
    epoch: AtomicUsize,
    remaining: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Serialises callers of `run` (the pool runs one job at a time).
    run_lock: Mutex<()>,
}

// SAFETY: `job` is only written by the holder of `run_lock` before the epoch
// is published (Release) and only read by workers after they observe the new
// epoch (Acquire); the pointee is Sync and outlives the job because `run`
// waits for every worker to finish before returning.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed team of threads that run one job at a time.
pub struct SpinPool {
    shared: Arc<Shared>,
}

impl SpinPool {
    /// A pool of `threads` participants (the caller counts as one).
    pub fn new(threads: usize) -> SpinPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            job: UnsafeCell::new(None),
            epoch: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            run_lock: Mutex::new(()),
        });
        for index in 1..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("tailor-spin-{index}"))
                .spawn(move || worker(shared, index))
                .expect("spawning a kernel thread");
        }
        SpinPool { shared }
    }

    /// The process-wide pool, sized like rayon's global pool.
    pub fn global() -> &'static SpinPool {
        static POOL: OnceLock<SpinPool> = OnceLock::new();
        POOL.get_or_init(|| SpinPool::new(rayon::current_num_threads()))
    }

    /// Participants, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `job(thread_index, threads)` on every participant and returns
    /// when all are done. Panics if the job panicked on any thread.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let s = &*self.shared;
        if s.threads == 1 {
            job(0, 1);
            return;
        }
        let _serial = s.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: we hold run_lock and the previous job finished (remaining
        // reached 0 before the last `run` returned), so no worker reads `job`.
        // The 'static lifetime is a lie told only for the duration of this
        // call: we wait below until no worker can touch the pointer again.
        unsafe {
            let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(job);
            *s.job.get() = Some(ptr);
        }
        s.remaining.store(s.threads - 1, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0, s.threads)));
        while s.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if mine.is_err() || s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel job panicked");
        }
    }
}

fn worker(shared: Arc<Shared>, index: usize) {
    let s = &*shared;
    // The epoch the pool was created with; a job may be published before
    // this thread first runs, so it must not read the current value.
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            if spins < SPIN_LIMIT {
                spins += 1;
                // Mostly pause; every so often offer the core to another
                // runnable thread (a daemon's I/O threads share it).
                if spins.is_multiple_of(YIELD_EVERY) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let guard =
                s.wake.wait_while(guard, |_| s.epoch.load(Ordering::SeqCst) == seen).unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
        seen = s.epoch.load(Ordering::Acquire);
        // SAFETY: the epoch moved, so `run` published a job and is waiting
        // for `remaining` to reach zero before the pointee can go away.
        let job = unsafe { (*s.job.get()).map(|p| &*p) };
        if let Some(job) = job {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index, s.threads)));
            if result.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

/// The half-open range of `0..total` that participant `index` of `threads` owns.
pub fn split_range(total: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
    let start = total * index / threads;
    let end = total * (index + 1) / threads;
    start..end
}
