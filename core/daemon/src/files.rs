//! Uploaded files (OpenAI's `/v1/files`), kept for fine-tuning jobs.
//!
//! A file is two entries of the configured `files_dir`: `{id}.jsonl`, its
//! bytes, and `{id}.json`, what the API shows of it (name, size, purpose,
//! time). Both are written to a temporary name, synced and renamed, the
//! metadata last, so a crash leaves no half file that lists. Ids are
//! `file-` and 24 hex digits; anything else is refused before it touches a
//! path. Only `purpose = "fine-tune"` is taken, and its text must be JSONL
//! (every non-blank line a JSON object): a bad line is a 400 naming it at
//! upload, not a failed job later.

use crate::api::ApiError;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The files of one daemon.
pub struct FileStore {
    dir: PathBuf,
    max_bytes: usize,
}

/// A file as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileObject {
    /// `file-…`.
    pub id: String,
    /// Always `"file"`.
    pub object: String,
    /// Size of the content.
    pub bytes: u64,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// The name it was uploaded with (no directories).
    pub filename: String,
    /// What it is for (`fine-tune`).
    pub purpose: String,
    /// Always `"processed"`: checked at upload.
    pub status: String,
}

/// Purposes tailor accepts.
const PURPOSES: [&str; 1] = ["fine-tune"];

impl FileStore {
    /// Opens (creating it, owner-only) the folder of uploads; `max_bytes`
    /// bounds one file.
    pub fn open(dir: &Path, max_bytes: usize) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(FileStore { dir: dir.to_path_buf(), max_bytes })
    }

    /// The largest file taken.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Checks and keeps an upload.
    pub fn add(&self, filename: &str, purpose: &str, content: &[u8]) -> Result<FileObject, ApiError> {
        if !PURPOSES.contains(&purpose) {
            return Err(ApiError::bad_request(format!("purpose {purpose:?}: only \"fine-tune\" files are taken")));
        }
        if content.len() > self.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a file of {} bytes; the limit is {} (max_file_mb)", content.len(), self.max_bytes),
            ));
        }
        check_jsonl(content)?;
        let file = FileObject {
            id: new_file_id().map_err(internal)?,
            object: "file".into(),
            bytes: content.len() as u64,
            created_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            filename: base_name(filename),
            purpose: purpose.into(),
            status: "processed".into(),
        };
        let meta = serde_json::to_vec_pretty(&file).map_err(|e| internal(e.into()))?;
        write_atomic(&self.data_path(&file.id), content).map_err(internal)?;
        write_atomic(&self.meta_path(&file.id), &meta).map_err(internal)?;
        Ok(file)
    }

    /// Every file, newest first.
    pub fn list(&self) -> Vec<FileObject> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut files: Vec<FileObject> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
            .collect();
        files.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        files
    }

    /// One file's metadata.
    pub fn get(&self, id: &str) -> Result<FileObject, ApiError> {
        check_id(id)?;
        let bytes = std::fs::read(self.meta_path(id)).map_err(|_| unknown(id))?;
        serde_json::from_slice(&bytes).map_err(|e| internal(e.into()))
    }

    /// One file's content (UTF-8: checked at upload).
    pub fn content(&self, id: &str) -> Result<String, ApiError> {
        let file = self.get(id)?;
        let mut text = String::new();
        std::fs::File::open(self.data_path(id))
            .and_then(|f| f.take(file.bytes).read_to_string(&mut text))
            .map_err(|_| unknown(id))?;
        Ok(text)
    }

    /// Deletes a file (jobs made from it keep their own copy).
    pub fn remove(&self, id: &str) -> Result<(), ApiError> {
        self.get(id)?;
        std::fs::remove_file(self.meta_path(id)).map_err(internal)?;
        std::fs::remove_file(self.data_path(id)).map_err(internal)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }
}

/// True for a string shaped like a file id (`file-` and 24 hex digits).
pub fn is_file_id(id: &str) -> bool {
    id.strip_prefix("file-").is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    match is_file_id(id) {
        true => Ok(()),
        false => Err(unknown(id)),
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no file {id:?}"))
}

fn internal(e: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("file store: {e}"))
}

/// UTF-8, and every non-blank line a JSON object.
fn check_jsonl(content: &[u8]) -> Result<(), ApiError> {
    let text =
        std::str::from_utf8(content).map_err(|e| ApiError::bad_request(format!("the file is not UTF-8: {e}")))?;
    let mut lines = 0;
    for (index, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |detail: String| ApiError::bad_request(format!("line {}: {detail}", index + 1));
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        if !value.is_object() {
            return Err(bad("each line must be a JSON object".into()));
        }
        lines += 1;
    }
    match lines {
        0 => Err(ApiError::bad_request("the file holds no JSON lines")),
        _ => Ok(()),
    }
}

/// The last path component of an uploaded name, printable, at most 255 bytes.
fn base_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let mut end = clean.len().min(255);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    match &clean[..end] {
        "" => "upload.jsonl".into(),
        kept => kept.into(),
    }
}

fn new_file_id() -> std::io::Result<String> {
    let mut random = [0u8; 12];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(format!("file-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Temporary file, fsync, rename, then the folder's fsync.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("partial");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_checked() {
        assert!(is_file_id("file-0123456789abcdef01234567"));
        assert!(!is_file_id("file-../../etc/passwd"));
        assert!(!is_file_id("file-0123456789abcdef0123456"));
        assert_eq!(base_name("../../x/train.jsonl"), "train.jsonl");
        assert_eq!(base_name("a\\b\nc.jsonl"), "bc.jsonl");
        assert_eq!(base_name("dir/"), "upload.jsonl");
    }

    #[test]
    fn uploads_are_jsonl_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("tailor-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir, 1000).expect("store");
        let text = "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n";
        let file = store.add("d/t.jsonl", "fine-tune", text.as_bytes()).expect("kept");
        assert_eq!((file.bytes, file.filename.as_str()), (text.len() as u64, "t.jsonl"));
        assert_eq!(store.content(&file.id).expect("content"), text);
        assert_eq!(store.list().len(), 1);
        let bad = store.add("t", "fine-tune", b"{\"text\": 1}\n[1]\n").expect_err("not objects");
        assert!(bad.message().contains("line 2"), "{}", bad.message());
        assert!(store.add("t", "batch", text.as_bytes()).is_err());
        assert_eq!(
            store.add("t", "fine-tune", &[b' '; 1001]).expect_err("big").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(store.add("t", "fine-tune", b"\xff\n").is_err());
        store.remove(&file.id).expect("removed");
        assert_eq!(store.get(&file.id).expect_err("gone").status(), StatusCode::NOT_FOUND);
        assert!(store.list().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
