//! Row-interleaved weights for the AVX2 decode path.
//!
//! A row-at-a-time dot spends most of its instructions per block on things
//! other than multiplying: unpacking, one scale multiply and broadcast, one
//! horizontal step at the end of a short row. At load time, q4_0, q4_1,
//! q8_0, q4_k and q6_k matrices are also stored eight rows at a time, block
//! by block: the eight rows' scales (and q4_1's mins) as one run of f16, then their
//! quants in 8-byte runs, four rows to a 32-byte load. One activation
//! block, broadcast 8 bytes at a time, then meets four rows per `maddubs`;
//! eight rows' sums land in the eight lanes of one register, their scales
//! convert in one instruction, and no horizontal reduction is needed.
//!
//! A q4 run keeps GGUF's nibble pairing (byte `j` holds elements `j` and
//! `j + 16`), so a 32-byte load gives elements `8c..8c+8` of four rows in
//! its low nibbles and `8c+16..8c+24` in its high ones. q4_k goes the same
//! way per 256-element block: the eight rows' `d` and `dmin`, their 6-bit
//! sub-block scales and mins unpacked to bytes (sub-block by sub-block, a
//! byte per row), then each 32-byte chunk of quants (sub-block `2c` in its
//! low nibbles, `2c + 1` in its high ones) in 8-byte runs. q6_k stores
//! its eight `d`, its sixteen i8 sub-block scales a byte per row, and the
//! 6-bit quants unpacked to bytes (`q + 32`, 0..63) in 8-byte runs: 30 %
//! more bytes than GGUF's for that format, for a kernel without bit
//! shuffling. q5_0 and q5_1 keep q4's nibble runs and add, per run, each
//! row's two bytes of fifth bits (for the low and the high nibbles), which
//! the kernel spreads onto the bytes with a shuffle and a compare; the
//! group is exactly as large as the GGUF rows. The kernel's sums come out
//! in lane order [`LANE_ROWS`], and the scales are stored in that order.
//! Rows past the last whole group of eight keep the row kernel.
//!
//! Results equal the row kernel's within f32 rounding (the integer sums are
//! exact; the scaling order differs); each row's result never depends on
//! which thread or batch computed it.

use super::{f16_at, BlockQ8, QK};
use crate::DType;
use rayon::prelude::*;

/// Rows stored together.
pub const GROUP: usize = 8;

/// Which row of a group each lane of the kernel's result holds (the order
/// `hadd` leaves two quads of rows in).
pub const LANE_ROWS: [usize; GROUP] = [0, 1, 4, 5, 2, 3, 6, 7];

/// Where a group's block keeps its quants (after the scales), and how many
/// 8-byte runs of a row make one 32-byte-per-row chunk of them.
fn quants_layout(dtype: DType) -> (usize, usize) {
    match dtype {
        DType::Q4_0 => (16, 2),
        DType::Q4_1 => (32, 2),
        DType::Q5_0 => (16 + 32, 2),
        DType::Q5_1 => (32 + 32, 2),
        DType::Q4K => (Q4K_QUANTS, 4),
        DType::Q6K => (Q6K_QUANTS, 4),
        _ => (16, 4),
    }
}

/// q4_k: the eight `dmin` follow the eight `d`; then 8 × 8 scales, 8 × 8 mins, quants.
const Q4K_SCALES: usize = 32;
const Q4K_MINS: usize = 96;
const Q4K_QUANTS: usize = 160;
/// q6_k: 16 × 8 i8 scales follow the eight `d`; then the quants.
const Q6K_SCALES: usize = 16;
const Q6K_QUANTS: usize = 144;

/// Offset, among a block's quants, of run `k` of `row` in chunk `chunk`:
/// each chunk holds two quads of four rows, each `runs` runs of 32 bytes.
fn run_at(runs: usize, chunk: usize, row: usize, k: usize) -> usize {
    let (quad, seat) = (row / 4, row % 4);
    (2 * chunk + quad) * 32 * runs + 32 * k + 8 * seat
}

/// The quant of element `e` of `row` in a group's block (q4 formats 0..15,
/// q8_0 signed, q4_k 0..15, q6_k `q + 32` in 0..63).
fn element(dtype: DType, block: &[u8], row: usize, e: usize) -> i32 {
    let (base, runs) = quants_layout(dtype);
    let nibble = |byte: u8, high: bool| (if high { byte >> 4 } else { byte & 0x0F }) as i32;
    match dtype {
        DType::Q8_0 => block[base + run_at(runs, 0, row, e / 8) + e % 8] as i8 as i32,
        DType::Q6K => block[base + run_at(runs, e / 32, row, (e % 32) / 8) + e % 8] as i32,
        DType::Q4K => {
            let r = e % 64;
            nibble(block[base + run_at(runs, e / 64, row, (r % 32) / 8) + r % 8], r >= 32)
        }
        DType::Q5_0 | DType::Q5_1 => {
            let k = (e % 16) / 8;
            let low = nibble(block[base + run_at(runs, 0, row, k) + e % 8], e >= 16);
            low | fifth_bit(block, base - 32, row, k, e >= 16, e % 8) << 4
        }
        _ => nibble(block[base + run_at(runs, 0, row, (e % 16) / 8) + e % 8], e >= 16),
    }
}

