//! Error accumulation in 8-lane chunks, run inside the quantization kernels while they write:
//! the reconstruction each consumer computes (the `quality` module defines them) and
//! its squared error, summed in a fixed order.

use super::{ErrorStats, f32_to_bf16_bits};
use crate::dtype::Dtype;

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
