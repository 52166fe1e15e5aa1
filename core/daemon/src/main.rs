//! `tailord`: the long-running host. It loads stage plugins from the
//! configured directories, creates the configured stage instances, and
//! serves them over an OpenAI-compatible HTTP API. It links no model code:
//! models, encoders and indexes live in the plugins.

mod api;
mod cache;
mod config;
mod index_api;
mod isolated;
mod metrics;
mod notify;
mod services;
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
    /// Internal: serve one isolated stage for a parent tailord.
    #[arg(long, hide = true)]
    plugin_host: bool,
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
    if args.plugin_host {
        return isolated::run_plugin_host();
    }
    let config = config::Config::load(&args.config)?;
    let addr = config.http_addr()?;
    let services = services::DaemonServices::new(config.server.cpu_threads);
    let registry = stages::Registry::load(&config, &services)?;
    let cache = cache::AnswerCache::new(
        config.server.answer_cache_entries,
        std::time::Duration::from_secs(config.server.answer_cache_ttl_secs),
    );
    let state = api::AppState::new(registry, services, config.server.token.clone(), cache);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        let app = api::router(state, config.server.max_body_bytes);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let unix = match &config.server.unix_socket {
            Some(path) => Some(serve_unix(path, app.clone(), stop_rx.clone())?),
            None => None,
        };
        println!("tailord listening on http://{bound}");
        std::io::stdout().flush().ok();
        notify::ready();
        let mut http_stop = stop_rx.clone();
        let http = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        });
        let http = tokio::spawn(async move { http.await });
        shutdown_signal().await;
        notify::stopping();
        eprintln!("tailord: stopping; finishing in-flight requests");
        let _ = stop_tx.send(true);
        http.await??;
        if let Some(unix) = unix {
            unix.await??;
        }
        eprintln!("tailord: stopped");
        Ok(())
    })
}

/// Serves the API on a Unix socket readable and writable by owner and group only.
fn serve_unix(
    path: &std::path::Path,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    eprintln!("tailord: also listening on unix:{}", path.display());
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.changed().await;
    });
    Ok(tokio::spawn(async move { server.await }))
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
