//! Measured quality: how far each written tensor is from its source.
//!
//! Every quantize measures, while it writes, each quantized or cast tensor's error against its
//! source, on the values its consumer reconstructs:
//!
//! * MLX affine (`int2` ... `int8`): as `mx.dequantize` computes on the CPU, in the dtype of the
//!   stored scales and biases (the source dtype): `w' = round(round(scale * q) + bias)`, where
//!   `round` rounds to that dtype (nearest even; nothing for `F32`). MLX promotes the codes to
//!   the scales' dtype, multiplies, then adds, each operation rounding to it.
//! * bitsandbytes NF4/FP4: as `dequantize_4bit` computes on the CPU: `code[c] * absmax` in f32,
//!   rounded to the source dtype.
//! * Casts (`f32`, `f16`, `bf16`): the cast value itself. Non-finite source elements (masks such
//!   as `-inf`) are skipped.
//!
//! From the sums of squares ([`ErrorStats`]) come the SQNR, `10 log10(sum w^2 / sum (w - w')^2)`
//! in dB, and the relative RMS error `sqrt(sum (w - w')^2 / sum w^2)` (`10^(-SQNR/20)`). An exact
//! reconstruction has an infinite SQNR: in [`Quality`] (and so in JSON, which has no infinity)
//! it is `None`/`null`, with a relative RMS error of 0.
//!
//! All sums are accumulated in a fixed order (in f32 lanes per group or block, then in f64 over
//! a fixed split of each tensor into tasks, then tasks in file order), so the numbers are the
//! same for any thread count.

use serde::Serialize;

use crate::dtype::Dtype;
#[cfg(target_arch = "x86_64")]
use crate::kernels::has_avx2;
use crate::kernels::{Bnb4, ErrorStats, dispatch, f32_to_bf16_bits};

/// Rounds 8 f32 lanes to `dtype` (nearest even) and widens them back; `F32` is unchanged.
#[inline(always)]
pub(crate) fn round_lanes<const AVX: bool>(v: &mut [f32; 8], dtype: Dtype) {
    match dtype {
        Dtype::F16 => {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                use std::arch::x86_64::*;
                // SAFETY: only reached from a function compiled with f16c/avx enabled (the
                // AVX instantiation); the 32-byte load and store are the 8 lanes of `v`.
                unsafe {
                    let x = _mm256_loadu_ps(v.as_ptr());
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                    _mm256_storeu_ps(v.as_mut_ptr(), _mm256_cvtph_ps(h));
                }
                return;
            }
            for x in v.iter_mut() {
                *x = half::f16::from_f32(*x).to_f32();
            }
        }
        Dtype::BF16 => {
            for x in v.iter_mut() {
                *x = f32::from_bits(u32::from(f32_to_bf16_bits(*x)) << 16);
            }
        }
        _ => {}
    }
}

/// Rounds one value to `dtype` and widens it back, like [`crate::kernels::round_to_dtype`];
/// in the AVX build through F16C, inline.
#[inline(always)]
pub(crate) fn round_one<const AVX: bool>(x: f32, dtype: Dtype) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if AVX && dtype == Dtype::F16 {
        use std::arch::x86_64::*;
        // SAFETY: only reached from a function compiled with f16c enabled.
        return unsafe {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
                _mm_set_ss(x),
            )))
        };
    }
    crate::kernels::round_to_dtype(x, dtype)
}

/// Lane sums of an affine reconstruction's error: squared errors, squared references and the
/// largest absolute error, lane `i` holding elements `i, i + 8, ...`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LaneErrors {
    pub(crate) sq_err: [f32; 8],
    pub(crate) sq_ref: [f32; 8],
    pub(crate) max_abs: [f32; 8],
}

impl LaneErrors {
    /// The sum of squared errors (lanes added in order, in f64).
    pub(crate) fn sum_sq_err(&self) -> f64 {
        self.sq_err.iter().map(|&x| f64::from(x)).sum()
    }

