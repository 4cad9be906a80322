//! The numeric kernels: dtype conversion, MLX affine quantization (`mx.quantize`, and the
//! error-minimising [`affine_quantize_mse`]) and bitsandbytes 4-bit quantization, plus their
//! inverses (used by tests and the quality report).
//!
//! Hot loops are written over fixed 8-lane chunks so they vectorise, and are compiled twice:
//! for the baseline target and, on x86-64, with AVX2 + F16C + FMA enabled, picked at run
//! time. No fused multiply-add is ever formed (Rust does not contract), so both builds give
//! bit-identical results.

use crate::dtype::Dtype;
pub(crate) mod lanes;
mod mse;

pub(crate) use lanes::{LaneErrors, affine_error32, bnb4_error, round_lanes, round_one};
pub use mse::{affine_quantize_mse, affine_quantize_mse_bytes};

/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to the nearest
/// integer, ties to even (the default rounding mode), exactly like `rint`.
pub(crate) const MAGIC: f32 = 12_582_912.0;
/// The bit pattern of [`MAGIC`] as a signed integer.
pub(crate) const MAGIC_BITS: i32 = 0x4B40_0000;

/// The bitsandbytes NF4 code book (`bnb.functional.get_4bit_type("nf4")`), as f32 bits.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    f32::from_bits(0xbf3239b1),
    f32::from_bits(0xbf066b30),
    f32::from_bits(0xbeca32a0),
    f32::from_bits(0xbe91a24d),
    f32::from_bits(0xbe3d353f),
    f32::from_bits(0xbdba7871),
    0.0,
    f32::from_bits(0x3da2faff),
    f32::from_bits(0x3e24cae3),
    f32::from_bits(0x3e7c04dd),
    f32::from_bits(0x3ead033a),
    f32::from_bits(0x3ee1a4b8),
    f32::from_bits(0x3f1007ab),
    f32::from_bits(0x3f3913b3),
    1.0,
];

/// The bitsandbytes FP4 (e2m1) code book, as f32 bits; index bit 3 is the sign.
pub const FP4_CODE: [f32; 16] = [
    0.0,
    f32::from_bits(0x3baaaaab),
    f32::from_bits(0x3f2aaaab),
    1.0,
    f32::from_bits(0x3eaaaaab),
    0.5,
    f32::from_bits(0x3e2aaaab),
    0.25,
    0.0,
    f32::from_bits(0xbbaaaaab),
    f32::from_bits(0xbf2aaaab),
    -1.0,
    f32::from_bits(0xbeaaaaab),
    -0.5,
    f32::from_bits(0xbe2aaaab),
    -0.25,
];

/// Which bitsandbytes 4-bit code book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bnb4 {
    /// NormalFloat4.
    Nf4,
    /// FP4 (e2m1 with bitsandbytes' exponent bias).
    Fp4,
}

impl Bnb4 {
    /// The 16-entry code book.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            Bnb4::Nf4 => &NF4_CODE,
            Bnb4::Fp4 => &FP4_CODE,
        }
    }
}

/// Sum of squared errors, squared reference values and the largest absolute error over a
/// set of elements: the quality report's raw numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    /// Number of elements.
    pub count: u64,
    /// Sum of (reference - reconstructed)^2.
    pub sum_sq_err: f64,
    /// Sum of reference^2.
    pub sum_sq_ref: f64,
    /// Largest |reference - reconstructed|.
    pub max_abs_err: f32,
}

impl ErrorStats {
    /// Adds another set of elements.
    pub fn merge(&mut self, o: &ErrorStats) {
        self.count += o.count;
        self.sum_sq_err += o.sum_sq_err;
        self.sum_sq_ref += o.sum_sq_ref;
        self.max_abs_err = self.max_abs_err.max(o.max_abs_err);
    }

