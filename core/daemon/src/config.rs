//! tailord's TOML configuration.
//!
//! ```toml
//! [server]
//! unix_socket = "/run/tailor/tailord.sock"   # owner and group only (0660)
//! http = "127.0.0.1:8080"        # optional TCP listener; needs `token` (or
//!                                # allow_unauthenticated_tcp = true), and a
//!                                # non-loopback address needs allow_remote = true
//! token = "secret"               # bearer token on every route but /health
//! allowed_hosts = ["tailor.lan"] # Host names TCP requests may carry besides loopback ones
//! cors_origins = ["https://app.example"]   # web pages that may read answers (none by default)
//! plugin_dirs = ["/usr/lib/tailor/plugins"]
//! max_body_bytes = 1048576
//! answer_cache_entries = 1024     # exact-match cache of deterministic answers (0: off)
//! answer_cache_mb = 64            # and at most this many MiB of prompts and answers
//! answer_cache_ttl_secs = 600
//! shutdown_grace_secs = 5         # after SIGTERM: time for in-flight work, then it is cancelled
//! max_connections = 256           # open at once; first_byte_timeout_secs = 10, idle_timeout_secs = 600
//! header_timeout_secs = 30        # a request head must arrive whole within this (also the keep-alive wait)
//! files_dir = "/var/lib/tailor/files"   # /v1/files uploads for fine-tuning (off when unset)
//! max_file_mb = 32                # the largest upload
//!
//! [[stages]]                      # one instance of a plugin's stage, named for the API
//! name = "smollm2"                # the `model` of /v1/chat/completions
//! plugin = "libtailor_serve_llm.so"
//! stage = "generate"
//! config = { model = "/var/cache/tailor/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
//! filters = ["redact"]            # filter stages run, in order, on the answer
//! isolate = false                 # true: run it in a child process (crash-safe)
//! max_pending = 64                # calls running or queued at once; more get 429
//! ```

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and security settings.
    pub server: Server,
    /// Stage instances.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// TCP listen address (none: the Unix socket only).
    pub http: Option<String>,
    /// Allow a non-loopback HTTP address.
    #[serde(default)]
    pub allow_remote: bool,
    /// Serve TCP without a token (every local user can then call the API).
    #[serde(default)]
    pub allow_unauthenticated_tcp: bool,
    /// Host header names accepted on TCP besides `localhost` and loopback
    /// addresses (a DNS-rebinding page sends its own name and is refused).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://app.example`) whose pages may read answers
    /// (CORS, TCP only); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Unix socket to serve the same API on (created with mode 0660).
    pub unix_socket: Option<PathBuf>,
    /// Bearer token required on every route but /health.
    pub token: Option<String>,
    /// Directories plugins may load from.
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    /// Largest request body.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Answers kept by the exact-match cache (0 disables it).
    #[serde(default = "default_cache_entries")]
    pub answer_cache_entries: usize,
    /// Megabytes of prompts and answers the answer cache keeps.
    #[serde(default = "default_cache_mb")]
    pub answer_cache_mb: usize,
    /// Seconds a cached answer stays valid.
    #[serde(default = "default_cache_ttl")]
    pub answer_cache_ttl_secs: u64,
    /// Connections open at once, over all listeners (more wait in the backlog).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a new connection has to send its first byte.
    #[serde(default = "default_first_byte")]
    pub first_byte_timeout_secs: u64,
    /// Seconds with no byte moving either way before a connection is closed
    /// (a generation that streams nothing for that long is cut off too).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Seconds a request's head has to arrive whole; also how long a
    /// kept-alive connection waits for its next request.
    #[serde(default = "default_header")]
    pub header_timeout_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM before they
    /// are cancelled.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// CPU threads granted to each plugin (default: the machine's cores).
    #[serde(default = "default_cpu_threads")]
    pub cpu_threads: u32,
    /// Where kernels run: `cpu`, `cuda` or `cuda:N`; an unusable CUDA
    /// device falls back to the CPU with a log line at start.
    #[serde(default = "default_device")]
    pub device: String,
    /// MiB of device memory all plugins may hold together on `device`
    /// (weights, KV caches, adapters; 0: as much as the device has).
    #[serde(default)]
    pub device_memory_mb: u64,
    /// Where `/v1/files` keeps uploads (none: uploads are off).
    pub files_dir: Option<PathBuf>,
    /// The largest upload, in MiB.
    #[serde(default = "default_file_mb")]
    pub max_file_mb: usize,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_file_mb() -> usize {
    32
}

fn default_cpu_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn default_max_connections() -> usize {
    256
}

fn default_first_byte() -> u64 {
    10
}

fn default_idle() -> u64 {
    600
}

fn default_header() -> u64 {
    30
}

fn default_grace() -> u64 {
    5
}

fn default_cache_entries() -> usize {
    1024
}

fn default_cache_mb() -> usize {
    64
}

fn default_cache_ttl() -> u64 {
    600
}

fn default_body() -> usize {
    1 << 20
}

/// `[[stages]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// API-visible name.
    pub name: String,
    /// Library file, relative to a plugin directory (or absolute inside one).
    pub plugin: PathBuf,
    /// Stage name inside the plugin.
    pub stage: String,
    /// The stage's own config, passed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// Filter stages (by name) applied in order to this stage's output
    /// (a generate stage's answer), e.g. `["redact"]`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Run the stage in a child process: a crash costs one request.
    #[serde(default)]
    pub isolate: bool,
    /// API calls admitted at once (running or queued); more get 429 with
    /// `Retry-After`. Each waiting call holds a thread, so this bounds them.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_max_pending() -> usize {
    64
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if config.server.http.is_none() && config.server.unix_socket.is_none() {
            bail!("{}: configure server.unix_socket (or server.http with a token)", path.display());
        }
        if config.server.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            bail!("server.token is empty; remove it or set a secret");
        }
        config.http_addr()?;
        Ok(config)
    }

    /// The TCP address, if any: loopback unless `allow_remote`, and never
    /// without a token unless `allow_unauthenticated_tcp` says so.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>> {
        let Some(http) = &self.server.http else { return Ok(None) };
        let addr: SocketAddr = http.parse().with_context(|| format!("server.http {http:?}"))?;
        if !addr.ip().is_loopback() && !self.server.allow_remote {
            bail!("server.http {addr} is not a loopback address; set server.allow_remote = true to serve beyond this machine");
        }
        if self.server.token.is_none() && !self.server.allow_unauthenticated_tcp {
            bail!(
                "server.http {addr} without server.token would let every local user call the API; \
                 set a token, serve only on server.unix_socket, or write allow_unauthenticated_tcp = true"
            );
        }
        Ok(Some(addr))
    }

    /// The connection bounds every listener applies.
    pub fn connection_limits(&self) -> crate::conn::Limits {
        crate::conn::Limits {
            max_connections: self.server.max_connections,
            first_byte: std::time::Duration::from_secs(self.server.first_byte_timeout_secs.max(1)),
            idle: std::time::Duration::from_secs(self.server.idle_timeout_secs.max(1)),
            header: std::time::Duration::from_secs(self.server.header_timeout_secs.max(1)),
        }
    }

    /// Where a stage's library lives: the first plugin directory that has it.
    pub fn plugin_path(&self, stage: &StageConfig) -> PathBuf {
        if stage.plugin.is_absolute() {
            return stage.plugin.clone();
        }
        self.server
            .plugin_dirs
            .iter()
            .map(|d| d.join(&stage.plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| stage.plugin.clone())
    }
}
