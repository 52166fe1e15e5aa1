//! Row-interleaved weights for the AVX2 decode and prefill paths.
//!
//! A row-at-a-time dot spends most of its instructions per block on things
//! other than multiplying: unpacking, one scale multiply and broadcast, one
//! horizontal step at the end of a short row. At load time, matrices of
//! every GGUF block type are also stored eight rows at a time, block by
//! block: the eight rows' scales (and mins) as one run, then their quants
//! in 8-byte runs, four rows to a 32-byte load. One activation block,
//! broadcast 8 bytes at a time, then meets four rows per `maddubs`; eight
//! rows' sums land in the eight lanes of one register, their scales
//! convert in one instruction, and no horizontal reduction is needed.
//!
//! The layouts, per format:
//! - q4_0, q4_1, iq4_nl: the eight f16 scales (and q4_1's mins), then the
//!   nibble runs. A run keeps GGUF's nibble pairing (byte `j` holds
//!   elements `j` and `j + 16`), so a 32-byte load gives elements `8c..8c+8`
//!   of four rows in its low nibbles and `8c+16..8c+24` in its high ones.
//!   iq4_nl's nibbles are indices, looked up in its table by one shuffle.
//! - q5_0, q5_1: q4's runs plus, per run, each row's two bytes of fifth bits
//!   (for the low and the high nibbles), spread onto the bytes by a shuffle
//!   and a compare.
//! - q8_0: the scales, then the signed bytes in runs.
//! - iq4_xs: per 256-element block the eight `d`, the 6-bit sub-block
//!   scales as an i8 per row, then each sub-block's runs as iq4_nl's.
//! - q4_k, q5_k: per 256-element block the eight `d` and `dmin`, the 6-bit
//!   sub-block scales and mins unpacked to bytes (a byte per row), then each
//!   32-byte chunk of quants (sub-block `2c` in its low nibbles, `2c + 1` in
//!   its high ones) in 8-byte runs; q5_k adds 32 bytes of fifth bits per
//!   chunk and quad of rows.
//! - q6_k, q3_k, q2_k (16-element sub-blocks, an integer scale each): the
//!   eight `d` (q2_k: and `dmin`), the sixteen sub-block scales a byte per
//!   row, then per 32-element act block and quad the quants as GGUF splits
//!   them (q6_k: two loads of low nibbles and one of high bit pairs; q3_k
//!   and q2_k: one load of 2-bit parts, run `k` at bits `2k..2k+2`, and q3_k
//!   one load of third bits shared by both quads).
//!
//! Every group is as large as its GGUF rows, or within 4 % of it (q3_k,
//! q5_k, iq4_xs: scales unpacked to bytes). The kernel's sums come out in
//! lane order [`LANE_ROWS`], and the scales are stored in that order. Rows
//! past the last whole group of eight keep the row kernel.
//!
//! Results equal the row kernel's within f32 rounding (the integer sums are
//! exact; the scaling order differs); each row's result never depends on
//! which thread or batch computed it. The sub-block scales of q6_k, q3_k,
//! q2_k and iq4_xs are multiplied in integers on AVX2 and in floats per
//! sub-block on VNNI (`SubBlockScaling`), so those four formats' bits
//! differ between the two kinds of CPU (never between the paths of one).

use super::{f16_at, scales_shared, shares_act_scales, BlockQ8, QK};
use crate::DType;

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
        DType::Q4K | DType::Q5K => (Q4K_QUANTS, 4),
        DType::IQ4NL => (16, 2),
        DType::IQ4XS => (IQ4XS_QUANTS, 2),
        _ => (16, 4),
    }
}

/// iq4_xs, per 256-element block: the eight `d`, then per 32-element
/// sub-block the eight rows' signed scales (a byte per lane), then per
/// sub-block its quants as iq4_nl's ([`IQ4XS_SUB_BYTES`] each).
const IQ4XS_SCALES: usize = 16;
const IQ4XS_QUANTS: usize = 80;
const IQ4XS_SUB_BYTES: usize = 128;