/// Bit `i` of the fifth-bit byte of `row`'s run `k` (for its high nibbles
/// when `high`): per quad and run, four rows × (low byte, high byte).
fn fifth_bit(block: &[u8], bits: usize, row: usize, k: usize, high: bool, i: usize) -> i32 {
    let (quad, seat) = (row / 4, row % 4);
    ((block[bits + 16 * quad + 8 * k + 2 * seat + high as usize] >> i) & 1) as i32
}

/// A matrix's whole groups of eight rows, interleaved.
#[derive(Debug, Clone)]
pub struct InterleavedRows {
    /// q4_0, q4_1, q8_0, q4_k or q6_k.
    pub dtype: DType,
    /// Whole groups (rows `0..8·groups`).
    pub groups: usize,
    /// Blocks per row (of the format's size: 32, or 256 for the k-quants).
    pub blocks: usize,
    /// Group after group, block after block.
    pub data: Vec<u8>,
}

impl InterleavedRows {
    /// Bytes of one block of a group: scales (and mins), then quants.
    pub fn block_bytes(dtype: DType) -> usize {
        match dtype {
            DType::Q4_0 => 16 + 128,
            DType::Q4_1 => 32 + 128,
            DType::Q5_0 => 16 + 32 + 128,
            DType::Q5_1 => 32 + 32 + 128,
            DType::Q4K => 32 + 128 + 1024,
            DType::Q6K => 16 + 128 + 2048,
            _ => 16 + 256,
        }
    }

    /// Activation blocks (of 32) per row.
    pub fn act_blocks(&self) -> usize {
        self.blocks * self.dtype.block_size() / QK
    }

    /// The bytes of group `g`.
    pub fn group(&self, g: usize) -> &[u8] {
        let size = self.blocks * Self::block_bytes(self.dtype);
        &self.data[g * size..(g + 1) * size]
    }

    /// Rows covered (`8·groups`).
    pub fn rows(&self) -> usize {
        self.groups * GROUP
    }

    /// Row `row` (below [`InterleavedRows::rows`]) as f32, equal to
    /// `dequantize_row` on its GGUF bytes: the prefill reads these, so the
    /// GGUF pages of an interleaved matrix need not stay in memory.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows() && out.len() == self.act_blocks() * QK, "dequantize_row: row {row}");
        let (dtype, size) = (self.dtype, Self::block_bytes(self.dtype));
        let (group, member) = (self.group(row / GROUP), row % GROUP);
        let lane = LANE_ROWS.iter().position(|&r| r == member).unwrap_or(0);
        for (b, values) in out.chunks_exact_mut(dtype.block_size()).enumerate() {
            let block = &group[b * size..(b + 1) * size];
            match dtype {
                DType::Q8_0 => dequantize_q8_0(block, member, lane, values),
                DType::Q4K => dequantize_q4_k(block, member, lane, values),
                DType::Q6K => dequantize_q6_k(block, member, lane, values),
                DType::Q5_0 | DType::Q5_1 => dequantize_q5(dtype, block, member, lane, values),
                _ => dequantize_q4(dtype, block, member, lane, values),
            }
        }
    }
}

// Each as `formats::dequant_*` on the GGUF block, in the same arithmetic,
// reading row `row`'s runs (its scales at `lane`).

fn dequantize_q8_0(block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let d = f16_at(block, 2 * lane);
    for (k, chunk) in values.chunks_exact_mut(8).enumerate() {
        let run = &block[16 + run_at(4, 0, row, k)..][..8];
        chunk.iter_mut().zip(run).for_each(|(v, &q)| *v = d * (q as i8) as f32);
    }
}

fn dequantize_q4(dtype: DType, block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let (base, runs) = quants_layout(dtype);
    let d = f16_at(block, 2 * lane);
    let m = if dtype == DType::Q4_1 { f16_at(block, 16 + 2 * lane) } else { 0.0 };
    let (low, high) = values.split_at_mut(16);
    for k in 0..2 {
        let run = &block[base + run_at(runs, 0, row, k)..][..8];
        for (i, &byte) in run.iter().enumerate() {
            let (lo, hi) = ((byte & 0x0F) as i32, (byte >> 4) as i32);
            (low[8 * k + i], high[8 * k + i]) = match dtype {
                DType::Q4_0 => (d * (lo - 8) as f32, d * (hi - 8) as f32),
                _ => (d * lo as f32 + m, d * hi as f32 + m),
            };
        }
    }
}

