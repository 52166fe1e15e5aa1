//! Retrieval commands: index management, search, ask, and evaluation on
//! BEIR data.

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tailor_model::{generate, Message};
use tailor_rag::chunk::ChunkParams;
use tailor_rag::collection::default_root;
use tailor_rag::eval::{BeirData, EmbeddedBeir};
use tailor_rag::{Collection, IndexKind};

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Create an empty index.
    Create {
        /// Index name.
        name: String,
        /// flat (exact) or hnsw.
        #[arg(long, default_value = "flat")]
        kind: String,
        /// Encoder folder (default: the fetched all-MiniLM-L6-v2).
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Tokens per chunk.
        #[arg(long, default_value_t = 200)]
        window: usize,
        /// Tokens shared by consecutive chunks.
        #[arg(long, default_value_t = 40)]
        overlap: usize,
    },
    /// Add files or folders (text, Markdown, HTML, JSONL records).
    Add {
        /// Index name.
        name: String,
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Delete documents by id or source path.
    Delete {
        /// Index name.
        name: String,
        /// Document ids or file paths.
        #[arg(required = true)]
        documents: Vec<String>,
    },
    /// Recreate the vector index from the document store.
    Rebuild {
        /// Index name.
        name: String,
    },
    /// Show an index's settings and size.
    Info {
        /// Index name.
        name: String,
    },
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Index name.
    name: String,
    /// The query.
    query: String,
    /// Results.
    #[arg(short, long, default_value_t = 5)]
    k: usize,
    /// Minimum cosine similarity.
    #[arg(long, default_value_t = -1.0)]
    min_score: f32,
    /// Metadata filter KEY=VALUE (repeatable; `source` is the file).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AskArgs {
    /// Index name.
    name: String,
    /// The question.
    question: String,
    /// Sources to retrieve.
    #[arg(short, long, default_value_t = 3)]
    k: usize,
    #[command(flatten)]
    model: crate::ModelArgs,
    #[command(flatten)]
    sampling: crate::run::SamplingArgs,
    #[command(flatten)]
    adapter: crate::run::AdapterArgs,
}

fn root() -> PathBuf {
    default_root()
}

fn parse_filters(filters: &[String]) -> Result<Vec<(String, String)>> {
    filters
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("filter {f:?} is not KEY=VALUE"))
        })
        .collect()
}

pub fn index_cmd(command: &IndexCommand) -> Result<()> {
    match command {
        IndexCommand::Create { name, kind, encoder, window, overlap } => {
            anyhow::ensure!(*window > 0 && overlap < window, "--overlap must be smaller than --window");
            let encoder = match encoder {
                Some(p) => p.clone(),
                None => crate::fetch::default_encoder()?,
            };
            let params = ChunkParams { window: *window, overlap: *overlap };
            Collection::create(&root(), name, kind.parse()?, &encoder, params)?;
            println!("created index {name} in {}", root().join(name).display());
        }
        IndexCommand::Add { name, paths } => {
            let mut collection = Collection::open(&root(), name)?;
            let bar = progress_bar("indexing files");
            let started = std::time::Instant::now();
            let report = collection.add_paths(paths, &tailor_rag::FilePolicy::local(), &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                true
            })?;
            bar.finish_and_clear();
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            let (docs, chunks) = collection.counts();
            println!(
                "added {} documents ({} chunks, {:.1} docs/s), {} unchanged, {} skipped; index {name} holds {docs} documents, {chunks} chunks",
                report.added,
                report.chunks,
                report.added as f64 / secs,
                report.unchanged,
                report.skipped.len()
            );
        }
        IndexCommand::Delete { name, documents } => {
            let mut collection = Collection::open(&root(), name)?;
            let keys: Vec<String> = documents
                .iter()
                .map(|d| std::fs::canonicalize(d).map(|p| p.display().to_string()).unwrap_or_else(|_| d.clone()))
                .collect();
            let deleted = collection.delete(&keys)?;
            let (docs, chunks) = collection.counts();
            println!("deleted {deleted} documents; index {name} holds {docs} documents, {chunks} chunks");
        }
        IndexCommand::Rebuild { name } => {
            let vectors = Collection::rebuild(&root(), name)?;
            println!("rebuilt index {name}: {vectors} vectors");
        }
        IndexCommand::Info { name } => {
            let collection = Collection::open(&root(), name)?;
            let (docs, chunks) = collection.counts();
            println!("{}", serde_json::json!({"meta": collection.meta(), "documents": docs, "chunks": chunks}));
        }
    }
    Ok(())
}

