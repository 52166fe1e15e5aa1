//! An example Rust plugin: the filter stage `shout` upper-cases
//! `{"text": …}`. A text of exactly "panic" makes it panic, which the ABI
//! shims turn into a failed request; "abort" aborts the process, which only
//! an isolated (out-of-process) stage survives. With `"ask": {"stage": NAME,
//! "request": {…}}` it also calls that stage through the host's services
//! and returns its output as `"answer"`, reporting progress and logging as
//! it goes. The daemon's tests use all of these, in and out of process.

use tailor_plugin_abi::services::host;
use tailor_plugin_abi::{export_plugin, Stage, StageKind};

/// Upper-cases text.
struct Shout;

impl Stage for Shout {
    const KIND: StageKind = StageKind::Filter;
    const NAME: &'static std::ffi::CStr = c"shout";

    fn create(_config_json: &str) -> Result<Self, String> {
        Ok(Shout)
    }

    fn call(
        &self,
        id: u64,
        request_json: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        let request: serde_json::Value = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        let text = request["text"].as_str().ok_or("the request needs a `text` string")?;
        if text == "panic" {
            panic!("shout was asked to panic");
        }
        if text == "abort" {
            // A crash no shim can catch: only an isolated stage survives it.
            std::process::abort();
        }
        let mut reply = serde_json::json!({"text": text.to_uppercase()});
        if let Some(ask) = request.get("ask") {
            let host = host().ok_or("no host services")?;
            let stage = ask["stage"].as_str().ok_or("`ask.stage` must be a string")?;
            host.log(2, &format!("shout asks stage {stage}"));
            host.progress("shout ask", 0, 1);
            let answer = host.call_stage(stage, &ask["request"].to_string())?;
            host.progress("shout ask", 1, 1);
            reply["answer"] = serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer));
            reply["cpu_threads"] = host.cpu_threads().into();
            reply["cancelled"] = host.is_cancelled(id).into();
        }
        emit(&reply.to_string());
        Ok(())
    }
}

export_plugin!(name: "shout", version: "0.1.0", stages: [Shout]);
