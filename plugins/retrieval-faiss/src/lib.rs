//! Retrieval stages on tailor-rag.
//!
//! `embed` — config `{"model": ENCODER_DIR, "max_inputs": N?, "max_input_tokens": N?}`
//! (2048 texts and 100,000 tokens per request by default; the encoder runs
//! them in passes of bounded tokens); request `{"input": [TEXT…]}`;
//! output `{"embeddings": [[…]…], "tokens": N}`; `{"describe": true}`
//! answers `{"dim": N, "max_input_tokens": N}` (tokens per text).
//! `search` — config `{"root": INDEXES_DIR?}`; request `{"index": NAME,
//! "query": TEXT, "k": N?}`; output `{"hits": [SearchHit…]}`.
//! `index` — config `{"root": INDEXES_DIR?, "encoder": DIR?,
//! "document_roots": [DIR…]?, "max_files": N?}`; requests
//! `{"op": "create", "index": NAME, "kind": "flat"|"hnsw"?}`,
//! `{"op": "add", "index": NAME, "paths": [PATH…]?, "texts": [{"id": ID,
//! "text": TEXT, "metadata": {K: V}?}…]?}` (documents sent inline, or files
//! under `document_roots`: resolved, regular files only, read bounded; with
//! no roots configured every path is refused),
//! `{"op": "delete", "index": NAME, "documents": [ID or PATH…]}`,
//! `{"op": "info", "index": NAME}`, `{"op": "list"}` (every index with
//! its counts), `{"op": "drop", "index": NAME}` (the index and its files
//! go); output a JSON report.
//! Both stages share the plugin's open indexes, so what `index` adds,
//! `search` finds at once.

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Mutex;
use tailor_model::Encoder;
use tailor_plugin_abi::{export_plugin, Stage, StageError, StageKind};
use tailor_rag::Collection;

/// Niceness of this plugin's kernel threads: on a busy machine, embedding
/// and indexing give the CPU to generation (chat keeps its pace while an
/// ingest runs; alone, they run at full speed).
const RETRIEVAL_NICENESS: i32 = 10;

