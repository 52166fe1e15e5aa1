//! The scale searches of the k-quants' quantizers, as llama.cpp's
//! reference quantizers run them (ggml's `quantize_row_q*_K_ref`, which
//! its quantize tool uses when no importance matrix is given), so that
//! tailor writes the bytes llama.cpp writes for the same f32 input.
//!
//! Each search tries a few candidate scales for a sub-block, rounds the
//! values onto the levels at each, and keeps the least-squares scale (and,
//! for the formats with a min, the min) of the best rounding. Bit-equal
//! results need the same f32 operations in the same order, and ggml's
//! rounding (`nearest_int`: half to even); the comments name the
//! quantity each loop forms, not a style: reordering a sum changes bytes.

/// Sub-blocks whose largest magnitude is below this are all zero (ggml's
/// `GROUP_MAX_EPS`).
const ZERO_GROUP: f32 = 1e-15;

/// Rounds to the nearest integer, halves to even, as ggml's `nearest_int`
/// does for `|v| < 2²²` (all it is used on): adding 1.5·2²³ leaves the
/// integer in the low mantissa bits (an add, where `round_ties_even` is a
/// library call on x86-64's baseline).
pub(super) fn nearest(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007F_FFFF) - 0x0040_0000
}

/// The candidate scales of [`fit_scale_min`]: `steps + 1` level counts
/// `levels + first + step·i` spread over the sub-block's range, each
/// rounding's error weighted and measured as `|e|` or `e²`.
#[derive(Clone, Copy)]
pub(super) struct MinSearch {
    /// The highest level (levels are `0..=levels`).
    pub levels: i32,
    /// The first candidate's offset from `levels` (ggml's `rmin`).
    pub first: f32,
    /// The step between candidates (ggml's `rdelta`).
    pub step: f32,
    /// Candidates after the first (ggml's `nstep`).
    pub steps: i32,
    /// Absolute rather than squared errors (ggml's `use_mad`).
    pub absolute: bool,
}

