//! A named index on disk: `meta.json` (settings), `store.log` (documents,
//! chunks and vectors; the truth) and `vectors.faiss` (derived, rebuilt from
//! the store whenever it is missing or behind).

use crate::chunk::{extract_file, markdown_sections, token_windows, ChunkParams, Extracted};
use crate::error::{io_error, RagError, Result};
use crate::files::{Collected, FilePolicy};
use crate::store::{fnv1a, fsync_file, Chunk, Document, Store};
use crate::{IndexKind, VectorIndex};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tailor_model::Encoder;

/// Documents per committed batch.
const BATCH_DOCS: usize = 16;

/// Settings of an index, fixed at creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexMeta {
    /// The index name.
    pub name: String,
    /// faiss structure.
    pub kind: IndexKind,
    /// Embedding width.
    pub dim: usize,
    /// Encoder folder used for documents and queries.
    pub encoder: PathBuf,
    /// Chunking.
    pub chunking: ChunkParams,
}

/// One retrieved chunk with its provenance.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    /// Cosine similarity.
    pub score: f32,
    /// Document id.
    pub doc_id: String,
    /// Where the document came from.
    pub source: String,
    /// Chunk id.
    pub chunk_id: i64,
    /// Byte span in the document's text.
    pub span: (usize, usize),
    /// The chunk text.
    pub text: String,
    /// Document metadata.
    pub metadata: BTreeMap<String, String>,
}

/// What an ingest did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AddReport {
    /// Documents added.
    pub added: usize,
    /// Documents already present and unchanged.
    pub unchanged: usize,
    /// Chunks added.
    pub chunks: usize,
    /// Files skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// True when the caller stopped the ingest early (what was committed stays).
    pub stopped: bool,
}

/// Where indexes live: `$TAILOR_DATA/indexes`, else
/// `$XDG_DATA_HOME/tailor/indexes`, else `~/.local/share/tailor/indexes`.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAILOR_DATA") {
        return PathBuf::from(dir).join("indexes");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from(".local/share"));
    base.join("tailor").join("indexes")
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RagError::InvalidInput(format!("index name {name:?}: use letters, digits, '-', '_' and '.'")))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    fsync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// An open index.
pub struct Collection {
    dir: PathBuf,
    meta: IndexMeta,
    store: Store,
    index: VectorIndex,
    encoder: Encoder,
}

