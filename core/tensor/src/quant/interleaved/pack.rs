//! Building the interleaved groups at load time: each format's GGUF
//! blocks of eight rows rearranged into the layout the module above
//! describes, in parallel over the groups.

use super::{InterleavedRows, GROUP, LANE_ROWS, Q6K_ACT_BYTES, Q6K_QUAD_BYTES};
use crate::DType;
use rayon::prelude::*;

/// Interleaves the whole groups of eight rows of a `rows × row_len` matrix
/// of `dtype`, if it is a GGUF block type (not nf4, not a dense type) and
/// there is one whole group.
pub fn interleave_rows(dtype: DType, bytes: &[u8], rows: usize, row_len: usize) -> Option<InterleavedRows> {
    if !dtype.is_gguf_block() || rows < GROUP || !row_len.is_multiple_of(dtype.block_size()) {
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
    crate::tensor::advise_huge_pages(&mut data);
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
                    DType::Q4K => interleave_k_block(&at, 16, local),
                    DType::Q5K => {
                        interleave_k_block(&at, 48, local);
                        interleave_q5_k_high_bits(&at, local);
                    }
                    DType::Q6K => interleave_q6_k_block(&at, local),
                    DType::IQ4XS => interleave_iq4_xs_block(&at, local),
                    DType::Q3K | DType::Q2K => interleave_low_bit_block(dtype, &at, local),
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

/// One iq4_xs block of eight rows: `d` (lane order), each sub-block's
/// signed scales a byte per lane, then each sub-block's indices in iq4_nl's
/// 8-byte runs, four rows per 32 bytes.
fn interleave_iq4_xs_block<'a>(at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    for row in LANE_ROWS {
        data.extend_from_slice(&at(row)[0..2]);
    }
    for sub in 0..8 {
        data.extend(LANE_ROWS.iter().map(|&row| crate::quant::iq4::iq4_xs_scale(at(row), sub) as i8 as u8));
    }
    for sub in 0..8 {
        for quad in 0..2 {
            for run in 0..2 {
                for row in 4 * quad..4 * quad + 4 {
                    let start = 8 + 16 * sub + 8 * run;
                    data.extend_from_slice(&at(row)[start..start + 8]);
                }
            }
        }
    }
}

/// One q3_k or q2_k block of eight rows: `d` (and q2_k's `dmin`) in
/// lane order, the sub-block scales a byte per lane (q3_k's unpacked to
/// i8, q2_k's scale-and-min bytes as stored), then per act block and quad
/// the 2-bit parts (run `k` at bits `2k..2k+2`), and for q3_k the act
/// block's third bits (bit `4·quad + k`).
fn interleave_low_bit_block<'a>(dtype: DType, at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    use crate::quant::k_quants::{q2_k_quant, q3_k_quant, q3_k_scales};
    let scale_offsets: &[usize] = if dtype == DType::Q2K { &[80, 82] } else { &[108] };
    for &offset in scale_offsets {
        for row in LANE_ROWS {
            data.extend_from_slice(&at(row)[offset..offset + 2]);
        }
    }
    let scales: [[u8; 16]; GROUP] = std::array::from_fn(|row| match dtype {
        DType::Q2K => std::array::from_fn(|s| at(row)[s]),
        _ => q3_k_scales(at(row)).map(|s| s as u8),
    });
    let by_sub_block: [[u8; GROUP]; 16] = std::array::from_fn(|s| LANE_ROWS.map(|row| scales[row][s]));
    data.extend_from_slice(by_sub_block.as_flattened());
    // Each row's quants, as stored in the group (q3_k: q + 4).
    let quants: [[u8; 256]; GROUP] = std::array::from_fn(|row| {
        std::array::from_fn(|e| match dtype {
            DType::Q2K => q2_k_quant(at(row), e) as u8,
            _ => (q3_k_quant(at(row), e) + 4) as u8,
        })
    });
    for j in 0..8 {
        let mut third = [0u8; 32];
        for quad in 0..2 {
            for seat in 0..4 {
                let q = &quants[4 * quad + seat];
                for i in 0..8 {
                    // Run k holds elements 32j + 8k + i.
                    let run = |k: usize| q[32 * j + 8 * k + i];
                    data.push((0..4).fold(0, |byte, k| byte | (run(k) & 3) << (2 * k)));
                    third[8 * seat + i] |= (0..4).fold(0, |byte, k| byte | (run(k) >> 2) << (4 * quad + k));
                }
            }
        }
        if dtype == DType::Q3K {
            data.extend_from_slice(&third);
        }
    }
}

