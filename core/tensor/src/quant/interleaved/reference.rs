//! The scalar references of the interleaved group kernels: each row's sum
//! from the interleaved bytes in a kernel's own order of operations, so a
//! test can hold every kernel to the bits it must give (and a CPU without
//! AVX2 computes with them). Apart from the kernels because they read the
//! layouts element by element, as no kernel does.

use super::{
    element, f16_at, in_row_order, BlockQ8, DType, GroupKernel, HalvesLayout, InterleavedRows, GROUP, IQ4XS_SCALES,
    LANE_ROWS, Q4K_MINS, Q4K_SCALES, QK,
};

/// Scalar reference of [`dot_group`] on the scalar kernel, which computes
/// as the AVX2 kernels do: [`dot_group_reference`] of
/// [`GroupKernel::Scalar`].
pub fn dot_group_scalar(rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    dot_group_reference(GroupKernel::Scalar, rows, g, acts)
}

/// The bits `kernel` gives for group `g` (on any CPU): each row's sum from
/// the interleaved bytes, in the kernel's order of operations per block.
/// The kernels agree but for q6_k, q3_k, q2_k and iq4_xs, whose sub-block
/// scales the VNNI kernels apply in floats per sub-block and the others in
/// integers (`SubBlockScaling`).
pub fn dot_group_reference(kernel: GroupKernel, rows: &InterleavedRows, g: usize, acts: &[BlockQ8]) -> [f32; GROUP] {
    let (dtype, data) = (rows.dtype, rows.group(g));
    match dtype {
        DType::Q4K | DType::Q5K => return in_row_order(k_scalar(dtype, data, acts)),
        DType::Q6K | DType::Q3K | DType::Q2K => {
            return in_row_order(halves_scalar(dtype, data, acts, SubBlockScaling::of(kernel)))
        }
        DType::IQ4XS => return in_row_order(iq4_xs_scalar(data, acts, SubBlockScaling::of(kernel))),
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

/// How a kernel weights the integer sums of the sub-blocks with an integer
/// scale of their own (q6_k's, q3_k's and q2_k's 16-element halves,
/// iq4_xs's 32-element sub-blocks) by their rows' scales.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SubBlockScaling {
    /// One float step per sub-block, `block += (d·sc)·Σ`: the VNNI kernels,
    /// whose `vpdpbusd` sums reach i32 without a multiply the scale could
    /// ride on.
    Float,
    /// The scales multiplied in integers (on AVX2 by the `madd` that widens
    /// the `maddubs` pair sums anyway), one float step per super block:
    /// the AVX2 kernels and the scalar fallback.
    Integer,
}

impl SubBlockScaling {
    fn of(kernel: GroupKernel) -> SubBlockScaling {
        match kernel {
            GroupKernel::Vnni => SubBlockScaling::Float,
            GroupKernel::Avx2 | GroupKernel::Scalar => SubBlockScaling::Integer,
        }
    }
}

/// The q6_k, q3_k or q2_k lanes, in the order of operations of the kernels
/// that scale them `scaling`. Per super block (whose act blocks share one
/// scale `a.d`) and lane, over its act blocks' 16-element halves, with
/// `chain = Σ q·a − offset·Σ a` (exact):
/// - [`SubBlockScaling::Float`]: `block += (d·sc)·chain`, one float step per
///   half, then `acc += a.d·block`;
/// - [`SubBlockScaling::Integer`]: `total += sc·chain` in i32 (exact: at most
///   16 · 128 · 16 · 32 · 127 < 2³¹ for q6_k), then `acc += (d·a.d)·total`.
///
/// q2_k also `mins += dmin·(a.d·Σ_half m·Σ a)`; then `acc − mins`.
fn halves_scalar(dtype: DType, data: &[u8], acts: &[BlockQ8], scaling: SubBlockScaling) -> [f32; GROUP] {
    let (layout, size) = (HalvesLayout::of(dtype), InterleavedRows::block_bytes(dtype));
    let offset = if dtype == DType::Q2K { 0 } else { 1 << layout.offset_shift };
    let (mut acc, mut mins) = ([0f32; GROUP], [0f32; GROUP]);
    for (block, sub) in data.chunks_exact(size).zip(acts.chunks_exact(8)) {
        for (lane, &row) in LANE_ROWS.iter().enumerate() {
            let d = f16_at(block, 2 * lane);
            let (mut block_acc, mut total, mut min_total) = (0f32, 0i32, 0i32);
            for (j, a) in sub.iter().enumerate() {
                for half in 0..2 {
                    let dot: i32 = (16 * half..16 * half + 16)
                        .map(|e| element(dtype, block, row, 32 * j + e) * a.qs[e] as i32)
                        .sum();
                    let (sc, m) = layout.scale_min(dtype, block, 2 * j + half, lane);
                    let chain = dot - offset * a.half_sums[half] as i32;
                    match scaling {
                        SubBlockScaling::Float => block_acc = (d * sc as f32).mul_add(chain as f32, block_acc),
                        SubBlockScaling::Integer => total += sc * chain,
                    }
                    min_total += m * a.half_sums[half] as i32;
                }
            }
            let a_d = sub[0].d;
            acc[lane] = match scaling {
                SubBlockScaling::Float => a_d.mul_add(block_acc, acc[lane]),
                SubBlockScaling::Integer => (d * a_d).mul_add(total as f32, acc[lane]),
            };
            if dtype == DType::Q2K {
                mins[lane] = f16_at(block, 16 + 2 * lane).mul_add(a_d * min_total as f32, mins[lane]);
            }
        }
    }
    std::array::from_fn(|lane| acc[lane] - mins[lane])
}

/// The iq4_xs lanes, in the order of operations of the kernels that scale
/// them `scaling`: per super block (whose act blocks share one scale
/// `a.d`), over its sub-blocks, either `block += (d·sc)·dot` then `acc +=
/// a.d·block` ([`SubBlockScaling::Float`]), or `total += sc·dot` in i32
/// (exact: at most 8 · 32 · 32 · 127 · 127 < 2³¹) then `acc +=
/// (d·a.d)·total` ([`SubBlockScaling::Integer`]).
fn iq4_xs_scalar(data: &[u8], acts: &[BlockQ8], scaling: SubBlockScaling) -> [f32; GROUP] {
    let size = InterleavedRows::block_bytes(DType::IQ4XS);
    let mut acc = [0f32; GROUP];
    for (block, sub) in data.chunks_exact(size).zip(acts.chunks_exact(8)) {
        let (mut block_acc, mut total) = ([0f32; GROUP], [0i32; GROUP]);
        for (j, a) in sub.iter().enumerate() {
            for (lane, &row) in LANE_ROWS.iter().enumerate() {
                let dot: i32 = (0..QK).map(|e| element(DType::IQ4XS, block, row, 32 * j + e) * a.qs[e] as i32).sum();
                let sc = block[IQ4XS_SCALES + 8 * j + lane] as i8;
                match scaling {
                    SubBlockScaling::Float => {
                        let scale = f16_at(block, 2 * lane) * sc as f32;
                        block_acc[lane] = scale.mul_add(dot as f32, block_acc[lane]);
                    }
                    SubBlockScaling::Integer => total[lane] += sc as i32 * dot,
                }
            }
        }
        for (lane, acc) in acc.iter_mut().enumerate() {
            *acc = match scaling {
                SubBlockScaling::Float => sub[0].d.mul_add(block_acc[lane], *acc),
                SubBlockScaling::Integer => (f16_at(block, 2 * lane) * sub[0].d).mul_add(total[lane] as f32, *acc),
            };
        }
    }
    acc
}

/// The q4_k (or q5_k) lanes, in the kernel's order of operations: per
/// super block (whose act blocks share one scale `a.d`), `block +=
/// (d·sc)·dot` over its sub-blocks and `mins += (dmin·m)·a.s`, then `acc
/// += a.d·block`; then `acc − mins`.
fn k_scalar(dtype: DType, data: &[u8], acts: &[BlockQ8]) -> [f32; GROUP] {
    let size = InterleavedRows::block_bytes(dtype);
    let (mut acc, mut mins) = ([0f32; GROUP], [0f32; GROUP]);
    for (block, sub) in data.chunks_exact(size).zip(acts.chunks_exact(8)) {
        let mut block_acc = [0f32; GROUP];
        for (j, a) in sub.iter().enumerate() {
            for (lane, &row) in LANE_ROWS.iter().enumerate() {
                let dot: i32 = (0..QK).map(|e| element(dtype, block, row, 32 * j + e) * a.qs[e] as i32).sum();
                let (d, dmin) = (f16_at(block, 2 * lane), f16_at(block, 16 + 2 * lane));
                let (sc, m) = (block[Q4K_SCALES + 8 * j + lane] as f32, block[Q4K_MINS + 8 * j + lane] as f32);
                block_acc[lane] = (d * sc).mul_add(dot as f32, block_acc[lane]);
                mins[lane] = (dmin * m).mul_add(a.s, mins[lane]);
            }
        }
        for (acc, block_acc) in acc.iter_mut().zip(block_acc) {
            *acc = sub[0].d.mul_add(block_acc, *acc);
        }
    }
    std::array::from_fn(|lane| acc[lane] - mins[lane])
}
