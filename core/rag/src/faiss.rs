//! A faiss vector index through a `cxx` bridge to Debian's libfaiss
//! (DESIGN §7): exact inner product (`Flat`) or an HNSW graph, 64-bit ids,
//! persisted to a file. faiss exceptions come back as [`RagError::Faiss`].

use crate::error::{RagError, Result};
use std::path::Path;

#[cxx::bridge(namespace = "tailor")]
mod ffi {
    unsafe extern "C++" {
        include!("tailor-rag/cxx/faiss_bridge.h");

        type FaissIndex;

        fn new_flat_ip(dim: i32) -> Result<UniquePtr<FaissIndex>>;
        fn new_hnsw_ip(dim: i32, m: i32, ef_construction: i32) -> Result<UniquePtr<FaissIndex>>;
        fn add_with_ids(index: Pin<&mut FaissIndex>, vectors: &[f32], ids: &[i64]) -> Result<()>;
        fn search(
            index: &FaissIndex,
            queries: &[f32],
            k: i64,
            ef_search: i32,
            scores: &mut [f32],
            ids: &mut [i64],
        ) -> Result<()>;
        fn remove_ids(index: Pin<&mut FaissIndex>, ids: &[i64]) -> Result<i64>;
        fn ntotal(index: &FaissIndex) -> i64;
        fn dimension(index: &FaissIndex) -> i32;
        fn write_index(index: &FaissIndex, path: &str) -> Result<()>;
        fn read_index(path: &str) -> Result<UniquePtr<FaissIndex>>;
    }
}

/// Which faiss structure to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// Exact inner product over every vector.
    Flat,
    /// Hierarchical navigable small-world graph (approximate).
    Hnsw,
}

impl std::str::FromStr for IndexKind {
    type Err = RagError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flat" => Ok(IndexKind::Flat),
            "hnsw" => Ok(IndexKind::Hnsw),
            other => Err(RagError::InvalidInput(format!("index kind {other:?} (expected flat or hnsw)"))),
        }
    }
}

/// HNSW neighbours per node.
const HNSW_M: i32 = 32;
/// HNSW build-time beam width.
const HNSW_EF_CONSTRUCTION: i32 = 200;
/// HNSW search-time beam width (at least k).
const HNSW_EF_SEARCH: i32 = 128;

/// One search hit: the id given at insertion and the inner product.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The vector's id.
    pub id: i64,
    /// Inner product with the query (cosine for unit vectors).
    pub score: f32,
}

/// An owned faiss index.
pub struct VectorIndex {
    inner: cxx::UniquePtr<ffi::FaissIndex>,
    kind: IndexKind,
}

// SAFETY: the index is exclusively owned through the UniquePtr; faiss keeps
// no thread-affine state, so moving the owner to another thread is sound.
// It is not Sync: callers serialise access (mutation is not thread-safe).
unsafe impl Send for VectorIndex {}

fn faiss_error(e: cxx::Exception) -> RagError {
    RagError::Faiss(e.what().to_string())
}

impl VectorIndex {
    /// An empty index of `dim`-dimensional vectors.
    pub fn new(kind: IndexKind, dim: usize) -> Result<VectorIndex> {
        let dim = i32::try_from(dim).map_err(|_| RagError::InvalidInput(format!("dimension {dim}")))?;
        let inner = match kind {
            IndexKind::Flat => ffi::new_flat_ip(dim),
            IndexKind::Hnsw => ffi::new_hnsw_ip(dim, HNSW_M, HNSW_EF_CONSTRUCTION),
        }
        .map_err(faiss_error)?;
        Ok(VectorIndex { inner, kind })
    }

    /// The structure kind.
    pub fn kind(&self) -> IndexKind {
        self.kind
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.handle().map(|h| ffi::ntotal(h) as usize).unwrap_or(0)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.handle().map(|h| ffi::dimension(h) as usize).unwrap_or(0)
    }

    fn handle(&self) -> Result<&ffi::FaissIndex> {
        self.inner.as_ref().ok_or_else(|| RagError::Faiss("null index".into()))
    }

    /// Adds row-major `vectors` (`ids.len()` rows of `dim()`).
    pub fn add(&mut self, vectors: &[f32], ids: &[i64]) -> Result<()> {
        if vectors.len() != ids.len() * self.dim() {
            return Err(RagError::InvalidInput(format!(
                "{} values for {} vectors of dimension {}",
                vectors.len(),
                ids.len(),
                self.dim()
            )));
        }
        let pinned = self.inner.as_mut().ok_or_else(|| RagError::Faiss("null index".into()))?;
        ffi::add_with_ids(pinned, vectors, ids).map_err(faiss_error)
    }

    /// The `k` best hits of each query (row-major, `dim()` per query).
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let dim = self.dim();
        if k == 0 || dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(RagError::InvalidInput(format!("{} query values for dimension {dim}, k = {k}", queries.len())));
        }
        let n = queries.len() / dim;
        let mut scores = vec![0f32; n * k];
        let mut ids = vec![-1i64; n * k];
        ffi::search(self.handle()?, queries, k as i64, HNSW_EF_SEARCH, &mut scores, &mut ids).map_err(faiss_error)?;
        Ok(ids
            .chunks(k)
            .zip(scores.chunks(k))
            .map(|(ids, scores)| {
                ids.iter().zip(scores).filter(|(id, _)| **id >= 0).map(|(&id, &score)| Hit { id, score }).collect()
            })
            .collect())
    }

    /// Removes vectors by id (flat indexes only; HNSW cannot delete and is
    /// rebuilt instead). Returns how many were removed.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize> {
        let pinned = self.inner.as_mut().ok_or_else(|| RagError::Faiss("null index".into()))?;
        ffi::remove_ids(pinned, ids).map(|n| n as usize).map_err(faiss_error)
    }

    /// Writes the index to `path` atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let tmp_str =
            tmp.to_str().ok_or_else(|| RagError::InvalidInput(format!("non-UTF-8 path {}", tmp.display())))?;
        ffi::write_index(self.handle()?, tmp_str).map_err(faiss_error)?;
        crate::store::fsync_file(&tmp)?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_error(path))?;
        Ok(())
    }

    /// Reads an index written by [`VectorIndex::save`].
    pub fn load(path: &Path, kind: IndexKind) -> Result<VectorIndex> {
        let path_str =
            path.to_str().ok_or_else(|| RagError::InvalidInput(format!("non-UTF-8 path {}", path.display())))?;
        let inner = ffi::read_index(path_str)
            .map_err(|e| RagError::CorruptIndex { path: path.to_path_buf(), detail: e.what().to_string() })?;
        Ok(VectorIndex { inner, kind })
    }
}
