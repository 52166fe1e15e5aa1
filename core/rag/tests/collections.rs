//! Listing and removing indexes on disk: only folders with a `meta.json`
//! are indexes, removal takes the whole folder, and a removal a crash cut
//! short leaves nothing that lists or blocks the name.

use std::path::PathBuf;
use tailor_model::cache::{cache_dir, MINILM_DIR};
use tailor_rag::chunk::ChunkParams;
use tailor_rag::{Collection, IndexKind, RagError};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("collections-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn indexes_list_sorted_and_go_away_whole() {
    let root = scratch("list");
    let encoder = cache_dir().join(MINILM_DIR);
    assert_eq!(Collection::list(&root.join("absent")).expect("no root yet"), Vec::<String>::new());
    for name in ["zeta", "alpha"] {
        Collection::create(&root, name, IndexKind::Flat, &encoder, ChunkParams::default())
            .expect("run `tailor models fetch` first");
    }
    std::fs::create_dir_all(root.join("not-an-index")).expect("stray folder");
    std::fs::create_dir_all(root.join(".removing-beta")).expect("leftover of a cut-short removal");
    assert_eq!(Collection::list(&root).expect("list"), ["alpha", "zeta"]);

    Collection::remove(&root, "zeta").expect("remove");
    assert_eq!(Collection::list(&root).expect("list"), ["alpha"]);
    assert!(!root.join("zeta").exists() && !root.join(".removing-zeta").exists());
    assert!(matches!(Collection::remove(&root, "zeta"), Err(RagError::UnknownIndex(_))));
    assert!(matches!(Collection::remove(&root, "../alpha"), Err(RagError::InvalidInput(_))));
    // The name is free again.
    Collection::create(&root, "zeta", IndexKind::Flat, &encoder, ChunkParams::default()).expect("create again");
    assert_eq!(Collection::list(&root).expect("list"), ["alpha", "zeta"]);
}