/// Fits `x[i] ≈ scale · q[i] − min` with `q[i]` in `0..=levels` and
/// `min ≥ 0` (zero inside the fitted range), minimizing the error weighted
/// by `w` over the candidates of `search` (ggml's `make_qkx2_quants`).
/// Writes the levels to `q` and returns `(scale, min)`.
pub(super) fn fit_scale_min(x: &[f32], w: &[f32], search: MinSearch, q: &mut [u8]) -> (f32, f32) {
    let n = x.len();
    let (mut low, mut high) = (x[0], x[0]);
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        low = low.min(x[i]);
        high = high.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if low > 0.0 {
        low = 0.0;
    }
    if high == low {
        q[..n].fill(0);
        return (0.0, -low);
    }
    let levels = search.levels as f32;
    let error = |diff: f32| if search.absolute { diff.abs() } else { diff * diff };
    let mut iscale = levels / (high - low);
    let mut scale = 1.0 / iscale;
    let mut best = 0f32;
    for i in 0..n {
        let l = nearest(iscale * (x[i] - low)).clamp(0, search.levels);
        q[i] = l as u8;
        best += w[i] * error(scale * l as f32 + low - x[i]);
    }
    if search.steps < 1 {
        return (scale, -low);
    }
    let mut trial = [0u8; 32];
    for candidate in 0..=search.steps {
        iscale = (search.first + search.step * candidate as f32 + levels) / (high - low);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest(iscale * (x[i] - low)).clamp(0, search.levels);
            trial[i] = l as u8;
            let l = l as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_low = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_low > 0.0 {
            this_low = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let mut total = 0f32;
        for i in 0..n {
            total += w[i] * error(this_scale * trial[i] as f32 + this_low - x[i]);
        }
        if total < best {
            q[..n].copy_from_slice(&trial[..n]);
            best = total;
            scale = this_scale;
            low = this_low;
        }
    }
    (scale, -low)
}

/// Rounds each `sub`-element sub-block of `x` again, to the step and
/// offset its block stored (`stored(j)`: an element is about
/// `step · (q − bias) − offset`), into `quants` as `q` in `0..=top`. A
/// sub-block whose stored step is zero keeps the levels its search chose,
/// as ggml's quantizers leave them.
pub(super) fn round_to_stored(
    x: &[f32],
    quants: &mut [u8],
    sub: usize,
    (top, bias): (i32, i32),
    stored: impl Fn(usize) -> (f32, f32),
) {
    for (j, (values, levels)) in x.chunks_exact(sub).zip(quants.chunks_exact_mut(sub)).enumerate() {
        let (step, offset) = stored(j);
        if step == 0.0 {
            continue;
        }
        for (q, &v) in levels.iter_mut().zip(values) {
            *q = (nearest((v + offset) / step) + bias).clamp(0, top) as u8;
        }
    }
}

/// The element of largest magnitude, with its sign (the first of equals),
/// and that magnitude.
pub(super) fn signed_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Fits `x[i] ≈ scale · l[i]` with `l[i]` in `−levels..levels`, weighted by
/// `x[i]²`, over 19 candidate scales around `−levels / max` (ggml's
/// `make_qx_quants` with `rmse_type` 1 and no importance weights). Writes
/// `l[i] + levels` to `q` and returns the scale.
pub(super) fn fit_symmetric(x: &[f32], levels: i32, q: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < ZERO_GROUP {
        q[..x.len()].fill(0);
        return 0.0;
    }
    let nmax = levels as f32;
    // Σ x²·x·l and Σ x²·l² of the rounding at `iscale`, and that rounding.
    let round = |iscale: f32, q: Option<&mut [u8]>| {
        let (mut sum_lx, mut sum_l2) = (0f32, 0f32);
        let mut q = q;
        for (i, &v) in x.iter().enumerate() {
            let l = nearest(iscale * v).clamp(-levels, levels - 1);
            if let Some(q) = q.as_deref_mut() {
                q[i] = (l + levels) as u8;
            }
            let w = v * v;
            sum_lx += w * v * l as f32;
            sum_l2 += w * l as f32 * l as f32;
        }
        (sum_lx, sum_l2)
    };
    let (sum_lx, sum_l2) = round(-nmax / max, Some(&mut *q));
    let mut scale = if sum_l2 != 0.0 { sum_lx / sum_l2 } else { 0.0 };
    let mut best = scale * sum_lx;
    for candidate in (-9..=9).filter(|&c| c != 0) {
        let iscale = -(nmax + 0.1 * candidate as f32) / max;
        let (sum_lx, sum_l2) = round(iscale, None);
        if sum_l2 > 0.0 && sum_lx * sum_lx > best * sum_l2 {
            round(iscale, Some(&mut *q));
            scale = sum_lx / sum_l2;
            best = scale * sum_lx;
        }
    }
    scale
}

/// Fits `x[i] ≈ scale · l[i]` with `l[i]` in `−levels..levels`, weighted by
/// `x[i]²`: rounds at `−levels / max`, then moves single elements to the
/// level their leave-one-out scale picks while that lowers the error, up
/// to five passes (ggml's `make_q3_quants` with `do_rmse`). Writes
/// `l[i] + levels` to `q` and returns the scale.
pub(super) fn fit_by_moves(x: &[f32], levels: i32, q: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < ZERO_GROUP {
        q[..x.len()].fill(0);
        return 0.0;
    }
    let iscale = -(levels as f32) / max;
    let mut l: [i32; 16] = [0; 16];
    let (mut sum_lx, mut sum_l2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        l[i] = nearest(iscale * v).clamp(-levels, levels - 1);
        let w = v * v;
        sum_lx += w * v * l[i] as f32;
        sum_l2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let mut slx = sum_lx - w * v * l[i] as f32;
            if slx <= 0.0 {
                continue;
            }
            let mut sl2 = sum_l2 - w * l[i] as f32 * l[i] as f32;
            let moved = nearest(v * sl2 / slx).clamp(-levels, levels - 1);
            if moved == l[i] {
                continue;
            }
            slx += w * v * moved as f32;
            sl2 += w * moved as f32 * moved as f32;
            if sl2 > 0.0 && slx * slx * sum_l2 > sum_lx * sum_lx * sl2 {
                l[i] = moved;
                sum_lx = slx;
                sum_l2 = sl2;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (q, l) in q.iter_mut().zip(&l[..x.len()]) {
        *q = (l + levels) as u8;
    }
    sum_lx / sum_l2
}

#[cfg(test)]
mod tests {
    use super::{fit_by_moves, fit_scale_min, fit_symmetric, nearest, MinSearch};

    #[test]
    fn nearest_rounds_halves_to_even_as_ggml() {
        let cases = [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-7.51, -8)];
        for (v, want) in cases {
            assert_eq!(nearest(v), want, "{v}");
        }
    }

    #[test]
    fn each_search_fits_its_input_no_worse_than_plain_rounding() {
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 29) as f32 - 11.0) * 0.013).collect();
        let w: Vec<f32> = x.iter().map(|v| 0.1 + v.abs()).collect();
        let search = MinSearch { levels: 15, first: -1.0, step: 0.1, steps: 20, absolute: false };
        let mut q = [0u8; 32];
        let (scale, min) = fit_scale_min(&x, &w, search, &mut q);
        let plain = MinSearch { steps: 0, ..search };
        let mut q_plain = [0u8; 32];
        let (scale_plain, min_plain) = fit_scale_min(&x, &w, plain, &mut q_plain);
        let error = |s: f32, m: f32, q: &[u8]| -> f32 {
            x.iter().zip(q).zip(&w).map(|((v, &l), w)| w * (s * l as f32 - m - v).powi(2)).sum()
        };
        assert!(error(scale, min, &q) <= error(scale_plain, min_plain, &q_plain));
        assert!(min >= 0.0 && q.iter().all(|&l| l <= 15));

        let mut q6 = [0u8; 16];
        let scale = fit_symmetric(&x[..16], 32, &mut q6);
        let fitted: f32 = x[..16].iter().zip(&q6).map(|(v, &l)| (scale * (l as f32 - 32.0) - v).abs()).sum();
        assert!(fitted < 16.0 * scale.abs(), "within a step per element");
        let mut q3 = [0u8; 16];
        let scale = fit_by_moves(&x[..16], 4, &mut q3);
        assert!(q3.iter().all(|&l| l < 8) && scale != 0.0);
        assert_eq!(fit_symmetric(&[0.0; 16], 32, &mut q6), 0.0);
    }
}
