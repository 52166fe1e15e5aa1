//! `tailord`: the long-running host. It loads stage plugins from the
//! configured directories, creates the configured stage instances, and
//! serves them over an OpenAI-compatible HTTP API. It links no model code:
//! models, encoders and indexes live in the plugins.

mod api;
mod config;
mod stages;

use anyhow::{Context, Result};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "tailord", version, about = "tailor's daemon: stages as plugins behind an OpenAI-compatible API")]
struct Args {
    /// The TOML config file.
    #[arg(long, default_value = "/etc/tailor/tailord.toml")]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailord: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let config = config::Config::load(&args.config)?;
    let addr = config.http_addr()?;
    let registry = stages::Registry::load(&config)?;
    let state = api::AppState::new(registry, config.server.token.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        println!("tailord listening on http://{bound}");
        std::io::stdout().flush().ok();
        let app = api::router(state, config.server.max_body_bytes);
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        eprintln!("tailord: stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C; in-flight requests then finish.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return ctrl_c.await.unwrap_or(()),
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
