//! Per-sequence key/value cache: for every layer, the keys and values of all
//! positions seen so far, `[positions, kv_heads · head_dim]` row-major.

/// Keys and values of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for `layers` layers of width `kv_dim`.
    pub fn new(layers: usize, kv_dim: usize) -> KvCache {
        KvCache { keys: vec![Vec::new(); layers], values: vec![Vec::new(); layers], kv_dim, len: 0 }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends keys and values of new positions to `layer`.
    pub(crate) fn append(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        self.keys[layer].extend_from_slice(keys);
        self.values[layer].extend_from_slice(values);
    }

    /// Keys and values of `layer`.
    pub(crate) fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Records that `tokens` positions were appended to every layer.
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.len += tokens;
        debug_assert!(self.keys.iter().all(|k| k.len() == self.len * self.kv_dim));
    }

    /// Drops every position from `len` on (to rewind or reuse a prefix).
    pub fn truncate(&mut self, len: usize) {
        let keep = len.min(self.len);
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.truncate(keep * self.kv_dim);
            v.truncate(keep * self.kv_dim);
        }
        self.len = keep;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
    }
}
