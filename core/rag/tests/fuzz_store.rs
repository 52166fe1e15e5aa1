//! Fuzzing the document store's log reader (a bounded run in every test
//! pass; `TAILOR_FUZZ_SECS` per target): any bytes in `store.log` open as
//! a store or fail with a typed error, never a panic.

#[path = "../../model/tests/common/mutate.rs"]
mod mutate;

use std::path::PathBuf;
use tailor_rag::store::{Chunk, Document, Store};

#[test]
fn store_logs() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.log");
    let mut store = Store::open(&path).unwrap();
    for batch in 0..3 {
        let ids = store.allocate_chunk_ids(2);
        let chunks =
            ids.map(|id| Chunk { id, text: format!("chunk {id}"), start: 0, end: 7, vector: vec![0.5; 4] }).collect();
        let doc = Document {
            id: format!("doc-{batch}"),
            source: "notes.md".into(),
            content_hash: format!("{batch:016x}"),
            metadata: Default::default(),
            chunks,
        };
        store.commit(vec![doc]).unwrap();
    }
    store.delete(vec!["doc-1".into()]).unwrap();
    drop(store);
    let valid = std::fs::read(&path).unwrap();
    let mutated = dir.join("mutated.log");
    let crashes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    let runs = mutate::fuzz("store", &valid, &crashes, &|bytes| {
        std::fs::write(&mutated, bytes).unwrap();
        if let Ok(store) = Store::open(&mutated) {
            let _ = store.documents().count();
        }
    });
    assert!(runs > 0);
}