fn dequantize_q5(dtype: DType, block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let (base, runs) = quants_layout(dtype);
    let (quad, seat) = (row / 4, row % 4);
    let d = f16_at(block, 2 * lane);
    let m = if dtype == DType::Q5_1 { f16_at(block, 16 + 2 * lane) } else { 0.0 };
    let (low, high) = values.split_at_mut(16);
    for k in 0..2 {
        let run = &block[base + run_at(runs, 0, row, k)..][..8];
        let bits = &block[base - 32 + 16 * quad + 8 * k + 2 * seat..][..2];
        for (i, &byte) in run.iter().enumerate() {
            let lo = (byte & 0x0F) as i32 | (((bits[0] >> i) & 1) as i32) << 4;
            let hi = (byte >> 4) as i32 | (((bits[1] >> i) & 1) as i32) << 4;
            (low[8 * k + i], high[8 * k + i]) = match dtype {
                DType::Q5_0 => (d * (lo - 16) as f32, d * (hi - 16) as f32),
                _ => (d * lo as f32 + m, d * hi as f32 + m),
            };
        }
    }
}

fn dequantize_q4_k(block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane));
    let scale_min = |j: usize| (block[Q4K_SCALES + 8 * j + lane] as f32, block[Q4K_MINS + 8 * j + lane] as f32);
    for (c, chunk) in values.chunks_exact_mut(64).enumerate() {
        let ((sc_lo, m_lo), (sc_hi, m_hi)) = (scale_min(2 * c), scale_min(2 * c + 1));
        let (low, high) = chunk.split_at_mut(32);
        for k in 0..4 {
            let run = &block[Q4K_QUANTS + run_at(4, c, row, k)..][..8];
            for (i, &q) in run.iter().enumerate() {
                low[8 * k + i] = d * sc_lo * (q & 0x0F) as f32 - dmin * m_lo;
                high[8 * k + i] = d * sc_hi * (q >> 4) as f32 - dmin * m_hi;
            }
        }
    }
}

fn dequantize_q6_k(block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let d = f16_at(block, 2 * lane);
    for (j, chunk) in values.chunks_exact_mut(32).enumerate() {
        for (k, eight) in chunk.chunks_exact_mut(8).enumerate() {
            let sc = block[Q6K_SCALES + 8 * (2 * j + k / 2) + lane] as i8 as f32;
            let run = &block[Q6K_QUANTS + run_at(4, j, row, k)..][..8];
            eight.iter_mut().zip(run).for_each(|(v, &q)| *v = d * sc * (q as i32 - 32) as f32);
        }
    }
}

/// Interleaves the whole groups of eight rows of a `rows × row_len` matrix
/// of `dtype`, if the format allows it (q4_0, q4_1, q8_0) and there is one.
pub fn interleave_rows(dtype: DType, bytes: &[u8], rows: usize, row_len: usize) -> Option<InterleavedRows> {
    let formats = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4K, DType::Q6K];
    if !formats.contains(&dtype) || rows < GROUP || !row_len.is_multiple_of(dtype.block_size()) {
        return None;
    }
    let (blocks, block) = (row_len / dtype.block_size(), dtype.type_size());
    let row_bytes = blocks * block;
    if bytes.len() != rows * row_bytes {
        return None;
    }
    let groups = rows / GROUP;
    let group_bytes = blocks * InterleavedRows::block_bytes(dtype);
    let mut data = vec![0u8; groups * group_bytes];
    // Groups are independent: filled in parallel (model loading waits for this).
    data.par_chunks_mut(group_bytes).enumerate().for_each_init(
        || Vec::with_capacity(group_bytes),
        |local, (g, out)| {
            local.clear();
            for b in 0..blocks {
                let at = |row: usize| {
                    let start = (g * GROUP + row) * row_bytes + b * block;
                    &bytes[start..start + block]
                };
                match dtype {
                    DType::Q4K => interleave_q4_k_block(&at, local),
                    DType::Q6K => interleave_q6_k_block(&at, local),
                    _ => interleave_block(dtype, &at, local),
                }
            }
            out.copy_from_slice(local);
        },
    );
    Some(InterleavedRows { dtype, groups, blocks, data })
}

/// One 32-element block of eight rows: scales (and q4_1's / q5_1's mins)
/// in lane order, q5's fifth bits, then the quants in 8-byte runs, four
/// rows per 32 bytes.
fn interleave_block<'a>(dtype: DType, at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    let with_mins = matches!(dtype, DType::Q4_1 | DType::Q5_1);
    let scales = if with_mins { [0, 2].as_slice() } else { [0].as_slice() };
    for &offset in scales {
        for row in LANE_ROWS {
            data.extend_from_slice(&at(row)[offset..offset + 2]);
        }
    }
    let high_bits = if with_mins { 4 } else { 2 };
    if matches!(dtype, DType::Q5_0 | DType::Q5_1) {
        // Element e's fifth bit is bit e of the block's u32: run k's low
        // nibbles take its byte k, the high nibbles byte k + 2.
        for quad in 0..2 {
            for k in 0..2 {
                for row in 4 * quad..4 * quad + 4 {
                    data.extend_from_slice(&[at(row)[high_bits + k], at(row)[high_bits + k + 2]]);
                }
            }
        }
    }
    let quants = match dtype {
        DType::Q4_1 => 4,
        DType::Q5_0 => 6,
        DType::Q5_1 => 8,
        _ => 2,
    };
    let runs = if dtype == DType::Q8_0 { 4 } else { 2 };
    for quad in 0..2 {
        for run in 0..runs {
            for row in 4 * quad..4 * quad + 4 {
                data.extend_from_slice(&at(row)[quants + 8 * run..quants + 8 * run + 8]);
            }
        }
    }
}

