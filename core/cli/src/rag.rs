//! Retrieval commands: evaluation on BEIR data (and, as they land, index
//! management, search and ask).

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tailor_rag::eval::{BeirData, EmbeddedBeir};
use tailor_rag::IndexKind;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// nDCG@10, recall@10 and MRR@10 of dense retrieval on BEIR-format data.
    Retrieval {
        /// corpus.jsonl (`_id`, `title`, `text`).
        #[arg(long)]
        corpus: PathBuf,
        /// queries.jsonl (`_id`, `text`).
        #[arg(long)]
        queries: PathBuf,
        /// qrels TSV (`query-id`, `corpus-id`, `score`).
        #[arg(long)]
        qrels: PathBuf,
        /// flat (exact) or hnsw.
        #[arg(long, default_value = "flat")]
        index: String,
        /// Encoder folder (default: the fetched all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Cutoff.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A progress bar with a rate, on stderr.
pub fn progress_bar(what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(1).with_style(style);
    bar.set_message(what.to_string());
    bar
}

pub fn eval_cmd(command: &EvalCommand) -> Result<()> {
    let EvalCommand::Retrieval { corpus, queries, qrels, index, model, k, json } = command;
    let kind: IndexKind = index.parse()?;
    let encoder_path = match model {
        Some(p) => p.clone(),
        None => crate::fetch::default_encoder()?,
    };
    let encoder = tailor_model::Encoder::load(&encoder_path)?;
    let data = BeirData::load(corpus, queries, qrels)?;
    let bar = progress_bar("embedding passages");
    let started = std::time::Instant::now();
    let embedded = EmbeddedBeir::new(&data, &encoder, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    let metrics = embedded.evaluate(kind, *k)?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if *json {
        println!("{}", serde_json::json!({"index": index, "k": k, "metrics": metrics, "passages": data.corpus.len(), "seconds": secs}));
    } else {
        println!("{} passages, {} judged queries, {index} index, {secs:.1}s", data.corpus.len(), metrics.queries);
        println!("nDCG@{k}   {:.4}", metrics.ndcg);
        println!("recall@{k} {:.4}", metrics.recall);
        println!("MRR@{k}    {:.4}", metrics.mrr);
    }
    Ok(())
}
