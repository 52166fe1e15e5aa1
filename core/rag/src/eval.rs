//! Retrieval evaluation on BEIR-format data: nDCG@k, recall@k and MRR@k over
//! the judged queries, with relevance grades as linear gains (as
//! pytrec_eval's `ndcg_cut`, which BEIR reports).

use crate::error::{io_error, RagError, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A BEIR data set.
pub struct BeirData {
    /// Passages: (id, text), title prepended when present.
    pub corpus: Vec<(String, String)>,
    /// Queries by id.
    pub queries: BTreeMap<String, String>,
    /// Relevance: query id → (passage id → grade).
    pub qrels: BTreeMap<String, HashMap<String, u32>>,
}

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| RagError::InvalidInput(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

fn field(v: &serde_json::Value, key: &str) -> String {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) if !other.is_null() => other.to_string(),
        _ => String::new(),
    }
}

impl BeirData {
    /// Reads corpus.jsonl, queries.jsonl and a qrels TSV (with header).
    pub fn load(corpus: &Path, queries: &Path, qrels: &Path) -> Result<BeirData> {
        let corpus = read_jsonl(corpus)?
            .iter()
            .map(|v| {
                let (title, text) = (field(v, "title"), field(v, "text"));
                let joined = if title.is_empty() { text } else { format!("{title} {text}") };
                (field(v, "_id"), joined)
            })
            .collect();
        let queries = read_jsonl(queries)?.iter().map(|v| (field(v, "_id"), field(v, "text"))).collect();
        let text = std::fs::read_to_string(qrels).map_err(io_error(qrels))?;
        let mut judged: BTreeMap<String, HashMap<String, u32>> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 3 || (i == 0 && cols[2].parse::<u32>().is_err()) {
                continue;
            }
            let grade = cols[2]
                .trim()
                .parse::<u32>()
                .map_err(|_| RagError::InvalidInput(format!("{}:{}: bad score", qrels.display(), i + 1)))?;
            judged.entry(cols[0].to_string()).or_default().insert(cols[1].to_string(), grade);
        }
        Ok(BeirData { corpus, queries, qrels: judged })
    }
}

/// Mean metrics over the judged queries.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Metrics {
    /// Normalised discounted cumulative gain at k.
    pub ndcg: f64,
    /// Recall at k.
    pub recall: f64,
    /// Mean reciprocal rank at k.
    pub mrr: f64,
    /// Queries averaged over.
    pub queries: usize,
}

/// Scores ranked results (query id → passage ids, best first) at cutoff `k`.
pub fn evaluate(
    results: &BTreeMap<String, Vec<String>>,
    qrels: &BTreeMap<String, HashMap<String, u32>>,
    k: usize,
) -> Metrics {
    let (mut ndcg, mut recall, mut mrr) = (0f64, 0f64, 0f64);
    for (qid, judged) in qrels {
        let ranked = results.get(qid).map(|r| &r[..r.len().min(k)]).unwrap_or(&[]);
        let gain = |pid: &String| judged.get(pid).copied().unwrap_or(0) as f64;
        let dcg: f64 = ranked.iter().enumerate().map(|(i, p)| gain(p) / (i as f64 + 2.0).log2()).sum();
        let mut ideal: Vec<f64> = judged.values().map(|g| *g as f64).collect();
        ideal.sort_by(|a, b| b.total_cmp(a));
        let idcg: f64 = ideal.iter().take(k).enumerate().map(|(i, g)| g / (i as f64 + 2.0).log2()).sum();
        if idcg > 0.0 {
            ndcg += dcg / idcg;
        }
        let relevant = judged.values().filter(|g| **g > 0).count();
        if relevant > 0 {
            recall += ranked.iter().filter(|p| gain(p) > 0.0).count() as f64 / relevant as f64;
        }
        if let Some(rank) = ranked.iter().position(|p| gain(p) > 0.0) {
            mrr += 1.0 / (rank as f64 + 1.0);
        }
    }
    let n = qrels.len().max(1) as f64;
    Metrics { ndcg: ndcg / n, recall: recall / n, mrr: mrr / n, queries: qrels.len() }
}

/// A BEIR set with its passages and judged queries embedded, ready to be
/// searched with any index kind.
pub struct EmbeddedBeir<'a> {
    data: &'a BeirData,
    dim: usize,
    passages: Vec<f32>,
    query_ids: Vec<String>,
    queries: Vec<f32>,
}

impl<'a> EmbeddedBeir<'a> {
    /// Embeds every passage (reporting `progress(done, total)`) and every
    /// judged query.
    pub fn new(data: &'a BeirData, encoder: &tailor_model::Encoder, progress: &dyn Fn(usize, usize)) -> Result<Self> {
        let mut passages = Vec::with_capacity(data.corpus.len() * encoder.dim());
        for chunk in data.corpus.chunks(64) {
            let texts: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
            passages.extend(encoder.embed(&texts)?.concat());
            progress(passages.len() / encoder.dim(), data.corpus.len());
        }
        let judged: Vec<(&String, &String)> =
            data.qrels.keys().filter_map(|q| data.queries.get(q).map(|t| (q, t))).collect();
        let texts: Vec<&str> = judged.iter().map(|(_, t)| t.as_str()).collect();
        let queries = encoder.embed(&texts)?.concat();
        let query_ids = judged.into_iter().map(|(q, _)| q.clone()).collect();
        Ok(EmbeddedBeir { data, dim: encoder.dim(), passages, query_ids, queries })
    }

    /// End-to-end latency of single searches (embed the query, search the
    /// index of `kind`), in seconds: (p50, p99) over the judged queries.
    pub fn search_latency(
        &self,
        encoder: &tailor_model::Encoder,
        kind: crate::IndexKind,
        k: usize,
    ) -> Result<(f64, f64)> {
        let mut index = crate::VectorIndex::new(kind, self.dim)?;
        let ids: Vec<i64> = (0..self.data.corpus.len() as i64).collect();
        index.add(&self.passages, &ids)?;
        let mut times = Vec::with_capacity(self.query_ids.len());
        for qid in &self.query_ids {
            let text = self.data.queries.get(qid).map(String::as_str).unwrap_or("");
            let started = std::time::Instant::now();
            let q = encoder.embed(&[text])?.concat();
            index.search(&q, k)?;
            times.push(started.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let at = |p: f64| times.get(((times.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
        Ok((at(0.5), at(0.99)))
    }

    /// Builds an index of `kind`, searches it, and scores the top `k`.
    pub fn evaluate(&self, kind: crate::IndexKind, k: usize) -> Result<Metrics> {
        let mut index = crate::VectorIndex::new(kind, self.dim)?;
        let ids: Vec<i64> = (0..self.data.corpus.len() as i64).collect();
        index.add(&self.passages, &ids)?;
        let hits = index.search(&self.queries, k)?;
        let results = self
            .query_ids
            .iter()
            .zip(hits)
            .map(|(qid, hits)| (qid.clone(), hits.iter().map(|h| self.data.corpus[h.id as usize].0.clone()).collect()))
            .collect();
        Ok(evaluate(&results, &self.data.qrels, k))
    }
}
