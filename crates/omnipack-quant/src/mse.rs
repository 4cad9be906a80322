//! The error-minimising MLX affine quantizer (`method: mse`).
//!
//! Same layout as `mx.quantize` (codes `q` in `[0, 2^bits - 1]`, one scale and bias per group,
//! stored in the source dtype, `w' = scale * q + bias`), but each group's scale and bias are
//! searched for the smallest squared error instead of spanning the group's minimum and maximum.
//! Per group of `g` elements, with `n = 2^bits - 1`:
//!
//! 1. The `rtn` candidate: `mx.quantize`'s scale, bias and codes, bit for bit.
//! 2. Three starting grids spanning 100 %, 90 % and 80 % of `[min, max]` (centred). For each,
//!    one pass computes the codes `q = clamp(rint((w - b) / s), 0, n)` and the least-squares
//!    scale and bias for those codes (a 2x2 linear regression of `w` on `q`, from the sums of
//!    `q`, `q^2`, `q (w - b)` and `w - b`). The fit with the smallest squared error is kept.
//! 3. Two more passes refit it (new codes for the fitted grid, then a new fit): alternating
//!    minimisation, each step lowering the error.
//! 4. The scale is rounded to the stored dtype, and the bias refitted for that scale (same
//!    codes) and rounded too.
//! 5. The codes for the stored scale and bias are computed and the group's error measured as
//!    `mx.dequantize` reconstructs it (in the stored dtype, see [`crate::quality`]), in f64.
//!    The result replaces the `rtn` group only when its squared error is smaller by more than
//!    a relative `1e-9` (a margin far above the summation error), so `mse` is never worse than
//!    `rtn` on any group.
//!
//! Cost: about seven passes over each group on top of `rtn`'s (five search passes, two error
//! measurements), no data beyond the weights. Every group is computed on its own in a fixed
//! order of operations with no fused multiply-add, so the output is the same for any thread
//! count and for both kernel builds (portable and AVX2).

use crate::dtype::Dtype;
#[cfg(target_arch = "x86_64")]
use crate::kernels::has_avx2;
use crate::kernels::{
    ErrorStats, MAGIC, MAGIC_BITS, affine_codes32, affine_params_of_range, affine_range,
    decode_impl, dispatch, encode_impl, first_non_finite, pack32, round_to_dtype,
};
use crate::quality::mlx_dequant8;

/// Widths of the starting grids, as fractions of the group's `max - min` (centred).
const STARTS: [f32; 3] = [1.0, 0.9, 0.8];

/// Least-squares refits of the best start.
const REFITS: usize = 2;

/// The search result replaces the `rtn` group only when its squared error is below
/// `rtn`'s times `1 - MARGIN`.
const MARGIN: f64 = 1e-9;

/// Largest group size.
const MAX_GROUP: usize = 128;

/// Sums over a group for one grid: of the codes, their squares, codes times `w - bias`, and
/// `w - bias`.
#[derive(Debug, Clone, Copy)]
struct PassSums {
    q: f64,
    qq: f64,
    qv: f64,
    v: f64,
}

#[inline(always)]
fn sum8(a: &[f32; 8]) -> f64 {
    a.iter().map(|&x| f64::from(x)).sum()
}

/// Codes of `w` on the grid `(scale, bias)` (through the reciprocal of the scale), and the
/// sums the least-squares fit needs.
#[inline(always)]
fn codes_pass<const BITS: u32>(w: &[f32], scale: f32, bias: f32) -> PassSums {
    let n = ((1u32 << BITS) - 1) as f32;
    let inv = 1.0 / scale;
    let mut sq = [0f32; 8];
    let mut sqq = [0f32; 8];
    let mut sqv = [0f32; 8];
    let mut sv = [0f32; 8];
    for c in w.chunks_exact(8) {
        for i in 0..8 {
            let v = c[i] - bias;
            let t = (v * inv).clamp(0.0, n);
            // rint, ties to even (t is in [0, 255]).
            let q = (t + MAGIC) - MAGIC;
            sq[i] += q;
            sqq[i] += q * q;
            sqv[i] += q * v;
            sv[i] += v;
        }
    }
    PassSums {
        q: sum8(&sq),
        qq: sum8(&sqq),
        qv: sum8(&sqv),
        v: sum8(&sv),
    }
}

