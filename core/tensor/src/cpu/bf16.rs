//! Matrix products in bfloat16 with f32 accumulation, for compute-bound
//! layers that tolerate 8-bit mantissas (the sentence encoder).
//!
//! The f32 gemm runs at the CPU's f32 FMA peak; AVX-512 BF16's `vdpbf16ps`
//! does twice the multiply-adds per instruction. Both operands are rounded
//! to bf16 (round to nearest even); products and sums stay in f32. Weights
//! are rounded and laid out once ([`Bf16Weights`]), activations per call
//! ([`Bf16Rows`]). A layer may finish with bias and GELU and write its
//! output straight back as bf16 rows for the next product.
//!
//! [`gemm_bf16`] runs the AVX-512 kernel where [`bf16_supported`] and a
//! scalar loop with the same rounding elsewhere (a reference, not a fast
//! path: callers should keep f32 where the instruction is missing).

use super::pool::{split_range, SpinPool};
use half::bf16;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Output columns per weight panel: two 16-lane f32 accumulators.
const PANEL: usize = 32;
/// Activation rows per kernel tile.
const TILE_ROWS: usize = 8;
/// Tiles that share one pass over the weight panels (their rows stay in L2).
const CHUNK_TILES: usize = 8;

/// True when this CPU has AVX-512 BF16 (with F and VL, see
/// [`super::has_avx512`]; checked once by std, cached).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::has_avx512() && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds to the nearest bf16 (ties to even), as its bit pattern.
fn round_bf16(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

/// Two bf16 values in one word, the first in the low half (the order
/// `vdpbf16ps` pairs them).
fn pair(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// A `[out, in]` weight matrix rounded to bf16, in panels of 32 output rows:
/// for each pair of input columns, the 32 rows' two values side by side.
#[derive(Debug, Clone)]
pub struct Bf16Weights {
    out: usize,
    inp: usize,
    pairs: usize,
    panels: Vec<u32>,
}

impl Bf16Weights {
    /// Rounds and lays out `w`, `out` rows of `inp` values each.
    pub fn pack(w: &[f32], out: usize, inp: usize) -> Bf16Weights {
        assert_eq!(w.len(), out * inp, "Bf16Weights::pack: weight is not {out}×{inp}");
        let pairs = inp.div_ceil(2);
        let panel_count = out.div_ceil(PANEL);
        let mut panels = vec![0u32; panel_count * pairs * PANEL];
        let value = |row: usize, col: usize| if row < out && col < inp { round_bf16(w[row * inp + col]) } else { 0 };
        for (p, panel) in panels.chunks_exact_mut(pairs * PANEL).enumerate() {
            for (j, lanes) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (lane, word) in lanes.iter_mut().enumerate() {
                    let row = p * PANEL + lane;
                    *word = pair(value(row, 2 * j), value(row, 2 * j + 1));
                }
            }
        }
        Bf16Weights { out, inp, pairs, panels }
    }

    /// Output features (rows of the weight).
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input features (columns of the weight).
    pub fn in_features(&self) -> usize {
        self.inp
    }

    fn panel_count(&self) -> usize {
        self.out.div_ceil(PANEL)
    }

    fn panel(&self, p: usize) -> &[u32] {
        &self.panels[p * self.pairs * PANEL..(p + 1) * self.pairs * PANEL]
    }
}

/// Rows of activations rounded to bf16, two values per word (an odd last
/// column is paired with zero). Reused across calls: [`Bf16Rows::fill`] and
/// bf16 outputs resize it.
#[derive(Debug, Clone, Default)]
pub struct Bf16Rows {
    rows: usize,
    cols: usize,
    pairs: usize,
    data: Vec<u32>,
}

impl Bf16Rows {
    /// An empty matrix.
    pub fn new() -> Bf16Rows {
        Bf16Rows::default()
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Replaces the contents with `x` (rows of `cols` values) rounded to bf16.
    pub fn fill(&mut self, x: &[f32], cols: usize) {
        self.fill_columns(x, cols, 0..cols);
    }

    /// Replaces the contents with columns `range` of `x` (rows of `cols`
    /// values) rounded to bf16: rows of `range.len()` values.
    pub fn fill_columns(&mut self, x: &[f32], cols: usize, range: std::ops::Range<usize>) {
        assert!(
            cols > 0 && x.len().is_multiple_of(cols) && range.start < range.end && range.end <= cols,
            "Bf16Rows::fill_columns: {} values are not rows of {cols} with columns {range:?}",
            x.len()
        );
        self.reshape(x.len() / cols, range.len());
        let (rows, pairs) = (self.rows, self.pairs);
        let source = |r: usize| &x[r * cols + range.start..r * cols + range.end];
        if rows == 1 {
            // One row (a decoded token) is not worth waking the pool for.
            round_row(source(0), &mut self.data);
            return;
        }
        let words = SharedWords(self.data.as_mut_ptr());
        SpinPool::global().run(&|index, threads| {
            let mine = split_range(rows, index, threads);
            // SAFETY: split_range hands each thread disjoint rows, whose
            // words lie inside `data` (rows × pairs, just sized), borrowed
            // exclusively until `run` returns.
            let dst = unsafe { std::slice::from_raw_parts_mut(words.at(mine.start * pairs), mine.len() * pairs) };
            for (r, dst) in mine.zip(dst.chunks_exact_mut(pairs)) {
                round_row(source(r), dst);
            }
        });
    }

    /// Every row's words (`cols / 2` rounded up per row), two bf16 each,
    /// the first value in the low half.
    pub(crate) fn words(&self) -> &[u32] {
        &self.data
    }

    /// Row `r` as f32 (each value as rounded).
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let words = &self.data[r * self.pairs..(r + 1) * self.pairs];
        let halves = words.iter().flat_map(|w| [*w as u16, (w >> 16) as u16]);
        halves.take(self.cols).map(|b| bf16::from_bits(b).to_f32()).collect()
    }

    fn reshape(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.pairs = cols.div_ceil(2);
        self.data.clear();
        self.data.resize(rows * self.pairs, 0);
    }
}

/// The words of a [`Bf16Rows`] shared by the pool's threads, each writing
/// its own rows.
struct SharedWords(*mut u32);
// SAFETY: used only with disjoint per-thread rows (see Bf16Rows::fill).
unsafe impl Sync for SharedWords {}

impl SharedWords {
    fn at(&self, offset: usize) -> *mut u32 {
        self.0.wrapping_add(offset)
    }
}

/// Rounds one row into words of two bf16 (ties to even).
pub(crate) fn round_row(src: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if bf16_supported() {
            // SAFETY: the features were just detected; the function reads
            // `src` and writes `dst` within their lengths only.
            unsafe { avx512::round_row(src, dst) };
            return;
        }
    }
    round_row_portable(src, dst, 0);
}