/// One q6_k block of eight rows: `d` (lane order), the sixteen i8
/// sub-block scales a byte per lane, then each 32-element act block's
/// quants as bytes `q + 32` in 8-byte runs, four rows per 32 bytes.
fn interleave_q6_k_block<'a>(at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    for row in LANE_ROWS {
        data.extend_from_slice(&at(row)[208..210]);
    }
    for s in 0..16 {
        data.extend(LANE_ROWS.iter().map(|&row| at(row)[192 + s]));
    }
    for j in 0..8 {
        for quad in 0..2 {
            for run in 0..4 {
                for row in 4 * quad..4 * quad + 4 {
                    let block = at(row);
                    let first = 32 * j + 8 * run;
                    data.extend((first..first + 8).map(|e| (super::formats::q6_k_quant(block, e) + 32) as u8));
                }
            }
        }
    }
}

/// One q4_k block of eight rows: `d`, `dmin` (lane order), each sub-block's
/// scales then mins as a byte per lane, then each 32-byte chunk of quants
/// in 8-byte runs, four rows per 32 bytes.
fn interleave_q4_k_block<'a>(at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    for offset in [0, 2] {
        for row in LANE_ROWS {
            data.extend_from_slice(&at(row)[offset..offset + 2]);
        }
    }
    for part in [0, 1] {
        for j in 0..8 {
            for row in LANE_ROWS {
                let (sc, m) = super::formats::q4_k_scale_min(&at(row)[4..16], j);
                data.push(if part == 0 { sc } else { m });
            }
        }
    }
    for chunk in 0..4 {
        for quad in 0..2 {
            for run in 0..4 {
                for row in 4 * quad..4 * quad + 4 {
                    let start = 16 + 32 * chunk + 8 * run;
                    data.extend_from_slice(&at(row)[start..start + 8]);
                }
            }
        }
    }
}

/// Tokens the AVX2 kernel takes per call: each block's quants, unpacked
/// once, meet up to this many tokens' activations.
pub const TOKEN_TILE: usize = 4;

/// The dot products of group `g`'s eight rows with one token's activations
/// (`blocks` of them), in row order: AVX2 when the CPU has it (the caller
/// made the layout only then), else the scalar reference.
pub fn dot_group(rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    let mut out = [[0f32; GROUP]];
    dot_group_tokens(rows, g, acts, &mut out);
    out[0]
}

/// [`dot_group`] for `out.len()` tokens whose activations lie back to back
/// in `acts`: `out[t]` gets token `t`'s eight sums, bit for bit what
/// [`dot_group`] gives that token alone (the same operations in the same
/// order per token). The prefill's kernel: a block's quants are loaded and
/// unpacked once for [`TOKEN_TILE`] tokens.
pub fn dot_group_tokens(rows: &InterleavedRows, g: usize, acts: &[BlockQ8], out: &mut [[f32; GROUP]]) {
    let per_token = rows.act_blocks();
    assert!(
        g < rows.groups && acts.len() == out.len() * per_token,
        "dot_group_tokens: group {g}, {} act blocks for {} tokens",
        acts.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::is_supported() {
            for (tile, sums) in acts.chunks(TOKEN_TILE * per_token).zip(out.chunks_mut(TOKEN_TILE)) {
                match sums.len() {
                    4 => x86_tile::<4>(rows, g, tile, sums),
                    3 => x86_tile::<3>(rows, g, tile, sums),
                    2 => x86_tile::<2>(rows, g, tile, sums),
                    _ => x86_tile::<1>(rows, g, tile, sums),
                }
            }
            return;
        }
    }
    for (token, sums) in acts.chunks_exact(per_token).zip(out.iter_mut()) {
        *sums = dot_group_scalar(rows, g, token);
    }
}

/// One tile of `T` tokens through the AVX2 kernel, results in row order.
#[cfg(target_arch = "x86_64")]
fn x86_tile<const T: usize>(rows: &InterleavedRows, g: usize, acts: &[BlockQ8], out: &mut [[f32; GROUP]]) {
    let per_token = rows.act_blocks();
    let tokens: [&[BlockQ8]; T] = std::array::from_fn(|t| &acts[t * per_token..(t + 1) * per_token]);
    // SAFETY: the caller detected AVX2/FMA/F16C; the kernel reads
    // `rows.blocks` blocks of the group (its slice holds exactly that many)
    // and `per_token` blocks of each token (sliced above to that length).
    let lanes = unsafe { x86::dot_tokens(rows.dtype, rows.group(g), &tokens) };
    for (sums, token_lanes) in out.iter_mut().zip(lanes) {
        *sums = in_row_order(token_lanes);
    }
}

