//! Out-of-process stages: the same plugin library loaded in a child
//! `tailord --plugin-host` process, spoken to over ipc-channel. A crash
//! there (segfault, abort) fails the request in flight with a clear error;
//! the next request starts a fresh child. The child's plugin gets the same
//! host services as an in-process one, proxied: its log lines, progress,
//! cancellation checks and calls into other stages travel to the daemon
//! over a second channel, served by a thread per child.

use crate::services::DaemonServices;
use anyhow::{Context, Result};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tailor_plugin_abi::ffi;
use tailor_plugin_abi::host::{Plugin, PluginError};
use tailor_plugin_abi::services::{host_api, HostServices};

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

/// A host service used by the child's plugin, carried to the daemon.
#[derive(Serialize, Deserialize)]
enum HostCall {
    /// The child is up (the first message).
    Connected,
    Log {
        level: i32,
        message: String,
    },
    Progress {
        task: String,
        done: u64,
        total: u64,
    },
    IsCancelled {
        request_id: u64,
        reply: IpcSender<bool>,
    },
    CallStage {
        stage: String,
        request: String,
        reply: IpcSender<Reply>,
    },
    /// Bytes of the daemon's device budget, granted or not.
    DeviceReserve {
        bytes: u64,
        reply: IpcSender<bool>,
    },
    DeviceRelease {
        bytes: u64,
    },
}

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
    /// CPU threads granted to the plugin.
    pub cpu_threads: u32,
    /// The CUDA device the daemon serves on (`None`: the CPU).
    pub device: Option<usize>,
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
    services: Arc<DaemonServices>,
}

impl IsolatedStage {
    /// Starts the child once to check that the stage loads.
    pub fn start(name: &str, spec: HostSpec, services: Arc<DaemonServices>) -> Result<IsolatedStage> {
        let stage = IsolatedStage { name: name.to_string(), spec, running: Mutex::new(None), services };
        let running = stage.spawn()?;
        *stage.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(stage)
    }

    fn spawn(&self) -> Result<Running> {
        let (server, server_name) = IpcOneShotServer::<Hello>::new().context("creating the plugin-host channel")?;
        let (host_server, host_name) =
            IpcOneShotServer::<HostCall>::new().context("creating the host-services channel")?;
        let spec = serde_json::to_string(&self.spec)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--plugin-host")
            .env("TAILOR_PLUGIN_HOST_SERVER", &server_name)
            .env("TAILOR_PLUGIN_HOST_SERVICES", host_name)
            .env("TAILOR_PLUGIN_HOST_SPEC", spec)
            .spawn()
            .context("starting the plugin host process")?;
        let services = self.services.clone();
        std::thread::Builder::new()
            .name(format!("host-{}", self.name))
            .spawn(move || serve_host_calls(host_server, services))
            .context("starting the host-services thread")?;
        let hello = match accept_hello(server, &server_name, &mut child) {
            Ok(hello) => hello,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
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

/// How long a plugin host may take to load its stage and connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits for the child's hello without hanging on a child that died first
/// or never connects: the accept runs on its own thread and is unblocked
/// (by connecting to it from here) when the wait gives up.
fn accept_hello(server: IpcOneShotServer<Hello>, name: &str, child: &mut Child) -> Result<Hello> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("plugin-host-accept".into())
        .spawn(move || {
            let _ = done_tx.send(server.accept().map(|(_, hello)| hello));
        })
        .context("starting the accept thread")?;
    let started = std::time::Instant::now();
    let failure = loop {
        match done_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(hello)) => return Ok(hello),
            Ok(Err(e)) => return Err(anyhow::anyhow!("the plugin host did not connect: {e:?}")),
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            break format!("the plugin host exited ({status}) before connecting");
        }
        if started.elapsed() > CONNECT_TIMEOUT {
            break format!("the plugin host did not connect within {}s", CONNECT_TIMEOUT.as_secs());
        }
    };
    if let Ok(unblock) = IpcSender::<Hello>::connect(name.to_string()) {
        let _ = unblock.send(Err(failure.clone()));
    }
    Err(anyhow::anyhow!(failure))
}