/// [`round_row`] from pair `start` on.
fn round_row_portable(src: &[f32], dst: &mut [u32], start: usize) {
    for (j, word) in dst.iter_mut().enumerate().skip(start) {
        let hi = src.get(2 * j + 1).map_or(0, |&v| round_bf16(v));
        *word = pair(round_bf16(src[2 * j]), hi);
    }
}

/// Where [`gemm_bf16`] writes.
pub enum Bf16Out<'a> {
    /// Row-major f32, `rows × out` values.
    F32(&'a mut [f32]),
    /// bf16 rows, ready as the next product's input (resized here).
    Bf16(&'a mut Bf16Rows),
}

/// What a product adds before writing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (`out` values).
    pub bias: Option<&'a [f32]>,
    /// Applies the exact (erf) GELU after the bias.
    pub gelu: bool,
}

/// Which code multiplies: the vector kernel or the scalar reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `vdpbf16ps` (needs [`bf16_supported`]).
    Avx512,
    /// Scalar loops with the same rounding: the reference, and the
    /// fallback elsewhere.
    Portable,
}

impl Bf16Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Bf16Kernel {
        if bf16_supported() {
            Bf16Kernel::Avx512
        } else {
            Bf16Kernel::Portable
        }
    }
}

/// `y = x · Wᵀ (+ bias, GELU)` with bf16 operands and f32 accumulation,
/// split by rows over the pool, on the best kernel. Each row's result does
/// not depend on the other rows.
pub fn gemm_bf16(x: &Bf16Rows, w: &Bf16Weights, epilogue: Epilogue<'_>, out: Bf16Out<'_>) {
    gemm_bf16_on(Bf16Kernel::best(), x, w, epilogue, out);
}