    /// Root mean square error.
    pub fn rmse(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_sq_err / self.count as f64).sqrt()
        }
    }

    /// Signal to quantization noise ratio in dB (`10 log10(sum ref^2 / sum err^2)`):
    /// `+inf` for an exact reconstruction and otherwise finite (a zero signal counts as the
    /// smallest positive f64 and an infinite error, a cast past the target's range, as the
    /// largest finite one, so a reconstruction that lost everything reads as a very negative
    /// number, never NaN).
    pub fn sqnr_db(&self) -> f64 {
        if self.sum_sq_err == 0.0 {
            f64::INFINITY
        } else {
            let signal = self.sum_sq_ref.max(f64::MIN_POSITIVE);
            10.0 * (signal / self.sum_sq_err.min(f64::MAX)).log10()
        }
    }

    /// Relative RMS error `sqrt(sum err^2 / sum ref^2)` (`10^(-SQNR/20)`): 0 for an exact
    /// reconstruction, finite otherwise.
    pub fn rel_rms_error(&self) -> f64 {
        if self.sum_sq_err == 0.0 {
            0.0
        } else {
            10f64.powf(-self.sqnr_db() / 20.0)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Run-time dispatch

static PORTABLE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Forces the portable (non-SIMD-dispatched) kernels; used by tests to check that both
/// builds give identical bits.
pub fn force_portable(on: bool) {
    PORTABLE_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    !PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
}

macro_rules! dispatch {
    ($generic:ident, $avx:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx($($arg: $ty),*) -> $ret {
            $generic::<true>($($arg),*)
        }
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn dispatched($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if has_avx2() {
                    // SAFETY: the CPU supports the enabled features (checked above).
                    return unsafe { $avx($($arg),*) };
                }
            }
            $generic::<false>($($arg),*)
        }
    };
}
pub(crate) use dispatch;

// ---------------------------------------------------------------------------------------
// dtype conversion

#[inline(always)]
fn f16_bits_to_f32<const AVX: bool>(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        use std::arch::x86_64::*;
        let n8 = dst.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: only reached from a function compiled with f16c/avx enabled; the
            // 16-byte load and 32-byte store are in bounds (i + 8 <= len).
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i * 2) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for i in n8..dst.len() {
            dst[i] =
                half::f16::from_bits(u16::from_le_bytes([src[2 * i], src[2 * i + 1]])).to_f32();
        }
        return;
    }
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = half::f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
    }
}

#[inline(always)]
pub(crate) fn decode_impl<const AVX: bool>(src: &[u8], dtype: Dtype, dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Dtype::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
            }
        }
        _ => f16_bits_to_f32::<AVX>(src, dst),
    }
}

#[inline(always)]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) | 0x0040) as u16
    } else {
        let round = 0x7fff + ((b >> 16) & 1);
        (b.wrapping_add(round) >> 16) as u16
    }
}

#[inline(always)]
pub(crate) fn encode_impl<const AVX: bool>(src: &[f32], dtype: Dtype, dst: &mut [u8]) {
    match dtype {
        Dtype::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f32_to_bf16_bits(*s).to_le_bytes());
            }
        }
        _ => {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                use std::arch::x86_64::*;
                let n8 = src.len() / 8 * 8;
                for i in (0..n8).step_by(8) {
                    // SAFETY: as in `f16_bits_to_f32`; 8 f32 in, 8 f16 out, in bounds.
                    unsafe {
                        let v = _mm256_loadu_ps(src.as_ptr().add(i));
                        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                        _mm_storeu_si128(dst.as_mut_ptr().add(i * 2) as *mut __m128i, h);
                    }
                }
                for i in n8..src.len() {
                    dst[2 * i..2 * i + 2]
                        .copy_from_slice(&half::f16::from_f32(src[i]).to_bits().to_le_bytes());
                }
                return;
            }
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(*s).to_bits().to_le_bytes());
            }
        }
    }
}

mod decode {
    use super::*;
    dispatch!(decode_impl, decode_avx, (src: &[u8], dtype: Dtype, dst: &mut [f32]) -> ());
}
mod encode {
    use super::*;
    dispatch!(encode_impl, encode_avx, (src: &[f32], dtype: Dtype, dst: &mut [u8]) -> ());
}

/// Converts little-endian `F32`, `F16` or `BF16` bytes to f32 (exact).
/// `src` holds `dst.len()` elements of `dtype`.
pub fn decode_f32(src: &[u8], dtype: Dtype, dst: &mut [f32]) {
    debug_assert!(dtype.is_working_float());
    debug_assert_eq!(src.len() as u64, dst.len() as u64 * dtype.size_bytes());
    decode::dispatched(src, dtype, dst)
}

/// Converts f32 to little-endian `F32`, `F16` or `BF16` bytes, rounding to nearest even.
pub fn encode_f32(src: &[f32], dtype: Dtype, dst: &mut [u8]) {
    debug_assert!(dtype.is_working_float());
    debug_assert_eq!(dst.len() as u64, src.len() as u64 * dtype.size_bytes());
    encode::dispatched(src, dtype, dst)
}

