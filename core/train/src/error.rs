//! The one error type of tailor-train.

use std::path::PathBuf;

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model refused an operation (shapes, tokens, adapters).
    #[error(transparent)]
    Model(#[from] tailor_model::ModelError),
    /// A kernel refused its operands.
    #[error(transparent)]
    Tensor(#[from] tailor_tensor::TensorError),
    /// A line of a training file is not a usable example.
    #[error("{path}:{line}: {detail}")]
    Data {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is unreadable or belongs to another run.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// Its folder.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A setting is out of range or inconsistent.
    #[error("invalid training setting: {0}")]
    Setting(String),
    /// The loss or a gradient stopped being a finite number.
    #[error("training diverged at step {step}: the loss is {loss} (lower the learning rate; the last good checkpoint is kept)")]
    Diverged {
        /// The optimizer step.
        step: usize,
        /// The loss seen.
        loss: f64,
    },
    /// Stopped on request.
    #[error("training cancelled at step {step}")]
    Cancelled {
        /// The last completed step.
        step: usize,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

/// Maps an I/O error to [`TrainError::Io`] for `path`.
pub(crate) fn io_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}
