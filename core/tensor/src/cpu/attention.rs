//! Causal multi-head attention with grouped-query heads over a KV cache.

use super::matmul::dot_f32_portable;
use super::pool::{split_range, SpinPool};
use super::small_gemm::{small_gemm, Operand, Product};
use super::softmax_in_place;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Head layout of an attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_kv_head: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// Attention for `tokens` queries at positions `start..start + tokens`.
///
/// `q` and `out` are `[tokens, n_head · head_dim]`; `keys` and `values` are
/// `[positions, n_kv_head · head_dim]` and hold at least `start + tokens`
/// positions. Query `t` attends to positions `0..=start + t`.
pub fn causal_attention(q: &[f32], keys: &[f32], values: &[f32], start: usize, shape: AttentionShape, out: &mut [f32]) {
    attention(q, keys, values, shape, out, |t| start + t + 1, super::has_avx512());
}

/// Bidirectional attention (encoders): every query of a `positions`-long
/// sequence attends to all `positions` keys. Shapes as in [`causal_attention`].
pub fn full_attention(q: &[f32], keys: &[f32], values: &[f32], shape: AttentionShape, out: &mut [f32]) {
    let positions = keys.len() / (shape.n_kv_head * shape.head_dim).max(1);
    full_attention_packed(q, keys, values, shape, &[positions], out);
}

/// [`full_attention`] for several sequences stored back to back (their
/// lengths in `lengths`): each attends only within itself. Each (sequence,
/// head) is two small matrix products (QKᵀ, then PV) on the gemm crate;
/// the pool's threads claim them one by one, so a batch costs one fork-join.
pub fn full_attention_packed(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: AttentionShape,
    lengths: &[usize],
    out: &mut [f32],
) {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let (q_stride, kv_stride) = (n_head * head_dim, n_kv_head * head_dim);
    let total: usize = lengths.iter().sum();
    assert!(q.len() == out.len() && keys.len() == values.len(), "attention: mismatched buffers");
    assert!(q.len() == total * q_stride && keys.len() == total * kv_stride, "attention: ragged buffers");
    let starts: Vec<usize> = lengths.iter().scan(0, |at, &len| Some(std::mem::replace(at, *at + len))).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let next_item = AtomicUsize::new(0);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let job = |_thread: usize, _threads: usize| {
        let mut scores = vec![0f32; longest * longest];
        loop {
            let item = next_item.fetch_add(1, Ordering::Relaxed);
            if item >= lengths.len() * n_head {
                break;
            }
            let (seq, h) = (item / n_head, item % n_head);
            let (start, len) = (starts[seq], lengths[seq]);
            let head = PackedHead {
                q_at: start * q_stride + h * head_dim,
                kv_at: start * kv_stride + (h / (n_head / n_kv_head)) * head_dim,
                len,
            };
            // SAFETY: the head's rows start..start + len lie inside the
            // asserted buffers (starts are prefix sums of lengths, whose
            // total the asserts tie to the buffer sizes); the output slice
            // of (seq, h) is written by the one thread that claimed it.
            unsafe { attend_packed_head(q, keys, values, shape, head, &mut scores[..len * len], &out_ptr) };
        }
    };
    SpinPool::global().run(&job);
}

/// Where one (sequence, head) of [`full_attention_packed`] lies.
struct PackedHead {
    /// Offset of its first query value in `q` (and `out`).
    q_at: usize,
    /// Offset of its first key/value value.
    kv_at: usize,
    /// Its sequence length.
    len: usize,
}

