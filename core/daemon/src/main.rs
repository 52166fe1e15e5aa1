//! `tailord`: the long-running host. It loads stage plugins from the
//! configured directories, creates the configured stage instances, and
//! serves them over an OpenAI-compatible HTTP API. It links no model code:
//! models, encoders and indexes live in the plugins.

mod adapter_api;
mod api;
mod cache;
mod config;
mod conn;
mod files;
mod files_api;
mod fine_tuning_api;
mod guard;
mod index_api;
mod isolated;
mod metrics;
mod model_api;
mod notify;
mod openai;
mod services;
mod stages;
mod stream;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    if let Some(path) = &config.server.unix_socket {
        check_socket_path(path)?; // before minutes of model loading
    }
    let (device, fallback) = tailor_tensor::Device::select(&config.server.device)
        .with_context(|| format!("[server] device = {:?}", config.server.device))?;
    if let Some(note) = fallback {
        eprintln!("tailord: {note}");
    }
    let services = services::DaemonServices::new(config.server.cpu_threads, device_budget(device, &config.server));
    let registry = stages::Registry::load(&config, &services)?;
    let cache = cache::AnswerCache::new(cache::CacheLimits {
        entries: config.server.answer_cache_entries,
        bytes: config.server.answer_cache_mb << 20,
        ttl: Duration::from_secs(config.server.answer_cache_ttl_secs),
    });
    let access = api::Access {
        token: config.server.token.clone(),
        hosts: guard::AllowedHosts::new(&config.server.allowed_hosts),
        cors_origins: config.server.cors_origins.clone(),
    };
    let files = match &config.server.files_dir {
        Some(dir) => Some(
            files::FileStore::open(dir, config.server.max_file_mb << 20)
                .with_context(|| format!("files_dir {}", dir.display()))?,
        ),
        None => None,
    };
    let state = api::AppState::new(registry, services, access, cache, files);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let result = runtime.block_on(serve(&config, addr, state, grace));
    // Work that ignored cancellation is not waited for past this.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The device plugins run kernels on and the memory they may hold there
/// together (`[server] device`, `device_memory_mb`), said in the log.
fn device_budget(device: tailor_tensor::Device, server: &config::Server) -> services::DeviceBudget {
    let tailor_tensor::Device::Cuda(ordinal) = device else { return services::DeviceBudget::new(None, 0) };
    let bytes = match server.device_memory_mb {
        0 => u64::MAX,
        mb => mb.saturating_mul(1 << 20),
    };
    let shown =
        if bytes == u64::MAX { "all its memory".to_string() } else { format!("{} MiB", server.device_memory_mb) };
    eprintln!("tailord: plugins that run kernels do so on {device}, holding at most {shown} there together");
    services::DeviceBudget::new(Some(ordinal), bytes)
}

/// Serves until SIGTERM or Ctrl-C, then drains: new requests get 503,
/// in-flight ones have `grace` to finish, then they are cancelled.
async fn serve(config: &config::Config, addr: Option<SocketAddr>, state: api::AppState, grace: Duration) -> Result<()> {
    let app = api::router(state.clone(), config.server.max_body_bytes);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let mut listening = Vec::new();
    let limits = config.connection_limits();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    if let Some(addr) = addr {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        // DNS rebinding reaches TCP only: the Host check guards that listener.
        let tcp_app = app
            .clone()
            .layer(axum::middleware::from_fn_with_state(state.clone(), guard::cors))
            .layer(axum::middleware::from_fn_with_state(state.clone(), guard::check_host));
        servers.push(tokio::spawn(conn::serve(
            conn::Bounded::new(listener, limits, slots.clone()),
            tcp_app,
            stop_rx.clone(),
        )));
        listening.push(format!("http://{bound}"));
    }
    let socket = config.server.unix_socket.as_deref();
    if let Some(path) = socket {
        let listener = bind_unix(path)?;
        servers.push(tokio::spawn(conn::serve(conn::Bounded::new(listener, limits, slots.clone()), app, stop_rx)));
        listening.push(format!("unix:{}", path.display()));
    }
    // The first address on stdout (scripts read it); a closed stdout is no error.
    let mut stdout = std::io::stdout();
    for (i, address) in listening.iter().enumerate() {
        match i {
            0 => drop(writeln!(stdout, "tailord listening on {address}").and_then(|()| stdout.flush())),
            _ => eprintln!("tailord: also listening on {address}"),
        }
    }
    notify::ready();
    shutdown_signal().await;
    notify::stopping();
    state.start_draining();
    eprintln!("tailord: stopping; in-flight requests have {}s to finish", grace.as_secs());
    let _ = stop_tx.send(true);
    let mut all = Box::pin(futures_join(servers));
    if tokio::time::timeout(grace, &mut all).await.is_err() {
        eprintln!("tailord: grace over; cancelling the requests still running");
        state.services().cancel_all();
        if tokio::time::timeout(Duration::from_secs(1), &mut all).await.is_err() {
            eprintln!("tailord: some requests did not stop; exiting anyway");
        }
    }
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    eprintln!("tailord: stopped");
    Ok(())
}

/// Waits for every server task.
async fn futures_join(servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>) {
    for server in servers {
        match server.await {
            Ok(Err(e)) => eprintln!("tailord: listener failed: {e}"),
            Err(e) => eprintln!("tailord: listener task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

/// Binds the Unix socket, owner and group only. Only a stale socket (one
/// nobody answers on) is replaced; a live one or any other file is an error.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    check_socket_path(path)?;
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Clears the way for the socket: nothing there, or a stale socket (removed).
fn check_socket_path(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by a running server", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
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
