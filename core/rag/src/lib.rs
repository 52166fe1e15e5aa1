//! tailor-rag: documents in, grounded prompts with citations out.
//!
//! Chunkers split documents; the encoder (tailor-model) embeds chunks; a
//! crash-safe store keeps documents and chunks; a faiss index (flat or HNSW)
//! beside it finds the nearest chunks; retrieval and prompt assembly turn
//! hits into a numbered context with citations.

pub mod chunk;
pub mod collection;
pub mod error;
pub mod eval;
pub mod faiss;
pub mod files;
pub mod prompt;
pub mod store;

pub use collection::{AddReport, Collection, SearchHit};
pub use error::{RagError, Result};
pub use faiss::{Hit, IndexKind, VectorIndex};
pub use files::FilePolicy;
