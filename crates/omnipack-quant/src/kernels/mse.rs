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
//!    `mx.dequantize` reconstructs it (in the stored dtype, see the `quality` module), like the
//!    `rtn` candidate's. The result replaces the `rtn` group only when its squared error is
//!    smaller by more than a relative `1e-5` (a margin far above the f32 summation error), so
//!    `mse` is never worse than `rtn` on any group.
//!
//! Cost per group: the `rtn` candidate and its error, one pass over the three starting grids
//! (three grids' work), two refit passes, the final codes and their error: about eight
//! `rtn`-sized passes. No data beyond the weights. Every group is computed on its own in a fixed
//! order of operations with no fused multiply-add, so the output is the same for any thread
//! count and for both kernel builds (portable and AVX2).

#[cfg(target_arch = "x86_64")]
use super::has_avx2;
use super::lanes::{LaneErrors, affine_error32, round_one};
use super::{
    ErrorStats, GroupMethod, MAGIC, affine_codes32, affine_params_of_range, affine_range, dispatch,
    first_non_finite, group_bytes, groups, pack32,
};
use crate::dtype::Dtype;

/// Widths of the starting grids, as fractions of the group's `max - min` (centred).
const STARTS: [f32; 3] = [1.0, 0.9, 0.8];

/// Least-squares refits of the best start.
const REFITS: usize = 2;

/// The search result replaces the `rtn` group only when its squared error is below
/// `rtn`'s times `1 - MARGIN`. The errors are summed in f32 lanes (relative error below
/// `2e-6` for 128 elements: each square and each addition rounds by at most `2^-24`), so a
/// win by this margin is a win in exact arithmetic too.
const MARGIN: f64 = 1e-5;

/// Groups whose `rtn` squared error is at most this keep `rtn`: it is exact or as good as
/// (and far above the `2^-149` steps of f32 underflow, so the margin argument holds). So do
/// groups whose error overflows f32 (values beyond about `1e19`).
const EXACT_ENOUGH: f64 = 1e-30;

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

/// The sum of 8 lanes, in a fixed order.
#[inline(always)]
fn sum8(a: &[f32; 8]) -> f64 {
    let s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    f64::from(s)
}

/// Codes of `w` on the grid `(scale, bias)` (through the reciprocal of the scale), and the
/// sums the least-squares fit needs. Per element: `v = w - bias`,
/// `q = rint(min(max(v / scale, 0), n))` (the `MAGIC` trick, ties to even).
#[inline(always)]
fn codes_pass<const AVX: bool, const BITS: u32>(w: &[f32], scale: f32, bias: f32) -> PassSums {
    let n = ((1u32 << BITS) - 1) as f32;
    let inv = 1.0 / scale;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 enabled.
        return unsafe { avx2::codes_pass(w, inv, bias, n) };
    }
    // Two sets of lane sums (even and odd chunks of 8) halve the chains of dependent
    // additions; they are added lane by lane at the end.
    let mut acc = [[[0f32; 8]; 4]; 2];
    for c16 in w.chunks_exact(16) {
        for (set, c) in acc.iter_mut().zip(c16.chunks_exact(8)) {
            for i in 0..8 {
                let v = c[i] - bias;
                let q = ((v * inv).max(0.0).min(n) + MAGIC) - MAGIC;
                set[0][i] += q;
                set[1][i] += q * q;
                set[2][i] += q * v;
                set[3][i] += v;
            }
        }
    }
    let lanes = |k: usize| -> [f32; 8] { core::array::from_fn(|i| acc[0][k][i] + acc[1][k][i]) };
    PassSums {
        q: sum8(&lanes(0)),
        qq: sum8(&lanes(1)),
        qv: sum8(&lanes(2)),
        v: sum8(&lanes(3)),
    }
}