/// Rounds an f32 to `dtype` (round to nearest even) and widens it back.
#[inline]
pub fn round_to_dtype(x: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => half::f16::from_f32(x).to_f32(),
        Dtype::BF16 => f32::from_bits(u32::from(f32_to_bf16_bits(x)) << 16),
        _ => x,
    }
}

// ---------------------------------------------------------------------------------------
// Error statistics

#[inline(always)]
fn acc_stats(w: &[f32], r: &[f32], stats: &mut ErrorStats) {
    let mut se = [0.0f32; 8];
    let mut sr = [0.0f32; 8];
    let mut mx = [0.0f32; 8];
    let mut wc = w.chunks_exact(8);
    let mut rc = r.chunks_exact(8);
    for (a, b) in (&mut wc).zip(&mut rc) {
        for i in 0..8 {
            let e = a[i] - b[i];
            se[i] += e * e;
            sr[i] += a[i] * a[i];
            let ae = e.abs();
            mx[i] = if ae > mx[i] { ae } else { mx[i] };
        }
    }
    let mut e2: f64 = se.iter().map(|&x| f64::from(x)).sum();
    let mut r2: f64 = sr.iter().map(|&x| f64::from(x)).sum();
    let mut m = mx.iter().fold(0.0f32, |a, &b| a.max(b));
    for (a, b) in wc.remainder().iter().zip(rc.remainder()) {
        let e = a - b;
        e2 += f64::from(e * e);
        r2 += f64::from(a * a);
        m = m.max(e.abs());
    }
    stats.count += w.len() as u64;
    stats.sum_sq_err += e2;
    stats.sum_sq_ref += r2;
    stats.max_abs_err = stats.max_abs_err.max(m);
}

/// Error statistics of a reconstruction `r` of `w` (same length).
pub fn error_stats(w: &[f32], r: &[f32]) -> ErrorStats {
    let mut s = ErrorStats::default();
    acc_stats(w, r, &mut s);
    s
}

/// Index of the first non-finite element, if any.
pub fn first_non_finite(w: &[f32]) -> Option<usize> {
    w.iter().position(|x| !x.is_finite())
}

#[inline(always)]
fn all_finite(w: &[f32]) -> bool {
    let mut z = [0.0f32; 8];
    let mut c = w.chunks_exact(8);
    for a in &mut c {
        for i in 0..8 {
            z[i] += a[i] * 0.0;
        }
    }
    let mut s = z.iter().sum::<f32>();
    for a in c.remainder() {
        s += a * 0.0;
    }
    s == 0.0
}

// ---------------------------------------------------------------------------------------
// MLX affine

/// Packs codes (each `< 2^bits`) into the MLX layout: one LSB-first bit stream of
/// little-endian u32 words per row. `codes.len() * bits` must be a multiple of 32.
pub fn pack_codes(codes: &[u8], bits: u8, out: &mut [u32]) {
    let bits = u32::from(bits);
    debug_assert_eq!(codes.len() as u64 * u64::from(bits), out.len() as u64 * 32);
    let mut acc: u64 = 0;
    let mut nacc = 0u32;
    let mut o = 0;
    for &c in codes {
        acc |= u64::from(c) << nacc;
        nacc += bits;
        if nacc >= 32 {
            out[o] = acc as u32;
            o += 1;
            acc >>= 32;
            nacc -= 32;
        }
    }
}

/// Inverse of [`pack_codes`]: fills `codes` from packed words.
pub fn unpack_codes(words: &[u32], bits: u8, codes: &mut [u8]) {
    let bits = u32::from(bits);
    let mask = (1u64 << bits) - 1;
    let mut acc: u64 = 0;
    let mut nacc = 0u32;
    let mut wi = 0;
    for c in codes.iter_mut() {
        if nacc < bits {
            acc |= u64::from(words[wi]) << nacc;
            wi += 1;
            nacc += 32;
        }
        *c = (acc & mask) as u8;
        acc >>= bits;
        nacc -= bits;
    }
}

/// Packs 32 codes into `BITS` words (one group of 32 always fills whole words).
#[inline(always)]
pub(crate) fn pack32<const BITS: u32>(q: &[u32; 32], out: &mut [u32]) {
    if 32 % BITS == 0 {
        let per = (32 / BITS) as usize;
        for (j, o) in out.iter_mut().enumerate().take(BITS as usize) {
            let mut w = 0u32;
            for i in 0..per {
                w |= q[j * per + i] << (BITS * i as u32);
            }
            *o = w;
        }
    } else {
        let mut acc: u64 = 0;
        let mut nacc = 0u32;
        let mut o = 0;
        for &c in q.iter() {
            acc |= u64::from(c) << nacc;
            nacc += BITS;
            if nacc >= 32 {
                out[o] = acc as u32;
                o += 1;
                acc >>= 32;
                nacc -= 32;
            }
        }
    }
}

