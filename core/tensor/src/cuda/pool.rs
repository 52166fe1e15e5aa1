//! The device memory pool: the only way tailor-tensor takes device memory.
//! Allocating from the driver is slow and synchronises the device, so freed
//! blocks are kept by size class and handed out again; a configured budget
//! bounds everything the pool holds, in use or cached. Past the budget a
//! request fails with a typed error ([`TensorError::DeviceOutOfMemory`])
//! after the cached blocks have been released, and the caller (a request)
//! fails while the daemon serves on.
//!
//! A pool may also draw on a budget it shares with other pools
//! ([`SharedBudget`]: the daemon's `[server]` device budget, granted to
//! plugins through the plugin ABI's host service): every block it takes
//! from the driver is reserved there first and given back when the pool
//! releases it, so several plugins on one device stay within one figure.
//!
//! The bookkeeping does not depend on the device: the pool is generic over
//! its block type, so it is tested on the CPU with host blocks, and the
//! CUDA backend instantiates it with driver allocations.

use crate::{Result, TensorError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Requests up to this size round up to a power of two (at least
/// [`MIN_CLASS`]); larger ones to a multiple of [`LARGE_STEP`].
const SMALL_LIMIT: usize = 1 << 20;
/// The smallest block handed out.
pub const MIN_CLASS: usize = 256;
/// The granularity of large blocks (the driver's own page for big
/// allocations).
pub const LARGE_STEP: usize = 2 << 20;

/// The block size a request of `bytes` takes.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= SMALL_LIMIT {
        bytes.next_power_of_two().max(MIN_CLASS)
    } else {
        bytes.div_ceil(LARGE_STEP) * LARGE_STEP
    }
}

/// What the pool holds, for logs and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// The most the pool may hold.
    pub budget: usize,
    /// Bytes handed out and not yet returned.
    pub in_use: usize,
    /// Bytes of returned blocks kept for reuse.
    pub cached: usize,
    /// The largest `in_use` seen.
    pub peak: usize,
}

/// A device budget shared by several pools (in tailord, across plugins):
/// bytes are reserved before the driver is asked for them and released
/// after they are given back to it.
pub trait SharedBudget: Send + Sync {
    /// Reserves `bytes`; false (nothing reserved) when they would exceed
    /// the shared budget.
    fn reserve(&self, bytes: usize) -> bool;
    /// Returns `bytes` reserved earlier.
    fn release(&self, bytes: usize);
}

/// The pool's state behind its lock.
struct Ledger<B> {
    stats: PoolStats,
    free: BTreeMap<usize, Vec<B>>,
    /// The budget shared with other pools, if any.
    shared: Option<Arc<dyn SharedBudget>>,
}

impl<B> Ledger<B> {
    /// Drops cached blocks, largest first, until `needed` more bytes fit in
    /// the budget or nothing is cached.
    fn release_for(&mut self, needed: usize) {
        while self.stats.in_use + self.stats.cached + needed > self.stats.budget {
            let Some(mut largest) = self.free.last_entry() else { return };
            let class = *largest.key();
            largest.get_mut().pop();
            if largest.get().is_empty() {
                largest.remove();
            }
            self.stats.cached -= class;
            self.give_to_shared(class);
        }
    }

    /// Drops every cached block.
    fn release_all(&mut self) {
        self.free.clear();
        self.give_to_shared(self.stats.cached);
        self.stats.cached = 0;
    }

    /// Reserves a new block's bytes in the shared budget, if any, emptying
    /// this pool's cache once to make room; false when it stays refused.
    fn reserve_shared(&mut self, class: usize) -> bool {
        let Some(shared) = self.shared.clone() else { return true };
        if shared.reserve(class) {
            return true;
        }
        self.release_all();
        shared.reserve(class)
    }

    /// Returns bytes the driver has back (or never gave) to the shared budget.
    fn give_to_shared(&self, bytes: usize) {
        if let (Some(shared), true) = (&self.shared, bytes > 0) {
            shared.release(bytes);
        }
    }
}

impl<B> Drop for Ledger<B> {
    /// The pool's last blocks go back to the driver, so their bytes go
    /// back to the shared budget.
    fn drop(&mut self) {
        self.give_to_shared(self.stats.in_use + self.stats.cached);
    }
}

/// A caching allocator of device blocks `B` under a byte budget. Cloning
/// shares the pool.
pub struct MemoryPool<B> {
    ledger: Arc<Mutex<Ledger<B>>>,
}

