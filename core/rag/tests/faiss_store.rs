//! The faiss bridge and the crash-safe store, on small synthetic data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use tailor_rag::store::{Chunk, Document, Store};
use tailor_rag::{IndexKind, RagError, VectorIndex};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn flat_and_hnsw_find_each_vector_and_survive_save_load() {
    let dir = scratch("faiss");
    let dim = 16;
    let vectors: Vec<f32> = (0..200).flat_map(|i| unit(i, dim)).collect();
    let ids: Vec<i64> = (0..200).map(|i| 1000 + i).collect();
    for kind in [IndexKind::Flat, IndexKind::Hnsw] {
        let mut index = VectorIndex::new(kind, dim).unwrap();
        index.add(&vectors, &ids).unwrap();
        assert_eq!((index.len(), index.dim()), (200, dim));
        let hits = index.search(&vectors[..3 * dim], 5).unwrap();
        for (q, h) in hits.iter().enumerate() {
            assert_eq!(h[0].id, 1000 + q as i64, "{kind:?}: a vector is its own nearest neighbour");
            assert!((h[0].score - 1.0).abs() < 1e-5);
            assert!(h.windows(2).all(|w| w[0].score >= w[1].score));
        }
        let path = dir.join(format!("{kind:?}.faiss"));
        index.save(&path).unwrap();
        let loaded = VectorIndex::load(&path, kind).unwrap();
        assert_eq!(loaded.search(&vectors[..dim], 3).unwrap(), index.search(&vectors[..dim], 3).unwrap());
        assert!(matches!(index.add(&vectors[..dim - 1], &ids[..1]), Err(RagError::InvalidInput(_))));
        assert!(index.search(&vectors[..dim], 0).is_err());
    }
    let mut flat = VectorIndex::new(IndexKind::Flat, dim).unwrap();
    flat.add(&vectors, &ids).unwrap();
    assert_eq!(flat.remove(&[1000, 1001, 5]).unwrap(), 2);
    assert_ne!(flat.search(&vectors[..dim], 1).unwrap()[0][0].id, 1000);
}

#[test]
fn corrupt_index_file_is_a_clear_error() {
    let dir = scratch("corrupt-index");
    let path = dir.join("index.faiss");
    std::fs::write(&path, b"this is not a faiss index").unwrap();
    let err = VectorIndex::load(&path, IndexKind::Flat).err().expect("loading garbage must fail");
    assert!(matches!(err, RagError::CorruptIndex { .. }), "{err}");
    assert!(err.to_string().contains("tailor index rebuild"), "{err}");
}

fn doc(id: &str, first_chunk: i64, n: usize) -> Document {
    Document {
        id: id.into(),
        source: format!("{id}.txt"),
        content_hash: format!("hash-{id}"),
        metadata: BTreeMap::new(),
        chunks: (0..n)
            .map(|i| Chunk {
                id: first_chunk + i as i64,
                text: format!("{id} chunk {i}"),
                start: i,
                end: i + 1,
                vector: unit(i as u64, 4),
            })
            .collect(),
    }
}

#[test]
fn store_keeps_committed_batches_and_drops_a_torn_tail() {
    let dir = scratch("store");
    let path = dir.join("store.log");
    {
        let mut store = Store::open(&path).unwrap();
        let ids = store.allocate_chunk_ids(3);
        store.commit(vec![doc("a", ids.start, 3)]).unwrap();
        let ids = store.allocate_chunk_ids(2);
        store.commit(vec![doc("b", ids.start, 2)]).unwrap();
    }
    // A kill in the middle of writing the third batch leaves half a line.
    let mut bytes = std::fs::read(&path).unwrap();
    let committed = bytes.len();
    bytes.extend_from_slice(b"0123456789abcdef {\"op\":\"add\",\"docs\":[{\"id\":\"c\"");
    std::fs::write(&path, &bytes).unwrap();
    let mut store = Store::open(&path).unwrap();
    assert_eq!((store.document_count(), store.chunk_count()), (2, 5));
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, committed, "the torn tail is truncated");
    assert!(store.has("a", "hash-a") && !store.has("a", "other"));
    assert_eq!(store.chunk(4).unwrap().0.id, "b");
    let removed = store.delete(vec!["a".into()]).unwrap();
    assert_eq!(removed, vec![0, 1, 2]);
    let ids = store.allocate_chunk_ids(1);
    assert_eq!(ids.start, 5, "chunk ids are never reused");
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!((store.document_count(), store.chunk_count()), (1, 2));
    // A corrupted byte inside a committed line is caught by its checksum.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.document_count(), 2, "the damaged last record (the delete) is dropped; the adds stay");
    // Damage before the last line is corruption: an error, nothing dropped.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Store::open(&path), Err(RagError::CorruptStore { .. })));
}
