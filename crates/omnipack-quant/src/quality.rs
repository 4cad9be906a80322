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
use crate::kernels::{Bnb4, ErrorStats, dispatch, round_lanes};

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
    use crate::kernels::lanes::mlx_dequant8;

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