/// [`gemm_bf16`] on a chosen kernel; [`Bf16Kernel::Avx512`] falls back to
/// the portable one where the CPU lacks the instructions.
pub fn gemm_bf16_on(kernel: Bf16Kernel, x: &Bf16Rows, w: &Bf16Weights, epilogue: Epilogue<'_>, out: Bf16Out<'_>) {
    let vector = kernel == Bf16Kernel::Avx512 && bf16_supported();
    assert_eq!(x.cols, w.inp, "gemm_bf16: input has {} columns, weight {}", x.cols, w.inp);
    if let Some(bias) = epilogue.bias {
        assert_eq!(bias.len(), w.out, "gemm_bf16: bias of {} for {} outputs", bias.len(), w.out);
    }
    let sink = match out {
        Bf16Out::F32(y) => {
            assert!(y.len() == x.rows * w.out, "gemm_bf16: output of {} for {}×{}", y.len(), x.rows, w.out);
            Sink::F32(y.as_mut_ptr())
        }
        Bf16Out::Bf16(rows) => {
            rows.reshape(x.rows, w.out);
            Sink::Bf16(rows.data.as_mut_ptr(), rows.pairs)
        }
    };
    if x.rows == 0 || w.out == 0 {
        return;
    }
    let tiles = x.rows.div_ceil(TILE_ROWS);
    let chunks = tiles.div_ceil(CHUNK_TILES);
    // Few rows (a query) leave too few chunks to share: then the panels are
    // split too, so every thread gets work.
    let threads = SpinPool::global().threads();
    let panel_groups = (4 * threads).div_ceil(chunks.max(1)).clamp(1, w.panel_count());
    let items = chunks * panel_groups;
    let next_item = AtomicUsize::new(0);
    // Threads claim items as they go, so one slowed by the machine's other
    // load does not hold the rest up.
    let job = |_index: usize, _threads: usize| loop {
        let item = next_item.fetch_add(1, Ordering::Relaxed);
        if item >= items {
            break;
        }
        let (chunk, group) = (item / panel_groups, item % panel_groups);
        let tile_range = chunk * CHUNK_TILES..((chunk + 1) * CHUNK_TILES).min(tiles);
        for p in split_range(w.panel_count(), group, panel_groups) {
            for tile in tile_range.clone() {
                run_tile(vector, x, w, p, tile, epilogue, &sink);
            }
        }
    };
    SpinPool::global().run(&job);
}

/// The output of one product: threads write disjoint tiles (rows × panel
/// columns) of it.
enum Sink {
    F32(*mut f32),
    Bf16(*mut u32, usize),
}

// SAFETY: the pointers reach buffers exclusively borrowed by `gemm_bf16`
// for the whole pool job; each (tile, panel) block is written by one thread.
unsafe impl Sync for Sink {}

/// One tile of up to [`TILE_ROWS`] rows times one panel: accumulate, then
/// the epilogue and the store; `vector` picks the AVX-512 kernel (the
/// caller checked the CPU has it).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn run_tile(vector: bool, x: &Bf16Rows, w: &Bf16Weights, p: usize, tile: usize, epilogue: Epilogue<'_>, sink: &Sink) {
    let first_row = tile * TILE_ROWS;
    let rows = (x.rows - first_row).min(TILE_ROWS);
    let a = &x.data[first_row * x.pairs..(first_row + rows) * x.pairs];
    let cols = p * PANEL..((p + 1) * PANEL).min(w.out);
    #[cfg(target_arch = "x86_64")]
    {
        if vector {
            let target = TileTarget {
                bias: epilogue.bias.map(|b| &b[cols.clone()]),
                gelu: epilogue.gelu,
                cols: cols.len(),
                dst: match *sink {
                    Sink::F32(ptr) => {
                        TileDst::F32 { ptr: ptr.wrapping_add(first_row * w.out + cols.start), stride: w.out }
                    }
                    Sink::Bf16(ptr, pairs) => {
                        TileDst::Bf16 { ptr: ptr.wrapping_add(first_row * pairs + cols.start / 2), stride: pairs }
                    }
                },
            };
            // SAFETY: `vector` is only set where the features are present. `a` holds `rows` rows
            // of `x.pairs` words and the panel `x.pairs × PANEL` words
            // (x.pairs == w.pairs since gemm_bf16 asserted equal columns);
            // the destination is this thread's block of the output: rows
            // first_row..first_row + rows, columns `cols` (for bf16 the
            // words from cols.start / 2, panels starting at even columns),
            // inside the buffer gemm_bf16 sized and holds exclusively.
            unsafe { avx512::tile(a, x.pairs, rows, w.panel(p), &target) };
            return;
        }
    }
    let mut acc = [0f32; TILE_ROWS * PANEL];
    accumulate_portable(a, x.pairs, rows, w.panel(p), &mut acc[..rows * PANEL]);
    for (r, values) in acc.chunks_exact_mut(PANEL).take(rows).enumerate() {
        finish_row(values, cols.clone(), epilogue);
        store_row(values, first_row + r, cols.clone(), w.out, sink);
    }
}