impl<B> Clone for MemoryPool<B> {
    fn clone(&self) -> Self {
        MemoryPool { ledger: Arc::clone(&self.ledger) }
    }
}

/// A block taken from a [`MemoryPool`]; returned to it when dropped.
pub struct PoolBlock<B> {
    block: Option<B>,
    class: usize,
    pool: MemoryPool<B>,
}

impl<B> MemoryPool<B> {
    /// An empty pool that may hold at most `budget` bytes.
    pub fn new(budget: usize) -> MemoryPool<B> {
        MemoryPool::with_shared(budget, None)
    }

    /// An empty pool of at most `budget` bytes whose blocks also count
    /// against `shared`, when given.
    pub fn with_shared(budget: usize, shared: Option<Arc<dyn SharedBudget>>) -> MemoryPool<B> {
        let stats = PoolStats { budget, ..PoolStats::default() };
        MemoryPool { ledger: Arc::new(Mutex::new(Ledger { stats, free: BTreeMap::new(), shared })) }
    }

    /// The pool's figures now.
    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    /// A block of at least `bytes`: a cached one of the right class, or a
    /// new one from `allocate` (called with the class size). When the
    /// budget would be exceeded, cached blocks are released first; when it
    /// still would be, or the driver itself is out of memory after the
    /// cache is emptied, the request fails with
    /// [`TensorError::DeviceOutOfMemory`].
    pub fn take(&self, bytes: usize, mut allocate: impl FnMut(usize) -> Result<B>) -> Result<PoolBlock<B>> {
        let class = size_class(bytes);
        let mut ledger = self.lock();
        if let Some(block) = ledger.free.get_mut(&class).and_then(Vec::pop) {
            ledger.stats.cached -= class;
            return Ok(self.hand_out(&mut ledger, block, class));
        }
        ledger.release_for(class);
        let stats = ledger.stats;
        if stats.in_use + class > stats.budget || !ledger.reserve_shared(class) {
            return Err(TensorError::DeviceOutOfMemory {
                requested: bytes,
                in_use: stats.in_use,
                budget: stats.budget,
            });
        }
        let block = match allocate(class) {
            Ok(block) => Ok(block),
            Err(TensorError::DeviceOutOfMemory { .. }) => {
                // The device is shared with other processes: give back
                // everything cached and try once more.
                ledger.release_all();
                allocate(class)
            }
            Err(other) => Err(other),
        };
        let block = block.inspect_err(|_| ledger.give_to_shared(class))?;
        Ok(self.hand_out(&mut ledger, block, class))
    }

    /// Drops every cached block (the memory goes back to the driver).
    pub fn trim(&self) {
        self.lock().release_all();
    }

    fn hand_out(&self, ledger: &mut Ledger<B>, block: B, class: usize) -> PoolBlock<B> {
        ledger.stats.in_use += class;
        ledger.stats.peak = ledger.stats.peak.max(ledger.stats.in_use);
        PoolBlock { block: Some(block), class, pool: self.clone() }
    }

    fn give_back(&self, block: B, class: usize) {
        let mut ledger = self.lock();
        ledger.stats.in_use -= class;
        ledger.stats.cached += class;
        ledger.free.entry(class).or_default().push(block);
    }

    /// The ledger; a panic elsewhere while it was held leaves consistent
    /// figures (every update is a few additions), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Ledger<B>> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<B> PoolBlock<B> {
    /// The block's usable size (its size class).
    pub fn capacity(&self) -> usize {
        self.class
    }

    /// The device block.
    pub fn block(&self) -> &B {
        self.block.as_ref().expect("a pool block holds its block until dropped")
    }

    /// The device block, for writing.
    pub fn block_mut(&mut self) -> &mut B {
        self.block.as_mut().expect("a pool block holds its block until dropped")
    }
}

