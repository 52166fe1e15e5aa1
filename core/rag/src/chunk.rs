//! Turning files into text and text into chunks.
//!
//! Extraction by file type: plain text, Markdown (split at headings, each
//! chunk prefixed with its heading path), HTML (tags, scripts and styles
//! dropped, entities decoded) and JSONL records (one document per line).
//! Chunking: windows of encoder tokens with overlap, spans kept in bytes of
//! the extracted text so citations point at real text.

use crate::error::{RagError, Result};
use crate::files::FilePolicy;
use std::collections::BTreeMap;
use std::path::Path;

/// Token window parameters.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct ChunkParams {
    /// Tokens per chunk (without the encoder's special tokens).
    pub window: usize,
    /// Tokens shared by consecutive chunks.
    pub overlap: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams { window: 200, overlap: 40 }
    }
}

/// Text extracted from a file (or one record of it).
#[derive(Debug, Clone)]
pub struct Extracted {
    /// Stable id within the source (file path, or path#record-id).
    pub id: String,
    /// The text.
    pub text: String,
    /// Metadata (title, record fields).
    pub metadata: BTreeMap<String, String>,
}

/// Why a file was skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// Larger than the policy's limit (in bytes).
    TooLarge(u64),
    /// Contains NUL bytes.
    Binary,
    /// Not valid UTF-8.
    NotUtf8,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::TooLarge(limit) => write!(f, "larger than the {limit}-byte limit"),
            Skip::Binary => f.write_str("binary file"),
            Skip::NotUtf8 => f.write_str("not UTF-8 text"),
        }
    }
}

/// Reads (under `policy`'s rules) and extracts a file: `Ok(Err(skip))` for
/// files to skip with a warning.
pub fn extract_file(path: &Path, policy: &FilePolicy) -> Result<std::result::Result<Vec<Extracted>, Skip>> {
    let Some(bytes) = policy.read(path)? else { return Ok(Err(Skip::TooLarge(policy.max_file_bytes))) };
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return Ok(Err(Skip::Binary));
    }
    let Ok(text) = String::from_utf8(bytes) else { return Ok(Err(Skip::NotUtf8)) };
    let name = path.display().to_string();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let docs = match ext.as_str() {
        "jsonl" => jsonl_records(&name, &text)?,
        "html" | "htm" => vec![Extracted { id: name, text: html_to_text(&text), metadata: BTreeMap::new() }],
        _ => vec![Extracted { id: name, text, metadata: BTreeMap::new() }],
    };
    Ok(Ok(docs))
}

fn jsonl_records(name: &str, text: &str) -> Result<Vec<Extracted>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| RagError::InvalidInput(format!("{name}:{}: {e}", i + 1)))?;
        let obj =
            value.as_object().ok_or_else(|| RagError::InvalidInput(format!("{name}:{}: not an object", i + 1)))?;
        let get = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let body = get("text").or_else(|| get("content")).unwrap_or_default();
        let record_id = get("_id").or_else(|| get("id")).unwrap_or_else(|| (i + 1).to_string());
        let mut metadata = BTreeMap::new();
        for (k, v) in obj {
            if !matches!(k.as_str(), "text" | "content") {
                metadata.insert(k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
        let text = match get("title") {
            Some(title) if !title.is_empty() => format!("{title}\n{body}"),
            _ => body,
        };
        out.push(Extracted { id: format!("{name}#{record_id}"), text, metadata });
    }
    Ok(out)
}

/// Visible text of an HTML page: tags removed (block tags become line
/// breaks), `<script>`/`<style>` contents dropped, common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..open]));
        let after = &rest[open..];
        let close = after.find('>').map(|c| c + 1).unwrap_or(after.len());
        let tag = after[1..close.saturating_sub(1).max(1)].trim().to_ascii_lowercase();
        let name: String = tag.trim_start_matches('/').chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        rest = &after[close..];
        if (name == "script" || name == "style") && !tag.starts_with('/') {
            let end_tag = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            let skip = lower.find(&end_tag).unwrap_or(rest.len());
            rest = &rest[skip..];
            continue;
        }
        if matches!(
            name.as_str(),
            "p" | "div" | "br" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "section" | "article"
        ) {
            out.push('\n');
        }
    }
    out.push_str(&decode_entities(rest));
    let lines: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.join("\n")
}

fn decode_entities(text: &str) -> String {
    text.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// A piece of a document to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// Text to embed (may carry a heading path before the span's text).
    pub text: String,
    /// Byte span in the extracted text.
    pub start: usize,
    /// End of the span (exclusive).
    pub end: usize,
}

/// Markdown sections: (heading path, byte range of the section body).
pub fn markdown_sections(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut sections = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let (mut start, mut offset, mut in_fence) = (0usize, 0usize, false);
    let path_of = |h: &[(usize, String)]| h.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" > ");
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        if !in_fence && (1..=6).contains(&level) && trimmed[level..].starts_with(' ') {
            if offset > start {
                sections.push((path_of(&headings), start..offset));
            }
            headings.retain(|(l, _)| *l < level);
            headings.push((level, trimmed[level..].trim().to_string()));
            start = offset;
        }
        offset += line.len();
    }
    if offset > start {
        sections.push((path_of(&headings), start..offset));
    }
    sections
}

/// Splits `text` into windows of `params.window` tokens overlapping by
/// `params.overlap`, using token byte offsets from `spans` (one per token).
pub fn token_windows(text: &str, spans: &[(usize, usize)], params: ChunkParams, prefix: &str) -> Vec<Piece> {
    if spans.is_empty() {
        return Vec::new();
    }
    let step = params.window.saturating_sub(params.overlap).max(1);
    let mut pieces = Vec::new();
    let mut first = 0;
    loop {
        let last = (first + params.window).min(spans.len());
        let (start, end) = (spans[first].0, spans[last - 1].1);
        let body = text.get(start..end).unwrap_or("").trim();
        let text = if prefix.is_empty() { body.to_string() } else { format!("{prefix}\n{body}") };
        pieces.push(Piece { text, start, end });
        if last == spans.len() {
            return pieces;
        }
        first += step;
    }
}