/// q4_k: the eight `dmin` follow the eight `d`; then 8 × 8 scales, 8 × 8 mins, quants.
const Q4K_SCALES: usize = 32;
const Q4K_MINS: usize = 96;
const Q4K_QUANTS: usize = 160;
/// q5_k: q4_k's group, then per 32-byte chunk of quants and quad 32 bytes
/// of fifth bits: byte `8·seat + i` holds, for each run `k`, the fifth bit
/// of its low-nibble element in bit `2k` and of its high-nibble one in bit
/// `2k + 1`.
const Q5K_HIGH: usize = Q4K_QUANTS + 1024;
/// q6_k: 16 × 8 i8 scales follow the eight `d`; then the quants, per act
/// block [`Q6K_ACT_BYTES`], per quad [`Q6K_QUAD_BYTES`]: 64 bytes of low
/// nibbles, 32 of high bit pairs.
const Q6K_SCALES: usize = 16;
const Q6K_QUANTS: usize = 144;
const Q6K_QUAD_BYTES: usize = 96;
const Q6K_ACT_BYTES: usize = 2 * Q6K_QUAD_BYTES;
/// q3_k as q6_k's group (eight `d`, 16 × 8 i8 scales), then per act block
/// the 2-bit low parts of each quad (run `k` at bits `2k..2k+2`), then one
/// load of third bits for both quads (bit `4·quad + k`).
const Q3K_ACT_BYTES: usize = 96;
/// q2_k: eight `d`, eight `dmin`, 16 × 8 scale bytes as GGUF's (scale in
/// the low nibble, min in the high), then per act block the 2-bit quants of
/// each quad as q3_k's low parts; exactly as large as the GGUF rows.
const Q2K_SCALES: usize = 32;
const Q2K_QUANTS: usize = Q2K_SCALES + 128;
const Q2K_ACT_BYTES: usize = 64;

/// Where the groups of the formats with 16-element sub-blocks (q6_k, q3_k,
/// q2_k) keep their parts.
#[derive(Clone, Copy)]
struct HalvesLayout {
    /// The sub-block scales (a byte per lane, sub-block after sub-block).
    scales: usize,
    /// The first act block's quants.
    quants: usize,
    /// Bytes of quants per act block.
    act_bytes: usize,
    /// log2 of the offset the stored quants carry (q6_k 32, q3_k 4).
    offset_shift: i32,
}

impl HalvesLayout {
    fn of(dtype: DType) -> HalvesLayout {
        match dtype {
            DType::Q3K => {
                HalvesLayout { scales: Q6K_SCALES, quants: Q6K_QUANTS, act_bytes: Q3K_ACT_BYTES, offset_shift: 2 }
            }
            DType::Q2K => {
                HalvesLayout { scales: Q2K_SCALES, quants: Q2K_QUANTS, act_bytes: Q2K_ACT_BYTES, offset_shift: 0 }
            }
            _ => HalvesLayout { scales: Q6K_SCALES, quants: Q6K_QUANTS, act_bytes: Q6K_ACT_BYTES, offset_shift: 5 },
        }
    }

    /// The integer scale (and q2_k's min) of sub-block `s` in `lane`.
    fn scale_min(self, dtype: DType, block: &[u8], s: usize, lane: usize) -> (i32, i32) {
        let byte = block[self.scales + 8 * s + lane];
        match dtype {
            DType::Q2K => ((byte & 0x0F) as i32, (byte >> 4) as i32),
            _ => (byte as i8 as i32, 0),
        }
    }
}

/// The 2-bit part (run `k` at bits `2k..2k+2`) of element `e` of `row` in
/// a q3_k or q2_k group's block, and the byte offset of its act block.
fn low_bits(dtype: DType, block: &[u8], row: usize, e: usize) -> (i32, usize) {
    let layout = HalvesLayout::of(dtype);
    let (k, i) = ((e % 32) / 8, e % 8);
    let act = layout.quants + layout.act_bytes * (e / 32);
    let byte = block[act + 32 * (row / 4) + 8 * (row % 4) + i];
    (((byte >> (2 * k)) & 3) as i32, act)
}