/// The least-squares scale and bias for the codes of a pass made with `bias`, and the error
/// reduction of the fit (`Sqv^2 / Sqq`: the larger, the smaller the error). `None` when the
/// codes are all equal or the fit is not a usable positive scale.
#[inline(always)]
fn refit(s: &PassSums, bias: f32, g: f64) -> Option<(f32, f32, f64)> {
    let sqq = s.qq - s.q * s.q / g;
    let sqv = s.qv - s.q * s.v / g;
    if !(sqq > 0.0 && sqv > 0.0) {
        return None;
    }
    let scale = sqv / sqq;
    let offset = (s.v - scale * s.q) / g;
    let (sf, bf) = (scale as f32, (f64::from(bias) + offset) as f32);
    (sf.is_normal() && (1.0 / sf).is_finite() && bf.is_finite()).then_some((
        sf,
        bf,
        sqv * sqv / sqq,
    ))
}

/// Searches the scale and bias of one group (steps 2-4 of the module docs): the stored
/// (rounded to `store`) scale and bias, or `None` when no usable grid was found.
#[inline(always)]
fn search<const BITS: u32>(w: &[f32], w_min: f32, w_max: f32, store: Dtype) -> Option<(f32, f32)> {
    let n = ((1u32 << BITS) - 1) as f32;
    let g = w.len() as f64;
    let range = w_max - w_min;
    if !(range > 0.0 && range.is_finite()) {
        return None;
    }
    let mid = w_min + range * 0.5;
    // (scale, bias, gain) of the best fit, and the pass it was fitted on (sums, bias used).
    let mut best: Option<((f32, f32, f64), PassSums, f32)> = None;
    for f in STARTS {
        let span = range * f;
        let (scale, bias) = (span / n, mid - span * 0.5);
        if !(scale.is_normal() && (1.0 / scale).is_finite()) {
            continue;
        }
        let sums = codes_pass::<BITS>(w, scale, bias);
        if let Some(fit) = refit(&sums, bias, g)
            && best.is_none_or(|(b, _, _)| fit.2 > b.2)
        {
            best = Some((fit, sums, bias));
        }
    }
    let ((mut scale, mut bias, _), mut sums, mut pass_bias) = best?;
    for _ in 0..REFITS {
        let next = codes_pass::<BITS>(w, scale, bias);
        let Some((s2, b2, _)) = refit(&next, bias, g) else {
            break;
        };
        (sums, pass_bias) = (next, bias);
        (scale, bias) = (s2, b2);
    }
    // Round the scale, then refit the bias for the stored scale on the same codes:
    // bias = pass_bias + mean(w - pass_bias - scale * q).
    let s_st = round_to_dtype(scale, store);
    if !(s_st.is_normal() && (1.0 / s_st).is_finite()) {
        return None;
    }
    let b = f64::from(pass_bias) + (sums.v - f64::from(s_st) * sums.q) / g;
    let b_st = round_to_dtype(b as f32, store);
    b_st.is_finite().then_some((s_st, b_st))
}

/// Codes of `w` on the stored grid `(scale, bias)`, nearest level (through the reciprocal).
#[inline(always)]
fn codes_on_grid<const BITS: u32>(w: &[f32], scale: f32, bias: f32, q: &mut [u32]) {
    let n = ((1u32 << BITS) - 1) as f32;
    let top = (1i32 << BITS) - 1;
    let inv = 1.0 / scale;
    for (c, o) in w.chunks_exact(8).zip(q.chunks_exact_mut(8)) {
        for i in 0..8 {
            let t = ((c[i] - bias) * inv).clamp(0.0, n);
            let r = ((t + MAGIC).to_bits() as i32).wrapping_sub(MAGIC_BITS);
            o[i] = r.clamp(0, top) as u32;
        }
    }
}