/// Scalar reference of [`dot_group`]: each row's sum from the interleaved
/// bytes, in the kernel's order of operations per block.
pub fn dot_group_scalar(rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    let (dtype, data) = (rows.dtype, rows.group(g));
    match dtype {
        DType::Q4K => return in_row_order(q4_k_scalar(data, acts)),
        DType::Q6K => return in_row_order(q6_k_scalar(data, acts)),
        _ => {}
    }
    let size = InterleavedRows::block_bytes(dtype);
    let mut lanes = [0f32; GROUP];
    for (b, a) in acts.iter().enumerate() {
        let block = &data[b * size..(b + 1) * size];
        for (lane, &row) in LANE_ROWS.iter().enumerate() {
            let dot: i32 = (0..QK).map(|e| element(dtype, block, row, e) * a.qs[e] as i32).sum();
            let d = f16_at(block, 2 * lane);
            lanes[lane] = match dtype {
                DType::Q4_0 => d.mul_add(a.d.mul_add(dot as f32, -(8.0 * a.s)), lanes[lane]),
                DType::Q5_0 => d.mul_add(a.d.mul_add(dot as f32, -(16.0 * a.s)), lanes[lane]),
                DType::Q4_1 | DType::Q5_1 => {
                    d.mul_add(a.d * dot as f32, f16_at(block, 16 + 2 * lane).mul_add(a.s, lanes[lane]))
                }
                _ => d.mul_add(a.d * dot as f32, lanes[lane]),
            };
        }
    }
    in_row_order(lanes)
}

/// The q6_k lanes, in the kernel's order of operations: per act block,
/// the integer `Σ_half sc·(Σ q·a − 32·Σ a)` over its two 16-element
/// halves, then `acc += d·(a.d·that)`.
fn q6_k_scalar(data: &[u8], acts: &[BlockQ8]) -> [f32; GROUP] {
    let size = InterleavedRows::block_bytes(DType::Q6K);
    let mut acc = [0f32; GROUP];
    for (block, sub) in data.chunks_exact(size).zip(acts.chunks_exact(8)) {
        for (j, a) in sub.iter().enumerate() {
            let act_sum = |half: usize| a.qs[16 * half..16 * half + 16].iter().map(|&v| v as i32).sum::<i32>();
            for (lane, &row) in LANE_ROWS.iter().enumerate() {
                let mut total = 0i32;
                for half in 0..2 {
                    let dot: i32 = (16 * half..16 * half + 16)
                        .map(|e| element(DType::Q6K, block, row, 32 * j + e) * a.qs[e] as i32)
                        .sum();
                    total += (dot - 32 * act_sum(half)) * block[Q6K_SCALES + 8 * (2 * j + half) + lane] as i8 as i32;
                }
                acc[lane] = f16_at(block, 2 * lane).mul_add(a.d * total as f32, acc[lane]);
            }
        }
    }
    acc
}

/// The q4_k lanes, in the kernel's order of operations: per sub-block,
/// `acc += (d·sc)·(a.d·dot)` and `mins += (dmin·m)·a.s`; then `acc − mins`.
fn q4_k_scalar(data: &[u8], acts: &[BlockQ8]) -> [f32; GROUP] {
    let size = InterleavedRows::block_bytes(DType::Q4K);
    let (mut acc, mut mins) = ([0f32; GROUP], [0f32; GROUP]);
    for (block, sub) in data.chunks_exact(size).zip(acts.chunks_exact(8)) {
        for (j, a) in sub.iter().enumerate() {
            for (lane, &row) in LANE_ROWS.iter().enumerate() {
                let dot: i32 = (0..QK).map(|e| element(DType::Q4K, block, row, 32 * j + e) * a.qs[e] as i32).sum();
                let (d, dmin) = (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane));
                let (sc, m) = (block[Q4K_SCALES + 8 * j + lane] as f32, block[Q4K_MINS + 8 * j + lane] as f32);
                acc[lane] = (d * sc).mul_add(a.d * dot as f32, acc[lane]);
                mins[lane] = (dmin * m).mul_add(a.s, mins[lane]);
            }
        }
    }
    std::array::from_fn(|lane| acc[lane] - mins[lane])
}