/// One q6_k block of eight rows: `d` (lane order), the sixteen i8
/// sub-block scales a byte per lane, then each 32-element act block's
/// quants `q + 32`, per quad: two 32-byte loads of low nibbles in 8-byte
/// runs (four rows each), then the high bit pairs of all four runs.
fn interleave_q6_k_block<'a>(at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    for row in LANE_ROWS {
        data.extend_from_slice(&at(row)[208..210]);
    }
    for s in 0..16 {
        data.extend(LANE_ROWS.iter().map(|&row| at(row)[192 + s]));
    }
    // Each row's 256 quants unpacked once (GGUF scatters an element's bits).
    let quants: [[u8; 256]; GROUP] = std::array::from_fn(|row| crate::quant::formats::q6_k_quants(at(row)));
    let start = data.len();
    data.resize(start + 8 * Q6K_ACT_BYTES, 0);
    let out = &mut data[start..];
    for (row, q) in quants.iter().enumerate() {
        for j in 0..8 {
            let at = Q6K_ACT_BYTES * j + Q6K_QUAD_BYTES * (row / 4) + 8 * (row % 4);
            for i in 0..8 {
                // Run k holds elements 32j + 8k + i.
                let run = |k: usize| q[32 * j + 8 * k + i];
                out[at + i] = run(0) & 0x0F | (run(2) & 0x0F) << 4;
                out[at + 32 + i] = run(1) & 0x0F | (run(3) & 0x0F) << 4;
                out[at + 64 + i] = (0..4).fold(0, |byte, k| byte | (run(k) >> 4) << (2 * k));
            }
        }
    }
}

/// One q4_k block of eight rows (q5_k's low nibbles, whose quants are at
/// `quants` in the GGUF block): `d`, `dmin` (lane order), each
/// sub-block's scales then mins as a byte per lane, then each 32-byte chunk
/// of quants in 8-byte runs, four rows per 32 bytes.
fn interleave_k_block<'a>(at: &dyn Fn(usize) -> &'a [u8], quants: usize, data: &mut Vec<u8>) {
    for offset in [0, 2] {
        for row in LANE_ROWS {
            data.extend_from_slice(&at(row)[offset..offset + 2]);
        }
    }
    for part in [0, 1] {
        for j in 0..8 {
            for row in LANE_ROWS {
                let (sc, m) = crate::quant::formats::q4_k_scale_min(&at(row)[4..16], j);
                data.push(if part == 0 { sc } else { m });
            }
        }
    }
    for chunk in 0..4 {
        for quad in 0..2 {
            for run in 0..4 {
                for row in 4 * quad..4 * quad + 4 {
                    let start = quants + 32 * chunk + 8 * run;
                    data.extend_from_slice(&at(row)[start..start + 8]);
                }
            }
        }
    }
}

/// A q5_k block's fifth bits for [`Q5K_HIGH`]: GGUF keeps element `e`'s
/// in bit `e / 32` of byte `e % 32` of its 32 bytes at offset 16.
fn interleave_q5_k_high_bits<'a>(at: &dyn Fn(usize) -> &'a [u8], data: &mut Vec<u8>) {
    for chunk in 0..4 {
        for quad in 0..2 {
            for row in 4 * quad..4 * quad + 4 {
                let qh = &at(row)[16..48];
                data.extend((0..8).map(|i| {
                    (0..4).fold(0u8, |byte, k| {
                        let bits = qh[8 * k + i] >> (2 * chunk);
                        byte | (bits & 1) << (2 * k) | ((bits >> 1) & 1) << (2 * k + 1)
                    })
                }));
            }
        }
    }
}