/// The minimum and maximum of one group, or `None` when it holds a non-finite value.
#[inline(always)]
pub(crate) fn affine_range(w: &[f32]) -> Option<(f32, f32)> {
    let mut mn = [f32::INFINITY; 8];
    let mut mx = [f32::NEG_INFINITY; 8];
    let mut z = [0.0f32; 8];
    for c in w.chunks_exact(8) {
        for i in 0..8 {
            let x = c[i];
            mn[i] = if x < mn[i] { x } else { mn[i] };
            mx[i] = if x > mx[i] { x } else { mx[i] };
            z[i] += x * 0.0;
        }
    }
    range_of_lanes(&mn, &mx, &z)
}

/// The end of [`affine_range`] from its lanes (lane minima, maxima, and `sum x * 0`, which is
/// NaN when a value is not finite).
#[inline(always)]
pub(crate) fn range_of_lanes(mn: &[f32; 8], mx: &[f32; 8], z: &[f32; 8]) -> Option<(f32, f32)> {
    if z.iter().sum::<f32>() != 0.0 {
        return None;
    }
    let w_min = mn
        .iter()
        .fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let w_max = mx
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    Some((w_min, w_max))
}

/// The scale and bias `mx.quantize` uses for a group with this minimum and maximum (f32).
#[inline(always)]
pub(crate) fn affine_params_of_range<const BITS: u32>(w_min: f32, w_max: f32) -> (f32, f32) {
    let n = ((1u32 << BITS) - 1) as f32;
    let mask = w_min.abs() > w_max.abs();
    let mut scale = ((w_max - w_min) / n).max(1e-7);
    if !mask {
        scale = -scale;
    }
    let edge = if mask { w_min } else { w_max };
    let q0 = (edge / scale).round_ties_even();
    let mut bias = 0.0f32;
    if q0 != 0.0 {
        scale = edge / q0;
        bias = edge;
    }
    (scale, bias)
}

/// The scale and bias `mx.quantize` uses for one group (f32), or `None` when the group holds
/// a non-finite value.
#[inline(always)]
fn affine_params<const BITS: u32>(w: &[f32]) -> Option<(f32, f32)> {
    let (w_min, w_max) = affine_range(w)?;
    Some(affine_params_of_range::<BITS>(w_min, w_max))
}

/// `mx.quantize`'s codes of 32 elements for an f32 scale and bias:
/// `clamp(rint((w - bias) / scale), 0, 2^BITS - 1)`.
#[inline(always)]
pub(crate) fn affine_codes32<const BITS: u32>(
    chunk: &[f32],
    scale: f32,
    bias: f32,
    q: &mut [u32; 32],
) {
    let n = ((1u32 << BITS) - 1) as f32;
    let top = (1i32 << BITS) - 1;
    for i in 0..32 {
        let v = ((chunk[i] - bias) / scale).clamp(-1.0, n + 1.0);
        // v + MAGIC rounds v to an integer (ties to even) held in the low mantissa bits:
        // rint(v) = bits(v + MAGIC) - bits(MAGIC). Integer ops keep this vectorised.
        let r = ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC_BITS);
        q[i] = r.clamp(0, top) as u32;
    }
}

/// Codes of one group for a given f32 scale and bias, packed into `codes`. When `stats` is
/// given, also accumulates the error of the reconstruction as `mx.dequantize` computes it
/// from the stored scale and bias (the reconstruction the `quality` module defines).
#[inline(always)]
fn affine_codes<const AVX: bool, const BITS: u32>(
    w: &[f32],
    scale: f32,
    bias: f32,
    stored: (f32, f32),
    store: Dtype,
    codes: &mut [u32],
    stats: Option<&mut ErrorStats>,
) {
    let (sr, br) = stored;
    let mut acc = LaneErrors::default();
    let want = stats.is_some();
    for (chunk, out) in w
        .chunks_exact(32)
        .zip(codes.chunks_exact_mut(BITS as usize))
    {
        let mut q = [0u32; 32];
        affine_codes32::<BITS>(chunk, scale, bias, &mut q);
        if want {
            affine_error32::<AVX>(chunk, &q, sr, br, store, &mut acc);
        }
        pack32::<BITS>(&q, out);
    }
    if let Some(st) = stats {
        acc.add_to(st, w.len());
    }
}

