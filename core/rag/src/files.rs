//! Which files an ingest may read, and reading them without trusting them.
//!
//! An index stage in the daemon reads paths that callers name, so the rules
//! are those of a server (DESIGN §10): every path is resolved (symlinks
//! followed) and must then lie under one of the configured roots; only
//! regular files are read (devices, FIFOs and sockets are refused before a
//! byte is read, and opening never blocks); a file is read up to the size
//! limit and no further, whatever its metadata claims (procfs reports 0);
//! directory walks are bounded in depth and in files, and a directory met
//! twice (a symlink loop) is skipped. The CLI uses the same walk without
//! roots: its user may read their own files, but not hang on a FIFO.

use crate::error::{io_error, RagError, Result};
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Files larger than this are skipped by default.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Directory levels a walk descends by default.
pub const MAX_DEPTH: usize = 32;
/// Files one ingest collects by default.
pub const MAX_FILES: usize = 100_000;

/// The rules a walk and a read follow.
#[derive(Debug, Clone)]
pub struct FilePolicy {
    /// Canonical directories paths must resolve under; `None`: anywhere.
    roots: Option<Vec<PathBuf>>,
    /// Directory levels below a named directory.
    pub max_depth: usize,
    /// Files one call may collect (more is an error naming the limit).
    pub max_files: usize,
    /// Bytes one file may have (larger ones are skipped).
    pub max_file_bytes: u64,
}

/// What a walk found: files to read, and entries passed over with the reason.
#[derive(Debug, Default)]
pub struct Collected {
    /// Canonical paths of regular files, sorted, without duplicates.
    pub files: Vec<PathBuf>,
    /// `(path, reason)` of entries inside walked directories that were skipped.
    pub skipped: Vec<(String, String)>,
}

impl FilePolicy {
    /// For a local user reading their own files: no roots, the default bounds.
    pub fn local() -> FilePolicy {
        FilePolicy { roots: None, max_depth: MAX_DEPTH, max_files: MAX_FILES, max_file_bytes: MAX_FILE_BYTES }
    }

    /// For a server: paths only under `roots` (each must exist; they are
    /// canonicalised here). No roots at all refuses every path.
    pub fn under_roots(roots: &[PathBuf]) -> Result<FilePolicy> {
        let canonical =
            roots.iter().map(|root| std::fs::canonicalize(root).map_err(io_error(root))).collect::<Result<Vec<_>>>()?;
        Ok(FilePolicy { roots: Some(canonical), ..FilePolicy::local() })
    }

    /// Resolves `path` and checks it against the roots.
    fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let resolved = std::fs::canonicalize(path).map_err(io_error(path))?;
        if self.allows(&resolved) {
            Ok(resolved)
        } else {
            Err(RagError::PathNotAllowed { path: path.to_path_buf(), roots: self.roots_text() })
        }
    }

    fn allows(&self, resolved: &Path) -> bool {
        match &self.roots {
            None => true,
            Some(roots) => roots.iter().any(|root| resolved.starts_with(root)),
        }
    }

    fn roots_text(&self) -> String {
        match &self.roots {
            Some(roots) if !roots.is_empty() => {
                roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            }
            _ => "none are configured".into(),
        }
    }

    /// The regular files under `paths`. A named path that is outside the
    /// roots, missing, or not a regular file or directory is an error; inside
    /// walked directories, hidden entries are passed over silently and
    /// special files, links out of the roots, loops and too-deep folders
    /// are skipped with a reason.
    pub fn collect(&self, paths: &[PathBuf]) -> Result<Collected> {
        let mut walk = Walk { policy: self, found: Collected::default(), seen_dirs: HashSet::new() };
        for path in paths {
            let resolved = self.resolve(path)?;
            let meta = std::fs::metadata(&resolved).map_err(io_error(path))?;
            if meta.is_dir() {
                walk.dir(resolved, 0)?;
            } else if meta.is_file() {
                walk.file(resolved)?;
            } else {
                return Err(RagError::NotRegularFile(path.to_path_buf()));
            }
        }
        walk.found.files.sort();
        walk.found.files.dedup();
        Ok(walk.found)
    }

    /// Reads a file the walk returned: refused unless it is (still) a
    /// regular file, read up to the size limit only. `Ok(None)` means it
    /// is larger than the limit.
    pub fn read(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        // O_NONBLOCK: a FIFO swapped in after the walk must not block the
        // open; O_NOFOLLOW: nor may a symlink swapped in for the last part.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_error(path))?;
        if !file.metadata().map_err(io_error(path))?.is_file() {
            return Err(RagError::NotRegularFile(path.to_path_buf()));
        }
        let mut bytes = Vec::new();
        file.take(self.max_file_bytes + 1).read_to_end(&mut bytes).map_err(io_error(path))?;
        Ok((bytes.len() as u64 <= self.max_file_bytes).then_some(bytes))
    }
}

/// One walk's state.
struct Walk<'a> {
    policy: &'a FilePolicy,
    found: Collected,
    /// Canonical directories entered, so a loop is entered once.
    seen_dirs: HashSet<PathBuf>,
}

impl Walk<'_> {
    fn file(&mut self, path: PathBuf) -> Result<()> {
        if self.found.files.len() >= self.policy.max_files {
            return Err(RagError::InvalidInput(format!(
                "more than {} files in one ingest; name fewer or narrower paths",
                self.policy.max_files
            )));
        }
        self.found.files.push(path);
        Ok(())
    }

    fn skip(&mut self, path: &Path, reason: &str) {
        self.found.skipped.push((path.display().to_string(), reason.to_string()));
    }

    /// Walks `dir` (canonical) depth-first, iteratively.
    fn dir(&mut self, dir: PathBuf, depth: usize) -> Result<()> {
        if !self.seen_dirs.insert(dir.clone()) {
            return Ok(()); // named twice
        }
        let mut stack = vec![(dir, depth)];
        while let Some((dir, depth)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
                let entry = entry.map_err(io_error(&dir))?;
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let Ok(resolved) = std::fs::canonicalize(&path) else {
                    self.skip(&path, "dangling symlink or unreadable entry");
                    continue;
                };
                if !self.policy.allows(&resolved) {
                    self.skip(&path, "resolves outside the document roots");
                    continue;
                }
                match std::fs::metadata(&resolved) {
                    Ok(meta) if meta.is_dir() && depth + 1 > self.policy.max_depth => {
                        self.skip(&path, &format!("deeper than {} levels", self.policy.max_depth))
                    }
                    Ok(meta) if meta.is_dir() && !self.seen_dirs.insert(resolved.clone()) => {
                        self.skip(&path, "directory already walked (a symlink loop?)")
                    }
                    Ok(meta) if meta.is_dir() => stack.push((resolved, depth + 1)),
                    Ok(meta) if meta.is_file() => self.file(resolved)?,
                    Ok(_) => self.skip(&path, "not a regular file"),
                    Err(e) => self.skip(&path, &e.to_string()),
                }
            }
        }
        Ok(())
    }
}
