//! The adapter registry: LoRA adapters by name, for one base model.
//!
//! A name is registered with a folder (only under the configured adapter
//! directories, checked after resolving symlinks) and loaded at once, so a
//! bad adapter is refused when it is added, not when a request first uses
//! it. Loaded adapters are bounded in count and bytes: past the bound the
//! least recently used unpinned one is dropped from memory (its name stays
//! registered) and loaded again from disk when a request names it. An
//! adapter a running request holds (`Arc`) stays alive until that request
//! ends, even when it is unregistered or evicted meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tailor_model::{Adapter, AdapterLimits, Model, ModelError};

/// Why an adapter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// No adapter of that name is registered.
    #[error("unknown adapter {0:?}")]
    Unknown(String),
    /// The name is taken.
    #[error("an adapter named {0:?} is already loaded; unload it first")]
    Exists(String),
    /// The name is not usable (empty, too long, or with characters other than
    /// letters, digits, `-`, `_`, `.`).
    #[error("bad adapter name {0:?}: use 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// The folder is outside every configured adapter directory.
    #[error("{path}: adapters load only from the configured adapter_dirs")]
    NotAllowed {
        /// The folder as given.
        path: String,
    },
    /// Pinned adapters alone exceed the memory bound.
    #[error("adapter {name:?} does not fit: pinned adapters already use the memory bound ({max_bytes} bytes)")]
    NoRoom {
        /// The adapter.
        name: String,
        /// The bound.
        max_bytes: usize,
    },
    /// Loading failed (a typed model error: bad config, key, shape, …).
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Bounds of the registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Folders adapters may be loaded from.
    pub dirs: Vec<PathBuf>,
    /// Most adapters in memory at once.
    pub max_loaded: usize,
    /// Most bytes of adapter weights in memory at once.
    pub max_bytes: usize,
    /// Limits every adapter must fit.
    pub limits: AdapterLimits,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions { dirs: Vec::new(), max_loaded: 32, max_bytes: 1 << 30, limits: AdapterLimits::default() }
    }
}

/// One registered adapter, as listed.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    /// Its name.
    pub name: String,
    /// Its folder (resolved).
    pub path: PathBuf,
    /// Kept in memory regardless of use.
    pub pinned: bool,
    /// In memory now.
    pub loaded: bool,
    /// Largest rank.
    pub rank: usize,
    /// Adapted projections (`q_proj`, …).
    pub targets: Vec<&'static str>,
    /// Parameters.
    pub parameters: usize,
    /// Bytes in memory when loaded.
    pub bytes: usize,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct RegistryStats {
    /// Lookups served from memory.
    pub hits: AtomicU64,
    /// Lookups that loaded from disk.
    pub misses: AtomicU64,
    /// Adapters dropped from memory to fit the bounds.
    pub evictions: AtomicU64,
}

struct Entry {
    path: PathBuf,
    pinned: bool,
    loaded: Option<Arc<Adapter>>,
    last_used: u64,
    /// Kept from the first load, so a listing needs no load.
    summary: Summary,
}

/// What a listing shows of an adapter, taken when it is first loaded.
#[derive(Clone)]
struct Summary {
    rank: usize,
    targets: Vec<&'static str>,
    parameters: usize,
    bytes: usize,
}

struct Inner {
    entries: BTreeMap<String, Entry>,
    clock: u64,
}

/// Named adapters for one model.
pub struct AdapterRegistry {
    model: Arc<Model>,
    dirs: Vec<PathBuf>,
    options: RegistryOptions,
    inner: Mutex<Inner>,
    stats: RegistryStats,
}

impl AdapterRegistry {
    /// An empty registry for `model`. Adapter directories that do not
    /// exist are skipped (nothing can be loaded from them).
    pub fn new(model: Arc<Model>, options: RegistryOptions) -> AdapterRegistry {
        let dirs = options.dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
        let inner = Mutex::new(Inner { entries: BTreeMap::new(), clock: 0 });
        AdapterRegistry { model, dirs, options, inner, stats: RegistryStats::default() }
    }