    /// Adds the lanes to `stats` (in lane order) for `count` elements.
    pub(crate) fn add_to(&self, stats: &mut ErrorStats, count: usize) {
        stats.count += count as u64;
        stats.sum_sq_err += self.sum_sq_err();
        stats.sum_sq_ref += self.sq_ref.iter().map(|&x| f64::from(x)).sum::<f64>();
        stats.max_abs_err = self
            .max_abs
            .iter()
            .fold(stats.max_abs_err, |a, &b| a.max(b));
    }
}

/// Accumulates the error of 32 codes `q` of `w` (32 elements) reconstructed as
/// `mx.dequantize` does from the stored scale and bias ([`mlx_dequant8`]), in f32 lanes.
#[inline(always)]
pub(crate) fn affine_error32<const AVX: bool>(
    w: &[f32],
    q: &[u32; 32],
    scale: f32,
    bias: f32,
    store: Dtype,
    acc: &mut LaneErrors,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 and F16C enabled.
        unsafe { avx2::affine_error32(w, q, scale, bias, store, acc) };
        return;
    }
    for j in 0..4 {
        let qf: [f32; 8] = core::array::from_fn(|i| (q[j * 8 + i] as i32) as f32);
        let r = mlx_dequant8::<false>(&qf, scale, bias, store);
        for i in 0..8 {
            let x = w[j * 8 + i];
            let e = x - r[i];
            acc.sq_err[i] += e * e;
            acc.sq_ref[i] += x * x;
            let ae = e.abs();
            acc.max_abs[i] = if ae > acc.max_abs[i] {
                ae
            } else {
                acc.max_abs[i]
            };
        }
    }
}

/// Accumulates the error of one bitsandbytes 4-bit block: `w` (a multiple of 8 elements), its
/// packed codes (two per byte, the first in the high nibble) and absmax, reconstructed as
/// `dequantize_4bit` does (`code[c] * absmax` in f32, rounded to `store`), in f32 lanes.
#[inline(always)]
pub(crate) fn bnb4_error<const AVX: bool>(
    w: &[f32],
    packed: &[u8],
    code: &[f32; 16],
    absmax: f32,
    store: Dtype,
    acc: &mut LaneErrors,
) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: only reached from a function compiled with AVX2 and F16C enabled.
        unsafe { avx2::bnb4_error(w, packed, code, absmax, store, acc) };
        return;
    }
    for (c, p) in w.chunks_exact(8).zip(packed.chunks_exact(4)) {
        let mut r: [f32; 8] =
            core::array::from_fn(|i| code[usize::from((p[i / 2] >> (4 - 4 * (i % 2))) & 15)]);
        for x in r.iter_mut() {
            *x *= absmax;
        }
        round_lanes::<false>(&mut r, store);
        for i in 0..8 {
            let e = c[i] - r[i];
            acc.sq_err[i] += e * e;
            acc.sq_ref[i] += c[i] * c[i];
            let ae = e.abs();
            acc.max_abs[i] = if ae > acc.max_abs[i] {
                ae
            } else {
                acc.max_abs[i]
            };
        }
    }
}

