//! A small fork-join pool for the latency-bound kernels of decoding.
//!
//! Decoding one token runs a few hundred short parallel matrix-vector
//! products; rayon parks idle workers, and waking them costs more than the
//! products themselves. Here workers spin briefly on an epoch counter before
//! parking, so back-to-back jobs start within nanoseconds (llama.cpp's thread
//! pool works the same way). Long compute-bound jobs (gemm) stay on rayon.
//!
//! One pool per process: a plugin library loaded by a host that offers a
//! parallel-for (tailord) sends its jobs to the host's pool
//! ([`use_host_pool`]) instead of starting threads of its own, so two
//! plugins never run two teams of spinning threads on the same cores. A job
//! that finds the pool busy with another caller's job runs its slots on its
//! own thread instead of waiting behind it.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Spins before a worker parks (a few tens of microseconds).
const SPIN_LIMIT: u32 = 1 << 16;
/// Spins between two offers of the core to other threads.
const YIELD_EVERY: u32 = 256;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    threads: usize,
    /// The job of the current epoch; written only by the thread in `run`
    /// while no participant is running one.
    job: UnsafeCell<Option<*const Job>>,
    epoch: AtomicUsize,
    /// The next of the job's `threads` slots to hand out; `threads` or more
    /// when every slot is taken (the job is closed to late arrivals).
    next_slot: AtomicUsize,
    /// Slots finished.
    done: AtomicUsize,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// Serialises callers of `run` (the pool runs one job at a time).
    run_lock: Mutex<()>,
}

// SAFETY: `job` is only written by the holder of `run_lock` before it opens
// the slots (`next_slot` stored with Release), and only read by a participant
// that claimed a slot (its RMW on `next_slot` acquires that store); the
// pointee is Sync and outlives the job because `run` waits until every
// claimed slot is done, and no slot can be claimed after that.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed team of threads that run one job at a time.
pub struct SpinPool {
    team: Team,
}

/// Whose threads run the jobs.
enum Team {
    /// This pool's own.
    Own(Arc<Shared>),
    /// A host process's pool, through its parallel-for.
    Host { threads: usize, runner: HostRunner },
}

/// A host's parallel-for: runs `job(slot, slots)` for every slot of the
/// host's pool and returns when all are done.
pub type HostRunner = Box<dyn Fn(&(dyn Fn(usize, usize) + Sync)) + Send + Sync>;

impl SpinPool {
    /// A pool of `threads` participants (the caller counts as one).
    pub fn new(threads: usize) -> SpinPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            job: UnsafeCell::new(None),
            epoch: AtomicUsize::new(0),
            next_slot: AtomicUsize::new(threads),
            done: AtomicUsize::new(0),
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
                .spawn(move || {
                    set_thread_niceness(GLOBAL_NICENESS.load(Ordering::Relaxed));
                    worker(shared)
                })
                .expect("spawning a kernel thread");
        }
        SpinPool { team: Team::Own(shared) }
    }

    /// The process-wide pool: as many participants as [`set_global_threads`]
    /// asked for before its first use, else as rayon's global pool.
    pub fn global() -> &'static SpinPool {
        POOL.get_or_init(|| match GLOBAL_THREADS.load(Ordering::Relaxed) {
            0 => SpinPool::new(rayon::current_num_threads()),
            n => SpinPool::new(n),
        })
    }

    /// Participants, the caller included.
    pub fn threads(&self) -> usize {
        match &self.team {
            Team::Own(shared) => shared.threads,
            Team::Host { threads, .. } => *threads,
        }
    }

    /// Runs `job(slot, threads)` once for every slot `0..threads` and
    /// returns when all are done. Slots go to whichever participant claims
    /// them first, the caller included: a worker that is descheduled (a busy
    /// machine) leaves its slot to the others instead of stalling the job.
    /// Panics if the job panicked in any slot.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        let s = match &self.team {
            Team::Own(shared) => &**shared,
            Team::Host { runner, .. } => return runner(job),
        };
        if s.threads == 1 {
            job(0, 1);
            return;
        }
        // Another caller's job holds the team (a second stage, training next
        // to serving): run this one's slots here rather than queue behind it.
        let _serial = match s.run_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                (0..s.threads).for_each(|slot| job(slot, s.threads));
                return;
            }
        };
        // SAFETY: we hold run_lock and every slot of the previous job was
        // claimed and finished before the last `run` returned, so nobody
        // reads `job`. The 'static lifetime is a lie told only for the
        // duration of this call: we wait below until every claimed slot is
        // done, and no slot can be claimed after all are taken.
        unsafe {
            let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(job);
            *s.job.get() = Some(ptr);
        }
        s.done.store(0, Ordering::Relaxed);
        s.next_slot.store(0, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        run_slots(s);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != s.threads {
            // Only slots a worker claimed are left; if it lost its core,
            // offer ours rather than spin through its time slice.
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(YIELD_EVERY / 4) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel job panicked");
        }
    }
}

