//! tailord's TOML configuration.
//!
//! ```toml
//! [server]
//! http = "127.0.0.1:8080"        # a non-loopback address needs allow_remote = true
//! unix_socket = "/run/tailor/tailord.sock"   # optional; owner and group only (0660)
//! token = "secret"               # optional bearer token
//! plugin_dirs = ["/usr/lib/tailor/plugins"]
//! max_body_bytes = 1048576
//! answer_cache_entries = 1024     # exact-match cache of deterministic answers (0: off)
//! answer_cache_ttl_secs = 600
//!
//! [[stages]]                      # one instance of a plugin's stage, named for the API
//! name = "smollm2"                # the `model` of /v1/chat/completions
//! plugin = "libtailor_serve_llm.so"
//! stage = "generate"
//! config = { model = "/var/cache/tailor/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
//! filters = ["redact"]            # filter stages run, in order, on the answer
//! isolate = false                 # true: run it in a child process (crash-safe)
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
    /// HTTP listen address.
    #[serde(default = "default_http")]
    pub http: String,
    /// Allow a non-loopback HTTP address.
    #[serde(default)]
    pub allow_remote: bool,
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
    /// Seconds a cached answer stays valid.
    #[serde(default = "default_cache_ttl")]
    pub answer_cache_ttl_secs: u64,
    /// CPU threads granted to each plugin (default: the machine's cores).
    #[serde(default = "default_cpu_threads")]
    pub cpu_threads: u32,
}

fn default_cpu_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn default_cache_entries() -> usize {
    1024
}

fn default_cache_ttl() -> u64 {
    600
}

fn default_http() -> String {
    "127.0.0.1:8080".into()
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
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config.http_addr()?;
        Ok(config)
    }

    /// The HTTP address, refusing non-loopback ones unless allowed.
    pub fn http_addr(&self) -> Result<SocketAddr> {
        let addr: SocketAddr =
            self.server.http.parse().with_context(|| format!("server.http {:?}", self.server.http))?;
        if !addr.ip().is_loopback() && !self.server.allow_remote {
            bail!("server.http {addr} is not a loopback address; set server.allow_remote = true to serve beyond this machine");
        }
        Ok(addr)
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