/// The quant `q + 32` (0..63) of element `e` of `row` in a q6_k group's block.
fn q6_k_element(block: &[u8], row: usize, e: usize) -> i32 {
    let (k, i) = ((e % 32) / 8, e % 8);
    let base = Q6K_QUANTS + Q6K_ACT_BYTES * (e / 32) + Q6K_QUAD_BYTES * (row / 4) + 8 * (row % 4) + i;
    let low = block[base + 32 * (k % 2)];
    let nibble = if k < 2 { low & 0x0F } else { low >> 4 };
    let high = (block[base + 64] >> (2 * k)) & 3;
    (nibble | high << 4) as i32
}

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
        DType::Q6K => q6_k_element(block, row, e),
        DType::Q2K => low_bits(dtype, block, row, e).0,
        DType::Q3K => {
            let (low, act) = low_bits(dtype, block, row, e);
            let third = (block[act + 64 + 8 * (row % 4) + e % 8] >> (4 * (row / 4) + (e % 32) / 8)) & 1;
            low | (third as i32) << 2
        }
        DType::Q4K => {
            let r = e % 64;
            nibble(block[base + run_at(runs, e / 64, row, (r % 32) / 8) + r % 8], r >= 32)
        }
        DType::Q5K => {
            let (r, quad, seat) = (e % 64, row / 4, row % 4);
            let low = element(DType::Q4K, block, row, e);
            let bits = block[Q5K_HIGH + 64 * (e / 64) + 32 * quad + 8 * seat + r % 8];
            low | (((bits >> (2 * ((r % 32) / 8) + (r >= 32) as usize)) & 1) as i32) << 4
        }
        DType::IQ4NL => {
            super::IQ4_VALUES[nibble(block[base + run_at(runs, 0, row, (e % 16) / 8) + e % 8], e >= 16) as usize] as i32
        }
        DType::IQ4XS => {
            let sub = &block[IQ4XS_SUB_BYTES * (e / 32)..];
            let r = e % 32;
            super::IQ4_VALUES[nibble(sub[base + run_at(runs, 0, row, (r % 16) / 8) + r % 8], r >= 16) as usize] as i32
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
    /// A GGUF block type.
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
            DType::Q5K => Q5K_HIGH + 256,
            DType::Q6K => Q6K_QUANTS + 8 * Q6K_ACT_BYTES,
            DType::Q3K => Q6K_QUANTS + 8 * Q3K_ACT_BYTES,
            DType::Q2K => Q2K_QUANTS + 8 * Q2K_ACT_BYTES,
            DType::IQ4NL => 16 + 128,
            DType::IQ4XS => IQ4XS_QUANTS + 8 * IQ4XS_SUB_BYTES,
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
                DType::Q4K | DType::Q5K => dequantize_k(dtype, block, member, lane, values),
                DType::Q6K | DType::Q3K | DType::Q2K => dequantize_halves(dtype, block, member, lane, values),
                DType::Q5_0 | DType::Q5_1 => dequantize_q5(dtype, block, member, lane, values),
                DType::IQ4NL | DType::IQ4XS => dequantize_iq4(dtype, block, member, lane, values),
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

fn dequantize_iq4(dtype: DType, block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let d = f16_at(block, 2 * lane);
    for (sub, out) in values.chunks_exact_mut(QK).enumerate() {
        let step = match dtype {
            DType::IQ4XS => d * block[IQ4XS_SCALES + 8 * sub + lane] as i8 as f32,
            _ => d,
        };
        for (e, v) in out.iter_mut().enumerate() {
            *v = step * element(dtype, block, row, QK * sub + e) as f32;
        }
    }
}

fn dequantize_k(dtype: DType, block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let (d, dmin) = (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane));
    for (e, v) in values.iter_mut().enumerate() {
        let (sc, m) = (block[Q4K_SCALES + 8 * (e / 32) + lane] as f32, block[Q4K_MINS + 8 * (e / 32) + lane] as f32);
        *v = d * sc * element(dtype, block, row, e) as f32 - dmin * m;
    }
}

fn dequantize_halves(dtype: DType, block: &[u8], row: usize, lane: usize, values: &mut [f32]) {
    let (layout, d) = (HalvesLayout::of(dtype), f16_at(block, 2 * lane));
    let dmin = if dtype == DType::Q2K { f16_at(block, 16 + 2 * lane) } else { 0.0 };
    let offset = 1 << layout.offset_shift;
    for (e, v) in values.iter_mut().enumerate() {
        let (sc, m) = layout.scale_min(dtype, block, e / 16, lane);
        let q = element(dtype, block, row, e);
        *v = match dtype {
            DType::Q2K => d * sc as f32 * q as f32 - dmin * m as f32,
            _ => d * sc as f32 * (q - offset) as f32,
        };
    }
}