/// `softmax(Q Kᵀ / √d) V` for one (sequence, head) into `out`.
///
/// # Safety
/// `head` must lie inside the buffers (rows of `n_head · head_dim` values
/// from `q_at`, of `n_kv_head · head_dim` from `kv_at`, `len` of each) and
/// no other thread may write its output slice while this runs.
unsafe fn attend_packed_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: AttentionShape,
    head: PackedHead,
    scores: &mut [f32],
    out: &OutPtr,
) {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let (q_stride, kv_stride, len) = (n_head * head_dim, n_kv_head * head_dim, head.len);
    let scale = 1.0 / (head_dim as f32).sqrt();
    // SAFETY (both calls): by the caller's contract every row the strides
    // reach is in bounds: Q_h is len×head_dim with row stride q_stride
    // from q_at; Kᵀ and V read len rows at stride kv_stride from kv_at;
    // `scores` is len×len; the output head slice has row stride q_stride.
    unsafe {
        small_gemm(
            Product { scale, ..Product::plain(len, len, head_dim) },
            Operand::rows(scores.as_mut_ptr(), len as isize),
            Operand::rows(q.as_ptr().add(head.q_at), q_stride as isize),
            Operand::transposed(keys.as_ptr().add(head.kv_at), kv_stride as isize),
        );
    }
    scores.chunks_exact_mut(len).for_each(softmax_in_place);
    // SAFETY: see above.
    unsafe {
        small_gemm(
            Product::plain(len, head_dim, len),
            Operand::rows(out.at(head.q_at), q_stride as isize),
            Operand::rows(scores.as_ptr(), len as isize),
            Operand::rows(values.as_ptr().add(head.kv_at), kv_stride as isize),
        );
    }
}

/// Shared body: query `t` attends to positions `0..visible(t)`.
/// Tokens whose queries (of one KV head's group) share one pass over the
/// keys and values: each key is loaded once for all of them, not once per
/// query, which is what made long prefills memory-bound.
const TILE_TOKENS: usize = 8;

fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: AttentionShape,
    out: &mut [f32],
    visible: impl Fn(usize) -> usize + Sync,
    wide: bool,
) {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let kv_stride = n_kv_head * head_dim;
    let group = n_head / n_kv_head;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let items = out.len() / head_dim;
    assert!(q.len() == out.len(), "attention: q and out differ in size");
    assert!(
        (0..items / n_head).all(|t| visible(t) * kv_stride <= keys.len()),
        "attention: keys shorter than the positions queries attend to"
    );
    assert!(values.len() == keys.len(), "attention: keys and values differ in size");
    let tokens = items / n_head;
    let tiles = tokens.div_ceil(TILE_TOKENS) * n_kv_head;
    let next_tile = AtomicUsize::new(0);
    let out_ptr = OutPtr(out.as_mut_ptr());
    // Tiles are claimed one at a time, so a participant that is descheduled
    // holds up one tile, not a fixed share of the work.
    let job = |_thread: usize, _threads: usize| {
        let mut tile = Tile::default();
        loop {
            let claimed = next_tile.fetch_add(1, Ordering::Relaxed);
            if claimed >= tiles {
                break;
            }
            let (block, kv_head) = (claimed / n_kv_head, claimed % n_kv_head);
            let first = block * TILE_TOKENS;
            tile.members.clear();
            for t in first..(first + TILE_TOKENS).min(tokens) {
                for h in kv_head * group..(kv_head + 1) * group {
                    tile.members.push(Member { index: t * n_head + h, visible: visible(t) });
                }
            }
            let head = Head { kv_stride, kv_offset: kv_head * head_dim, scale };
            // SAFETY: each (token, head) item belongs to exactly one tile, and
            // each tile to the one thread that claimed it; `out` is exclusively
            // borrowed until the pool job returns, and every item lies inside
            // it (index < items = out.len() / head_dim).
            unsafe { head.attend_tile(TileInput { q, keys, values, wide }, &mut tile, &out_ptr, head_dim) };
        }
    };
    SpinPool::global().run(&job);
}

/// One query of a tile: its row index in `q`/`out` and how many positions it sees.
#[derive(Clone, Copy)]
struct Member {
    index: usize,
    visible: usize,
}

/// What every tile of one attention call reads.
#[derive(Clone, Copy)]
struct TileInput<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    /// The register kernels may use AVX-512 F (detected; tests run both).
    wide: bool,
}