/// Runs this plugin's kernels on the host's pool, or sizes its own from
/// the host's CPU budget (`[server] cpu_threads`), before the first kernel.
fn use_host_cpu_budget() {
    use tailor_tensor::cpu::pool::{set_global_threads, use_host_pool};
    match (tailor_plugin_abi::services::host_kernel_pool(), tailor_plugin_abi::services::host()) {
        (Some((threads, runner)), _) => drop(use_host_pool(threads, runner)),
        (None, Some(host)) => drop(set_global_threads(host.cpu_threads() as usize, RETRIEVAL_NICENESS)),
        (None, None) => {}
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedConfig {
    model: PathBuf,
    /// Most texts one request may embed.
    max_inputs: Option<usize>,
    /// Most tokens (after truncation to the encoder's length) one request may embed.
    max_input_tokens: Option<usize>,
}

#[derive(Deserialize)]
struct EmbedRequest {
    #[serde(default)]
    input: Vec<String>,
    /// Asks for the encoder's shape instead of embeddings.
    #[serde(default)]
    describe: bool,
}

/// Sentence embeddings.
struct Embed {
    encoder: Encoder,
    max_inputs: usize,
    max_input_tokens: usize,
}

impl Stage for Embed {
    const KIND: StageKind = StageKind::Embed;
    const NAME: &'static std::ffi::CStr = c"embed";

    fn create(config_json: &str) -> Result<Self, String> {
        let config: EmbedConfig = serde_json::from_str(config_json).map_err(|e| format!("embed config: {e}"))?;
        use_host_cpu_budget();
        Ok(Embed {
            encoder: Encoder::load(&config.model).map_err(|e| e.to_string())?,
            max_inputs: config.max_inputs.unwrap_or(2048),
            max_input_tokens: config.max_input_tokens.unwrap_or(100_000),
        })
    }

    fn call(
        &self,
        _id: u64,
        request_json: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        let request: EmbedRequest = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        if request.describe {
            let shape =
                serde_json::json!({"dim": self.encoder.dim(), "max_input_tokens": self.encoder.max_seq_length()});
            emit(&shape.to_string());
            return Ok(());
        }
        if request.input.len() > self.max_inputs {
            return Err(
                format!("{} inputs in one request; at most {} allowed", request.input.len(), self.max_inputs).into()
            );
        }
        let mut sequences = Vec::with_capacity(request.input.len());
        let mut tokens = 0;
        for text in &request.input {
            let ids = self.encoder.tokenize(text).map_err(|e| e.to_string())?;
            tokens += ids.len();
            if tokens > self.max_input_tokens {
                return Err(format!("the inputs exceed {} tokens in one request", self.max_input_tokens).into());
            }
            sequences.push(ids);
        }
        let embeddings = self.encoder.embed_ids(&sequences).map_err(|e| e.to_string())?;
        emit(&serde_json::json!({"embeddings": embeddings, "tokens": tokens}).to_string());
        Ok(())
    }
}

#[derive(Deserialize, Default)]
struct SearchConfig {
    root: Option<PathBuf>,
}

#[derive(Deserialize)]
struct SearchRequest {
    index: String,
    query: String,
    k: Option<usize>,
}

/// An index open in this plugin.
struct OpenIndex {
    root: PathBuf,
    name: String,
    collection: Collection,
}

/// Indexes open in this plugin, shared by its stages.
fn open_indexes() -> &'static Mutex<Vec<OpenIndex>> {
    static OPEN: std::sync::OnceLock<Mutex<Vec<OpenIndex>>> = std::sync::OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Runs `f` on the open index `name` under `root`, opening it first if
/// needed; an index that does not exist is `ERR_NOT_FOUND`.
fn with_index<T>(
    root: &std::path::Path,
    name: &str,
    f: impl FnOnce(&mut Collection) -> Result<T, String>,
) -> Result<T, StageError> {
    let mut open = open_indexes().lock().map_err(|_| StageError::internal("index state poisoned"))?;
    let position = match open.iter().position(|o| o.root == root && o.name == name) {
        Some(position) => position,
        None => {
            let collection = Collection::open(root, name).map_err(stage_error)?;
            open.push(OpenIndex { root: root.to_path_buf(), name: name.to_string(), collection });
            open.len() - 1
        }
    };
    f(&mut open[position].collection).map_err(StageError::invalid)
}

/// Closes the index `name` under `root` (if open) and deletes it, with the
/// lock held so no stage of this plugin uses it meanwhile.
fn drop_index(root: &std::path::Path, name: &str) -> Result<(), StageError> {
    let mut open = open_indexes().lock().map_err(|_| StageError::internal("index state poisoned"))?;
    open.retain(|o| !(o.root == root && o.name == name));
    Collection::remove(root, name).map_err(stage_error)
}

/// A retrieval error as a stage error of the right status: an unknown
/// index is not found (404), a taken name a conflict (409).
fn stage_error(e: tailor_rag::RagError) -> StageError {
    match e {
        tailor_rag::RagError::UnknownIndex(_) => StageError::not_found(e.to_string()),
        tailor_rag::RagError::IndexExists(_) => StageError::conflict(e.to_string()),
        other => StageError::invalid(other.to_string()),
    }
}

/// Search in named indexes.
struct Search {
    root: PathBuf,
}

impl Stage for Search {
    const KIND: StageKind = StageKind::Search;
    const NAME: &'static std::ffi::CStr = c"search";

    fn create(config_json: &str) -> Result<Self, String> {
        let config: SearchConfig = serde_json::from_str(config_json).map_err(|e| format!("search config: {e}"))?;
        use_host_cpu_budget();
        let root = config.root.unwrap_or_else(tailor_rag::collection::default_root);
        Ok(Search { root })
    }

    fn call(
        &self,
        _id: u64,
        request_json: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        let request: SearchRequest = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let k = request.k.unwrap_or(4);
        let hits = with_index(&self.root, &request.index, |c| {
            c.search(&request.query, k, -1.0, &[]).map_err(|e| e.to_string())
        })?;
        emit(&serde_json::json!({"hits": hits}).to_string());
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexConfig {
    root: Option<PathBuf>,
    encoder: Option<PathBuf>,
    /// Directories whose files callers may index by path (none: paths refused).
    #[serde(default)]
    document_roots: Vec<PathBuf>,
    /// Files one `add` may collect.
    max_files: Option<usize>,
}

#[derive(Deserialize)]
struct IndexRequest {
    op: String,
    #[serde(default)]
    index: String,
    kind: Option<String>,
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    documents: Vec<String>,
    #[serde(default)]
    texts: Vec<InlineDocument>,
}

/// A document sent as text rather than as a path.
#[derive(Deserialize)]
struct InlineDocument {
    id: String,
    text: String,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Creates indexes and adds, deletes and describes their documents.
struct Index {
    root: PathBuf,
    encoder: PathBuf,
    files: tailor_rag::FilePolicy,
}

impl Stage for Index {
    const KIND: StageKind = StageKind::Index;
    const NAME: &'static std::ffi::CStr = c"index";
    const CONCURRENT: bool = false;

    fn create(config_json: &str) -> Result<Self, String> {
        let config: IndexConfig = serde_json::from_str(config_json).map_err(|e| format!("index config: {e}"))?;
        use_host_cpu_budget();
        let root = config.root.unwrap_or_else(tailor_rag::collection::default_root);
        let encoder =
            config.encoder.unwrap_or_else(|| tailor_model::cache::cache_dir().join(tailor_model::cache::MINILM_DIR));
        let mut files = tailor_rag::FilePolicy::under_roots(&config.document_roots)
            .map_err(|e| format!("index config: document_roots: {e}"))?;
        files.max_files = config.max_files.unwrap_or(10_000);
        Ok(Index { root, encoder, files })
    }

    fn call(
        &self,
        id: u64,
        request_json: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        let request: IndexRequest = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let report = match request.op.as_str() {
            "create" => {
                let kind = request
                    .kind
                    .as_deref()
                    .unwrap_or("flat")
                    .parse()
                    .map_err(|e: tailor_rag::RagError| e.to_string())?;
                let params = tailor_rag::chunk::ChunkParams::default();
                Collection::create(&self.root, &request.index, kind, &self.encoder, params).map_err(stage_error)?;
                serde_json::json!({"created": request.index})
            }
            // Ingest is background work: it runs on a thread of its own at
            // the plugin's niceness, so chat keeps the CPU on a busy machine.
            "add" => tailor_tensor::cpu::pool::run_with_niceness(RETRIEVAL_NICENESS, || self.add(id, request))?,
            "delete" => with_index(&self.root, &request.index, |c| {
                let deleted = c.delete(&request.documents).map_err(|e| e.to_string())?;
                Ok(serde_json::json!({"deleted": deleted, "documents": c.counts().0, "chunks": c.counts().1}))
            })?,
            "info" => with_index(&self.root, &request.index, |c| {
                Ok(serde_json::json!({"meta": c.meta(), "documents": c.counts().0, "chunks": c.counts().1}))
            })?,
            "list" => self.list()?,
            "drop" => {
                drop_index(&self.root, &request.index)?;
                serde_json::json!({"dropped": request.index})
            }
            other => return Err(format!("unknown op {other:?} (create, add, delete, info, list, drop)").into()),
        };
        emit(&report.to_string());
        Ok(())
    }
}

impl Index {
    /// The `list` op: every index under the root with its settings (read
    /// from `meta.json`; opening each to count its documents would load an
    /// encoder per index; `info` counts).
    fn list(&self) -> Result<serde_json::Value, StageError> {
        let names = Collection::list(&self.root).map_err(stage_error)?;
        let mut indexes = Vec::with_capacity(names.len());
        for name in names {
            let meta = Collection::read_meta(&self.root, &name).map_err(stage_error)?;
            indexes.push(serde_json::json!({"name": name, "kind": meta.kind, "dim": meta.dim}));
        }
        Ok(serde_json::json!({"indexes": indexes}))
    }

    /// The `add` op: paths (under the document roots) and inline texts.
    fn add(&self, id: u64, request: IndexRequest) -> Result<serde_json::Value, StageError> {
        with_index(&self.root, &request.index, |c| {
            if request.paths.is_empty() && request.texts.is_empty() {
                return Err("`add` needs `paths` or `texts`".to_string());
            }
            let mut report = match request.paths.is_empty() {
                true => tailor_rag::AddReport::default(),
                false => {
                    // Progress goes to the host (on /metrics); a caller that
                    // went away stops the ingest after the batch in hand.
                    let host = tailor_plugin_abi::services::host();
                    let task = format!("index {}: files", request.index);
                    let mut progress = |done: usize, total: usize| match host {
                        Some(host) => {
                            host.progress(&task, done as u64, total as u64);
                            !host.is_cancelled(id)
                        }
                        None => true,
                    };
                    c.add_paths(&request.paths, &self.files, &mut progress).map_err(|e| e.to_string())?
                }
            };
            let inline = request
                .texts
                .into_iter()
                .map(|d| tailor_rag::chunk::Extracted { id: d.id, text: d.text, metadata: d.metadata })
                .collect();
            let from_texts = c.add_documents(inline).map_err(|e| e.to_string())?;
            report.added += from_texts.added;
            report.unchanged += from_texts.unchanged;
            report.chunks += from_texts.chunks;
            Ok(serde_json::json!({"report": report, "documents": c.counts().0, "chunks": c.counts().1}))
        })
    }
}

export_plugin!(name: "retrieval-faiss", version: "0.1.0", stages: [Embed, Search, Index]);