/// Tokens the x86 kernels take per call: each block's quants, unpacked
/// once, meet up to this many tokens' activations. VNNI's forms of the
/// 32-element kernel and the q6_k, q3_k and q2_k kernels of both take
/// [`WIDE_TOKEN_TILE`]: AVX-512 VL gives VNNI 32 registers, for twice the
/// independent `vpdpbusd` chains and half the unpacking per token, and the
/// AVX2 q6_k/q3_k/q2_k kernel keeps one i32 sum per token and quad over a
/// super block, which lets eight tokens share each unpacking (one thread,
/// AVX2-only EPYC, GMAC/s, tiles of 4 / 6 / 8: q6_k 17.5 / 18.1 / 19.0,
/// q3_k 17.5 / 18.1 / 19.1, q2_k 19.6 / 19.5 / 20.0); q4_k's and q5_k's
/// kernel holds both quads' sums per token and stays at four.
pub const TOKEN_TILE: usize = 4;

/// The token tile of VNNI's 32-element kernel (formats with 32-element
/// blocks, and iq4_xs) and of the q6_k, q3_k and q2_k kernels.
pub const WIDE_TOKEN_TILE: usize = 8;

/// The token tile `kernel` takes for `dtype`.
fn token_tile(kernel: GroupKernel, dtype: DType) -> usize {
    let blocks32 = dtype.block_size() == QK || dtype == DType::IQ4XS;
    let halves = matches!(dtype, DType::Q6K | DType::Q3K | DType::Q2K);
    if halves || (kernel == GroupKernel::Vnni && blocks32) {
        WIDE_TOKEN_TILE
    } else {
        TOKEN_TILE
    }
}

/// The implementations of the group kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKernel {
    /// Portable scalar code (the reference).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// The AVX2 kernels with AVX-512 VNNI's `vpdpbusd` for the integer sums.
    Vnni,
}

impl GroupKernel {
    /// The fastest this CPU runs (detected once).
    pub fn detect() -> GroupKernel {
        static DETECTED: std::sync::OnceLock<GroupKernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let all = [GroupKernel::Vnni, GroupKernel::Avx2];
            all.into_iter().find(|k| k.is_supported()).unwrap_or(GroupKernel::Scalar)
        })
    }

    /// Whether this CPU runs this implementation.
    pub fn is_supported(self) -> bool {
        match self {
            GroupKernel::Scalar => true,
            GroupKernel::Avx2 => super::avx2::is_supported(),
            GroupKernel::Vnni => super::avx2::is_supported() && super::packed::vnni_supported(),
        }
    }
}

/// The dot products of group `g`'s eight rows with one token's activations
/// (`blocks` of them, quantized as [`super::quantize_activations_for`] the
/// matrix's type gives them), in row order, on the fastest kernel this CPU
/// runs: bit for bit its [`dot_group_reference`] (the kernels agree but
/// for q6_k, q3_k, q2_k and iq4_xs, within f32 rounding there).
pub fn dot_group(rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    let mut out = [[0f32; GROUP]];
    dot_group_tokens(rows, g, acts, &mut out);
    out[0]
}

/// [`dot_group`] for `out.len()` tokens whose activations lie back to back
/// in `acts`: `out[t]` gets token `t`'s eight sums, bit for bit what
/// [`dot_group`] gives that token alone (the same operations in the same
/// order per token). The prefill's kernel: a block's quants are loaded and
/// unpacked once for a tile of tokens ([`TOKEN_TILE`], [`WIDE_TOKEN_TILE`]).
pub fn dot_group_tokens(rows: &InterleavedRows, g: usize, acts: &[BlockQ8], out: &mut [[f32; GROUP]]) {
    dot_group_tokens_on(GroupKernel::detect(), rows, g, acts, out);
}