/// A thread's reusable buffers for tiles.
#[derive(Default)]
struct Tile {
    members: Vec<Member>,
    scores: Vec<Vec<f32>>,
    sums: Vec<f32>,
    /// One block of [`BLOCK`] or [`WIDE_BLOCK`] keys transposed
    /// (`[width][block]`) for the register kernel.
    keys_t: Vec<f32>,
    /// One chunk of [`VALUE_CHUNK`] value rows of the tile's head, back to
    /// back (`[VALUE_CHUNK][width]`).
    values_chunk: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
mod registers;
#[cfg(target_arch = "x86_64")]
use registers::{
    block_scores_avx2, block_scores_avx512, transpose8, weighted_values_avx2, weighted_values_avx512, HeadPart,
};

/// Key positions whose scores the register tile kernel computes at once,
/// one per lane of an AVX2 register.
const BLOCK: usize = 8;

/// [`BLOCK`] in AVX-512 registers.
const WIDE_BLOCK: usize = 16;

/// Positions whose value rows a tile's queries take in turn, copied back
/// to back first (64 rows of a 128-wide head: 32 KiB): in place, a head's
/// rows sit a whole KV row apart (2 KiB on a 1B model), a power of two
/// that puts them all in a few L1 sets, which a chunk overflows.
const VALUE_CHUNK: usize = 64;

/// Attention for a decode batch: query row `i` (one token, `n_head` heads)
/// attends to every position of sequence `i`'s `(keys, values)`. Each row's
/// result is exactly what [`causal_attention`] gives it alone; all
/// (sequence, head) items share one pass over the pool.
pub fn decode_attention(q: &[f32], sequences: &[(&[f32], &[f32])], shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let kv_stride = n_kv_head * head_dim;
    let (group, scale) = (n_head / n_kv_head, 1.0 / (head_dim as f32).sqrt());
    let items = sequences.len() * n_head;
    assert!(q.len() == items * head_dim && out.len() == q.len(), "decode_attention: q/out do not fit the batch");
    assert!(
        sequences.iter().all(|(k, v)| k.len() == v.len() && k.len() % kv_stride == 0 && !k.is_empty()),
        "decode_attention: keys and values must be whole, equal, non-empty positions"
    );
    let out_ptr = OutPtr(out.as_mut_ptr());
    let job = |thread: usize, threads: usize| {
        let mut scores = Vec::new();
        for index in split_range(items, thread, threads) {
            let (seq, h) = (index / n_head, index % n_head);
            let (keys, values) = sequences[seq];
            let query = &q[index * head_dim..(index + 1) * head_dim];
            // SAFETY: as in `attention`: item `index` owns its head slice of
            // `out` (index < items = out.len()/head_dim), items are split
            // disjointly, and `out` is exclusively borrowed during the job.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(index * head_dim), head_dim) };
            let head = Head { kv_stride, kv_offset: (h / group) * head_dim, scale };
            head.attend(HeadInput { query, keys, values, visible: keys.len() / kv_stride }, &mut scores, dst);
        }
    };
    SpinPool::global().run(&job);
}

/// One query head and the keys/values it attends to (positions `0..visible`).
#[derive(Clone, Copy)]
struct HeadInput<'a> {
    query: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    visible: usize,
}

/// Where one head's keys and values sit in a KV row, and its score scale.
struct Head {
    kv_stride: usize,
    kv_offset: usize,
    scale: f32,
}