/// Squared error (f64) and largest absolute error of the codes `q` with the stored scale and
/// bias, reconstructed as `mx.dequantize` does; with `REF`, also the sum of `w^2` (f64).
#[inline(always)]
fn group_error<const AVX: bool, const REF: bool>(
    w: &[f32],
    q: &[u32],
    scale: f32,
    bias: f32,
    store: Dtype,
) -> (f64, f32, f64) {
    let mut se = [0f64; 8];
    let mut sr = [0f64; 8];
    let mut me = [0f32; 8];
    for (c, qc) in w.chunks_exact(8).zip(q.chunks_exact(8)) {
        let qf: [f32; 8] = core::array::from_fn(|i| (qc[i] as i32) as f32);
        let r = mlx_dequant8::<AVX>(&qf, scale, bias, store);
        for i in 0..8 {
            let x = f64::from(c[i]);
            let e = x - f64::from(r[i]);
            se[i] += e * e;
            if REF {
                sr[i] += x * x;
            }
            let ae = e.abs() as f32;
            me[i] = if ae > me[i] { ae } else { me[i] };
        }
    }
    let max = me.iter().fold(0f32, |a, &b| a.max(b));
    (se.iter().sum(), max, sr.iter().sum())
}

/// Quantizes one group: packs its codes into `words` and returns the stored scale and bias,
/// or the index of the first non-finite element.
#[inline(always)]
fn mse_group<const AVX: bool, const BITS: u32>(
    w: &[f32],
    store: Dtype,
    words: &mut [u32],
    stats: Option<&mut ErrorStats>,
) -> Result<(f32, f32), usize> {
    let g = w.len();
    let Some((w_min, w_max)) = affine_range(w) else {
        return Err(first_non_finite(w).unwrap_or(0));
    };
    // The rtn candidate, exactly as `mx.quantize`.
    let (scale, bias) = affine_params_of_range::<BITS>(w_min, w_max);
    let (rs, rb) = (round_to_dtype(scale, store), round_to_dtype(bias, store));
    let mut q_rtn = [0u32; MAX_GROUP];
    let (chunks, _) = q_rtn[..g].as_chunks_mut::<32>();
    for (c, q) in w.chunks_exact(32).zip(chunks) {
        affine_codes32::<BITS>(c, scale, bias, q);
    }
    let (e_rtn, m_rtn, sum_ref) = group_error::<AVX, true>(w, &q_rtn[..g], rs, rb, store);
    let mut q_mse = [0u32; MAX_GROUP];
    let mut chosen = (&q_rtn, rs, rb, e_rtn, m_rtn);
    if e_rtn > 0.0
        && let Some((ms, mb)) = search::<BITS>(w, w_min, w_max, store)
    {
        codes_on_grid::<BITS>(w, ms, mb, &mut q_mse[..g]);
        let (e, m, _) = group_error::<AVX, false>(w, &q_mse[..g], ms, mb, store);
        if e < e_rtn * (1.0 - MARGIN) {
            chosen = (&q_mse, ms, mb, e, m);
        }
    }
    let (q, s, b, e, m) = chosen;
    let (chunks, _) = q[..g].as_chunks::<32>();
    for (qc, out) in chunks.iter().zip(words.chunks_exact_mut(BITS as usize)) {
        pack32::<BITS>(qc, out);
    }
    if let Some(st) = stats {
        st.count += g as u64;
        st.sum_sq_err += e;
        st.sum_sq_ref += sum_ref;
        st.max_abs_err = st.max_abs_err.max(m);
    }
    Ok((s, b))
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mse_rows_bits<const AVX: bool, const BITS: u32>(
    w: &[f32],
    group: usize,
    store: Dtype,
    codes: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
    mut stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let words_per_group = group * BITS as usize / 32;
    for (gi, ((wg, cg), (s, b))) in w
        .chunks_exact(group)
        .zip(codes.chunks_exact_mut(words_per_group))
        .zip(scales.iter_mut().zip(biases.iter_mut()))
        .enumerate()
    {
        (*s, *b) = mse_group::<AVX, BITS>(wg, store, cg, stats.as_deref_mut())
            .map_err(|at| gi * group + at)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mse_impl<const AVX: bool>(
    w: &[f32],
    group: usize,
    bits: u8,
    store: Dtype,
    codes: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    match bits {
        2 => mse_rows_bits::<AVX, 2>(w, group, store, codes, scales, biases, stats),
        3 => mse_rows_bits::<AVX, 3>(w, group, store, codes, scales, biases, stats),
        4 => mse_rows_bits::<AVX, 4>(w, group, store, codes, scales, biases, stats),
        6 => mse_rows_bits::<AVX, 6>(w, group, store, codes, scales, biases, stats),
        _ => mse_rows_bits::<AVX, 8>(w, group, store, codes, scales, biases, stats),
    }
}

mod mse_f32 {
    use super::*;
    dispatch!(mse_impl, mse_avx, (w: &[f32], group: usize, bits: u8, store: Dtype, codes: &mut [u32], scales: &mut [f32], biases: &mut [f32], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mse_bytes_bits<const AVX: bool, const BITS: u32>(
    src: &[u8],
    dtype: Dtype,
    cols: usize,
    group: usize,
    codes: &mut [u8],
    scales: &mut [u8],
    biases: &mut [u8],
    mut stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let es = dtype.size_bytes() as usize;
    let groups = cols / group;
    let wpg = group * BITS as usize / 32;
    let row_code_bytes = cols * BITS as usize / 8;
    let mut row = vec![0f32; cols];
    let mut s_row = vec![0f32; groups];
    let mut b_row = vec![0f32; groups];
    let mut words = [0u32; 32];
    for (r, ((src_row, crow), (srow, brow))) in src
        .chunks_exact(cols * es)
        .zip(codes.chunks_exact_mut(row_code_bytes))
        .zip(
            scales
                .chunks_exact_mut(groups * es)
                .zip(biases.chunks_exact_mut(groups * es)),
        )
        .enumerate()
    {
        decode_impl::<AVX>(src_row, dtype, &mut row);
        for (g, (wg, cg)) in row
            .chunks_exact(group)
            .zip(crow.chunks_exact_mut(wpg * 4))
            .enumerate()
        {
            let (s, b) = mse_group::<AVX, BITS>(wg, dtype, &mut words[..wpg], stats.as_deref_mut())
                .map_err(|at| r * cols + g * group + at)?;
            for (dst, w) in cg.chunks_exact_mut(4).zip(&words[..wpg]) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
            s_row[g] = s;
            b_row[g] = b;
        }
        encode_impl::<AVX>(&s_row, dtype, srow);
        encode_impl::<AVX>(&b_row, dtype, brow);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mse_bytes_impl<const AVX: bool>(
    src: &[u8],
    dtype: Dtype,
    cols: usize,
    group: usize,
    bits: u8,
    codes: &mut [u8],
    scales: &mut [u8],
    biases: &mut [u8],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    match bits {
        2 => mse_bytes_bits::<AVX, 2>(src, dtype, cols, group, codes, scales, biases, stats),
        3 => mse_bytes_bits::<AVX, 3>(src, dtype, cols, group, codes, scales, biases, stats),
        4 => mse_bytes_bits::<AVX, 4>(src, dtype, cols, group, codes, scales, biases, stats),
        6 => mse_bytes_bits::<AVX, 6>(src, dtype, cols, group, codes, scales, biases, stats),
        _ => mse_bytes_bits::<AVX, 8>(src, dtype, cols, group, codes, scales, biases, stats),
    }
}

mod mse_bytes {
    use super::*;
    dispatch!(mse_bytes_impl, mse_bytes_avx, (src: &[u8], dtype: Dtype, cols: usize, group: usize, bits: u8, codes: &mut [u8], scales: &mut [u8], biases: &mut [u8], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

/// The error-minimising counterpart of [`crate::kernels::affine_quantize`]: same arguments,
/// same layout (codes, and scales and biases rounded to `store` and widened back), each
/// group's scale and bias searched for the smallest error after MLX dequantization and never
/// worse than `mx.quantize`'s (see the module docs). When `stats` is given, accumulates the
/// reconstruction error as `mx.dequantize` computes it. Returns the index of the first
/// non-finite element as the error.
#[allow(clippy::too_many_arguments)]
pub fn affine_quantize_mse(
    w: &[f32],
    cols: usize,
    group: usize,
    bits: u8,
    store: Dtype,
    codes: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    assert!(matches!(group, 32 | 64 | 128) && matches!(bits, 2 | 3 | 4 | 6 | 8));
    assert!(cols.is_multiple_of(group) && w.len().is_multiple_of(cols.max(1)));
    assert_eq!(codes.len() * 32, w.len() * bits as usize);
    assert_eq!(scales.len() * group, w.len());
    assert_eq!(biases.len(), scales.len());
    mse_f32::dispatched(w, group, bits, store, codes, scales, biases, stats)
}

/// [`affine_quantize_mse`] straight from little-endian source bytes (`F32`, `F16` or `BF16`
/// rows of `cols` elements) to output bytes, like [`crate::kernels::affine_quantize_bytes`].
/// Bit-identical to the f32 API.
#[allow(clippy::too_many_arguments)]
pub fn affine_quantize_mse_bytes(
    src: &[u8],
    dtype: Dtype,
    cols: usize,
    group: usize,
    bits: u8,
    codes: &mut [u8],
    scales: &mut [u8],
    biases: &mut [u8],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    assert!(matches!(group, 32 | 64 | 128) && matches!(bits, 2 | 3 | 4 | 6 | 8));
    assert!(dtype.is_working_float() && cols.is_multiple_of(group));
    let es = dtype.size_bytes() as usize;
    let rows = src.len() / (cols * es).max(1);
    assert_eq!(src.len(), rows * cols * es);
    assert_eq!(codes.len(), rows * cols * bits as usize / 8);
    assert_eq!(scales.len(), rows * cols / group * es);
    assert_eq!(biases.len(), scales.len());
    mse_bytes::dispatched(src, dtype, cols, group, bits, codes, scales, biases, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refit_recovers_an_exact_grid() {
        // w = 0.25 * q - 1 for q = 0..15: the fit finds scale 0.25 and bias -1.
        let w: Vec<f32> = (0..64).map(|i| (i % 16) as f32 * 0.25 - 1.0).collect();
        let sums = codes_pass::<4>(&w, 0.26, -1.1);
        let (s, b, _) = refit(&sums, -1.1, 64.0).unwrap();
        let sums = codes_pass::<4>(&w, s, b);
        let (s, b, _) = refit(&sums, b, 64.0).unwrap();
        assert!((s - 0.25).abs() < 1e-6 && (b + 1.0).abs() < 1e-6, "{s} {b}");
    }

    #[test]
    fn constant_and_degenerate_groups_fall_back_to_rtn() {
        for v in [0.0f32, 0.5, -3.0, 1e-30] {
            let w = [v; 32];
            assert_eq!(search::<4>(&w, v, v, Dtype::F16), None);
        }
        let mut w = [0f32; 32];
        w[3] = f32::MAX;
        w[4] = -f32::MAX;
        assert_eq!(search::<4>(&w, -f32::MAX, f32::MAX, Dtype::F32), None);
    }
}