fn in_row_order(lanes: [f32; GROUP]) -> [f32; GROUP] {
    let mut out = [0f32; GROUP];
    for (lane, &row) in LANE_ROWS.iter().enumerate() {
        out[row] = lanes[lane];
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 kernels, each for `T` tokens at once: a block's quants are
    //! loaded and unpacked once, then every token runs exactly the
    //! operations a lone token would, so results never depend on `T`.
    //! Every function is compiled once per format and token count (const
    //! generics), so no branch on the format is left in the loops, and each
    //! helper has a single call site, so it inlines into the kernel.

    use super::{quants_layout, BlockQ8, InterleavedRows, Q4K_MINS, Q4K_QUANTS, Q4K_SCALES, Q6K_QUANTS, Q6K_SCALES};
    use crate::DType;
    use std::arch::x86_64::*;

    /// The 32-element formats, by the index `dot_blocks32` is compiled for.
    const BLOCKS32: [DType; 5] = [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0];

    /// Eight activation bytes `8k..8k+8` of a block in each 64-bit lane.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_of(a: &BlockQ8, k: usize) -> __m256i {
        _mm256_set1_epi64x((a.qs.as_ptr().add(8 * k) as *const i64).read_unaligned())
    }

    /// A block's four activation runs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn runs_of(a: &BlockQ8) -> [__m256i; 4] {
        [run_of(a, 0), run_of(a, 1), run_of(a, 2), run_of(a, 3)]
    }

    /// Eight f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16x8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Decoding streams each group from memory, so the kernels ask for
    /// what comes next, `bytes` from `p`: the 32-element ones the block
    /// after next, q4_k the next block a quarter per chunk (measured on AMD
    /// EPYC, 1B decode: q8_0 18 → 24 tok/s, Q4_K_M 28 → 34; a whole block
    /// at once slowed q4_k down, and q6_k, whose kernel does more work per
    /// byte, was slower with every distance tried). A hint: addresses past the
    /// group's end (or anywhere) never fault.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prefetch(p: *const u8, bytes: usize) {
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8);
        }
    }

    /// The quants of one quad (four rows) of a 32-element block, as the
    /// byte operands that meet activation runs 0..4. q4: two 32-byte loads,
    /// low nibbles for runs 0/1, high for 2/3. q5: the same with each
    /// byte's fifth bit added from the run's eight bytes of bits at `h`
    /// (per row: the low nibbles' byte, then the high nibbles'). q8_0: the
    /// four signed loads as they are.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quad_operands<const F: usize>(q: *const u8, h: *const u8) -> [__m256i; 4] {
        let dtype = BLOCKS32[F];
        let load = |k: usize| _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
        let mask = _mm256_set1_epi8(0x0F);
        let low = |l: __m256i| _mm256_and_si256(l, mask);
        let high = |l: __m256i| _mm256_and_si256(_mm256_srli_epi16(l, 4), mask);
        match dtype {
            DType::Q8_0 => [load(0), load(1), load(2), load(3)],
            DType::Q5_0 | DType::Q5_1 => {
                let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let fifth = _mm256_set1_epi8(0x10);
                // Row s of the quad fills 64-bit lane s: its byte 2s (low) or 2s + 1 (high).
                let low_of = _mm256_setr_epi64x(0, 0x0202_0202_0202_0202, 0x0404_0404_0404_0404, 0x0606_0606_0606_0606);
                let high_of = _mm256_add_epi8(low_of, _mm256_set1_epi8(1));
                let spread = |k: usize, which: __m256i| {
                    let bits = _mm256_set1_epi64x((h.add(8 * k) as *const i64).read_unaligned());
                    let picked = _mm256_shuffle_epi8(bits, which);
                    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(picked, bit), bit), fifth)
                };
                let (l0, l1) = (load(0), load(1));
                [
                    _mm256_or_si256(low(l0), spread(0, low_of)),
                    _mm256_or_si256(low(l1), spread(1, low_of)),
                    _mm256_or_si256(high(l0), spread(0, high_of)),
                    _mm256_or_si256(high(l1), spread(1, high_of)),
                ]
            }
            _ => {
                let (l0, l1) = (load(0), load(1));
                [low(l0), low(l1), high(l0), high(l1)]
            }
        }
    }

    /// Σ q·a of a block's eight rows for one token, in lane order: each
    /// quad's sums (two i32 lanes per row), paired up by one `hadd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_sums<const F: usize>(w: &[[__m256i; 4]; 2], a: &[__m256i; 4]) -> __m256i {
        let ones = _mm256_set1_epi16(1);
        let mut quads = [_mm256_setzero_si256(); 2];
        for (sum, w) in quads.iter_mut().zip(w) {
            if BLOCKS32[F] == DType::Q8_0 {
                // Signed weights: the sign moves onto the activations for `maddubs`.
                for (w, a) in w.iter().zip(a) {
                    let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(*w, *w), _mm256_sign_epi8(*a, *w));
                    *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
                }
                continue;
            }
            // Each i16 lane ≤ 2·31·127 (q5; q4 2·15·127); four summed stay below 2¹⁵.
            let mut p = _mm256_maddubs_epi16(w[0], a[0]);
            for k in 1..4 {
                p = _mm256_add_epi16(p, _mm256_maddubs_epi16(w[k], a[k]));
            }
            *sum = _mm256_madd_epi16(p, ones);
        }
        _mm256_hadd_epi32(quads[0], quads[1])
    }

    /// Eight lanes per token for the 32-element formats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_blocks32<const T: usize, const F: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
        let dtype = BLOCKS32[F];
        let size = InterleavedRows::block_bytes(dtype);
        let (base, runs) = quants_layout(dtype);
        let with_mins = matches!(dtype, DType::Q4_1 | DType::Q5_1);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..acts[0].len() {
            let block = group.as_ptr().add(b * size);
            prefetch(block.wrapping_add(2 * size), size);
            let d = f16x8(block);
            let m = if with_mins { f16x8(block.add(16)) } else { d };
            let (q, h) = (block.add(base), block.add(base).wrapping_sub(32));
            let w = [quad_operands::<F>(q, h), quad_operands::<F>(q.add(32 * runs), h.wrapping_add(16))];
            for (acc, token) in acc.iter_mut().zip(acts) {
                let a = &token[b];
                let dot = _mm256_cvtepi32_ps(block_sums::<F>(&w, &runs_of(a)));
                *acc = match dtype {
                    // Σ (q − 8)·a = Σ q·a − 8·Σ a.
                    DType::Q4_0 => {
                        _mm256_fmadd_ps(d, _mm256_fmsub_ps(_mm256_set1_ps(a.d), dot, _mm256_set1_ps(8.0 * a.s)), *acc)
                    }
                    DType::Q5_0 => {
                        _mm256_fmadd_ps(d, _mm256_fmsub_ps(_mm256_set1_ps(a.d), dot, _mm256_set1_ps(16.0 * a.s)), *acc)
                    }
                    DType::Q4_1 | DType::Q5_1 => {
                        let with_mins = _mm256_fmadd_ps(m, _mm256_set1_ps(a.s), *acc);
                        _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_set1_ps(a.d), dot), with_mins)
                    }
                    _ => _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_set1_ps(a.d), dot), *acc),
                };
            }
        }
        acc
    }

    /// Σ q·a of a quad's four rows for one q4_k chunk's two sub-blocks,
    /// per token: (low nibbles with `lo`, high nibbles with `hi`). Each
    /// 32-byte load is unpacked once and meets every token in turn.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_quad_tokens<const T: usize>(
        q: *const u8,
        lo: &[&BlockQ8; T],
        hi: &[&BlockQ8; T],
    ) -> [(__m256i, __m256i); T] {
        let mask = _mm256_set1_epi8(0x0F);
        let (mut p_lo, mut p_hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
        for k in 0..4 {
            let l = _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
            let (w_lo, w_hi) = (_mm256_and_si256(l, mask), _mm256_and_si256(_mm256_srli_epi16(l, 4), mask));
            for t in 0..T {
                // Each i16 lane ≤ 2·15·127; four summed stay below 2¹⁵.
                p_lo[t] = _mm256_add_epi16(p_lo[t], _mm256_maddubs_epi16(w_lo, run_of(lo[t], k)));
                p_hi[t] = _mm256_add_epi16(p_hi[t], _mm256_maddubs_epi16(w_hi, run_of(hi[t], k)));
            }
        }
        let ones = _mm256_set1_epi16(1);
        std::array::from_fn(|t| (_mm256_madd_epi16(p_lo[t], ones), _mm256_madd_epi16(p_hi[t], ones)))
    }

    /// Eight bytes at `p` as eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bytes_as_f32(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// The eight lanes of a q4_k group per token (see `q4_k_scalar` for the order).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q4_k<const T: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
        let size = InterleavedRows::block_bytes(DType::Q4K);
        let (mut acc, mut mins) = ([_mm256_setzero_ps(); T], [_mm256_setzero_ps(); T]);
        for b in 0..acts[0].len() / 8 {
            let block = group.as_ptr().add(b * size);
            let (d, dmin) = (f16x8(block), f16x8(block.add(16)));
            for c in 0..4 {
                prefetch(block.wrapping_add(size + c * size / 4), size / 4);
                let q = block.add(Q4K_QUANTS + 256 * c);
                let a_lo: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + 2 * c]);
                let a_hi: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + 2 * c + 1]);
                let mut x = [[(_mm256_setzero_si256(), _mm256_setzero_si256()); T]; 2];
                for (quad, sums) in x.iter_mut().enumerate() {
                    *sums = q4_k_quad_tokens(q.add(128 * quad), &a_lo, &a_hi);
                }
                let scaled: [(__m256, __m256); 2] = std::array::from_fn(|half| {
                    let j = 2 * c + half;
                    let sc = bytes_as_f32(block.add(Q4K_SCALES + 8 * j));
                    let m = bytes_as_f32(block.add(Q4K_MINS + 8 * j));
                    (_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, m))
                });
                for t in 0..T {
                    let sums = [_mm256_hadd_epi32(x[0][t].0, x[1][t].0), _mm256_hadd_epi32(x[0][t].1, x[1][t].1)];
                    for (half, (a, sum)) in [a_lo[t], a_hi[t]].into_iter().zip(sums).enumerate() {
                        let dot = _mm256_mul_ps(_mm256_set1_ps(a.d), _mm256_cvtepi32_ps(sum));
                        acc[t] = _mm256_fmadd_ps(scaled[half].0, dot, acc[t]);
                        mins[t] = _mm256_fmadd_ps(scaled[half].1, _mm256_set1_ps(a.s), mins[t]);
                    }
                }
            }
        }
        std::array::from_fn(|t| _mm256_sub_ps(acc[t], mins[t]))
    }

    /// Σ sc·q·a of a quad's four rows for one q6_k act block, per token:
    /// (the low 16 elements with runs 0/1, the high 16 with runs 2/3), each
    /// half's pair sums weighted by its rows' sub-block scales `scales`
    /// (one i16 per row, in each of the row's four lanes). Each 32-byte
    /// load meets every token in turn.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_quad_tokens<const T: usize>(
        q: *const u8,
        scales: &[__m256i; 2],
        a: &[&BlockQ8; T],
    ) -> [(__m256i, __m256i); T] {
        let mut halves = [[_mm256_setzero_si256(); 2]; T];
        for k in 0..4 {
            let w = _mm256_loadu_si256(q.add(32 * k) as *const __m256i);
            for t in 0..T {
                // Each i16 lane ≤ 2·63·127; two summed stay below 2¹⁵.
                let p = &mut halves[t][k / 2];
                *p = _mm256_add_epi16(*p, _mm256_maddubs_epi16(w, run_of(a[t], k)));
            }
        }
        // Each pair ≤ 2·(2·63·127)·128: far inside i32.
        halves.map(|[lo, hi]| (_mm256_madd_epi16(lo, scales[0]), _mm256_madd_epi16(hi, scales[1])))
    }

    /// A q6_k act block's sub-block scales (the two halves' eight i8, in
    /// lane order, at `lo` and `hi`) as `maddubs` pair weights: per quad and
    /// half, each of the quad's four rows' scale in its four i16 lanes;
    /// and both halves' scales of each lane as an i16 pair (low, high).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_scales(lo: *const u8, hi: *const u8) -> ([[__m256i; 2]; 2], __m256i) {
        let (lo, hi) = (_mm_loadl_epi64(lo as *const __m128i), _mm_loadl_epi64(hi as *const __m128i));
        // Lane order [0, 1, 4, 5, 2, 3, 6, 7]: quad 0's rows sit in lanes
        // 0, 1 (low 128 bits) and 4, 5 (high); quad 1's in 2, 3 and 6, 7.
        let pick = [
            _mm256_setr_epi8(
                0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11, 10, 11, 10, 11, 10, 11,
            ),
            _mm256_setr_epi8(
                4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 12, 13, 12, 13, 12, 13, 12, 13, 14, 15, 14, 15, 14, 15,
                14, 15,
            ),
        ];
        let words = [lo, hi].map(|half| _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(half)));
        let per_quad =
            [0, 1].map(|quad| [_mm256_shuffle_epi8(words[0], pick[quad]), _mm256_shuffle_epi8(words[1], pick[quad])]);
        let pairs = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(lo, hi));
        (per_quad, pairs)
    }

    /// The eight lanes of a q6_k group per token (see `q6_k_scalar` for the order).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_q6_k<const T: usize>(group: &[u8], acts: &[&[BlockQ8]; T]) -> [__m256; T] {
        let size = InterleavedRows::block_bytes(DType::Q6K);
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..acts[0].len() / 8 {
            let block = group.as_ptr().add(b * size);
            let d = f16x8(block);
            for j in 0..8 {
                let q = block.add(Q6K_QUANTS + 256 * j);
                let a: [&BlockQ8; T] = std::array::from_fn(|t| &acts[t][8 * b + j]);
                let scales = block.add(Q6K_SCALES + 16 * j);
                let (per_quad, pairs) = q6_k_scales(scales, scales.add(8));
                let mut dots = [[(_mm256_setzero_si256(), _mm256_setzero_si256()); T]; 2];
                for (quad, sums) in dots.iter_mut().enumerate() {
                    *sums = q6_k_quad_tokens(q.add(128 * quad), &per_quad[quad], &a);
                }
                for t in 0..T {
                    // Σ_half sc·Σ q·a, then minus 32·Σ_half sc·Σ a (the
                    // activations' half sums as one i16 pair per lane).
                    let (quad0, quad1) = (dots[0][t], dots[1][t]);
                    let dot =
                        _mm256_add_epi32(_mm256_hadd_epi32(quad0.0, quad1.0), _mm256_hadd_epi32(quad0.1, quad1.1));
                    let sums = _mm256_set1_epi32((a[t].half_sums.as_ptr() as *const i32).read_unaligned());
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(pairs, sums), 5);
                    let total = _mm256_sub_epi32(dot, offset);
                    let scaled = _mm256_mul_ps(_mm256_set1_ps(a[t].d), _mm256_cvtepi32_ps(total));
                    acc[t] = _mm256_fmadd_ps(d, scaled, acc[t]);
                }
            }
        }
        acc
    }

    /// The eight lanes' sums of a group for each of `T` tokens (lane order
    /// [`super::LANE_ROWS`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_tokens<const T: usize>(
        dtype: DType,
        group: &[u8],
        acts: &[&[BlockQ8]; T],
    ) -> [[f32; 8]; T] {
        let lanes = match dtype {
            DType::Q4K => dot_q4_k(group, acts),
            DType::Q6K => dot_q6_k(group, acts),
            DType::Q4_0 => dot_blocks32::<T, 0>(group, acts),
            DType::Q4_1 => dot_blocks32::<T, 1>(group, acts),
            DType::Q5_0 => dot_blocks32::<T, 2>(group, acts),
            DType::Q5_1 => dot_blocks32::<T, 3>(group, acts),
            _ => dot_blocks32::<T, 4>(group, acts),
        };
        lanes.map(|v| {
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            out
        })
    }
}