impl Head {
    /// One query head over positions `0..visible`: scores, softmax, weighted
    /// sum of values into `dst`. The single body every attention path uses,
    /// so batched and unbatched results agree bit for bit.
    fn attend(&self, input: HeadInput<'_>, scores: &mut Vec<f32>, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx2_fma() {
                // SAFETY: the features this function is compiled for were just
                // detected; it only reads and writes the given slices.
                unsafe { self.attend_avx2(input, scores, dst) };
                return;
            }
        }
        self.attend_portable::<false>(input, scores, dst);
    }

    /// The portable body compiled for AVX2, with the dot products inlined.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, input: HeadInput<'_>, scores: &mut Vec<f32>, dst: &mut [f32]) {
        self.attend_portable::<true>(input, scores, dst);
    }

    /// `AVX2`: compiled into [`Head::attend_avx2`] (see [`dot_fixed`]).
    #[inline(always)]
    fn attend_portable<const AVX2: bool>(&self, input: HeadInput<'_>, scores: &mut Vec<f32>, dst: &mut [f32]) {
        // Index loops only (see dot_f32_portable): all of this must inline
        // into the AVX2 wrapper. The usual head widths get fixed-size
        // accumulators that stay in registers.
        match input.query.len() {
            64 => self.attend_fixed::<64, AVX2>(input, scores, dst),
            128 => self.attend_fixed::<128, AVX2>(input, scores, dst),
            _ => self.attend_any(input, scores, dst),
        }
    }

    /// Heads of `W` values: 32-lane score accumulators, the weighted sum of
    /// values kept in a local array.
    #[inline(always)]
    fn attend_fixed<const W: usize, const AVX2: bool>(
        &self,
        input: HeadInput<'_>,
        scores: &mut Vec<f32>,
        dst: &mut [f32],
    ) {
        let HeadInput { query, keys, values, visible } = input;
        let (stride, offset) = (self.kv_stride, self.kv_offset);
        let query: &[f32; W] = query.try_into().expect("head width");
        scores.clear();
        for p in 0..visible {
            let key: &[f32; W] = keys[p * stride + offset..p * stride + offset + W].try_into().expect("head width");
            scores.push(dot_fixed::<W, AVX2>(query, key) * self.scale);
        }
        softmax_in_place(scores);
        let mut out = [0f32; W];
        for (p, &w) in scores.iter().enumerate() {
            let value: &[f32; W] = values[p * stride + offset..p * stride + offset + W].try_into().expect("head width");
            add_scaled(&mut out, w, value);
        }
        dst[..W].copy_from_slice(&out);
    }

    /// Every member of `tile` (queries of this head's KV group): scores,
    /// softmax and weighted sums with exactly the arithmetic of
    /// [`Head::attend`] for each query, but each key and value row is
    /// loaded once for the whole tile.
    ///
    /// # Safety
    /// Each member's `index * width .. + width` must lie inside the buffer
    /// behind `out` and be written by no other thread meanwhile.
    unsafe fn attend_tile(&self, input: TileInput<'_>, tile: &mut Tile, out: &OutPtr, width: usize) {
        if tile.scores.len() < tile.members.len() {
            tile.scores.resize_with(tile.members.len(), Vec::new);
        }
        tile.sums.clear();
        tile.sums.resize(tile.members.len() * width, 0.0);
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx2_fma() && matches!(width, 64 | 128) {
                // SAFETY: the features this function is compiled for were just
                // detected; it only reads and writes the given slices.
                unsafe { self.tile_avx2(input, tile, width) };
                return write_tile(&tile.members, &tile.sums, out, width);
            }
        }
        let Tile { members, scores, sums, .. } = tile;
        for (m, dst) in members.iter().zip(sums.chunks_exact_mut(width)) {
            let query = &input.q[m.index * width..(m.index + 1) * width];
            let head = HeadInput { query, keys: input.keys, values: input.values, visible: m.visible };
            self.attend(head, &mut scores[0], dst);
        }
        write_tile(members, sums, out, width);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(&self, input: TileInput<'_>, tile: &mut Tile, width: usize) {
        // SAFETY: this function is compiled for AVX2, which its callers detect.
        unsafe {
            match width {
                64 => self.tile_fixed::<64>(input, tile),
                _ => self.tile_fixed::<128>(input, tile),
            }
        }
    }

    /// [`Head::attend_fixed`] for a tile, with the same sums in the same
    /// order per query, computed across positions instead of along the
    /// head: a block of [`BLOCK`] keys ([`WIDE_BLOCK`] with AVX-512) is
    /// transposed once for the whole tile, so each lane of a register holds
    /// one position's score and the
    /// 32 partial sums of [`dot_fixed`] and its tree are register-wide
    /// adds, with no horizontal reduction per score; each query's weighted
    /// sum of values stays in registers over all its positions. (1B
    /// Q4_K_M, 2048-token prefill: attention was 38 % of the samples with a
    /// dot product and a reduction per score.)
    ///
    /// # Safety
    /// The CPU must have AVX2 (the caller's `target_feature`), and AVX-512 F
    /// where `input.wide`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn tile_fixed<const W: usize>(&self, input: TileInput<'_>, tile: &mut Tile) {
        let TileInput { q, keys, values, wide } = input;
        let Tile { members, scores, sums, keys_t, values_chunk } = tile;
        let longest = members.iter().map(|m| m.visible).max().unwrap_or(0);
        for (m, s) in members.iter().zip(scores.iter_mut()) {
            s.clear();
            s.resize(m.visible, 0.0);
        }
        // SAFETY: AVX2 by this function's contract, AVX-512 F where `wide`
        // (set only where detected).
        unsafe {
            if wide {
                self.scores_by_blocks::<W, WIDE_BLOCK>(q, keys, members, scores, keys_t);
            } else {
                self.scores_by_blocks::<W, BLOCK>(q, keys, members, scores, keys_t);
            }
        }
        for s in scores.iter_mut().take(members.len()) {
            softmax_in_place(s);
        }
        // Positions in chunks whose value rows stay in the L1 cache while
        // every query of the tile takes them (sums stored between chunks).
        for first in (0..longest).step_by(VALUE_CHUNK) {
            let count = (longest - first).min(VALUE_CHUNK);
            values_chunk.clear();
            for p in first..first + count {
                let at = p * self.kv_stride + self.kv_offset;
                values_chunk.extend_from_slice(&values[at..at + W]);
            }
            let takers = members.iter().zip(scores.iter()).zip(sums.chunks_exact_mut(W));
            for ((m, s), sum) in takers.filter(|((m, _), _)| first < m.visible) {
                let weights = &s[first..m.visible.min(first + count)];
                for half in 0..W / 64 {
                    let part = HeadPart { rows: values_chunk, width: W, offset: half * 64 };
                    let sum = &mut sum[half * 64..(half + 1) * 64];
                    // SAFETY: AVX2 by this function's contract, AVX-512 F
                    // where detected; the chunk holds `count ≥
                    // weights.len()` rows of W values.
                    unsafe {
                        if wide {
                            weighted_values_avx512(part, weights, sum)
                        } else {
                            weighted_values_avx2(part, weights, sum)
                        }
                    }
                }
            }
        }
    }

    /// Every member's scores, `L` key positions at a time ([`BLOCK`] in
    /// AVX2 registers, [`WIDE_BLOCK`] in AVX-512 ones), each block of keys
    /// transposed once for the whole tile.
    ///
    /// # Safety
    /// The CPU must have AVX2, and AVX-512 F when `L` is [`WIDE_BLOCK`].
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scores_by_blocks<const W: usize, const L: usize>(
        &self,
        q: &[f32],
        keys: &[f32],
        members: &[Member],
        scores: &mut [Vec<f32>],
        keys_t: &mut Vec<f32>,
    ) {
        let longest = members.iter().map(|m| m.visible).max().unwrap_or(0);
        keys_t.resize(W * L, 0.0);
        for first in (0..longest).step_by(L) {
            // SAFETY: AVX2 by this function's contract; `keys_t` was sized above.
            unsafe { self.transpose_keys::<W, L>(keys, first, (longest - first).min(L), keys_t) };
            for (m, s) in members.iter().zip(scores.iter_mut()).filter(|(m, _)| first < m.visible) {
                let query: &[f32; W] = q[m.index * W..(m.index + 1) * W].try_into().expect("head width");
                let dst = &mut s[first..first + (m.visible - first).min(L)];
                // SAFETY: the features by this function's contract; `keys_t`
                // holds W·L values.
                unsafe {
                    if L == WIDE_BLOCK {
                        let block = block_scores_avx512::<W>(query, keys_t, self.scale);
                        dst.copy_from_slice(&block[..dst.len()]);
                    } else {
                        let block = block_scores_avx2::<W>(query, keys_t, self.scale);
                        dst.copy_from_slice(&block[..dst.len()]);
                    }
                }
            }
        }
    }

    /// Keys `first..first + count` of this head into `keys_t` as `[W][L]`
    /// (lanes past `count` zero), eight by eight in registers.
    ///
    /// # Safety
    /// The CPU must have AVX2; `keys_t` must hold `W · L` values.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn transpose_keys<const W: usize, const L: usize>(
        &self,
        keys: &[f32],
        first: usize,
        count: usize,
        keys_t: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        assert!(keys_t.len() >= W * L && count <= L && L.is_multiple_of(8), "transpose_keys: block out of range");
        for group in 0..L / 8 {
            let rows: [Option<&[f32]>; 8] = std::array::from_fn(|lane| {
                let position = group * 8 + lane;
                let at = (first + position) * self.kv_stride + self.kv_offset;
                (position < count).then(|| &keys[at..at + W])
            });
            for chunk in 0..W / 8 {
                // SAFETY: each present row holds W values (sliced above) and
                // chunk·8 + 8 ≤ W; absent rows read as zeros.
                let block: [__m256; 8] = std::array::from_fn(|lane| match rows[lane] {
                    Some(row) => unsafe { _mm256_loadu_ps(row.as_ptr().add(chunk * 8)) },
                    None => _mm256_setzero_ps(),
                });
                // SAFETY: AVX2 by this function's contract.
                for (k, column) in unsafe { transpose8(block) }.iter().enumerate() {
                    // SAFETY: (chunk·8 + k)·L + group·8 + 8 ≤ W·L ≤ keys_t.len().
                    unsafe { _mm256_storeu_ps(keys_t.as_mut_ptr().add((chunk * 8 + k) * L + group * 8), *column) };
                }
            }
        }
    }

    /// Any head width.
    #[inline(always)]
    fn attend_any(&self, input: HeadInput<'_>, scores: &mut Vec<f32>, dst: &mut [f32]) {
        let HeadInput { query, keys, values, visible } = input;
        let (stride, offset, width) = (self.kv_stride, self.kv_offset, query.len());
        scores.clear();
        for p in 0..visible {
            let key = &keys[p * stride + offset..p * stride + offset + width];
            scores.push(dot_f32_portable(query, key) * self.scale);
        }
        softmax_in_place(scores);
        let dst = &mut dst[..width];
        for d in dst.iter_mut() {
            *d = 0.0;
        }
        for (p, &w) in scores.iter().enumerate() {
            let value = &values[p * stride + offset..p * stride + offset + width];
            for i in 0..width {
                dst[i] += w * value[i];
            }
        }
    }
}