/// The starting grids `(1 / scale, bias)` in one pass over the group: per grid, the sums of
/// [`codes_pass`] (the sum of `w - bias` derived from the sum of `w`). One loop over
/// independent grids keeps the CPU busy instead of waiting on one chain of additions.
#[inline(always)]
fn starts_pass<const AVX: bool, const BITS: u32>(
    w: &[f32],
    inv: &[f32; 3],
    bias: &[f32; 3],
) -> [PassSums; 3] {
    let n = ((1u32 << BITS) - 1) as f32;
    let mut acc = [[[0f32; 8]; 3]; 3];
    let mut sx = [0f32; 8];
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 enabled.
        unsafe { avx2::starts_pass(w, inv, bias, n, &mut acc, &mut sx) };
    }
    if !AVX || cfg!(not(target_arch = "x86_64")) {
        for c in w.chunks_exact(8) {
            for i in 0..8 {
                sx[i] += c[i];
            }
            for (k, a) in acc.iter_mut().enumerate() {
                for i in 0..8 {
                    let v = c[i] - bias[k];
                    let q = ((v * inv[k]).max(0.0).min(n) + MAGIC) - MAGIC;
                    a[0][i] += q;
                    a[1][i] += q * q;
                    a[2][i] += q * v;
                }
            }
        }
    }
    let sum_w = sum8(&sx);
    let g = w.len() as f64;
    core::array::from_fn(|k| PassSums {
        q: sum8(&acc[k][0]),
        qq: sum8(&acc[k][1]),
        qv: sum8(&acc[k][2]),
        v: sum_w - g * f64::from(bias[k]),
    })
}

/// The least-squares scale and bias for the codes of a pass made with `bias`, and the error
/// reduction of the fit (`Sqv^2 / Sqq`: the larger, the smaller the error). `None` when the
/// codes are all equal or the fit is not a usable positive scale.
#[inline(always)]
fn refit(s: &PassSums, bias: f32, inv_g: f64) -> Option<(f32, f32, f64)> {
    let sqq = s.qq - s.q * s.q * inv_g;
    let sqv = s.qv - s.q * s.v * inv_g;
    if !(sqq > 0.0 && sqv > 0.0) {
        return None;
    }
    let scale = sqv / sqq;
    let offset = (s.v - scale * s.q) * inv_g;
    let (sf, bf) = (scale as f32, (f64::from(bias) + offset) as f32);
    // A positive normal scale also has a finite reciprocal.
    let usable = sf.is_normal() && bf.is_finite();
    usable.then_some((sf, bf, sqv * scale))
}

/// Searches the scale and bias of one group (steps 2-4 of the module docs): the stored
/// (rounded to `store`) scale and bias, or `None` when no usable grid was found.
#[inline(always)]
fn search<const AVX: bool, const BITS: u32>(
    w: &[f32],
    w_min: f32,
    w_max: f32,
    store: Dtype,
) -> Option<(f32, f32)> {
    let n = ((1u32 << BITS) - 1) as f32;
    // Group sizes are powers of two: multiplying by 1/g is exact.
    let inv_g = 1.0 / w.len() as f64;
    let range = w_max - w_min;
    if !(range > 0.0 && range.is_finite()) {
        return None;
    }
    let mid = w_min + range * 0.5;
    // The starting grids; an unusable one (a scale too small to invert) is computed with a
    // harmless stand-in and skipped.
    let mut usable = [false; 3];
    let (mut inv, mut bias) = ([0f32; 3], [0f32; 3]);
    for (k, f) in STARTS.into_iter().enumerate() {
        let span = range * f;
        let scale = span / n;
        usable[k] = scale.is_normal();
        if usable[k] {
            (inv[k], bias[k]) = (1.0 / scale, mid - span * 0.5);
        }
    }
    let starts = starts_pass::<AVX, BITS>(w, &inv, &bias);
    // (scale, bias, gain) of the best fit, and the pass it was fitted on (sums, bias used).
    let mut best: Option<((f32, f32, f64), PassSums, f32)> = None;
    for k in 0..3 {
        if usable[k]
            && let Some(fit) = refit(&starts[k], bias[k], inv_g)
            && best.is_none_or(|(b, _, _)| fit.2 > b.2)
        {
            best = Some((fit, starts[k], bias[k]));
        }
    }
    let ((mut scale, mut bias, _), mut sums, mut pass_bias) = best?;
    for _ in 0..REFITS {
        let next = codes_pass::<AVX, BITS>(w, scale, bias);
        let Some((s2, b2, _)) = refit(&next, bias, inv_g) else {
            break;
        };
        (sums, pass_bias) = (next, bias);
        (scale, bias) = (s2, b2);
    }
    // Round the scale, then refit the bias for the stored scale on the same codes:
    // bias = pass_bias + mean(w - pass_bias - scale * q).
    let s_st = round_one::<AVX>(scale, store);
    if !s_st.is_normal() {
        return None;
    }
    let b = f64::from(pass_bias) + (sums.v - f64::from(s_st) * sums.q) * inv_g;
    let b_st = round_one::<AVX>(b as f32, store);
    b_st.is_finite().then_some((s_st, b_st))
}