impl<B> Drop for PoolBlock<B> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block, self.class);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn host(bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes])
    }

    #[test]
    fn classes_round_small_requests_to_powers_of_two_and_large_ones_to_2_mib() {
        assert_eq!(size_class(1), MIN_CLASS);
        assert_eq!(size_class(300), 512);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), LARGE_STEP);
        assert_eq!(size_class(5 << 20), 6 << 20);
    }

    #[test]
    fn returned_blocks_are_reused_without_a_new_allocation() {
        let pool = MemoryPool::new(16 << 20);
        let calls = Cell::new(0);
        let counting = |bytes| {
            calls.set(calls.get() + 1);
            host(bytes)
        };
        let first = pool.take(3000, counting).unwrap();
        assert_eq!(first.capacity(), 4096);
        drop(first);
        assert_eq!(pool.stats(), PoolStats { budget: 16 << 20, in_use: 0, cached: 4096, peak: 4096 });
        let again = pool.take(4000, counting).unwrap();
        assert_eq!((calls.get(), again.block().len()), (1, 4096));
        assert_eq!(pool.stats().cached, 0);
    }

    #[test]
    fn past_the_budget_cached_blocks_go_first_then_a_typed_error() {
        let pool = MemoryPool::new(8 << 20);
        let cached = pool.take(4 << 20, host).unwrap();
        drop(cached);
        let held = pool.take(6 << 20, host).unwrap();
        assert_eq!(pool.stats().cached, 0, "the cached 4 MiB were released to fit 6 MiB");
        let err = pool.take(4 << 20, host).err().expect("6 + 4 MiB exceed the 8 MiB budget");
        assert!(matches!(err, TensorError::DeviceOutOfMemory { requested, in_use, budget }
            if requested == 4 << 20 && in_use == 6 << 20 && budget == 8 << 20));
        assert!(err.to_string().contains("out of device memory"), "{err}");
        drop(held);
        assert!(pool.take(8 << 20, host).is_ok(), "the pool serves on after a refusal");
    }

    #[test]
    fn a_driver_out_of_memory_empties_the_cache_and_retries_once() {
        let pool = MemoryPool::new(64 << 20);
        drop(pool.take(2 << 20, host).unwrap());
        let attempts = Cell::new(0);
        let flaky = |bytes| {
            attempts.set(attempts.get() + 1);
            if attempts.get() == 1 {
                Err(TensorError::DeviceOutOfMemory { requested: bytes, in_use: 0, budget: 0 })
            } else {
                host(bytes)
            }
        };
        let block = pool.take(4 << 20, flaky).unwrap();
        assert_eq!((attempts.get(), pool.stats().cached, block.capacity()), (2, 0, 4 << 20));
    }

    /// A budget two pools share, counting what is reserved.
    struct Shared {
        limit: usize,
        reserved: Mutex<usize>,
    }

    impl SharedBudget for Shared {
        fn reserve(&self, bytes: usize) -> bool {
            let mut reserved = self.reserved.lock().unwrap();
            let fits = *reserved + bytes <= self.limit;
            if fits {
                *reserved += bytes;
            }
            fits
        }

        fn release(&self, bytes: usize) {
            *self.reserved.lock().unwrap() -= bytes;
        }
    }

    #[test]
    fn pools_sharing_a_budget_stay_within_it_and_give_back_what_they_release() {
        let shared = Arc::new(Shared { limit: 8 << 20, reserved: Mutex::new(0) });
        let reserved = || *shared.reserved.lock().unwrap();
        let first = MemoryPool::with_shared(16 << 20, Some(shared.clone() as Arc<dyn SharedBudget>));
        let second = MemoryPool::with_shared(16 << 20, Some(shared.clone() as Arc<dyn SharedBudget>));
        let held = first.take(6 << 20, host).unwrap();
        assert_eq!(reserved(), 6 << 20);
        let err = second.take(4 << 20, host).err().expect("6 + 4 MiB exceed the shared 8 MiB");
        assert!(matches!(err, TensorError::DeviceOutOfMemory { .. }), "{err}");
        assert_eq!(reserved(), 6 << 20, "a refused request reserves nothing");
        drop(held);
        assert_eq!(reserved(), 6 << 20, "a cached block stays reserved");
        first.trim();
        assert_eq!(reserved(), 0, "a trimmed cache is given back");
        let second_block = second.take(4 << 20, host).unwrap();
        drop(first.take(4 << 20, host).unwrap());
        assert_eq!(reserved(), 8 << 20);
        // The second pool needs more: the first's cache stays (another
        // pool's cache is not this one's to empty), so it is refused until
        // the first pool goes away.
        assert!(second.take(2 << 20, host).is_err());
        drop(first);
        assert_eq!(reserved(), 4 << 20, "a dropped pool gives back its cache");
        assert!(second.take(2 << 20, host).is_ok());
        drop(second_block);
        drop(second);
        assert_eq!(reserved(), 0);
    }
}