/// A query·key product of a `W`-wide head: 32-lane partial sums, then a
/// fixed tree. Every attention path computes scores with this one body, so
/// their results agree bit for bit. `AVX2` (only in bodies compiled for
/// AVX2 and entered after detection) runs the same multiplications and
/// additions, lane for lane, in registers ([`dot_fixed_avx2`]): the loops
/// below were left scalar by the compiler inside the tile kernel.
#[inline(always)]
fn dot_fixed<const W: usize, const AVX2: bool>(query: &[f32; W], key: &[f32; W]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: AVX2 is true only in `attend_avx2` and `tile_avx2`, which
        // their callers enter after detecting AVX2.
        return unsafe { dot_fixed_avx2(query, key) };
    }
    let mut acc = [0f32; 32];
    for c in 0..W / 32 {
        for i in 0..32 {
            acc[i] += query[c * 32 + i] * key[c * 32 + i];
        }
    }
    for half in [16, 8, 4, 2, 1] {
        for i in 0..half {
            acc[i] += acc[i + half];
        }
    }
    acc[0]
}

/// [`dot_fixed`] in AVX2 registers: lanes 8r..8r+8 of the 32 partial sums
/// in register r, each a separate multiply and add (no FMA, as in the
/// scalar body), then the tree's halves 16, 8, 4, 2, 1 in the same pairs.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_fixed_avx2<const W: usize>(query: &[f32; W], key: &[f32; W]) -> f32 {
    use std::arch::x86_64::*;
    const { assert!(W.is_multiple_of(32)) };
    let (q, k) = (query.as_ptr(), key.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in 0..W / 32 {
        for (r, sum) in acc.iter_mut().enumerate() {
            // In bounds: c·32 + r·8 + 8 ≤ W.
            let at = c * 32 + r * 8;
            *sum = _mm256_add_ps(*sum, _mm256_mul_ps(_mm256_loadu_ps(q.add(at)), _mm256_loadu_ps(k.add(at))));
        }
    }
    let sixteen = [_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3])];
    let eight = _mm256_add_ps(sixteen[0], sixteen[1]);
    let four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps::<1>(eight));
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps::<1>(two, two)))
}