/// Codes of `w` on the stored grid `(scale, bias)`, nearest level (through the reciprocal),
/// computed as in [`codes_pass`].
#[inline(always)]
fn codes_on_grid<const AVX: bool, const BITS: u32>(
    w: &[f32],
    scale: f32,
    bias: f32,
    q: &mut [u32],
) {
    let n = ((1u32 << BITS) - 1) as f32;
    let inv = 1.0 / scale;
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 enabled.
        unsafe { avx2::codes_on_grid(w, inv, bias, n, q) };
        return;
    }
    for (c, o) in w.chunks_exact(8).zip(q.chunks_exact_mut(8)) {
        for i in 0..8 {
            let t = ((c[i] - bias) * inv).max(0.0).min(n);
            o[i] = ((t + MAGIC) - MAGIC) as u32;
        }
    }
}

/// The codes of both candidates of a group.
struct Scratch {
    q_rtn: [u32; MAX_GROUP],
    q_mse: [u32; MAX_GROUP],
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            q_rtn: [0; MAX_GROUP],
            q_mse: [0; MAX_GROUP],
        }
    }
}

/// The AVX2 (+F16C) forms of the passes: the same operations in the same order as the
/// portable loops (no fused multiply-add), so both builds give identical bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MAGIC, PassSums, sum8};
    use crate::kernels::range_of_lanes;

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn store8(v: __m256) -> [f32; 8] {
        let mut a = [0f32; 8];
        // SAFETY: 8 lanes into an 8-element array.
        unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
        a
    }

    /// `rint(min(max(t, 0), n))` per lane; `max_ps` returns its second operand for NaN, like
    /// `f32::max` ignores NaN.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn level(t: __m256, n: __m256) -> __m256 {
        let m = _mm256_set1_ps(MAGIC);
        let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), n);
        _mm256_sub_ps(_mm256_add_ps(t, m), m)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn codes_pass(w: &[f32], inv: f32, bias: f32, n: f32) -> PassSums {
        let (inv, b, n) = (_mm256_set1_ps(inv), _mm256_set1_ps(bias), _mm256_set1_ps(n));
        let z = _mm256_setzero_ps();
        let mut acc = [[z; 4]; 2];
        for c16 in w.chunks_exact(16) {
            for (set, c) in acc.iter_mut().zip(c16.chunks_exact(8)) {
                // SAFETY: 8 elements of `c`.
                let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                let v = _mm256_sub_ps(x, b);
                let q = level(_mm256_mul_ps(v, inv), n);
                set[0] = _mm256_add_ps(set[0], q);
                set[1] = _mm256_add_ps(set[1], _mm256_mul_ps(q, q));
                set[2] = _mm256_add_ps(set[2], _mm256_mul_ps(q, v));
                set[3] = _mm256_add_ps(set[3], v);
            }
        }
        let lanes = |k: usize| store8(_mm256_add_ps(acc[0][k], acc[1][k]));
        PassSums {
            q: sum8(&lanes(0)),
            qq: sum8(&lanes(1)),
            qv: sum8(&lanes(2)),
            v: sum8(&lanes(3)),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn starts_pass(
        w: &[f32],
        inv: &[f32; 3],
        bias: &[f32; 3],
        n: f32,
        acc: &mut [[[f32; 8]; 3]; 3],
        sx: &mut [f32; 8],
    ) {
        let n = _mm256_set1_ps(n);
        let inv = inv.map(|x| _mm256_set1_ps(x));
        let b = bias.map(|x| _mm256_set1_ps(x));
        let z = _mm256_setzero_ps();
        let mut a = [[z; 3]; 3];
        let mut sw = z;
        for c in w.chunks_exact(8) {
            // SAFETY: 8 elements of `c`.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            sw = _mm256_add_ps(sw, x);
            for k in 0..3 {
                let v = _mm256_sub_ps(x, b[k]);
                let q = level(_mm256_mul_ps(v, inv[k]), n);
                a[k][0] = _mm256_add_ps(a[k][0], q);
                a[k][1] = _mm256_add_ps(a[k][1], _mm256_mul_ps(q, q));
                a[k][2] = _mm256_add_ps(a[k][2], _mm256_mul_ps(q, v));
            }
        }
        for k in 0..3 {
            for j in 0..3 {
                acc[k][j] = store8(a[k][j]);
            }
        }
        *sx = store8(sw);
    }

    /// `kernels::affine_range` lane for lane: `min_ps(x, m)` is `x < m ? x : m`, like the
    /// portable loop.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn range(w: &[f32]) -> Option<(f32, f32)> {
        let mut mn = _mm256_set1_ps(f32::INFINITY);
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        let zero = _mm256_setzero_ps();
        let mut z = zero;
        for c in w.chunks_exact(8) {
            // SAFETY: 8 elements of `c`.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            mn = _mm256_min_ps(x, mn);
            mx = _mm256_max_ps(x, mx);
            z = _mm256_add_ps(z, _mm256_mul_ps(x, zero));
        }
        range_of_lanes(&store8(mn), &store8(mx), &store8(z))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn codes_on_grid(w: &[f32], inv: f32, bias: f32, n: f32, q: &mut [u32]) {
        let (inv, b, n) = (_mm256_set1_ps(inv), _mm256_set1_ps(bias), _mm256_set1_ps(n));
        for (c, o) in w.chunks_exact(8).zip(q.chunks_exact_mut(8)) {
            // SAFETY: 8 elements in, 8 out.
            let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let l = level(_mm256_mul_ps(_mm256_sub_ps(x, b), inv), n);
            unsafe { _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, _mm256_cvtps_epi32(l)) };
        }
    }
}

