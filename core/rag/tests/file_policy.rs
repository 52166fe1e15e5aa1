//! The file rules an index stage reads under: roots after symlinks are
//! resolved, regular files only, opening never blocks, reads bounded while
//! reading, walks bounded and loop-safe. Each case here was a way to read
//! or hang the daemon through `POST /v1/indexes/{name}/documents`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tailor_rag::{FilePolicy, RagError};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// A corpus root with one document, and a policy over it.
fn rooted(name: &str) -> (PathBuf, FilePolicy) {
    let root = scratch(name).join("docs");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "a document").unwrap();
    let policy = FilePolicy::under_roots(std::slice::from_ref(&root)).unwrap();
    (root, policy)
}

#[test]
fn paths_outside_the_roots_are_refused_after_resolving_them() {
    let (root, policy) = rooted("outside");
    for path in [PathBuf::from("/etc/passwd"), root.join("../../.."), root.join("..").join("docs/../../")] {
        let err = policy.collect(std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(err, RagError::PathNotAllowed { .. }), "{}: {err}", path.display());
        assert!(err.to_string().contains("document roots"), "{err}");
    }
    // A symlink inside the root that points out is refused when named...
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.txt")).unwrap();
    let err = policy.collect(&[root.join("passwd.txt")]).unwrap_err();
    assert!(matches!(err, RagError::PathNotAllowed { .. }), "{err}");
    // ...and skipped with its reason when a walk meets it.
    let found = policy.collect(std::slice::from_ref(&root)).unwrap();
    assert_eq!(found.files, [root.join("a.txt")]);
    assert!(found.skipped.iter().any(|(p, why)| p.ends_with("passwd.txt") && why.contains("outside")), "{found:?}");
}

#[test]
fn no_configured_roots_refuse_every_path() {
    let policy = FilePolicy::under_roots(&[]).unwrap();
    let err = policy.collect(&[PathBuf::from("/etc/hostname")]).unwrap_err();
    assert!(err.to_string().contains("none are configured"), "{err}");
}

#[test]
fn devices_and_fifos_are_refused_without_blocking() {
    let (root, policy) = rooted("special");
    let fifo = root.join("pipe.txt");
    mkfifo(&fifo);
    let started = Instant::now();
    let err = policy.collect(std::slice::from_ref(&fifo)).unwrap_err();
    assert!(matches!(err, RagError::NotRegularFile(_)), "{err}");
    let found = policy.collect(std::slice::from_ref(&root)).unwrap();
    assert_eq!(found.files, [root.join("a.txt")], "the FIFO is not collected");
    assert!(found.skipped.iter().any(|(p, why)| p.ends_with("pipe.txt") && why.contains("not a regular")));
    // Opened directly (as if swapped in after the walk), it still neither blocks nor reads.
    assert!(matches!(policy.read(&fifo), Err(RagError::NotRegularFile(_))));
    assert!(started.elapsed() < Duration::from_secs(5), "a FIFO blocked the ingest");

    let local = FilePolicy::local();
    for device in ["/dev/zero", "/dev/null"] {
        let err = local.collect(&[PathBuf::from(device)]).unwrap_err();
        assert!(matches!(err, RagError::NotRegularFile(_)), "{device}: {err}");
        assert!(matches!(local.read(Path::new(device)), Err(RagError::NotRegularFile(_))), "{device}");
    }
}

#[test]
fn reads_stop_at_the_limit_whatever_the_metadata_says() {
    let (root, mut policy) = rooted("bounded");
    policy.max_file_bytes = 16;
    std::fs::write(root.join("big.txt"), "x".repeat(17)).unwrap();
    std::fs::write(root.join("exact.txt"), "y".repeat(16)).unwrap();
    assert_eq!(policy.read(&root.join("big.txt")).unwrap(), None);
    assert_eq!(policy.read(&root.join("exact.txt")).unwrap().map(|b| b.len()), Some(16));
    // procfs files report a size of 0 and are generated on read: bounded all the same.
    let mut local = FilePolicy::local();
    local.max_file_bytes = 8;
    if let Ok(Some(bytes)) = local.read(Path::new("/proc/self/status")) {
        panic!("read {} bytes of a file longer than the limit", bytes.len());
    }
}

#[test]
fn symlink_loops_and_deep_trees_end() {
    let (root, mut policy) = rooted("loops");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/b.txt"), "b").unwrap();
    std::os::unix::fs::symlink(&root, root.join("sub/back")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/self"), root.join("sub/self")).unwrap();
    let found = policy.collect(std::slice::from_ref(&root)).unwrap();
    assert_eq!(found.files, [root.join("a.txt"), root.join("sub/b.txt")]);
    assert!(found.skipped.iter().any(|(p, why)| p.ends_with("back") && why.contains("loop")), "{found:?}");
    assert!(found.skipped.iter().any(|(p, _)| p.ends_with("self")), "{found:?}");

    let mut deep = root.join("deep");
    for level in 0..6 {
        deep = deep.join(format!("l{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), "bottom").unwrap();
    policy.max_depth = 3;
    let found = policy.collect(std::slice::from_ref(&root)).unwrap();
    assert!(!found.files.iter().any(|f| f.ends_with("bottom.txt")), "{found:?}");
    assert!(found.skipped.iter().any(|(_, why)| why.contains("deeper than 3")), "{found:?}");

    policy.max_files = 1;
    let err = policy.collect(std::slice::from_ref(&root)).unwrap_err();
    assert!(err.to_string().contains("more than 1 files"), "{err}");
}