/// `sum += w · value`, element by element (the weighted sum of values).
#[inline(always)]
fn add_scaled<const W: usize>(sum: &mut [f32; W], w: f32, value: &[f32; W]) {
    for i in 0..W {
        sum[i] += w * value[i];
    }
}

/// Copies a tile's results to their rows of the output.
///
/// # Safety
/// As [`Head::attend_tile`]: every member's row is inside the output and
/// written only by this thread.
unsafe fn write_tile(members: &[Member], sums: &[f32], out: &OutPtr, width: usize) {
    for (m, sum) in members.iter().zip(sums.chunks_exact(width)) {
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.at(m.index * width), width) };
        dst.copy_from_slice(sum);
    }
}

/// The output pointer shared by the pool's threads.
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint head slices (see causal_attention).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Pointer to element `offset` (a method, so closures capture the
    /// whole Sync wrapper rather than the raw pointer field).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::uniform;
    use super::*;

    /// The register form of the score product gives the scalar body's bits.
    #[test]
    fn the_avx2_score_product_equals_the_scalar_one_bit_for_bit() {
        if !super::super::has_avx2_fma() {
            eprintln!("attention: this CPU lacks AVX2; the register form was not run");
            return;
        }
        let mut next = uniform(17);
        for _ in 0..200 {
            let (q, k): ([f32; 128], [f32; 128]) = (std::array::from_fn(|_| next()), std::array::from_fn(|_| next()));
            assert_eq!(dot_fixed::<128, true>(&q, &k).to_bits(), dot_fixed::<128, false>(&q, &k).to_bits());
            let (q, k): (&[f32; 64], &[f32; 64]) = (q[..64].try_into().unwrap(), k[64..].try_into().unwrap());
            assert_eq!(dot_fixed::<64, true>(q, k).to_bits(), dot_fixed::<64, false>(q, k).to_bits());
        }
    }

    /// A prefill's tiles (keys transposed, scores across positions) give
    /// every query exactly what it gets alone, as a decode computes it: for
    /// both fixed head widths, grouped heads, a cached prefix, query counts
    /// that leave partial tiles and partial key blocks, and positions past
    /// one chunk of value rows.
    #[test]
    fn prefill_tiles_equal_single_queries_bit_for_bit() {
        let mut next = uniform(29);
        for (head_dim, start, tokens) in
            [(64, 0, 13), (64, 5, 21), (128, 3, 10), (128, 0, 17), (64, 60, 75), (128, 127, 9)]
        {
            let shape = AttentionShape { n_head: 8, n_kv_head: 2, head_dim };
            let (q_width, kv_width) = (8 * head_dim, 2 * head_dim);
            let positions = start + tokens;
            let q: Vec<f32> = (0..tokens * q_width).map(|_| next()).collect();
            let keys: Vec<f32> = (0..positions * kv_width).map(|_| next()).collect();
            let values: Vec<f32> = (0..positions * kv_width).map(|_| next()).collect();
            for wide in [false, crate::cpu::has_avx512()] {
                let mut prefill = vec![0f32; q.len()];
                attention(&q, &keys, &values, shape, &mut prefill, |t| start + t + 1, wide);
                let input = TileInput { q: &q, keys: &keys, values: &values, wide };
                assert_tiles_equal_single_queries(input, start, shape, &prefill);
            }
        }
    }

    /// Each token of `prefill` (queries `q` from position `start`, tiles in
    /// AVX-512 registers if `wide`) equals [`decode_attention`] of that
    /// query alone, bit for bit.
    fn assert_tiles_equal_single_queries(input: TileInput<'_>, start: usize, shape: AttentionShape, prefill: &[f32]) {
        let TileInput { q, keys, values, wide } = input;
        let (q_width, kv_width) = (shape.n_head * shape.head_dim, shape.n_kv_head * shape.head_dim);
        for t in 0..q.len() / q_width {
            let seen = (start + t + 1) * kv_width;
            let mut alone = vec![0f32; q_width];
            decode_attention(
                &q[t * q_width..(t + 1) * q_width],
                &[(&keys[..seen], &values[..seen])],
                shape,
                &mut alone,
            );
            let got = &prefill[t * q_width..(t + 1) * q_width];
            assert!(
                got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{shape:?}, start {start}, token {t}, wide {wide}: the tile differs from the query alone"
            );
        }
    }
}