/// The AVX2 (+F16C) forms: the same operations in the same order as the portable loops.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::LaneErrors;
    use crate::dtype::Dtype;

    /// The storage dtype as a const parameter (so loops are compiled for one dtype, with no
    /// per-element dispatch): `F16`, `BF16`, anything else (`F32`).
    pub(crate) const F16: u8 = 1;
    pub(crate) const BF16: u8 = 2;
    pub(crate) const F32: u8 = 0;

    /// Rounds 8 lanes to the storage dtype `ST` and back, as [`super::round_lanes`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn round<const ST: u8>(v: __m256) -> __m256 {
        match ST {
            F16 => _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)),
            BF16 => {
                // Round to nearest even on the top 16 bits; NaN keeps its payload, made quiet.
                let b = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
                let r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
                let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
                let rounded = _mm256_and_si256(r, hi);
                let quiet =
                    _mm256_and_si256(_mm256_or_si256(b, _mm256_set1_epi32(0x0040_0000)), hi);
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                _mm256_castsi256_ps(_mm256_blendv_epi8(rounded, quiet, nan))
            }
            _ => v,
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn bnb4_error(
        w: &[f32],
        packed: &[u8],
        code: &[f32; 16],
        absmax: f32,
        store: Dtype,
        acc: &mut LaneErrors,
    ) {
        match store {
            Dtype::F16 => bnb4_error_as::<F16>(w, packed, code, absmax, acc),
            Dtype::BF16 => bnb4_error_as::<BF16>(w, packed, code, absmax, acc),
            _ => bnb4_error_as::<F32>(w, packed, code, absmax, acc),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn bnb4_error_as<const ST: u8>(
        w: &[f32],
        packed: &[u8],
        code: &[f32; 16],
        absmax: f32,
        acc: &mut LaneErrors,
    ) {
        // SAFETY: loads of 8 lanes from 16- and 8-element arrays and chunks of 8.
        unsafe {
            let lo = _mm256_loadu_ps(code.as_ptr());
            let hi = _mm256_loadu_ps(code.as_ptr().add(8));
            let a = _mm256_set1_ps(absmax);
            let sign = _mm256_set1_ps(-0.0);
            // Element i of 4 bytes: byte i / 2, high nibble first.
            let shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
            let mut se = _mm256_loadu_ps(acc.sq_err.as_ptr());
            let mut sr = _mm256_loadu_ps(acc.sq_ref.as_ptr());
            let mut me = _mm256_loadu_ps(acc.max_abs.as_ptr());
            for (c, p) in w.chunks_exact(8).zip(packed.chunks_exact(4)) {
                let bytes = _mm256_set1_epi32(i32::from_le_bytes([p[0], p[1], p[2], p[3]]));
                let idx = _mm256_and_si256(_mm256_srlv_epi32(bytes, shifts), _mm256_set1_epi32(15));
                let from_lo = _mm256_permutevar8x32_ps(lo, idx);
                let from_hi = _mm256_permutevar8x32_ps(hi, idx);
                // Index bit 3 to the sign bit selects the upper half of the code book.
                let upper = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
                let cv = _mm256_blendv_ps(from_lo, from_hi, upper);
                let r = round::<ST>(_mm256_mul_ps(cv, a));
                let x = _mm256_loadu_ps(c.as_ptr());
                let e = _mm256_sub_ps(x, r);
                se = _mm256_add_ps(se, _mm256_mul_ps(e, e));
                sr = _mm256_add_ps(sr, _mm256_mul_ps(x, x));
                me = _mm256_max_ps(_mm256_andnot_ps(sign, e), me);
            }
            _mm256_storeu_ps(acc.sq_err.as_mut_ptr(), se);
            _mm256_storeu_ps(acc.sq_ref.as_mut_ptr(), sr);
            _mm256_storeu_ps(acc.max_abs.as_mut_ptr(), me);
        }
    }

    /// `round(round(scale * q) + bias)` per lane, as [`super::mlx_dequant8`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn dequant<const ST: u8>(q: __m256i, scale: __m256, bias: __m256) -> __m256 {
        let p = round::<ST>(_mm256_mul_ps(_mm256_cvtepi32_ps(q), scale));
        round::<ST>(_mm256_add_ps(p, bias))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn affine_error32(
        w: &[f32],
        q: &[u32; 32],
        scale: f32,
        bias: f32,
        store: Dtype,
        acc: &mut LaneErrors,
    ) {
        match store {
            Dtype::F16 => affine_error32_as::<F16>(w, q, scale, bias, acc),
            Dtype::BF16 => affine_error32_as::<BF16>(w, q, scale, bias, acc),
            _ => affine_error32_as::<F32>(w, q, scale, bias, acc),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn affine_error32_as<const ST: u8>(
        w: &[f32],
        q: &[u32; 32],
        scale: f32,
        bias: f32,
        acc: &mut LaneErrors,
    ) {
        let (s, b) = (_mm256_set1_ps(scale), _mm256_set1_ps(bias));
        let sign = _mm256_set1_ps(-0.0);
        // SAFETY: loads and stores of 8 lanes of arrays of 8 (and of `w`, 32 elements).
        unsafe {
            let mut se = _mm256_loadu_ps(acc.sq_err.as_ptr());
            let mut sr = _mm256_loadu_ps(acc.sq_ref.as_ptr());
            let mut me = _mm256_loadu_ps(acc.max_abs.as_ptr());
            for j in 0..4 {
                let x = _mm256_loadu_ps(w.as_ptr().add(j * 8));
                let qi = _mm256_loadu_si256(q.as_ptr().add(j * 8) as *const __m256i);
                let e = _mm256_sub_ps(x, dequant::<ST>(qi, s, b));
                se = _mm256_add_ps(se, _mm256_mul_ps(e, e));
                sr = _mm256_add_ps(sr, _mm256_mul_ps(x, x));
                me = _mm256_max_ps(_mm256_andnot_ps(sign, e), me);
            }
            _mm256_storeu_ps(acc.sq_err.as_mut_ptr(), se);
            _mm256_storeu_ps(acc.sq_ref.as_mut_ptr(), sr);
            _mm256_storeu_ps(acc.max_abs.as_mut_ptr(), me);
        }
    }
}

/// 8 elements as `mx.dequantize` computes them: `round(round(scale * q) + bias)` in `store`.
#[inline(always)]
pub(crate) fn mlx_dequant8<const AVX: bool>(
    q: &[f32; 8],
    scale: f32,
    bias: f32,
    store: Dtype,
) -> [f32; 8] {
    let mut r = [0f32; 8];
    for i in 0..8 {
        r[i] = q[i] * scale;
    }
    round_lanes::<AVX>(&mut r, store);
    for x in r.iter_mut() {
        *x += bias;
    }
    round_lanes::<AVX>(&mut r, store);
    r
}

/// One element as `mx.dequantize` computes it on the CPU from a code and a stored scale and
/// bias (already in `store`'s precision): `round(round(scale * q) + bias)`, rounding to `store`.
pub fn mlx_dequantize_value(q: u32, scale: f32, bias: f32, store: Dtype) -> f32 {
    let p = crate::kernels::round_to_dtype(q as f32 * scale, store);
    crate::kernels::round_to_dtype(p + bias, store)
}

/// Dequantizes MLX affine data exactly as `mx.dequantize` does on the CPU: codes unpacked
/// from the row bit streams, then [`mlx_dequantize_value`] with the group's scale and bias
/// (given widened to f32, as [`crate::kernels::affine_quantize`] returns them) in `store`.
pub fn mlx_affine_dequantize(
    codes: &[u32],
    scales: &[f32],
    biases: &[f32],
    group: usize,
    bits: u8,
    store: Dtype,
    out: &mut [f32],
) {
    let mut q = vec![0u8; out.len()];
    crate::kernels::unpack_codes(codes, bits, &mut q);
    for (i, (o, &c)) in out.iter_mut().zip(&q).enumerate() {
        *o = mlx_dequantize_value(u32::from(c), scales[i / group], biases[i / group], store);
    }
}

/// Dequantizes bitsandbytes 4-bit data exactly as `dequantize_4bit` does on the CPU for a
/// source of dtype `dtype`: `code[c] * absmax` in f32, rounded to `dtype`.
pub fn bnb4_dequantize_as(
    packed: &[u8],
    absmax: &[f32],
    block: usize,
    kind: Bnb4,
    dtype: Dtype,
    out: &mut [f32],
) {
    crate::kernels::bnb4_dequantize(packed, absmax, block, kind, out);
    for x in out.iter_mut() {
        *x = crate::kernels::round_to_dtype(*x, dtype);
    }
}

/// Elements per f32 partial sum before it is added to the f64 totals.
const CAST_BLOCK: usize = 256;

#[inline(always)]
fn cast_stats_impl<const AVX: bool>(w: &[f32], to: Dtype) -> ErrorStats {
    let mut st = ErrorStats::default();
    for block in w.chunks(CAST_BLOCK) {
        let mut se = [0f32; 8];
        let mut sr = [0f32; 8];
        let mut me = [0f32; 8];
        let mut n = [0u32; 8];
        let mut chunks = block.chunks_exact(8);
        for c in &mut chunks {
            let mut r = [0f32; 8];
            r.copy_from_slice(c);
            round_lanes::<AVX>(&mut r, to);
            for i in 0..8 {
                let finite = c[i].is_finite();
                let x = if finite { c[i] } else { 0.0 };
                let e = if finite { c[i] - r[i] } else { 0.0 };
                se[i] += e * e;
                sr[i] += x * x;
                let ae = e.abs();
                me[i] = if ae > me[i] { ae } else { me[i] };
                n[i] += u32::from(finite);
            }
        }
        for &x in chunks.remainder() {
            if x.is_finite() {
                let e = x - crate::kernels::round_to_dtype(x, to);
                se[0] += e * e;
                sr[0] += x * x;
                me[0] = me[0].max(e.abs());
                n[0] += 1;
            }
        }
        st.count += n.iter().map(|&c| u64::from(c)).sum::<u64>();
        st.sum_sq_err += se.iter().map(|&x| f64::from(x)).sum::<f64>();
        st.sum_sq_ref += sr.iter().map(|&x| f64::from(x)).sum::<f64>();
        st.max_abs_err = me.iter().fold(st.max_abs_err, |a, &b| a.max(b));
    }
    st
}

mod cast_stats {
    use super::*;
    dispatch!(cast_stats_impl, cast_stats_avx, (w: &[f32], to: Dtype) -> ErrorStats);
}

/// Error statistics of casting `w` to `to` (round to nearest even) and back; non-finite
/// elements of `w` (masks such as `-inf`) are skipped and not counted.
pub fn cast_error_stats(w: &[f32], to: Dtype) -> ErrorStats {
    cast_stats::dispatched(w, to)
}

/// SQNR in dB, or `None` for an exact reconstruction (infinite SQNR; JSON has no infinity).
pub fn sqnr_db_or_exact(stats: &ErrorStats) -> Option<f64> {
    let db = stats.sqnr_db();
    db.is_finite().then_some(db)
}

/// The measured quality of a written file, over its quantized and cast tensors (tensors copied
/// unchanged are exact and not counted). Field names are those of the `quality` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quality {
    /// SQNR over all measured tensors together, in dB: `10 log10(sum w^2 / sum (w - w')^2)`
    /// over all their elements (element-weighted). `None` (`null`) when every measured tensor
    /// is reconstructed exactly, or none was measured.
    pub sqnr_db: Option<f64>,
    /// The measured tensor with the lowest SQNR (the first in file order on ties); `None` when
    /// every measured tensor is exact.
    pub worst_tensor: Option<String>,
    /// That tensor's SQNR in dB.
    pub worst_sqnr_db: Option<f64>,
    /// Relative RMS error over all measured tensors, `sqrt(sum (w - w')^2 / sum w^2)`; 0 when
    /// exact.
    pub rel_rms_error: f64,
}

impl Quality {
    /// The quality of a file from its measured tensors (output name and statistics), in file
    /// order.
    pub fn of<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a ErrorStats)>) -> Quality {
        let mut total = ErrorStats::default();
        let mut worst: Option<(&str, f64)> = None;
        for (name, stats) in tensors {
            total.merge(stats);
            if let Some(db) = sqnr_db_or_exact(stats)
                && worst.is_none_or(|(_, w)| db < w)
            {
                worst = Some((name, db));
            }
        }
        Quality {
            sqnr_db: sqnr_db_or_exact(&total),
            worst_tensor: worst.map(|(n, _)| n.to_string()),
            worst_sqnr_db: worst.map(|(_, db)| db),
            rel_rms_error: total.rel_rms_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(err: f64, reference: f64) -> ErrorStats {
        ErrorStats {
            count: 4,
            sum_sq_err: err,
            sum_sq_ref: reference,
            max_abs_err: err.sqrt() as f32,
        }
    }

    #[test]
    fn quality_of_tensors() {
        let a = stats(1.0, 100.0); // 20 dB
        let b = stats(1.0, 10.0); // 10 dB
        let exact = stats(0.0, 5.0);
        let q = Quality::of([("a", &a), ("b", &b), ("c", &exact)]);
        assert!((q.sqnr_db.unwrap() - 10.0 * (115.0f64 / 2.0).log10()).abs() < 1e-12);
        assert_eq!(q.worst_tensor.as_deref(), Some("b"));
        assert!((q.worst_sqnr_db.unwrap() - 10.0).abs() < 1e-12);
        assert!((q.rel_rms_error - (2.0f64 / 115.0).sqrt()).abs() < 1e-12);
        // Ties: the first in file order.
        let q = Quality::of([("x", &b), ("y", &b)]);
        assert_eq!(q.worst_tensor.as_deref(), Some("x"));
    }

    #[test]
    fn exact_is_null_in_json() {
        let exact = stats(0.0, 5.0);
        let q = Quality::of([("a", &exact)]);
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"sqnr_db":null,"worst_tensor":null,"worst_sqnr_db":null,"rel_rms_error":0.0}"#
        );
        assert_eq!(Quality::of([]), q);
        // Infinite error or no signal: finite, very negative, never NaN.
        let lost = stats(f64::INFINITY, 1.0);
        assert!(lost.sqnr_db().is_finite() && lost.sqnr_db() < -3000.0);
        assert!(lost.rel_rms_error().is_finite());
        let no_signal = stats(1.0, 0.0);
        assert!(no_signal.sqnr_db().is_finite() && no_signal.sqnr_db() < -3000.0);
    }

    #[test]
    fn mlx_dequantize_rounds_each_operation() {
        // f16: 3 * 0.1 rounds to f16 before the bias is added, then the sum rounds again.
        let s = half::f16::from_f32(0.1).to_f32();
        let b = half::f16::from_f32(-0.7).to_f32();
        let p = half::f16::from_f32(3.0 * s).to_f32();
        let want = half::f16::from_f32(p + b).to_f32();
        assert_eq!(mlx_dequantize_value(3, s, b, Dtype::F16), want);
        assert_eq!(
            mlx_dequantize_value(3, 0.1, -0.7, Dtype::F32),
            3.0 * 0.1f32 - 0.7
        );
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let q: [f32; 8] = core::array::from_fn(|i| i as f32 * 2.0);
            let (s, b) = (
                crate::kernels::round_to_dtype(0.013, dt),
                crate::kernels::round_to_dtype(-0.05, dt),
            );
            let lanes = mlx_dequant8::<false>(&q, s, b, dt);
            for (i, lane) in lanes.iter().enumerate() {
                assert_eq!(*lane, mlx_dequantize_value(i as u32 * 2, s, b, dt));
            }
        }
    }

    #[test]
    fn cast_stats_skip_masks() {
        let w = [
            1.0f32,
            f32::NEG_INFINITY,
            0.1,
            -3.3,
            7.0,
            1e-3,
            2.5,
            0.0,
            0.3,
        ];
        let st = cast_error_stats(&w, Dtype::F16);
        assert_eq!(st.count, 8);
        let mut want = ErrorStats::default();
        for &x in w.iter().filter(|x| x.is_finite()) {
            let e = f64::from(x - half::f16::from_f32(x).to_f32());
            want.sum_sq_err += e * e;
            want.sum_sq_ref += f64::from(x) * f64::from(x);
        }
        assert!((st.sum_sq_err - want.sum_sq_err).abs() <= 1e-6 * want.sum_sq_err);
        assert!((st.sum_sq_ref - want.sum_sq_ref).abs() <= 1e-6 * want.sum_sq_ref);
        assert_eq!(cast_error_stats(&w, Dtype::F32).sum_sq_err, 0.0);
    }
}