/// [`dot_group_tokens`] on the kernel `kernel`, or on its scalar reference
/// ([`dot_group_reference`]) where this CPU does not run it (tests compare
/// the paths this way).
pub fn dot_group_tokens_on(
    kernel: GroupKernel,
    rows: &InterleavedRows,
    g: usize,
    acts: &[BlockQ8],
    out: &mut [[f32; GROUP]],
) {
    let per_token = rows.act_blocks();
    assert!(
        g < rows.groups && acts.len() == out.len() * per_token,
        "dot_group_tokens: group {g}, {} act blocks for {} tokens",
        acts.len(),
        out.len()
    );
    // Checked on the first group only, which every matrix product passes
    // (a check per group would cost a few percent of the kernel).
    assert!(
        g != 0 || !shares_act_scales(rows.dtype) || scales_shared(acts),
        "dot_group_tokens: {} takes activations with one scale per super block (quantize_activations_for)",
        rows.dtype
    );
    #[cfg(target_arch = "x86_64")]
    {
        if kernel != GroupKernel::Scalar && kernel.is_supported() {
            let vnni = kernel == GroupKernel::Vnni;
            let tile_tokens = token_tile(kernel, rows.dtype);
            for (tile, sums) in acts.chunks(tile_tokens * per_token).zip(out.chunks_mut(tile_tokens)) {
                match sums.len() {
                    8 => x86_tile::<8>(vnni, rows, g, tile, sums),
                    7 => x86_tile::<7>(vnni, rows, g, tile, sums),
                    6 => x86_tile::<6>(vnni, rows, g, tile, sums),
                    5 => x86_tile::<5>(vnni, rows, g, tile, sums),
                    4 => x86_tile::<4>(vnni, rows, g, tile, sums),
                    3 => x86_tile::<3>(vnni, rows, g, tile, sums),
                    2 => x86_tile::<2>(vnni, rows, g, tile, sums),
                    _ => x86_tile::<1>(vnni, rows, g, tile, sums),
                }
            }
            return;
        }
    }
    for (token, sums) in acts.chunks_exact(per_token).zip(out.iter_mut()) {
        *sums = dot_group_reference(kernel, rows, g, token);
    }
}

/// One tile of `T` tokens through the AVX2 kernel (its VNNI form when
/// `vnni`), results in row order.
#[cfg(target_arch = "x86_64")]
fn x86_tile<const T: usize>(vnni: bool, rows: &InterleavedRows, g: usize, acts: &[BlockQ8], out: &mut [[f32; GROUP]]) {
    let per_token = rows.act_blocks();
    let tokens: [&[BlockQ8]; T] = std::array::from_fn(|t| &acts[t * per_token..(t + 1) * per_token]);
    let (dtype, group) = (rows.dtype, rows.group(g));
    // SAFETY: the caller detected the kernel's features (AVX2/FMA/F16C, and
    // AVX-512 F/BW/VL/VNNI for `vnni`); the kernel reads `rows.blocks`
    // blocks of the group (its slice holds exactly that many) and
    // `per_token` blocks of each token (sliced above to that length).
    let lanes = unsafe {
        if vnni {
            x86::vnni::dot_tokens(dtype, group, &tokens)
        } else {
            x86::avx2::dot_tokens(dtype, group, &tokens)
        }
    };
    for (sums, token_lanes) in out.iter_mut().zip(lanes) {
        *sums = in_row_order(token_lanes);
    }
}

/// Lanes (in [`LANE_ROWS`] order) put back in row order.
fn in_row_order(lanes: [f32; GROUP]) -> [f32; GROUP] {
    let mut out = [0f32; GROUP];
    for (lane, &row) in LANE_ROWS.iter().enumerate() {
        out[row] = lanes[lane];
    }
    out
}

mod pack;
mod reference;
mod sixteen;
mod wide;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use pack::interleave_rows;
pub use reference::{dot_group_reference, dot_group_scalar};
pub use sixteen::{dot_two_groups, takes_two_groups, tile_order};
pub use wide::{PairBlock, PairedTokens};

/// Whether [`dot_group_pairs`] takes `dtype` on this CPU (the 512-bit
/// token-pair kernels: every interleaved format, with AVX-512 VNNI).
pub fn takes_pairs(dtype: DType) -> bool {
    GroupKernel::detect() == GroupKernel::Vnni && pair_format(dtype).is_some()
}

/// Which of `wide::kernel`'s compiled kernels [`pair_tile`] runs, by format.
fn pair_format(dtype: DType) -> Option<usize> {
    match dtype {
        DType::Q4_0 => Some(0),
        DType::Q4_1 => Some(1),
        DType::Q5_0 => Some(2),
        DType::Q5_1 => Some(3),
        DType::Q8_0 => Some(4),
        DType::IQ4NL => Some(5),
        DType::IQ4XS => Some(6),
        DType::Q6K => Some(7),
        DType::Q3K => Some(8),
        DType::Q2K => Some(9),
        DType::Q4K => Some(10),
        DType::Q5K => Some(11),
        _ => None,
    }
}