/// How the groups of an MLX affine format are quantized: [`Rtn`] (as `mx.quantize`) or the
/// error-minimising search of [`mse`]. Both share the row loops below; only the group differs.
pub(crate) trait GroupMethod {
    /// Quantizes one group `w`: packs its codes into `words` and returns its scale and bias
    /// rounded to `store`; on a non-finite weight, its index in the group.
    fn group<const AVX: bool, const BITS: u32>(
        &mut self,
        w: &[f32],
        store: Dtype,
        words: &mut [u32],
        stats: Option<&mut ErrorStats>,
    ) -> Result<(f32, f32), usize>;
}

/// Round to nearest, bit-exact with `mx.quantize`.
pub(crate) struct Rtn;

impl GroupMethod for Rtn {
    #[inline(always)]
    fn group<const AVX: bool, const BITS: u32>(
        &mut self,
        w: &[f32],
        store: Dtype,
        words: &mut [u32],
        stats: Option<&mut ErrorStats>,
    ) -> Result<(f32, f32), usize> {
        let Some((scale, bias)) = affine_params::<BITS>(w) else {
            return Err(first_non_finite(w).unwrap_or(0));
        };
        let (s, b) = (
            round_one::<AVX>(scale, store),
            round_one::<AVX>(bias, store),
        );
        affine_codes::<AVX, BITS>(w, scale, bias, (s, b), store, words, stats);
        Ok((s, b))
    }
}

/// The f32 API's loop: every group of `w` through `method`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn groups_bits<const AVX: bool, const BITS: u32, M: GroupMethod>(
    method: &mut M,
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
        (*s, *b) = method
            .group::<AVX, BITS>(wg, store, cg, stats.as_deref_mut())
            .map_err(|at| gi * group + at)?;
    }
    Ok(())
}