/// How one tile ends: bias, GELU, and where its rows go.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct TileTarget<'a> {
    /// The panel's slice of the bias.
    bias: Option<&'a [f32]>,
    gelu: bool,
    /// Real columns in this panel (≤ 32).
    cols: usize,
    dst: TileDst,
}

/// The tile's first output row at its first column, and the row stride.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum TileDst {
    F32 { ptr: *mut f32, stride: usize },
    Bf16 { ptr: *mut u32, stride: usize },
}

/// The scalar product of a tile and a panel: products of bf16 values are
/// exact in f32.
fn accumulate_portable(a: &[u32], pairs: usize, rows: usize, panel: &[u32], acc: &mut [f32]) {
    let widen = |bits: u32| f32::from_bits(bits << 16);
    for r in 0..rows {
        let row = &a[r * pairs..(r + 1) * pairs];
        for (lane, sum) in acc[r * PANEL..(r + 1) * PANEL].iter_mut().enumerate() {
            for (j, &word) in row.iter().enumerate() {
                let weight = panel[j * PANEL + lane];
                *sum += widen(word & 0xffff) * widen(weight & 0xffff);
                *sum += widen(word >> 16) * widen(weight >> 16);
            }
        }
    }
}

/// Bias and GELU on one row's panel of values (`cols` are the real columns).
fn finish_row(values: &mut [f32], cols: std::ops::Range<usize>, epilogue: Epilogue<'_>) {
    let values = &mut values[..cols.len()];
    if let Some(bias) = epilogue.bias {
        values.iter_mut().zip(&bias[cols]).for_each(|(v, b)| *v += b);
    }
    if epilogue.gelu {
        super::ops::gelu_slice(values);
    }
}

