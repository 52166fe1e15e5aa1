//! `tailor status`: asks a running tailord for its health, stages and
//! metrics over HTTP or its Unix socket (a plain HTTP/1.1 GET; no client
//! library needed for three requests).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct StatusArgs {
    /// The daemon's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Talk over this Unix socket instead.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Bearer token (or $TAILOR_TOKEN).
    #[arg(long, env = "TAILOR_TOKEN")]
    token: Option<String>,
}

fn get(args: &StatusArgs, path: &str) -> Result<(u16, String)> {
    let auth = args.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tailord\r\nConnection: close\r\n{auth}\r\n");
    let mut response = Vec::new();
    match &args.socket {
        Some(socket) => {
            let mut stream = std::os::unix::net::UnixStream::connect(socket)
                .with_context(|| format!("connecting to {}", socket.display()))?;
            stream.write_all(request.as_bytes())?;
            stream.read_to_end(&mut response)?;
        }
        None => {
            let mut stream = std::net::TcpStream::connect(&args.addr)
                .with_context(|| format!("connecting to {} (is tailord running?)", args.addr))?;
            stream.write_all(request.as_bytes())?;
            stream.read_to_end(&mut response)?;
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("malformed status line")?;
    Ok((status, body.to_string()))
}

pub fn status(args: &StatusArgs) -> Result<()> {
    let (code, health) = get(args, "/health")?;
    if code != 200 {
        bail!("tailord answered /health with {code}: {health}");
    }
    println!("tailord: {}", health.trim());
    let (code, models) = get(args, "/v1/models")?;
    if code == 401 {
        bail!("tailord wants a bearer token (--token or $TAILOR_TOKEN)");
    }
    let models: serde_json::Value = serde_json::from_str(&models).context("parsing /v1/models")?;
    for m in models["data"].as_array().into_iter().flatten() {
        println!("stage {:<16} {}", m["id"].as_str().unwrap_or("?"), m["tailor_stage"].as_str().unwrap_or(""));
    }
    let (_, metrics) = get(args, "/metrics")?;
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        println!("{line}");
    }
    Ok(())
}
