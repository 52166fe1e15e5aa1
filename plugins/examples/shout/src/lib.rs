//! An example Rust plugin: the filter stage `shout` upper-cases
//! `{"text": …}`. A text of exactly "panic" makes it panic, which the ABI
//! shims turn into a failed request; "abort" aborts the process, which only
//! an isolated (out-of-process) stage survives. The daemon's tests use both.

use tailor_plugin_abi::{export_plugin, Stage, StageKind};

/// Upper-cases text.
struct Shout;

impl Stage for Shout {
    const KIND: StageKind = StageKind::Filter;
    const NAME: &'static std::ffi::CStr = c"shout";

    fn create(_config_json: &str) -> Result<Self, String> {
        Ok(Shout)
    }

    fn call(&self, _id: u64, request_json: &str, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let request: serde_json::Value = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let text = request["text"].as_str().ok_or("the request needs a `text` string")?;
        if text == "panic" {
            panic!("shout was asked to panic");
        }
        if text == "abort" {
            // A crash no shim can catch: only an isolated stage survives it.
            std::process::abort();
        }
        emit(&serde_json::json!({"text": text.to_uppercase()}).to_string());
        Ok(())
    }
}

export_plugin!(name: "shout", version: "0.1.0", stages: [Shout]);