/// Writes one row's panel of values to the output.
fn store_row(values: &[f32], row: usize, cols: std::ops::Range<usize>, out_cols: usize, sink: &Sink) {
    match *sink {
        Sink::F32(ptr) => {
            // SAFETY: row < rows and cols ⊂ 0..out_cols, so the span lies in
            // the rows × out_cols output; this (tile, panel) is this thread's.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.add(row * out_cols + cols.start), cols.len()) };
            dst.copy_from_slice(&values[..cols.len()]);
        }
        Sink::Bf16(ptr, pairs) => {
            let (first, count) = (cols.start / 2, cols.len().div_ceil(2));
            // SAFETY: as above, in words: panels start at even columns, so
            // the panel's words are first..first + count of the row's
            // `pairs`, and no other tile or panel writes them.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr.add(row * pairs + first), count) };
            round_row_portable(&values[..cols.len()], dst, 0);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The `vdpbf16ps` kernel with its epilogue, and the vector rounding.

    use super::super::simd512::gelu;
    use super::{round_row_portable, TileDst, TileTarget, PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// Rounds a row 32 values at a time (`vcvtne2ps2bf16`, nearest even),
    /// the tail in scalar code.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
        assert!(dst.len() * 2 >= src.len());
        let full = src.len() / 32;
        for c in 0..full {
            // SAFETY: c < full, so values 32c..32c+32 are in `src` and words
            // 16c..16c+16 in `dst` (which holds at least len/2 words).
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c).cast(), packed);
            }
        }
        round_row_portable(src, dst, full * 16);
    }

    /// Accumulates `rows` (≤ 8) rows against one panel and finishes them
    /// into `target`, through a kernel with the row count fixed so the
    /// accumulators stay in registers.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; `target.dst` must be
    /// writable for `rows` rows of `target.cols` columns at its stride.
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    pub(super) unsafe fn tile(a: &[u32], pairs: usize, rows: usize, panel: &[u32], target: &TileTarget<'_>) {
        assert!(rows <= TILE_ROWS && a.len() >= rows * pairs && panel.len() >= pairs * PANEL);
        assert!(target.cols <= PANEL && target.bias.is_none_or(|b| b.len() == target.cols));
        // SAFETY (every arm): the asserts above bound every read the kernel
        // makes and the caller vouches for the writes; features are enabled.
        unsafe {
            match rows {
                8 => tile_rows::<8>(a, pairs, panel, target),
                7 => tile_rows::<7>(a, pairs, panel, target),
                6 => tile_rows::<6>(a, pairs, panel, target),
                5 => tile_rows::<5>(a, pairs, panel, target),
                4 => tile_rows::<4>(a, pairs, panel, target),
                3 => tile_rows::<3>(a, pairs, panel, target),
                2 => tile_rows::<2>(a, pairs, panel, target),
                _ => tile_rows::<1>(a, pairs, panel, target),
            }
        }
    }

    /// `R` rows × 32 columns: per word pair, the panel's two vectors meet
    /// each row's broadcast pair in one `vdpbf16ps` each; then bias, GELU
    /// and the masked store, from registers.
    ///
    /// # Safety
    /// As [`tile`], with `a` holding `R × pairs` words.
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
    #[allow(clippy::needless_range_loop)] // indexing keeps the accumulators in registers
    unsafe fn tile_rows<const R: usize>(a: &[u32], pairs: usize, panel: &[u32], target: &TileTarget<'_>) {
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        let (a, panel) = (a.as_ptr(), panel.as_ptr());
        for j in 0..pairs {
            // SAFETY: j < pairs and r < R keep both reads inside the buffers
            // the caller vouched for; __m512i and __m512bh are both 64-byte
            // vectors, so the transmutes reinterpret bits only.
            unsafe {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(j * PANEL).cast()));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(j * PANEL + 16).cast()));
                for r in 0..R {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * pairs + j) as i32));
                    sums[r][0] = _mm512_dpbf16_ps(sums[r][0], x, w0);
                    sums[r][1] = _mm512_dpbf16_ps(sums[r][1], x, w1);
                }
            }
        }
        let (lo_mask, hi_mask) = lane_masks(target.cols);
        let (bias_lo, bias_hi) = match target.bias {
            // SAFETY: the masks cover only the bias's `cols` values.
            Some(b) => unsafe {
                (_mm512_maskz_loadu_ps(lo_mask, b.as_ptr()), _mm512_maskz_loadu_ps(hi_mask, b.as_ptr().add(16)))
            },
            None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for r in 0..R {
            let mut lo = _mm512_add_ps(sums[r][0], bias_lo);
            let mut hi = _mm512_add_ps(sums[r][1], bias_hi);
            if target.gelu {
                lo = gelu(lo);
                hi = gelu(hi);
            }
            // SAFETY: row r < R of the destination, masked to its `cols`
            // columns (bf16: their ceil(cols/2) words), as the caller
            // vouched; the transmute reinterprets one 64-byte vector.
            unsafe {
                match target.dst {
                    TileDst::F32 { ptr, stride } => {
                        _mm512_mask_storeu_ps(ptr.add(r * stride), lo_mask, lo);
                        _mm512_mask_storeu_ps(ptr.add(r * stride + 16), hi_mask, hi);
                    }
                    TileDst::Bf16 { ptr, stride } => {
                        let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                        let word_mask = ((1u32 << target.cols.div_ceil(2)) - 1) as u16;
                        _mm512_mask_storeu_epi32(ptr.add(r * stride).cast(), word_mask, words);
                    }
                }
            }
        }
    }

    /// Store masks of the two 16-lane halves for `cols` (≤ 32) real columns.
    fn lane_masks(cols: usize) -> (__mmask16, __mmask16) {
        let bits = if cols >= 32 { u32::MAX } else { (1u32 << cols) - 1 };
        (bits as u16, (bits >> 16) as u16)
    }
}