    /// Registers and loads the adapter in `path` under `name`.
    pub fn register(&self, name: &str, path: &Path, pinned: bool) -> Result<AdapterInfo, AdapterError> {
        check_name(name)?;
        let path = self.allowed(path)?;
        if self.lock().entries.contains_key(name) {
            return Err(AdapterError::Exists(name.to_string()));
        }
        // Loaded outside the lock: requests keep flowing meanwhile.
        let adapter = Arc::new(Adapter::load(&path, &self.model.llama, self.options.limits)?);
        let summary = Summary {
            rank: adapter.max_rank(),
            targets: adapter.target_names(),
            parameters: adapter.parameter_count(),
            bytes: adapter.memory_bytes(),
        };
        let mut inner = self.lock();
        if inner.entries.contains_key(name) {
            return Err(AdapterError::Exists(name.to_string()));
        }
        inner.clock += 1;
        let entry = Entry { path, pinned, loaded: Some(adapter), last_used: inner.clock, summary };
        inner.entries.insert(name.to_string(), entry);
        if let Err(e) = self.fit(&mut inner, name) {
            inner.entries.remove(name);
            return Err(e);
        }
        Ok(info(name, &inner.entries[name]))
    }

    /// Forgets `name`; requests using it finish with it.
    pub fn unregister(&self, name: &str) -> Result<(), AdapterError> {
        self.lock().entries.remove(name).map(drop).ok_or_else(|| AdapterError::Unknown(name.to_string()))
    }

    /// The adapter named `name`, loading it again if it was evicted.
    pub fn get(&self, name: &str) -> Result<Arc<Adapter>, AdapterError> {
        let path = {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            let entry = inner.entries.get_mut(name).ok_or_else(|| AdapterError::Unknown(name.to_string()))?;
            entry.last_used = clock;
            if let Some(adapter) = &entry.loaded {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(adapter.clone());
            }
            entry.path.clone()
        };
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let adapter = Arc::new(Adapter::load(&path, &self.model.llama, self.options.limits)?);
        let mut inner = self.lock();
        match inner.entries.get_mut(name) {
            // Unregistered (or replaced) while it loaded: serve this request anyway.
            Some(entry) if entry.path == path => entry.loaded = Some(adapter.clone()),
            _ => return Ok(adapter),
        }
        self.fit(&mut inner, name)?;
        Ok(adapter)
    }

    /// Every registered adapter.
    pub fn list(&self) -> Vec<AdapterInfo> {
        self.lock().entries.iter().map(|(name, entry)| info(name, entry)).collect()
    }

    /// Bytes of adapter weights in memory.
    pub fn loaded_bytes(&self) -> usize {
        loaded_bytes(&self.lock())
    }

    /// Hit, miss and eviction counters.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// `path` resolved, if it lies under an adapter directory.
    fn allowed(&self, path: &Path) -> Result<PathBuf, AdapterError> {
        let refuse = || AdapterError::NotAllowed { path: path.display().to_string() };
        let resolved = path.canonicalize().map_err(|_| refuse())?;
        match self.dirs.iter().any(|dir| resolved.starts_with(dir)) && resolved.is_dir() {
            true => Ok(resolved),
            false => Err(refuse()),
        }
    }

    /// Evicts least recently used unpinned adapters (never `keep`) until
    /// the bounds hold.
    fn fit(&self, inner: &mut Inner, keep: &str) -> Result<(), AdapterError> {
        let over = |inner: &Inner| {
            let count = inner.entries.values().filter(|e| e.loaded.is_some()).count();
            count > self.options.max_loaded.max(1) || loaded_bytes(inner) > self.options.max_bytes
        };
        while over(inner) {
            let victim = inner
                .entries
                .iter_mut()
                .filter(|(name, e)| e.loaded.is_some() && !e.pinned && name.as_str() != keep)
                .min_by_key(|(_, e)| e.last_used);
            match victim {
                Some((_, entry)) => {
                    entry.loaded = None;
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => return Err(AdapterError::NoRoom { name: keep.to_string(), max_bytes: self.options.max_bytes }),
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn loaded_bytes(inner: &Inner) -> usize {
    inner.entries.values().filter(|e| e.loaded.is_some()).map(|e| e.summary.bytes).sum()
}

fn info(name: &str, entry: &Entry) -> AdapterInfo {
    let Summary { rank, targets, parameters, bytes } = entry.summary.clone();
    AdapterInfo {
        name: name.to_string(),
        path: entry.path.clone(),
        pinned: entry.pinned,
        loaded: entry.loaded.is_some(),
        rank,
        targets,
        parameters,
        bytes,
    }
}

fn check_name(name: &str) -> Result<(), AdapterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match ok {
        true => Ok(()),
        false => Err(AdapterError::BadName(name.to_string())),
    }
}