impl Collection {
    /// Creates an empty index named `name` under `root`.
    pub fn create(root: &Path, name: &str, kind: IndexKind, encoder: &Path, chunking: ChunkParams) -> Result<()> {
        check_name(name)?;
        let dir = root.join(name);
        if dir.join("meta.json").exists() {
            return Err(RagError::IndexExists(name.to_string()));
        }
        let encoder_dir = std::fs::canonicalize(encoder).map_err(io_error(encoder))?;
        let dim = Encoder::load(&encoder_dir)?.dim();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let meta = IndexMeta { name: name.to_string(), kind, dim, encoder: encoder_dir, chunking };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| RagError::InvalidInput(e.to_string()))?;
        write_atomic(&dir.join("meta.json"), &json)
    }

    /// Opens an index; a missing or lagging vector file is rebuilt from the
    /// store, an unreadable one is an error that names `tailor index rebuild`.
    pub fn open(root: &Path, name: &str) -> Result<Collection> {
        let (dir, meta) = read_meta(root, name)?;
        let store = Store::open(&dir.join("store.log"))?;
        let encoder = Encoder::load(&meta.encoder)?;
        let path = dir.join("vectors.faiss");
        let index =
            if path.exists() { VectorIndex::load(&path, meta.kind)? } else { VectorIndex::new(meta.kind, meta.dim)? };
        if index.dim() != meta.dim {
            return Err(RagError::CorruptIndex {
                path,
                detail: format!("dimension {} but the index is {}", index.dim(), meta.dim),
            });
        }
        let mut collection = Collection { dir, meta, store, index, encoder };
        if collection.index.len() != collection.store.chunk_count() {
            collection.rebuild_vectors()?;
        }
        Ok(collection)
    }

    /// The names of the indexes under `root`, sorted (none when `root` does
    /// not exist yet). Folders without a `meta.json` are not indexes.
    pub fn list(root: &Path) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error(root))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if check_name(&name).is_ok() && entry.path().join("meta.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The settings of the index `name`, read without opening it.
    pub fn read_meta(root: &Path, name: &str) -> Result<IndexMeta> {
        read_meta(root, name).map(|(_, meta)| meta)
    }

    /// Deletes the index `name` and everything in it. The folder is first
    /// renamed to a hidden one (never an index name), so a crash midway
    /// leaves no half-deleted index behind, only a folder `list` skips and
    /// the next removal of that name clears.
    pub fn remove(root: &Path, name: &str) -> Result<()> {
        let (dir, _) = read_meta(root, name)?;
        let doomed = root.join(format!(".removing-{name}"));
        if doomed.exists() {
            std::fs::remove_dir_all(&doomed).map_err(io_error(&doomed))?;
        }
        std::fs::rename(&dir, &doomed).map_err(io_error(&dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io_error(&doomed))
    }

    /// Recreates `vectors.faiss` from the store (after corruption or a crash).
    pub fn rebuild(root: &Path, name: &str) -> Result<usize> {
        let (dir, meta) = read_meta(root, name)?;
        let _ = std::fs::remove_file(dir.join("vectors.faiss"));
        let collection = Collection::open(root, name)?;
        debug_assert_eq!(meta.name, collection.meta.name);
        Ok(collection.index.len())
    }

    fn rebuild_vectors(&mut self) -> Result<()> {
        let mut index = VectorIndex::new(self.meta.kind, self.meta.dim)?;
        let (mut vectors, mut ids) = (Vec::new(), Vec::new());
        for doc in self.store.documents() {
            for chunk in &doc.chunks {
                vectors.extend_from_slice(&chunk.vector);
                ids.push(chunk.id);
            }
        }
        index.add(&vectors, &ids)?;
        self.index = index;
        self.save_vectors()
    }

    fn save_vectors(&self) -> Result<()> {
        self.index.save(&self.dir.join("vectors.faiss"))
    }

    /// The settings.
    pub fn meta(&self) -> &IndexMeta {
        &self.meta
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// (documents, chunks) held.
    pub fn counts(&self) -> (usize, usize) {
        (self.store.document_count(), self.store.chunk_count())
    }

    /// Ingests files (directories recursively). Each batch of documents is
    /// committed to the store before the next starts; unchanged documents
    /// are skipped, so a rerun after a crash resumes without duplicates.
    /// Paths are resolved, walked and read under `policy` (roots, regular
    /// files only, bounded); what a walk passes over is in `report.skipped`.
    /// `progress(files_done, files_total)` follows along; returning `false`
    /// stops after the batch in hand is committed (`report.stopped` says so).
    pub fn add_paths(
        &mut self,
        paths: &[PathBuf],
        policy: &FilePolicy,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<AddReport> {
        let Collected { files, skipped } = policy.collect(paths)?;
        for (path, reason) in &skipped {
            eprintln!("warning: skipping {path}: {reason}");
        }
        let mut report = AddReport { skipped, ..AddReport::default() };
        let mut pending: Vec<Extracted> = Vec::new();
        for (i, file) in files.iter().enumerate() {
            match extract_file(file, policy)? {
                Ok(docs) => pending.extend(docs),
                Err(skip) => {
                    eprintln!("warning: skipping {}: {skip}", file.display());
                    report.skipped.push((file.display().to_string(), skip.to_string()));
                }
            }
            if pending.len() >= BATCH_DOCS || i + 1 == files.len() {
                self.commit_batch(std::mem::take(&mut pending), &mut report)?;
            }
            if !progress(i + 1, files.len()) && i + 1 < files.len() {
                report.stopped = true;
                break;
            }
        }
        self.commit_batch(pending, &mut report)?;
        self.save_vectors()?;
        Ok(report)
    }

    /// Ingests documents given as text (`id` names each; a document with a
    /// known id and new text replaces the old one), committed in batches as
    /// [`Collection::add_paths`] does.
    pub fn add_documents(&mut self, documents: Vec<Extracted>) -> Result<AddReport> {
        if let Some(bad) = documents.iter().find(|d| d.id.trim().is_empty() || d.text.trim().is_empty()) {
            let what = if bad.id.trim().is_empty() { "an empty id" } else { "no text" };
            return Err(RagError::InvalidInput(format!("document {:?} has {what}", bad.id)));
        }
        let mut report = AddReport::default();
        let mut documents = documents.into_iter().peekable();
        while documents.peek().is_some() {
            let batch: Vec<Extracted> = documents.by_ref().take(BATCH_DOCS).collect();
            self.commit_batch(batch, &mut report)?;
        }
        self.save_vectors()?;
        Ok(report)
    }

    fn commit_batch(&mut self, extracted: Vec<Extracted>, report: &mut AddReport) -> Result<()> {
        let mut docs = Vec::new();
        for e in extracted {
            let hash = format!("{:016x}", fnv1a(e.text.as_bytes()));
            if self.store.has(&e.id, &hash) {
                report.unchanged += 1;
                continue;
            }
            docs.push(self.chunk_and_embed(e, hash)?);
        }
        if docs.is_empty() {
            return Ok(());
        }
        let (mut vectors, mut ids) = (Vec::new(), Vec::new());
        for chunk in docs.iter().flat_map(|d| &d.chunks) {
            vectors.extend_from_slice(&chunk.vector);
            ids.push(chunk.id);
        }
        let replaced: Vec<String> = docs.iter().filter(|d| self.store.has_id(&d.id)).map(|d| d.id.clone()).collect();
        if !replaced.is_empty() {
            let stale = self.store.delete(replaced)?;
            if self.meta.kind == IndexKind::Flat {
                self.index.remove(&stale)?;
            }
        }
        report.added += docs.len();
        report.chunks += ids.len();
        self.store.commit(docs)?;
        self.index.add(&vectors, &ids)?;
        Ok(())
    }

    fn chunk_and_embed(&mut self, e: Extracted, content_hash: String) -> Result<Document> {
        let is_markdown = e.id.ends_with(".md") || e.id.ends_with(".markdown");
        let sections = if is_markdown { markdown_sections(&e.text) } else { vec![(String::new(), 0..e.text.len())] };
        let mut pieces = Vec::new();
        for (heading, range) in sections {
            let body = &e.text[range.clone()];
            let spans = self.encoder.tokenizer().token_spans(body)?;
            let shifted: Vec<(usize, usize)> = spans.iter().map(|(s, t)| (s + range.start, t + range.start)).collect();
            pieces.extend(token_windows(&e.text, &shifted, self.meta.chunking, &heading));
        }
        let texts: Vec<&str> = pieces.iter().map(|p| p.text.as_str()).collect();
        let vectors = self.encoder.embed(&texts)?;
        let ids = self.store.allocate_chunk_ids(pieces.len());
        let chunks = pieces
            .into_iter()
            .zip(vectors)
            .zip(ids)
            .map(|((p, vector), id)| Chunk { id, text: p.text, start: p.start, end: p.end, vector })
            .collect();
        let source = e.id.split('#').next().unwrap_or(&e.id).to_string();
        Ok(Document { id: e.id, source, content_hash, metadata: e.metadata, chunks })
    }

    /// Deletes documents: by document id, or every document from a source
    /// path. Returns how many documents went.
    pub fn delete(&mut self, keys: &[String]) -> Result<usize> {
        let ids: Vec<String> = self
            .store
            .documents()
            .filter(|d| keys.iter().any(|k| *k == d.id || *k == d.source))
            .map(|d| d.id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let count = ids.len();
        let chunks = self.store.delete(ids)?;
        match self.meta.kind {
            IndexKind::Flat => {
                self.index.remove(&chunks)?;
                self.save_vectors()?;
            }
            // HNSW cannot delete: rebuild from the store.
            IndexKind::Hnsw => self.rebuild_vectors()?,
        }
        Ok(count)
    }

    /// The `k` chunks nearest to `query` with score ≥ `min_score` whose
    /// document metadata (or `source`) matches every `filter` pair.
    pub fn search(&self, query: &str, k: usize, min_score: f32, filter: &[(String, String)]) -> Result<Vec<SearchHit>> {
        if k == 0 || self.index.is_empty() {
            return Ok(Vec::new());
        }
        let q = self.encoder.embed(&[query])?.concat();
        let mut want = k;
        loop {
            let fetched = want.min(self.index.len());
            let hits = self.index.search(&q, fetched)?.into_iter().next().unwrap_or_default();
            let matching: Vec<SearchHit> = hits
                .iter()
                .filter(|h| h.score >= min_score)
                .filter_map(|h| self.hit(h.id, h.score))
                .filter(|hit| filter.iter().all(|(key, value)| field(hit, key) == Some(value.as_str())))
                .take(k)
                .collect();
            if matching.len() == k || fetched == self.index.len() || hits.last().is_some_and(|h| h.score < min_score) {
                return Ok(matching);
            }
            want *= 4;
        }
    }

    fn hit(&self, chunk_id: i64, score: f32) -> Option<SearchHit> {
        let (doc, chunk) = self.store.chunk(chunk_id)?;
        Some(SearchHit {
            score,
            doc_id: doc.id.clone(),
            source: doc.source.clone(),
            chunk_id,
            span: (chunk.start, chunk.end),
            text: chunk.text.clone(),
            metadata: doc.metadata.clone(),
        })
    }
}

fn field<'a>(hit: &'a SearchHit, key: &str) -> Option<&'a str> {
    if key == "source" {
        return Some(&hit.source);
    }
    hit.metadata.get(key).map(String::as_str)
}

fn read_meta(root: &Path, name: &str) -> Result<(PathBuf, IndexMeta)> {
    check_name(name)?;
    let dir = root.join(name);
    let path = dir.join("meta.json");
    if !path.exists() {
        return Err(RagError::UnknownIndex(name.to_string()));
    }
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let meta = serde_json::from_str(&text)
        .map_err(|e| RagError::CorruptStore { path: path.clone(), detail: e.to_string() })?;
    Ok((dir, meta))
}
