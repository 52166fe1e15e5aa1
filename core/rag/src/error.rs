//! The one error type of tailor-rag.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in retrieval.
#[derive(Debug, thiserror::Error)]
pub enum RagError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// faiss reported an error.
    #[error("faiss: {0}")]
    Faiss(String),
    /// The persisted vector index is unreadable or disagrees with the store.
    #[error(
        "{path}: the vector index is corrupt ({detail}); run `tailor index rebuild` to recreate it from the store"
    )]
    CorruptIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The document store is unreadable.
    #[error("{path}: the document store is corrupt: {detail}")]
    CorruptStore {
        /// The store file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No index by that name.
    #[error("no index named {0:?} (create it with `tailor index create`)")]
    UnknownIndex(String),
    /// An index by that name already exists.
    #[error("an index named {0:?} already exists")]
    IndexExists(String),
    /// A path that resolves outside the configured document roots.
    #[error("{path}: not under the configured document roots ({roots})")]
    PathNotAllowed {
        /// The path as given.
        path: PathBuf,
        /// The roots, for the message.
        roots: String,
    },
    /// A device, FIFO, socket or other file that is not a regular file.
    #[error("{0}: not a regular file or directory")]
    NotRegularFile(PathBuf),
    /// Bad arguments.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model error (embedding).
    #[error(transparent)]
    Model(#[from] tailor_model::ModelError),
}

/// Result alias for tailor-rag.
pub type Result<T> = std::result::Result<T, RagError>;

/// Wraps an I/O error with its path.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RagError + '_ {
    move |source| RagError::Io { path: path.to_path_buf(), source }
}