/// [`affine_range`]: the group's minimum and maximum, `None` when a value is not finite.
#[inline(always)]
fn group_range<const AVX: bool>(w: &[f32]) -> Option<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 enabled.
        return unsafe { avx2::range(w) };
    }
    affine_range(w)
}

/// Quantizes one group: packs its codes into `words` and returns the stored scale and bias,
/// or the index of the first non-finite element.
#[inline(always)]
fn mse_group<const AVX: bool, const BITS: u32>(
    w: &[f32],
    store: Dtype,
    words: &mut [u32],
    scratch: &mut Scratch,
    stats: Option<&mut ErrorStats>,
) -> Result<(f32, f32), usize> {
    let g = w.len();
    let Some((w_min, w_max)) = group_range::<AVX>(w) else {
        return Err(first_non_finite(w).unwrap_or(0));
    };
    // The rtn candidate, exactly as `mx.quantize`.
    let (scale, bias) = affine_params_of_range::<BITS>(w_min, w_max);
    let (rs, rb) = (
        round_one::<AVX>(scale, store),
        round_one::<AVX>(bias, store),
    );
    let Scratch { q_rtn, q_mse } = scratch;
    let mut err_rtn = LaneErrors::default();
    let (chunks, _) = q_rtn[..g].as_chunks_mut::<32>();
    for (c, q) in w.chunks_exact(32).zip(chunks) {
        affine_codes32::<BITS>(c, scale, bias, q);
        affine_error32::<AVX>(c, q, rs, rb, store, &mut err_rtn);
    }
    let e_rtn = err_rtn.sum_sq_err();
    let mut chosen = (&*q_rtn, rs, rb, err_rtn);
    if e_rtn > EXACT_ENOUGH
        && e_rtn.is_finite()
        && let Some((ms, mb)) = search::<AVX, BITS>(w, w_min, w_max, store)
    {
        codes_on_grid::<AVX, BITS>(w, ms, mb, &mut q_mse[..g]);
        let mut err = LaneErrors::default();
        let (chunks, _) = q_mse[..g].as_chunks::<32>();
        for (c, q) in w.chunks_exact(32).zip(chunks) {
            affine_error32::<AVX>(c, q, ms, mb, store, &mut err);
        }
        if err.sum_sq_err() < e_rtn * (1.0 - MARGIN) {
            chosen = (&*q_mse, ms, mb, err);
        }
    }
    let (q, s, b, err) = chosen;
    let (chunks, _) = q[..g].as_chunks::<32>();
    for (qc, out) in chunks.iter().zip(words.chunks_exact_mut(BITS as usize)) {
        pack32::<BITS>(qc, out);
    }
    if let Some(st) = stats {
        err.add_to(st, g);
    }
    Ok((s, b))
}