/// Token pairs [`dot_group_pairs`] takes per call.
pub const PAIR_TILE: usize = 8;

/// [`dot_group_tokens`] for tokens `first..first + out.len()` of
/// `paired` (`first` even), where [`takes_pairs`] says so: `out[t]` gets
/// token `first + t`'s eight sums, bit for bit what [`dot_group`] gives
/// it alone.
pub fn dot_group_pairs(
    rows: &InterleavedRows,
    g: usize,
    paired: &PairedTokens,
    first: usize,
    out: &mut [[f32; GROUP]],
) {
    assert!(
        takes_pairs(rows.dtype)
            && g < rows.groups
            && paired.blocks == rows.act_blocks()
            && first.is_multiple_of(2)
            && first + out.len() <= paired.tokens,
        "dot_group_pairs: group {g}, tokens {first}.. +{} of {} ({} blocks each)",
        out.len(),
        paired.tokens,
        paired.blocks
    );
    #[cfg(target_arch = "x86_64")]
    {
        let format = pair_format(rows.dtype).unwrap_or(0);
        let group = rows.group(g);
        for (tile, sums) in out.chunks_mut(2 * PAIR_TILE).enumerate() {
            let pair = first / 2 + tile * PAIR_TILE;
            match sums.len().div_ceil(2) {
                8 => pair_tile::<8>(format, group, paired, pair, sums),
                7 => pair_tile::<7>(format, group, paired, pair, sums),
                6 => pair_tile::<6>(format, group, paired, pair, sums),
                5 => pair_tile::<5>(format, group, paired, pair, sums),
                4 => pair_tile::<4>(format, group, paired, pair, sums),
                3 => pair_tile::<3>(format, group, paired, pair, sums),
                2 => pair_tile::<2>(format, group, paired, pair, sums),
                _ => pair_tile::<1>(format, group, paired, pair, sums),
            }
        }
    }
}

/// `P` pairs from pair `first` through the 512-bit kernel, the tokens'
/// sums into `out` (of `2P` or `2P − 1` tokens) in row order.
#[cfg(target_arch = "x86_64")]
fn pair_tile<const P: usize>(
    format: usize,
    group: &[u8],
    paired: &PairedTokens,
    first: usize,
    out: &mut [[f32; GROUP]],
) {
    let pairs: [&[PairBlock]; P] = std::array::from_fn(|p| paired.pair(first + p));
    // SAFETY: `takes_pairs` (checked by the caller) detected AVX-512
    // F/BW/VL/VNNI with AVX2/FMA/F16C; the kernel reads the group's
    // `blocks` blocks (its slice holds exactly that many) and each pair's
    // blocks (as many: `paired.blocks == rows.act_blocks()`).
    let lanes = unsafe {
        match format {
            0 => wide::kernel::dot_pairs::<P, 0>(group, &pairs),
            1 => wide::kernel::dot_pairs::<P, 1>(group, &pairs),
            2 => wide::kernel::dot_pairs::<P, 2>(group, &pairs),
            3 => wide::kernel::dot_pairs::<P, 3>(group, &pairs),
            4 => wide::kernel::dot_pairs::<P, 4>(group, &pairs),
            5 => wide::kernel::dot_pairs::<P, 5>(group, &pairs),
            6 => wide::kernel::dot_pairs::<P, 6>(group, &pairs),
            7 => wide::kernel::dot_halves_pairs::<P, 0>(group, &pairs),
            8 => wide::kernel::dot_halves_pairs::<P, 1>(group, &pairs),
            9 => wide::kernel::dot_halves_pairs::<P, 2>(group, &pairs),
            10 => wide::kernel::dot_k_pairs::<P, false>(group, &pairs),
            _ => wide::kernel::dot_k_pairs::<P, true>(group, &pairs),
        }
    };
    for (t, sums) in out.iter_mut().enumerate() {
        *sums = std::array::from_fn(|row| lanes[t / 2][2 * row + t % 2]);
    }
}