/// [`groups_bits`] for a runtime bit width.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn groups<const AVX: bool, M: GroupMethod>(
    method: &mut M,
    w: &[f32],
    group: usize,
    bits: u8,
    store: Dtype,
    codes: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let m = method;
    match bits {
        2 => groups_bits::<AVX, 2, M>(m, w, group, store, codes, scales, biases, stats),
        3 => groups_bits::<AVX, 3, M>(m, w, group, store, codes, scales, biases, stats),
        4 => groups_bits::<AVX, 4, M>(m, w, group, store, codes, scales, biases, stats),
        6 => groups_bits::<AVX, 6, M>(m, w, group, store, codes, scales, biases, stats),
        _ => groups_bits::<AVX, 8, M>(m, w, group, store, codes, scales, biases, stats),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine_impl<const AVX: bool>(
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
    let _ = cols;
    groups::<AVX, _>(
        &mut Rtn, w, group, bits, store, codes, scales, biases, stats,
    )
}

mod affine {
    use super::*;
    dispatch!(affine_impl, affine_avx, (w: &[f32], cols: usize, group: usize, bits: u8, store: Dtype, codes: &mut [u32], scales: &mut [f32], biases: &mut [f32], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

/// The bytes API's loop: each row decoded from `dtype`, its groups through `method`, codes
/// written as little-endian u32 words, scales and biases encoded back to `dtype`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn group_bytes_bits<const AVX: bool, const BITS: u32, M: GroupMethod>(
    method: &mut M,
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
            let (s, b) = method
                .group::<AVX, BITS>(wg, dtype, &mut words[..wpg], stats.as_deref_mut())
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

/// [`group_bytes_bits`] for a runtime bit width.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn group_bytes<const AVX: bool, M: GroupMethod>(
    method: &mut M,
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
    let m = method;
    match bits {
        2 => {
            group_bytes_bits::<AVX, 2, M>(m, src, dtype, cols, group, codes, scales, biases, stats)
        }
        3 => {
            group_bytes_bits::<AVX, 3, M>(m, src, dtype, cols, group, codes, scales, biases, stats)
        }
        4 => {
            group_bytes_bits::<AVX, 4, M>(m, src, dtype, cols, group, codes, scales, biases, stats)
        }
        6 => {
            group_bytes_bits::<AVX, 6, M>(m, src, dtype, cols, group, codes, scales, biases, stats)
        }
        _ => {
            group_bytes_bits::<AVX, 8, M>(m, src, dtype, cols, group, codes, scales, biases, stats)
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn affine_bytes_impl<const AVX: bool>(
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
    group_bytes::<AVX, _>(
        &mut Rtn, src, dtype, cols, group, bits, codes, scales, biases, stats,
    )
}

mod affine_bytes {
    use super::*;
    dispatch!(affine_bytes_impl, affine_bytes_avx, (src: &[u8], dtype: Dtype, cols: usize, group: usize, bits: u8, codes: &mut [u8], scales: &mut [u8], biases: &mut [u8], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

/// [`affine_quantize`] straight from little-endian source bytes (`F32`, `F16` or `BF16`
/// rows of `cols` elements) to output bytes: packed little-endian u32 codes, and scales and
/// biases encoded in the source dtype. Bit-identical to the f32 API.
#[allow(clippy::too_many_arguments)]
pub fn affine_quantize_bytes(
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
    affine_bytes::dispatched(src, dtype, cols, group, bits, codes, scales, biases, stats)
}

/// MLX affine quantization of whole rows (`w.len()` a multiple of `cols`, `cols` of
/// `group`; `group` in 32, 64, 128; `bits` in 2, 3, 4, 6, 8).
///
/// Writes `w.len() * bits / 32` packed words and one scale and bias per group, already
/// rounded to `store` (the dtype they are stored in) and widened back to f32. When `stats`
/// is given, accumulates the reconstruction error against `w`. Returns the index of the
/// first non-finite element as the error.
#[allow(clippy::too_many_arguments)]
pub fn affine_quantize(
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
    affine::dispatched(w, cols, group, bits, store, codes, scales, biases, stats)
}

/// Dequantizes MLX affine data: `w = scale * q + bias` per group.
pub fn affine_dequantize(
    codes: &[u32],
    scales: &[f32],
    biases: &[f32],
    group: usize,
    bits: u8,
    out: &mut [f32],
) {
    let mut q = vec![0u8; out.len()];
    unpack_codes(codes, bits, &mut q);
    for (i, (o, &c)) in out.iter_mut().zip(&q).enumerate() {
        *o = f32::from(c) * scales[i / group] + biases[i / group];
    }
}

// ---------------------------------------------------------------------------------------
// bitsandbytes 4-bit

/// The code book sorted by value (stable: among equal values the lower index first), the
/// 15 decision thresholds `f32((c_i + c_(i+1)) / 2)` between neighbours, and the code index
/// of each rank. The code of `x` is the index at rank "number of thresholds `< x`"; for NF4
/// (already sorted) this is the count itself. bitsandbytes' FP4 table has two zeros
/// (indices 0 and 8): values just below zero get 0, values just above get 8.
#[derive(Debug, Clone, Copy)]
struct Bnb4Table {
    thresholds: [f32; 15],
    index: [u8; 16],
    identity: bool,
}

impl Bnb4Table {
    fn new(kind: Bnb4) -> Bnb4Table {
        let code = kind.code();
        let mut idx: Vec<u8> = (0u8..16).collect();
        idx.sort_by(|&a, &b| {
            code[a as usize]
                .total_cmp(&code[b as usize])
                .then(a.cmp(&b))
        });
        // total_cmp orders -0.0 before +0.0; the table's zeros are both +0.0.
        let mut thresholds = [0.0f32; 15];
        for i in 0..15 {
            let (a, b) = (code[idx[i] as usize], code[idx[i + 1] as usize]);
            thresholds[i] = ((f64::from(a) + f64::from(b)) / 2.0) as f32;
        }
        let mut index = [0u8; 16];
        index.copy_from_slice(&idx);
        let identity = index.iter().enumerate().all(|(i, &x)| usize::from(x) == i);
        Bnb4Table {
            thresholds,
            index,
            identity,
        }
    }
}

/// Quantizes one block (a multiple of 8 elements) into `packed` (half as many bytes).
#[inline(always)]
fn bnb4_block(w: &[f32], table: &Bnb4Table, packed: &mut [u8]) -> Option<f32> {
    if !all_finite(w) {
        return None;
    }
    let mut am = [0.0f32; 8];
    let mut c8 = w.chunks_exact(8);
    for c in &mut c8 {
        for i in 0..8 {
            let a = c[i].abs();
            am[i] = if a > am[i] { a } else { am[i] };
        }
    }
    let mut absmax = am.iter().fold(0.0f32, |a, &b| if b > a { b } else { a });
    for &x in c8.remainder() {
        absmax = absmax.max(x.abs());
    }
    let inv = 1.0f32 / absmax.max(1e-38);
    let mut ranks = [0u32; 8];
    for (pc, wc) in packed.chunks_exact_mut(4).zip(w.chunks_exact(8)) {
        for i in 0..8 {
            let v = (wc[i] * inv).clamp(-1.0, 1.0);
            let mut k = 0u32;
            for t in &table.thresholds {
                k += u32::from(*t < v);
            }
            ranks[i] = k;
        }
        if !table.identity {
            for r in ranks.iter_mut() {
                *r = u32::from(table.index[*r as usize]);
            }
        }
        for j in 0..4 {
            pc[j] = ((ranks[2 * j] << 4) | ranks[2 * j + 1]) as u8;
        }
    }
    Some(absmax)
}

#[inline(always)]
fn bnb4_impl<const AVX: bool>(
    w: &[f32],
    block: usize,
    kind: Bnb4,
    packed: &mut [u8],
    absmax: &mut [f32],
    mut stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let table = Bnb4Table::new(kind);
    let code = kind.code();
    for (bi, ((wb, pb), am)) in w
        .chunks_exact(block)
        .zip(packed.chunks_exact_mut(block / 2))
        .zip(absmax.iter_mut())
        .enumerate()
    {
        let Some(a) = bnb4_block(wb, &table, pb) else {
            return Err(bi * block + first_non_finite(wb).unwrap_or(0));
        };
        *am = a;
        if let Some(st) = stats.as_deref_mut() {
            let mut acc = LaneErrors::default();
            bnb4_error::<AVX>(wb, pb, code, a, Dtype::F32, &mut acc);
            acc.add_to(st, wb.len());
        }
    }
    Ok(())
}

mod bnb4 {
    use super::*;
    dispatch!(bnb4_impl, bnb4_avx, (w: &[f32], block: usize, kind: Bnb4, packed: &mut [u8], absmax: &mut [f32], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

#[inline(always)]
fn bnb4_bytes_impl<const AVX: bool>(
    src: &[u8],
    dtype: Dtype,
    block: usize,
    kind: Bnb4,
    packed: &mut [u8],
    absmax: &mut [u8],
    mut stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let table = Bnb4Table::new(kind);
    let code = kind.code();
    let es = dtype.size_bytes() as usize;
    // Decode a few blocks at a time into a cache-resident buffer.
    let per = block * (4096 / block).max(1);
    let mut w = vec![0f32; per];
    for (ci, ((src_c, pc), ac)) in src
        .chunks(per * es)
        .zip(packed.chunks_mut(per / 2))
        .zip(absmax.chunks_mut(per / block * 4))
        .enumerate()
    {
        let n = src_c.len() / es;
        decode_impl::<AVX>(src_c, dtype, &mut w[..n]);
        for (bi, ((wb, pb), ab)) in w[..n]
            .chunks_exact(block)
            .zip(pc.chunks_exact_mut(block / 2))
            .zip(ac.chunks_exact_mut(4))
            .enumerate()
        {
            let Some(a) = bnb4_block(wb, &table, pb) else {
                return Err(ci * per + bi * block + first_non_finite(wb).unwrap_or(0));
            };
            ab.copy_from_slice(&a.to_le_bytes());
            if let Some(st) = stats.as_deref_mut() {
                // bitsandbytes dequantizes to the source dtype: `code * absmax` in f32, rounded.
                let mut acc = LaneErrors::default();
                bnb4_error::<AVX>(wb, pb, code, a, dtype, &mut acc);
                acc.add_to(st, wb.len());
            }
        }
    }
    Ok(())
}

mod bnb4_bytes {
    use super::*;
    dispatch!(bnb4_bytes_impl, bnb4_bytes_avx, (src: &[u8], dtype: Dtype, block: usize, kind: Bnb4, packed: &mut [u8], absmax: &mut [u8], stats: Option<&mut ErrorStats>) -> Result<(), usize>);
}

/// [`bnb4_quantize`] straight from little-endian source bytes to output bytes (absmax as
/// little-endian f32). Bit-identical to the f32 API.
pub fn bnb4_quantize_bytes(
    src: &[u8],
    dtype: Dtype,
    block: usize,
    kind: Bnb4,
    packed: &mut [u8],
    absmax: &mut [u8],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    let es = dtype.size_bytes() as usize;
    let n = src.len() / es;
    assert!(dtype.is_working_float() && block >= 8 && block.is_multiple_of(8));
    assert!(n.is_multiple_of(block) && src.len() == n * es);
    assert_eq!(packed.len() * 2, n);
    assert_eq!(absmax.len(), n / block * 4);
    bnb4_bytes::dispatched(src, dtype, block, kind, packed, absmax, stats)
}

/// bitsandbytes blockwise 4-bit quantization of a flattened tensor (`w.len()` a multiple
/// of `block`, itself a multiple of 8): per block `absmax = max |w|`, `x = clamp(w * f32(1/absmax), -1, 1)`,
/// the code is the number of decision thresholds below `x` (NF4; FP4 does the same on |x|
/// and adds the sign bit), two codes per byte with the first in the high nibble. Returns
/// the index of the first non-finite element as the error.
pub fn bnb4_quantize(
    w: &[f32],
    block: usize,
    kind: Bnb4,
    packed: &mut [u8],
    absmax: &mut [f32],
    stats: Option<&mut ErrorStats>,
) -> Result<(), usize> {
    assert!(block >= 8 && block.is_multiple_of(8) && w.len().is_multiple_of(block));
    assert_eq!(packed.len() * 2, w.len());
    assert_eq!(absmax.len() * block, w.len());
    bnb4::dispatched(w, block, kind, packed, absmax, stats)
}

/// Dequantizes bitsandbytes 4-bit data.
pub fn bnb4_dequantize(packed: &[u8], absmax: &[f32], block: usize, kind: Bnb4, out: &mut [f32]) {
    let code = kind.code();
    for (i, o) in out.iter_mut().enumerate() {
        let byte = packed[i / 2];
        let c = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
        *o = code[c as usize] * absmax[i / block];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bits_rounding_is_rint() {
        assert_eq!(MAGIC.to_bits() as i32, MAGIC_BITS);
        for &v in &[
            -1.0f32, -0.5, -0.4, 0.0, 0.5, 1.5, 2.5, 14.5, 15.5, 16.0, 255.5, 256.0,
        ] {
            let r = ((v + MAGIC).to_bits() as i32).wrapping_sub(MAGIC_BITS);
            assert_eq!(r as f32, v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn magic_rounding_is_rint() {
        for &v in &[
            0.5f32, 1.5, 2.5, -0.5, -1.5, 3.49999, 254.5, 255.5, 7.5, -1.0, 16.0,
        ] {
            assert_eq!((v + MAGIC) - MAGIC, v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn bnb4_tables() {
        let nf4 = Bnb4Table::new(Bnb4::Nf4);
        assert_eq!(nf4.index, core::array::from_fn(|i| i as u8));
        let fp4 = Bnb4Table::new(Bnb4::Fp4);
        assert_eq!(
            fp4.index,
            [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]
        );
        assert_eq!(fp4.thresholds[7], 0.0);
        assert!((fp4.thresholds[8] - 0.002_604_17).abs() < 1e-7);
        assert!((fp4.thresholds[11] - 0.291_666_67).abs() < 1e-7);
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // halfway between 1.0 and the next bf16: ties to even (down)
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f808000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f818000)), 0x3f82);
        assert_eq!(
            half::bf16::from_bits(f32_to_bf16_bits(3.3)),
            half::bf16::from_f32(3.3)
        );
    }

    #[test]
    fn decode_encode_roundtrip() {
        let vals: Vec<f32> = (0..37).map(|i| i as f32 * 0.37 - 5.0).collect();
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let mut bytes = vec![0u8; vals.len() * dt.size_bytes() as usize];
            encode_f32(&vals, dt, &mut bytes);
            let mut back = vec![0f32; vals.len()];
            decode_f32(&bytes, dt, &mut back);
            for (a, b) in vals.iter().zip(&back) {
                assert_eq!(round_to_dtype(*a, dt), *b);
            }
        }
    }

    #[test]
    fn non_finite_is_reported_with_index() {
        let mut w = vec![0.5f32; 128];
        w[70] = f32::NAN;
        let mut codes = vec![0u32; 128 * 4 / 32];
        let (mut s, mut b) = (vec![0f32; 2], vec![0f32; 2]);
        let r = affine_quantize(&w, 128, 64, 4, Dtype::F32, &mut codes, &mut s, &mut b, None);
        assert_eq!(r, Err(70));
        w[70] = 0.0;
        w[3] = f32::NEG_INFINITY;
        let mut p = vec![0u8; 64];
        let mut am = vec![0f32; 2];
        assert_eq!(
            bnb4_quantize(&w, 64, Bnb4::Nf4, &mut p, &mut am, None),
            Err(3)
        );
    }
}
