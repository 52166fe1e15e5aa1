//! The stage registry: every configured stage instance, by API name.

use crate::config::Config;
use crate::isolated::{HostSpec, IsolatedStage};
use crate::services::DaemonServices;
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tailor_plugin_abi::host::{Plugin, StageInstance};
use tailor_plugin_abi::services::{host_api, HostServices};
use tailor_plugin_abi::StageKind;

/// Where a stage runs.
enum Backend {
    /// In this process.
    InProcess(StageInstance),
    /// In a child process.
    Isolated(IsolatedStage),
}

/// One live stage instance.
pub struct Registered {
    /// API-visible name.
    pub name: String,
    /// What it does.
    pub kind: Option<StageKind>,
    backend: Backend,
    /// Held around calls when the stage is not declared concurrent.
    serial: Option<Mutex<()>>,
    /// Filter stages applied to this stage's output, in order.
    pub filters: Vec<Arc<Registered>>,
    /// API calls running or waiting in this stage now.
    pending: AtomicUsize,
    /// Most API calls admitted at once; more get 429.
    max_pending: usize,
}

/// A place among a stage's admitted calls; dropping it frees the place.
pub struct Admission(Arc<Registered>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Registered {
    fn new(name: &str, kind: Option<StageKind>, backend: Backend, serial: bool, max_pending: usize) -> Registered {
        Registered {
            name: name.to_string(),
            kind,
            backend,
            serial: serial.then(|| Mutex::new(())),
            filters: Vec::new(),
            pending: AtomicUsize::new(0),
            max_pending: max_pending.max(1),
        }
    }

    /// A place for one more API call, or `None` when `max_pending` are in.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let taken =
            self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_pending).then_some(n + 1));
        taken.ok().map(|_| Admission(self.clone()))
    }

    /// API calls running or waiting now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Passes `text` through this stage's filters (`{"text": …}` in and out).
    pub fn filter(&self, text: String) -> Result<String, tailor_plugin_abi::host::PluginError> {
        let mut text = text;
        for filter in &self.filters {
            let request = serde_json::json!({ "text": text }).to_string();
            let mut output = String::new();
            filter.call(0, &request, &mut |c| {
                output.push_str(c);
                true
            })?;
            let parsed: serde_json::Value =
                serde_json::from_str(&output).map_err(|e| tailor_plugin_abi::host::PluginError::Stage {
                    stage: filter.name.clone(),
                    status: tailor_plugin_abi::ffi::ERR_INTERNAL,
                    message: format!("filter output is not {{\"text\": …}} JSON: {e}"),
                })?;
            text = parsed["text"].as_str().unwrap_or_default().to_string();
        }
        Ok(text)
    }

    /// Calls the stage (serialised if it asked to be).
    pub fn call(
        &self,
        id: u64,
        request: &str,
        on_chunk: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::host::PluginError> {
        let _guard = self.serial.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        match &self.backend {
            Backend::InProcess(instance) => instance.call(id, request, on_chunk),
            Backend::Isolated(stage) => stage.call(id, request, on_chunk),
        }
    }
}

/// All stages.
pub struct Registry {
    stages: Vec<Arc<Registered>>,
}

impl Registry {
    /// Loads each configured plugin and creates its stage instance; every
    /// plugin gets `services` as its host.
    pub fn load(config: &Config, services: &Arc<DaemonServices>) -> Result<Registry> {
        let host = host_api(services.clone());
        let mut plugins: Vec<Arc<Plugin>> = Vec::new();
        let mut stages = Vec::new();
        for stage in &config.stages {
            let path = config.plugin_path(stage);
            let json = serde_json::to_string(&stage.config)?;
            if stage.isolate {
                let spec = HostSpec {
                    plugin: path,
                    plugin_dirs: config.server.plugin_dirs.clone(),
                    stage: stage.stage.clone(),
                    config_json: json,
                    cpu_threads: services.cpu_threads(),
                    device: services.device_budget().ordinal,
                };
                eprintln!("tailord: starting isolated stage {} ({:?}) ...", stage.name, stage.stage);
                let isolated = IsolatedStage::start(&stage.name, spec, services.clone())
                    .with_context(|| format!("creating stage {}", stage.name))?;
                let kind = isolated.kind();
                stages.push(Registered::new(&stage.name, kind, Backend::Isolated(isolated), false, stage.max_pending));
                continue;
            }
            let plugin = match plugins.iter().find(|p| p.path() == std::fs::canonicalize(&path).unwrap_or_default()) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(Plugin::load(&path, &config.server.plugin_dirs, host)?);
                    eprintln!("tailord: loaded plugin {} {} from {}", p.name(), p.version(), p.path().display());
                    plugins.push(p.clone());
                    p
                }
            };
            let info = plugin
                .stages()
                .into_iter()
                .find(|s| s.name == stage.stage)
                .with_context(|| format!("plugin {} has no stage {:?}", plugin.name(), stage.stage))?;
            eprintln!("tailord: creating stage {} ({}:{}) ...", stage.name, plugin.name(), stage.stage);
            let instance =
                plugin.instantiate(&stage.stage, &json).with_context(|| format!("creating stage {}", stage.name))?;
            let backend = Backend::InProcess(instance);
            stages.push(Registered::new(&stage.name, info.kind, backend, !info.concurrent, stage.max_pending));
        }
        // Filters must be configured filter stages; they are wired after all exist.
        let mut registered: Vec<Arc<Registered>> = Vec::new();
        for (mut stage, config) in stages.into_iter().zip(&config.stages) {
            for name in &config.filters {
                let filter = registered.iter().find(|s| s.name == *name && s.kind == Some(StageKind::Filter)).cloned();
                let filter = filter.with_context(|| {
                    format!("stage {}: filter {name:?} must be a filter stage listed before it", config.name)
                })?;
                stage.filters.push(filter);
            }
            registered.push(Arc::new(stage));
        }
        services.attach(registered.clone());
        Ok(Registry { stages: registered })
    }

    /// The stage named `name` of kind `kind`.
    pub fn find(&self, name: &str, kind: StageKind) -> Option<Arc<Registered>> {
        self.stages.iter().find(|s| s.name == name && s.kind == Some(kind)).cloned()
    }

    /// Every stage.
    pub fn all(&self) -> &[Arc<Registered>] {
        &self.stages
    }
}
