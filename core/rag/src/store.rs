//! The document store: an append-only log of committed batches, each line
//! `HASH JSON` with an FNV-1a checksum and fsync'd before the batch counts.
//! A kill at any moment leaves a prefix of whole batches plus at most one
//! torn line, which the next open drops. Documents are keyed by source path
//! and content hash, so re-running an ingest skips what was committed.
//! Chunk vectors live in the log too: the faiss index is derived data that
//! `rebuild` recreates from here.

use crate::error::{io_error, RagError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One chunk of a document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    /// Global chunk id (also its id in the vector index).
    pub id: i64,
    /// The chunk text (what was embedded).
    pub text: String,
    /// Byte span in the document's extracted text.
    pub start: usize,
    /// End of the span (exclusive).
    pub end: usize,
    /// Its embedding.
    pub vector: Vec<f32>,
}

/// One document and its chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    /// Document id (stable: derived from the source and record).
    pub id: String,
    /// Where it came from.
    pub source: String,
    /// Hash of its content, to skip unchanged documents.
    pub content_hash: String,
    /// Free-form metadata (title, record fields).
    pub metadata: BTreeMap<String, String>,
    /// Its chunks.
    pub chunks: Vec<Chunk>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Add { docs: Vec<Document> },
    Delete { doc_ids: Vec<String> },
}

/// The store of one index.
pub struct Store {
    path: PathBuf,
    docs: BTreeMap<String, Document>,
    chunk_owner: HashMap<i64, String>,
    next_chunk_id: i64,
}

/// 64-bit FNV-1a (checksums and content hashes; not cryptographic).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Flushes a file's data to disk.
pub fn fsync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_error(path))
}

impl Store {
    /// Opens (or creates) the store at `path`, dropping a torn last line.
    pub fn open(path: &Path) -> Result<Store> {
        let mut store =
            Store { path: path.to_path_buf(), docs: BTreeMap::new(), chunk_owner: HashMap::new(), next_chunk_id: 0 };
        if !path.exists() {
            std::fs::File::create(path).map_err(io_error(path))?;
            return Ok(store);
        }
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let mut good = 0usize;
        let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
        for (number, line) in lines.iter().enumerate() {
            match parse_line(line) {
                Some(record) => {
                    store.apply(record);
                    good += line.len();
                }
                // Only the last line can be torn by a crash; damage before
                // whole lines is corruption, and nothing is thrown away.
                None if number + 1 == lines.len() => break,
                None => {
                    return Err(RagError::CorruptStore {
                        path: path.to_path_buf(),
                        detail: format!("line {} fails its checksum", number + 1),
                    })
                }
            }
        }
        if good < bytes.len() {
            eprintln!("warning: {}: dropping {} bytes of an unfinished batch", path.display(), bytes.len() - good);
            let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
            file.set_len(good as u64).map_err(io_error(path))?;
            file.sync_all().map_err(io_error(path))?;
        }
        Ok(store)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Add { docs } => {
                for doc in docs {
                    for chunk in &doc.chunks {
                        self.next_chunk_id = self.next_chunk_id.max(chunk.id + 1);
                        self.chunk_owner.insert(chunk.id, doc.id.clone());
                    }
                    if let Some(old) = self.docs.insert(doc.id.clone(), doc) {
                        old.chunks.iter().for_each(|c| {
                            self.chunk_owner.remove(&c.id);
                        });
                    }
                }
            }
            Record::Delete { doc_ids } => {
                for id in doc_ids {
                    if let Some(old) = self.docs.remove(&id) {
                        old.chunks.iter().for_each(|c| {
                            self.chunk_owner.remove(&c.id);
                        });
                    }
                }
            }
        }
    }

    /// Ids for `n` new chunks.
    pub fn allocate_chunk_ids(&mut self, n: usize) -> std::ops::Range<i64> {
        let start = self.next_chunk_id;
        self.next_chunk_id += n as i64;
        start..self.next_chunk_id
    }

    /// True when a document with this id and content hash is committed.
    pub fn has(&self, id: &str, content_hash: &str) -> bool {
        self.docs.get(id).is_some_and(|d| d.content_hash == content_hash)
    }

    /// True when a document with this id is committed (any content).
    pub fn has_id(&self, id: &str) -> bool {
        self.docs.contains_key(id)
    }

    /// Commits a batch of documents: appended, fsync'd, then applied.
    pub fn commit(&mut self, docs: Vec<Document>) -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        self.append(&Record::Add { docs })
    }

    /// Deletes documents by id; returns the chunk ids that went with them.
    pub fn delete(&mut self, doc_ids: Vec<String>) -> Result<Vec<i64>> {
        let chunks =
            doc_ids.iter().filter_map(|id| self.docs.get(id)).flat_map(|d| d.chunks.iter().map(|c| c.id)).collect();
        self.append(&Record::Delete { doc_ids })?;
        Ok(chunks)
    }

    fn append(&mut self, record: &Record) -> Result<()> {
        let json = serde_json::to_string(record).map_err(|e| RagError::InvalidInput(e.to_string()))?;
        let line = format!("{:016x} {json}\n", fnv1a(json.as_bytes()));
        let path = &self.path;
        let mut file = std::fs::OpenOptions::new().append(true).open(path).map_err(io_error(path))?;
        file.write_all(line.as_bytes()).map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
        let parsed =
            parse_line(line.as_bytes()).ok_or_else(|| RagError::InvalidInput("record did not round-trip".into()))?;
        self.apply(parsed);
        Ok(())
    }

    /// All live documents.
    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.docs.values()
    }

    /// The document owning a chunk, and the chunk.
    pub fn chunk(&self, id: i64) -> Option<(&Document, &Chunk)> {
        let doc = self.docs.get(self.chunk_owner.get(&id)?)?;
        Some((doc, doc.chunks.iter().find(|c| c.id == id)?))
    }

    /// Live chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunk_owner.len()
    }

    /// Live documents.
    pub fn document_count(&self) -> usize {
        self.docs.len()
    }
}

fn parse_line(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n")?;
    let (hash, json) = (line.get(..16)?, line.get(17..)?);
    let expected = u64::from_str_radix(std::str::from_utf8(hash).ok()?, 16).ok()?;
    if fnv1a(json) != expected {
        return None;
    }
    serde_json::from_slice(json).ok()
}
