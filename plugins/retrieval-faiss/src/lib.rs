//! Retrieval stages on tailor-rag.
//!
//! `embed` — config `{"model": ENCODER_DIR}`; request `{"input": [TEXT…]}`;
//! output `{"embeddings": [[…]…], "tokens": N}`.
//! `search` — config `{"root": INDEXES_DIR?}`; request `{"index": NAME,
//! "query": TEXT, "k": N?}`; output `{"hits": [SearchHit…]}`.

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Mutex;
use tailor_model::Encoder;
use tailor_plugin_abi::{export_plugin, Stage, StageKind};
use tailor_rag::Collection;

#[derive(Deserialize)]
struct EmbedConfig {
    model: PathBuf,
}

#[derive(Deserialize)]
struct EmbedRequest {
    input: Vec<String>,
}

/// Sentence embeddings.
struct Embed {
    encoder: Encoder,
}

impl Stage for Embed {
    const KIND: StageKind = StageKind::Embed;
    const NAME: &'static std::ffi::CStr = c"embed";

    fn create(config_json: &str) -> Result<Self, String> {
        let config: EmbedConfig = serde_json::from_str(config_json).map_err(|e| format!("embed config: {e}"))?;
        Ok(Embed { encoder: Encoder::load(&config.model).map_err(|e| e.to_string())? })
    }

    fn call(&self, _id: u64, request_json: &str, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let request: EmbedRequest = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let texts: Vec<&str> = request.input.iter().map(String::as_str).collect();
        let tokens: usize = texts
            .iter()
            .map(|t| self.encoder.tokenizer().encode_with_special(t).map(|ids| ids.len()).unwrap_or(0))
            .sum();
        let embeddings = self.encoder.embed(&texts).map_err(|e| e.to_string())?;
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

/// Search in named indexes (opened on first use, then kept).
struct Search {
    root: PathBuf,
    open: Mutex<Vec<(String, Collection)>>,
}

impl Stage for Search {
    const KIND: StageKind = StageKind::Search;
    const NAME: &'static std::ffi::CStr = c"search";

    fn create(config_json: &str) -> Result<Self, String> {
        let config: SearchConfig = serde_json::from_str(config_json).map_err(|e| format!("search config: {e}"))?;
        let root = config.root.unwrap_or_else(tailor_rag::collection::default_root);
        Ok(Search { root, open: Mutex::new(Vec::new()) })
    }

    fn call(&self, _id: u64, request_json: &str, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let request: SearchRequest = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let mut open = self.open.lock().map_err(|_| "search state poisoned".to_string())?;
        if !open.iter().any(|(name, _)| *name == request.index) {
            let collection = Collection::open(&self.root, &request.index).map_err(|e| e.to_string())?;
            open.push((request.index.clone(), collection));
        }
        let collection =
            open.iter().find(|(name, _)| *name == request.index).map(|(_, c)| c).ok_or("index vanished")?;
        let hits = collection.search(&request.query, request.k.unwrap_or(4), -1.0, &[]).map_err(|e| e.to_string())?;
        emit(&serde_json::json!({"hits": hits}).to_string());
        Ok(())
    }
}

export_plugin!(name: "retrieval-faiss", version: "0.1.0", stages: [Embed, Search]);