pub fn search_cmd(args: &SearchArgs) -> Result<()> {
    let collection = Collection::open(&root(), &args.name)?;
    let hits = collection.search(&args.query, args.k, args.min_score, &parse_filters(&args.filters)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    for (i, hit) in hits.iter().enumerate() {
        let preview: String = hit.text.chars().take(160).collect::<String>().replace('\n', " ");
        println!("{}. [{:.3}] {} (bytes {}..{})\n   {preview}", i + 1, hit.score, hit.doc_id, hit.span.0, hit.span.1);
    }
    Ok(())
}

pub fn ask_cmd(args: &AskArgs) -> Result<()> {
    let collection = Collection::open(&root(), &args.name)?;
    let hits = collection.search(&args.question, args.k, -1.0, &[])?;
    let (prompt, citations) = tailor_rag::prompt::assemble(&args.question, &hits);
    let model = crate::run::load_model(&args.model)?;
    let messages = [Message::new("system", "You are a helpful assistant."), Message::new("user", &prompt)];
    let ids = model.encode_chat(&messages)?;
    let params = args.sampling.params(0, args.adapter.load(&model)?)?;
    let mut stdout = std::io::stdout();
    let answer = generate(&model, &ids, &params, &mut |event| {
        use std::io::Write;
        write!(stdout, "{}", event.text).and_then(|_| stdout.flush()).is_ok()
    })?;
    println!("{}\n\nSources:", answer.unstreamed);
    for c in &citations {
        println!("[{}] {} (bytes {}..{}, score {:.3})", c.number, c.doc_id, c.span.0, c.span.1, c.score);
    }
    Ok(())
}

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
    let precision = encoder.precision().to_string();
    let data = BeirData::load(corpus, queries, qrels)?;
    let bar = progress_bar("embedding passages");
    let started = std::time::Instant::now();
    let embedded = EmbeddedBeir::new(&data, &encoder, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let embed_secs = started.elapsed().as_secs_f64();
    let metrics = embedded.evaluate(kind, *k)?;
    let (p50, p99) = embedded.search_latency(&encoder, kind, *k)?;
    let secs = started.elapsed().as_secs_f64();
    if *json {
        let mut out = serde_json::json!({"index": index, "k": k, "metrics": metrics, "passages": data.corpus.len(),
            "seconds": secs, "encoder_precision": precision,
            "embed_seconds": embed_secs, "passages_per_second": data.corpus.len() as f64 / embed_secs,
            "search_p50_ms": p50 * 1e3, "search_p99_ms": p99 * 1e3});
        crate::bench::merge_cpu_json(&mut out);
        println!("{out}");
    } else {
        crate::bench::print_cpu();
        println!(
            "{} passages, {} judged queries, {index} index, encoder in {precision}, {secs:.1}s",
            data.corpus.len(),
            metrics.queries
        );
        println!(
            "embedding: {:.1} passages/s; search (embed query + {index}): p50 {:.2} ms, p99 {:.2} ms",
            data.corpus.len() as f64 / embed_secs,
            p50 * 1e3,
            p99 * 1e3
        );
        println!("nDCG@{k}   {:.4}", metrics.ndcg);
        println!("recall@{k} {:.4}", metrics.recall);
        println!("MRR@{k}    {:.4}", metrics.mrr);
    }
    Ok(())
}
