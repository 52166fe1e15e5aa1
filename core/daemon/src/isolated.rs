//! Out-of-process stages: the same plugin library loaded in a child
//! `tailord --plugin-host` process, spoken to over ipc-channel. A crash
//! there (segfault, abort) fails the request in flight with a clear error;
//! the next request starts a fresh child.

use anyhow::{Context, Result};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Mutex;
use tailor_plugin_abi::ffi;
use tailor_plugin_abi::host::{default_host, Plugin, PluginError};

/// One request to the child.
#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    json: String,
    reply: IpcSender<Reply>,
}

/// The child's answer, streamed.
#[derive(Serialize, Deserialize)]
enum Reply {
    Chunk(String),
    Done,
    Failed { status: u32, message: String },
}

/// What the child sends first: its request channel and the stage's kind,
/// or why it could not start.
type Hello = Result<(IpcSender<Request>, u32), String>;

/// How to start the child.
#[derive(Clone, Serialize, Deserialize)]
pub struct HostSpec {
    /// The plugin library.
    pub plugin: PathBuf,
    /// Allowed plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// Stage name.
    pub stage: String,
    /// Stage config (JSON).
    pub config_json: String,
}

struct Running {
    child: Child,
    requests: IpcSender<Request>,
    kind: u32,
}

/// A stage served by a child process, restarted after a crash.
pub struct IsolatedStage {
    name: String,
    spec: HostSpec,
    running: Mutex<Option<Running>>,
}

impl IsolatedStage {
    /// Starts the child once to check that the stage loads.
    pub fn start(name: &str, spec: HostSpec) -> Result<IsolatedStage> {
        let stage = IsolatedStage { name: name.to_string(), spec, running: Mutex::new(None) };
        let running = stage.spawn()?;
        *stage.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(stage)
    }

    fn spawn(&self) -> Result<Running> {
        let (server, server_name) = IpcOneShotServer::<Hello>::new().context("creating the plugin-host channel")?;
        let spec = serde_json::to_string(&self.spec)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--plugin-host")
            .env("TAILOR_PLUGIN_HOST_SERVER", server_name)
            .env("TAILOR_PLUGIN_HOST_SPEC", spec)
            .spawn()
            .context("starting the plugin host process")?;
        let (_, hello) = server.accept().context("the plugin host did not connect")?;
        let (requests, kind) = hello.map_err(|e| anyhow::anyhow!("stage {}: {e}", self.name))?;
        Ok(Running { child, requests, kind })
    }

    /// The stage's kind as the child reported it.
    pub fn kind(&self) -> Option<tailor_plugin_abi::StageKind> {
        let guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().and_then(|r| tailor_plugin_abi::StageKind::from_raw(r.kind))
    }

    /// Calls the stage in the child; a crash fails this call and the next
    /// call starts a new child.
    pub fn call(&self, id: u64, request: &str, on_chunk: &mut dyn FnMut(&str) -> bool) -> Result<(), PluginError> {
        let mut guard = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.spawn().map_err(|e| self.failure(format!("restarting the plugin host failed: {e:#}")))?);
        }
        let running = guard.as_mut().ok_or_else(|| self.failure("no plugin host".into()))?;
        let (reply_tx, reply_rx): (IpcSender<Reply>, IpcReceiver<Reply>) =
            ipc::channel().map_err(|e| self.failure(format!("ipc channel: {e}")))?;
        let sent = running.requests.send(Request { id, json: request.to_string(), reply: reply_tx });
        let outcome = match sent {
            Ok(()) => self.receive(&reply_rx, on_chunk),
            Err(e) => Err(format!("the plugin host is gone ({e})")),
        };
        match outcome {
            Ok(result) => result,
            Err(crash) => {
                let status = guard.take().map(|mut r| {
                    let _ = r.child.kill();
                    r.child.wait().map(|s| s.to_string()).unwrap_or_default()
                });
                Err(self.failure(format!(
                    "the isolated plugin process crashed ({crash}; {}); it restarts on the next request",
                    status.unwrap_or_default()
                )))
            }
        }
    }

    /// Reads replies: `Err` when the child died mid-request.
    fn receive(
        &self,
        replies: &IpcReceiver<Reply>,
        on_chunk: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Result<(), PluginError>, String> {
        let mut wanted = true;
        loop {
            match replies.recv() {
                Ok(Reply::Chunk(text)) => {
                    if wanted {
                        wanted = on_chunk(&text);
                    }
                }
                Ok(Reply::Done) => return Ok(Ok(())),
                Ok(Reply::Failed { status, message }) => {
                    return Ok(Err(PluginError::Stage { stage: self.name.clone(), status, message }))
                }
                Err(e) => return Err(format!("{e:?}")),
            }
        }
    }

    fn failure(&self, message: String) -> PluginError {
        PluginError::Stage { stage: self.name.clone(), status: ffi::ERR_INTERNAL, message }
    }
}

impl Drop for IsolatedStage {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// The child side (`tailord --plugin-host`): load the plugin, create the
/// stage, serve requests until the parent goes away.
pub fn run_plugin_host() -> Result<()> {
    let server = std::env::var("TAILOR_PLUGIN_HOST_SERVER").context("TAILOR_PLUGIN_HOST_SERVER is not set")?;
    let spec: HostSpec =
        serde_json::from_str(&std::env::var("TAILOR_PLUGIN_HOST_SPEC").context("TAILOR_PLUGIN_HOST_SPEC is not set")?)?;
    let hello = IpcSender::<Hello>::connect(server).context("connecting to tailord")?;
    let loaded = Plugin::load(&spec.plugin, &spec.plugin_dirs, default_host()).and_then(|plugin| {
        let kind =
            plugin.stages().iter().find(|s| s.name == spec.stage).and_then(|s| s.kind).map(|k| k as u32).unwrap_or(0);
        plugin.instantiate(&spec.stage, &spec.config_json).map(|i| (i, kind))
    });
    let (instance, kind) = match loaded {
        Ok(i) => i,
        Err(e) => {
            let _ = hello.send(Err(e.to_string()));
            return Err(e.into());
        }
    };
    let (requests_tx, requests) = ipc::channel::<Request>()?;
    hello.send(Ok((requests_tx, kind))).context("answering tailord")?;
    while let Ok(request) = requests.recv() {
        let reply = request.reply;
        let result =
            instance.call(request.id, &request.json, &mut |chunk| reply.send(Reply::Chunk(chunk.to_string())).is_ok());
        let last = match result {
            Ok(()) => Reply::Done,
            Err(PluginError::Stage { status, message, .. }) => Reply::Failed { status, message },
            Err(other) => Reply::Failed { status: ffi::ERR_INTERNAL, message: other.to_string() },
        };
        let _ = reply.send(last);
    }
    Ok(())
}
