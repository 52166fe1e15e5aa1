//! The one error type of tailor-model. Every variant that concerns a file
//! names it, so a user reading the message knows what to fix.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The expected file.
        path: PathBuf,
        /// What it should have held.
        what: &'static str,
    },
    /// The file ends before the data its header promises.
    #[error("{path}: truncated: {detail}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was cut off.
        detail: String,
    },
    /// The file is not in the expected format or is internally inconsistent.
    #[error("{path}: corrupt or unsupported: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("{path}: tensor {name:?} is missing")]
    MissingTensor {
        /// The model file or folder.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        /// The model file or folder.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Shape from the config.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// The model's architecture is not one this decoder implements.
    #[error("{path}: unsupported architecture {arch:?} (supported: llama, mistral, qwen2 and their fine-tunes such as SmolLM)")]
    UnsupportedArchitecture {
        /// The model file or folder.
        path: PathBuf,
        /// The architecture it declares.
        arch: String,
    },
    /// config.json or GGUF metadata lacks a value or has a wrong one.
    #[error("{path}: bad config: {detail}")]
    Config {
        /// The config source.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The tokenizer could not be built or loaded.
    #[error("{path}: tokenizer: {detail}")]
    Tokenizer {
        /// Its source file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A prompt with no tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt that does not fit the context window.
    #[error("the prompt has {tokens} tokens but the model's context holds {context}")]
    ContextOverflow {
        /// Prompt length in tokens.
        tokens: usize,
        /// The context length.
        context: usize,
    },
    /// Bad generation parameters.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An adapter's config is wrong, or asks for what tailor does not serve.
    #[error("{path}: adapter: {detail}")]
    Adapter {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor of an adapter does not fit the base model.
    #[error("{path}: adapter tensor {key:?}: {detail}")]
    AdapterKey {
        /// The adapter's weights file.
        path: PathBuf,
        /// The tensor's key in the file.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// An error of the tensor core.
    #[error(transparent)]
    Tensor(#[from] tailor_tensor::TensorError),
}

impl ModelError {
    /// Whether the device's memory (its pool's budget, or the device
    /// itself) could not hold what the call needed: the caller may retry
    /// with less.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, ModelError::Tensor(tailor_tensor::TensorError::DeviceOutOfMemory { .. }))
    }
}

/// Result alias for tailor-model.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Wraps an I/O error with the path it concerns.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}