impl GroupMethod for Scratch {
    #[inline(always)]
    fn group<const AVX: bool, const BITS: u32>(
        &mut self,
        w: &[f32],
        store: Dtype,
        words: &mut [u32],
        stats: Option<&mut ErrorStats>,
    ) -> Result<(f32, f32), usize> {
        mse_group::<AVX, BITS>(w, store, words, self, stats)
    }
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
    let mut scratch = Scratch::new();
    groups::<AVX, _>(
        &mut scratch,
        w,
        group,
        bits,
        store,
        codes,
        scales,
        biases,
        stats,
    )
}

mod mse_f32 {
    use super::*;
    dispatch!(mse_impl, mse_avx, (w: &[f32], group: usize, bits: u8, store: Dtype, codes: &mut [u32], scales: &mut [f32], biases: &mut [f32], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
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
    let mut scratch = Scratch::new();
    group_bytes::<AVX, _>(
        &mut scratch,
        src,
        dtype,
        cols,
        group,
        bits,
        codes,
        scales,
        biases,
        stats,
    )
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
        let sums = codes_pass::<false, 4>(&w, 0.26, -1.1);
        let (s, b, _) = refit(&sums, -1.1, 1.0 / 64.0).unwrap();
        let sums = codes_pass::<false, 4>(&w, s, b);
        let (s, b, _) = refit(&sums, b, 1.0 / 64.0).unwrap();
        assert!((s - 0.25).abs() < 1e-6 && (b + 1.0).abs() < 1e-6, "{s} {b}");
    }

    #[test]
    fn constant_and_degenerate_groups_fall_back_to_rtn() {
        for v in [0.0f32, 0.5, -3.0, 1e-30] {
            let w = [v; 32];
            assert_eq!(search::<false, 4>(&w, v, v, Dtype::F16), None);
        }
        let mut w = [0f32; 32];
        w[3] = f32::MAX;
        w[4] = -f32::MAX;
        assert_eq!(
            search::<false, 4>(&w, -f32::MAX, f32::MAX, Dtype::F32),
            None
        );
    }
}