impl Drop for IsolatedStage {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// The daemon side of a child's host services: until the child goes away.
/// Device memory the child still holds then (it crashed, or was killed) is
/// given back to the budget.
fn serve_host_calls(server: IpcOneShotServer<HostCall>, services: Arc<DaemonServices>) {
    let Ok((calls, first)) = server.accept() else { return };
    let mut next = Some(first);
    let mut device_held = 0u64;
    while let Some(call) = next.take().or_else(|| calls.recv().ok()) {
        match call {
            HostCall::Connected => {}
            HostCall::Log { level, message } => services.log(level, &message),
            HostCall::Progress { task, done, total } => services.progress(&task, done, total),
            HostCall::IsCancelled { request_id, reply } => {
                let _ = reply.send(services.is_cancelled(request_id));
            }
            HostCall::CallStage { stage, request, reply } => {
                let result =
                    services.call_stage(&stage, &request, &mut |chunk| reply.send(Reply::Chunk(chunk.into())).is_ok());
                let last = match result {
                    Ok(()) => Reply::Done,
                    Err(message) => Reply::Failed { status: ffi::ERR_INVALID, message },
                };
                let _ = reply.send(last);
            }
            HostCall::DeviceReserve { bytes, reply } => {
                let granted = services.device_reserve(bytes);
                device_held += if granted { bytes } else { 0 };
                let _ = reply.send(granted);
            }
            HostCall::DeviceRelease { bytes } => {
                let bytes = bytes.min(device_held);
                device_held -= bytes;
                services.device_release(bytes);
            }
        }
    }
    services.device_release(device_held);
}

/// The child's host services: each a message to the daemon.
struct ProxyServices {
    calls: Mutex<IpcSender<HostCall>>,
    cpu_threads: u32,
    device: Option<usize>,
}

impl ProxyServices {
    fn send(&self, call: HostCall) -> Result<(), String> {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.send(call).map_err(|e| format!("the daemon is gone: {e}"))
    }
}

impl HostServices for ProxyServices {
    fn log(&self, level: i32, message: &str) {
        let _ = self.send(HostCall::Log { level, message: message.to_string() });
    }

    fn progress(&self, task: &str, done: u64, total: u64) {
        let _ = self.send(HostCall::Progress { task: task.to_string(), done, total });
    }

    fn is_cancelled(&self, request_id: u64) -> bool {
        let Ok((reply, answer)) = ipc::channel() else { return false };
        self.send(HostCall::IsCancelled { request_id, reply }).is_ok() && answer.recv().unwrap_or(false)
    }

    fn call_stage(&self, stage: &str, request_json: &str, out: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let (reply, replies) = ipc::channel::<Reply>().map_err(|e| format!("ipc channel: {e}"))?;
        self.send(HostCall::CallStage { stage: stage.to_string(), request: request_json.to_string(), reply })?;
        let mut wanted = true;
        loop {
            match replies.recv().map_err(|e| format!("the daemon is gone: {e:?}"))? {
                Reply::Chunk(text) if wanted => wanted = out(&text),
                Reply::Chunk(_) => {}
                Reply::Done => return Ok(()),
                Reply::Failed { message, .. } => return Err(message),
            }
        }
    }

    fn cpu_threads(&self) -> u32 {
        self.cpu_threads
    }

    fn parallel_for(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        tailor_tensor::cpu::pool::SpinPool::global().run(job);
    }

    fn device(&self) -> Option<usize> {
        self.device
    }

    fn device_reserve(&self, bytes: u64) -> bool {
        let Ok((reply, answer)) = ipc::channel() else { return false };
        self.send(HostCall::DeviceReserve { bytes, reply }).is_ok() && answer.recv().unwrap_or(false)
    }

    fn device_release(&self, bytes: u64) {
        let _ = self.send(HostCall::DeviceRelease { bytes });
    }
}

/// The child side (`tailord --plugin-host`): load the plugin, create the
/// stage, serve requests until the parent goes away.
pub fn run_plugin_host() -> Result<()> {
    let server = std::env::var("TAILOR_PLUGIN_HOST_SERVER").context("TAILOR_PLUGIN_HOST_SERVER is not set")?;
    let spec: HostSpec =
        serde_json::from_str(&std::env::var("TAILOR_PLUGIN_HOST_SPEC").context("TAILOR_PLUGIN_HOST_SPEC is not set")?)?;
    let hello = IpcSender::<Hello>::connect(server).context("connecting to tailord")?;
    let services_name =
        std::env::var("TAILOR_PLUGIN_HOST_SERVICES").context("TAILOR_PLUGIN_HOST_SERVICES is not set")?;
    let calls = IpcSender::<HostCall>::connect(services_name).context("connecting to tailord's host services")?;
    calls.send(HostCall::Connected).context("greeting tailord's host services")?;
    let cpu_threads = crate::services::start_kernel_pool(spec.cpu_threads);
    let host = host_api(Arc::new(ProxyServices { calls: Mutex::new(calls), cpu_threads, device: spec.device }));
    let loaded = Plugin::load(&spec.plugin, &spec.plugin_dirs, host).and_then(|plugin| {
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
