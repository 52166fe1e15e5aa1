//! Where fetched models live, shared by the CLI and the tests.

use std::path::PathBuf;

/// File name of the SmolLM2 GGUF in the cache.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Folder name of the SmolLM2 Hugging Face conversion in the cache.
pub const SMOLLM2_HF: &str = "SmolLM2-135M-Instruct-hf";

/// `$TAILOR_MODELS`, else `$XDG_CACHE_HOME/tailor/models`, else
/// `~/.cache/tailor/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAILOR_MODELS") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("tailor").join("models")
}
/// Folder name of all-MiniLM-L6-v2 (sentence-transformers layout) in the cache.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";