/// Participants the global pool is to have (0: rayon's count).
static GLOBAL_THREADS: AtomicUsize = AtomicUsize::new(0);
/// Niceness the global pool's and rayon's threads take when they start.
static GLOBAL_NICENESS: AtomicI32 = AtomicI32::new(0);
static POOL: OnceLock<SpinPool> = OnceLock::new();

/// Sizes the process's kernel threads (the spin pool and rayon's global
/// pool) before their first use, e.g. from a host's CPU budget, and gives
/// them a scheduling `niceness` (0: as the process; higher: they yield the
/// CPU to other work when the machine is busy, e.g. background indexing
/// next to generation). Returns false when they already run with another size.
pub fn set_global_threads(threads: usize, niceness: i32) -> bool {
    let threads = threads.max(1);
    GLOBAL_THREADS.store(threads, Ordering::Relaxed);
    GLOBAL_NICENESS.store(niceness, Ordering::Relaxed);
    let rayon_sized = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(|_| set_thread_niceness(GLOBAL_NICENESS.load(Ordering::Relaxed)))
        .build_global()
        .is_ok()
        || rayon::current_num_threads() == threads;
    rayon_sized && SpinPool::global().threads() == threads
}

/// Makes the process-wide pool a host's (`threads` slots, run by `runner`)
/// before its first use, and sizes rayon's global pool to match; a plugin
/// calls it at entry when its host offers a parallel-for. Returns false
/// when the pool already runs.
pub fn use_host_pool(threads: usize, runner: HostRunner) -> bool {
    let threads = threads.max(1);
    GLOBAL_THREADS.store(threads, Ordering::Relaxed);
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    POOL.set(SpinPool { team: Team::Host { threads, runner } }).is_ok()
}

/// Runs `work` on a new thread with `niceness` (and waits for it), so that
/// background work started from a shared thread (a daemon's request
/// thread) yields the CPU without leaving that thread lowered for good.
/// A panic in `work` is resumed on the caller.
pub fn run_with_niceness<T: Send>(niceness: i32, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            set_thread_niceness(niceness);
            work()
        });
        match handle.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Sets the calling thread's niceness (Linux: `setpriority` on thread 0
/// names the calling thread only). Unprivileged threads can only raise it,
/// so it is only ever raised, on threads the pools own.
fn set_thread_niceness(niceness: i32) {
    if niceness > 0 {
        // SAFETY: a plain system call with no pointers; failure only leaves
        // the thread at its current priority.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, niceness) };
    }
}

/// Claims and runs slots of the current job until none is left.
fn run_slots(s: &Shared) {
    loop {
        let slot = s.next_slot.fetch_add(1, Ordering::AcqRel);
        if slot >= s.threads {
            return;
        }
        // SAFETY: a slot was claimed, so the job is live (see Shared's Sync).
        let job = unsafe { (*s.job.get()).map(|p| &*p) };
        if let Some(job) = job {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(slot, s.threads)));
            if result.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

fn worker(shared: Arc<Shared>) {
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
        run_slots(s);
    }
}

/// Runs `work(part)` on contiguous parts of `0..total`, one per participant
/// of the pool, or on the calling thread alone below `min_total` items
/// (not worth waking the pool). Parts never depend on timing, so work
/// whose items are independent gives the same results on any thread count.
pub(crate) fn for_parts(total: usize, min_total: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    if total < min_total {
        work(0..total);
        return;
    }
    SpinPool::global().run(&|index, threads| {
        let part = split_range(total, index, threads);
        if !part.is_empty() {
            work(part);
        }
    });
}

/// A mutable slice the pool's participants write in disjoint parts.
pub(crate) struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: only `part` hands out access, and its callers promise disjoint
// ranges across threads; T: Send lets the values be written from another thread.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Shares `values` (borrowed mutably for `'a`).
    pub(crate) fn new(values: &'a mut [T]) -> SharedMut<'a, T> {
        SharedMut { ptr: values.as_mut_ptr(), len: values.len(), _borrow: std::marker::PhantomData }
    }

    /// How many values it shares.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The values of `range`; panics past the end.
    ///
    /// # Safety
    /// No other thread may use an overlapping range while this one lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, range: std::ops::Range<usize>) -> &'a mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "part {range:?} of {}", self.len);
        // SAFETY: inside the borrowed slice (assert above); exclusive by the
        // caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

/// The half-open range of `0..total` that participant `index` of `threads` owns.
pub fn split_range(total: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
    let start = total * index / threads;
    let end = total * (index + 1) / threads;
    start..end
}
