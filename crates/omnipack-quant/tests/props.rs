//! Property tests: packing round trips, dequantization error bounds, output shapes, and the
//! `mse` quantizer never worse than `rtn` on any group.

use omnipack_quant::kernels::{self, Bnb4};
use omnipack_quant::quality::mlx_affine_dequantize;
use omnipack_quant::{Dtype, OutputKind, QuantSpec, TensorInfo, WeightFormat, plan_outputs};
use proptest::prelude::*;

fn bits() -> impl Strategy<Value = u8> {
    prop::sample::select(vec![2u8, 3, 4, 6, 8])
}

fn group() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![32usize, 64, 128])
}

fn weights(len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            8 => -1.0f32..1.0,
            1 => -100.0f32..100.0,
            1 => Just(0.0f32),
            1 => -1e-6f32..1e-6,
        ],
        len,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pack_unpack_roundtrip(bits in bits(), words in 1usize..8, seed in any::<u64>()) {
        let n = words * 32;
        let mut s = seed | 1;
        let codes: Vec<u8> = (0..n).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % (1u64 << bits)) as u8 }).collect();
        let mut packed = vec![0u32; n * bits as usize / 32];
        kernels::pack_codes(&codes, bits, &mut packed);
        let mut back = vec![0u8; n];
        kernels::unpack_codes(&packed, bits, &mut back);
        prop_assert_eq!(back, codes);
    }

    #[test]
    fn affine_error_bounds(
        (bits, group, rows, cols, w) in (bits(), group(), 1usize..4, 1usize..3)
            .prop_flat_map(|(b, g, r, k)| (Just(b), Just(g), Just(r), Just(g * k), weights(r * g * k)))
    ) {
        let ng = rows * cols / group;
        let mut codes = vec![0u32; rows * cols * bits as usize / 32];
        let (mut sc, mut bi) = (vec![0f32; ng], vec![0f32; ng]);
        let mut stats = omnipack_quant::ErrorStats::default();
        kernels::affine_quantize(&w, cols, group, bits, Dtype::F32, &mut codes, &mut sc, &mut bi, Some(&mut stats)).unwrap();
        let mut q = vec![0u8; w.len()];
        kernels::unpack_codes(&codes, bits, &mut q);
        let n = ((1u32 << bits) - 1) as f32;
        let mut r = vec![0f32; w.len()];
        kernels::affine_dequantize(&codes, &sc, &bi, group, bits, &mut r);
        for i in 0..w.len() {
            let (s, b) = (sc[i / group], bi[i / group]);
            prop_assert!(f32::from(q[i]) <= n);
            let tol = s.abs() * 1e-4 + b.abs() * 1e-6 + 1e-12;
            let lo = b.min(b + n * s);
            let hi = b.max(b + n * s);
            let err = (w[i] - r[i]).abs();
            if w[i] >= lo && w[i] <= hi {
                // Inside the representable range: at most half a step.
                prop_assert!(err <= 0.5 * s.abs() + tol, "i={} w={} r={} s={} b={}", i, w[i], r[i], s, b);
            } else {
                // MLX snaps the edge to a multiple of the scale, which can put the other
                // extreme up to one step outside the grid: at most one step there.
                prop_assert!(err <= s.abs() + tol, "i={} w={} r={} s={} b={}", i, w[i], r[i], s, b);
            }
        }
        prop_assert_eq!(stats.count, w.len() as u64);
        // The fused report equals the error of the reconstruction.
        let direct = kernels::error_stats(&w, &r);
        prop_assert_eq!(stats.max_abs_err, direct.max_abs_err);
        prop_assert!((stats.sum_sq_err - direct.sum_sq_err).abs() <= 1e-4 * direct.sum_sq_err + 1e-30);
        prop_assert!((stats.sum_sq_ref - direct.sum_sq_ref).abs() <= 1e-4 * direct.sum_sq_ref + 1e-30);
    }

    #[test]
    fn bnb4_error_bounds(
        (fp4, block, nblocks, w) in (any::<bool>(), prop::sample::select(vec![32usize, 64, 128]), 1usize..4)
            .prop_flat_map(|(f, b, n)| (Just(f), Just(b), Just(n), weights(b * n)))
    ) {
        let kind = if fp4 { Bnb4::Fp4 } else { Bnb4::Nf4 };
        let mut packed = vec![0u8; w.len() / 2];
        let mut am = vec![0f32; nblocks];
        kernels::bnb4_quantize(&w, block, kind, &mut packed, &mut am, None).unwrap();
        let mut r = vec![0f32; w.len()];
        kernels::bnb4_dequantize(&packed, &am, block, kind, &mut r);
        let mut sorted = *kind.code();
        sorted.sort_by(f32::total_cmp);
        let max_gap = sorted.windows(2).map(|p| p[1] - p[0]).fold(0.0f32, f32::max);
        for i in 0..w.len() {
            let a = am[i / block];
            prop_assert!((w[i] - r[i]).abs() <= a * (max_gap / 2.0) * 1.0001 + 1e-30, "i={} w={} r={}", i, w[i], r[i]);
        }
    }

    #[test]
    fn plan_shapes(rows in 1u64..300, cols_mult in 1u64..20, bits in bits(), group in group(), f16 in any::<bool>()) {
        let cols = cols_mult * 32;
        let dt = if f16 { Dtype::F16 } else { Dtype::F32 };
        let t = TensorInfo { name: "x.weight".into(), dtype: dt, shape: vec![rows, cols] };
        let spec = QuantSpec::new(WeightFormat::Affine { bits }, group as u32);
        let out = plan_outputs(std::slice::from_ref(&t), &spec).unwrap();
        if cols % group as u64 == 0 {
            prop_assert_eq!(out.len(), 3);
            prop_assert_eq!(&out[0].shape, &vec![rows, cols * bits as u64 / 32]);
            prop_assert_eq!(&out[1].shape, &vec![rows, cols / group as u64]);
            prop_assert_eq!(out[1].dtype, dt);
            prop_assert_eq!(out[2].kind, OutputKind::AffineBiases);
        } else {
            prop_assert_eq!(out.len(), 1);
            prop_assert_eq!(out[0].kind, OutputKind::Kept);
        }
        let nf = plan_outputs(std::slice::from_ref(&t), &QuantSpec::new(WeightFormat::Nf4, 32)).unwrap();
        prop_assert_eq!(&nf[0].shape, &vec![rows * cols / 2, 1]);
        prop_assert_eq!(&nf[1].shape, &vec![rows * cols / 32]);
    }
}

/// One group of `g` values of a kind the `mse` search must not get wrong.
fn group_of(g: usize) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        4 => prop::collection::vec(-1.0f32..1.0, g),
        // heavy tails: cubes of uniforms
        2 => prop::collection::vec(-1.0f32..1.0, g).prop_map(|v| v.iter().map(|x| x * x * x).collect()),
        1 => (-10.0f32..10.0).prop_map(move |v| vec![v; g]),
        1 => Just(vec![0.0f32; g]),
        2 => (prop::collection::vec(-0.05f32..0.05, g), 0..g, -20.0f32..20.0)
            .prop_map(|(mut v, i, o)| { v[i] = o; v }),
        1 => prop::collection::vec(-1e-6f32..1e-6, g),
        1 => prop::collection::vec(100.0f32..100.5, g),
        1 => prop::collection::vec(prop::sample::select(vec![-1.0f32, 0.0, 0.5, 2.0]), g),
    ]
}

fn store() -> impl Strategy<Value = Dtype> {
    prop::sample::select(vec![Dtype::F32, Dtype::F16, Dtype::BF16])
}

/// Per-group squared error (f64) of `mx.dequantize`'s reconstruction.
fn group_errors(
    w: &[f32],
    codes: &[u32],
    s: &[f32],
    b: &[f32],
    group: usize,
    bits: u8,
    dt: Dtype,
) -> Vec<f64> {
    let mut r = vec![0f32; w.len()];
    mlx_affine_dequantize(codes, s, b, group, bits, dt, &mut r);
    w.chunks(group)
        .zip(r.chunks(group))
        .map(|(wg, rg)| {
            wg.iter()
                .zip(rg)
                .map(|(&a, &c)| {
                    let d = f64::from(a) - f64::from(c);
                    d * d
                })
                .sum()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mse_is_never_worse_than_rtn_on_any_group(
        (bits, group, dt, w) in (bits(), group(), store(), 1usize..5)
            .prop_flat_map(|(b, g, d, k)| (Just(b), Just(g), Just(d), prop::collection::vec(group_of(g), k)))
    ) {
        // The source holds values of its dtype.
        let w: Vec<f32> = w.concat().iter().map(|&x| kernels::round_to_dtype(x, dt)).collect();
        let (cols, ng) = (group, w.len() / group);
        let mut out = Vec::new();
        for mse in [false, true] {
            let mut codes = vec![0u32; w.len() * bits as usize / 32];
            let (mut s, mut b) = (vec![0f32; ng], vec![0f32; ng]);
            let mut st = omnipack_quant::ErrorStats::default();
            let f = if mse { kernels::affine_quantize_mse } else { kernels::affine_quantize };
            f(&w, cols, group, bits, dt, &mut codes, &mut s, &mut b, Some(&mut st)).unwrap();
            // Stored scales and biases are values of the dtype, finite.
            for x in s.iter().chain(&b) {
                prop_assert!(x.is_finite() && kernels::round_to_dtype(*x, dt) == *x);
            }
            let errs = group_errors(&w, &codes, &s, &b, group, bits, dt);
            // The fused statistics (taken on the kernel's codes before packing) are the error
            // of the reconstruction from the packed file: every code was in range, or it
            // would have spilled into its neighbour.
            let total: f64 = errs.iter().sum();
            prop_assert!((st.sum_sq_err - total).abs() <= 1e-4 * total + 1e-30, "{} vs {}", st.sum_sq_err, total);
            out.push((errs, codes, s, b));
        }
        let (rtn, mse) = (&out[0], &out[1]);
        for (gi, (er, em)) in rtn.0.iter().zip(&mse.0).enumerate() {
            prop_assert!(em <= er, "group {}: mse {} > rtn {} (bits {}, {}, {:?})", gi, em, er, bits, dt, &w[gi * group..(gi + 1) * group]);
            if em == er {
                // Not better: the rtn group, bit for bit.
                prop_assert_eq!(mse.2[gi].to_bits(), rtn.2[gi].to_bits());
                prop_assert_eq!(mse.3[gi].to_bits(), rtn.3[gi].to_bits());
            }
        }
    }

    #[test]
    fn mse_bytes_api_equals_f32_api(
        (bits, group, dt, rows, w) in (bits(), group(), store(), 1usize..4)
            .prop_flat_map(|(b, g, d, r)| (Just(b), Just(g), Just(d), Just(r), prop::collection::vec(group_of(g), r * 2)))
    ) {
        let w: Vec<f32> = w.concat().iter().map(|&x| kernels::round_to_dtype(x, dt)).collect();
        let cols = 2 * group;
        let es = dt.size_bytes() as usize;
        let mut src = vec![0u8; w.len() * es];
        kernels::encode_f32(&w, dt, &mut src);
        let ng = rows * 2;
        let mut codes = vec![0u32; w.len() * bits as usize / 32];
        let (mut s, mut b) = (vec![0f32; ng], vec![0f32; ng]);
        kernels::affine_quantize_mse(&w, cols, group, bits, dt, &mut codes, &mut s, &mut b, None).unwrap();
        let mut cb = vec![0u8; codes.len() * 4];
        let (mut sb, mut bb) = (vec![0u8; ng * es], vec![0u8; ng * es]);
        kernels::affine_quantize_mse_bytes(&src, dt, cols, group, bits, &mut cb, &mut sb, &mut bb, None).unwrap();
        let want: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        prop_assert_eq!(cb, want);
        let mut sw = vec![0u8; ng * es];
        kernels::encode_f32(&s, dt, &mut sw);
        prop_assert_eq!(&sb, &sw);
        kernels::encode_f32(&b, dt, &mut sw);
        prop_assert_eq!(&bb, &sw);
    }
}

#[test]
fn mse_portable_and_simd_builds_are_identical() {
    let mut st: u64 = 0x243f_6a88_85a3_08d3;
    let w: Vec<f32> = (0..64 * 512)
        .map(|i| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            let u = (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 331 == 0 { u * 9.0 } else { u * u * u }
        })
        .collect();
    for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let w: Vec<f32> = w.iter().map(|&x| kernels::round_to_dtype(x, dt)).collect();
        for bits in [2u8, 3, 4, 6, 8] {
            let run = |portable: bool| {
                kernels::force_portable(portable);
                let mut codes = vec![0u32; w.len() * bits as usize / 32];
                let (mut s, mut b) = (vec![0f32; w.len() / 64], vec![0f32; w.len() / 64]);
                let mut stats = omnipack_quant::ErrorStats::default();
                kernels::affine_quantize_mse(
                    &w,
                    512,
                    64,
                    bits,
                    dt,
                    &mut codes,
                    &mut s,
                    &mut b,
                    Some(&mut stats),
                )
                .unwrap();
                kernels::force_portable(false);
                (codes, s, b, stats)
            };
            assert_eq!(run(true), run(false), "int{bits} {dt}");
        }
    }
}

#[test]
fn mse_keeps_rtn_where_f32_sums_cannot_decide() {
    // Errors that overflow f32 (values near 1e25) or are negligible (values near 1e-20): the
    // rtn group, bit for bit.
    for scale in [1e25f32, 1e-20] {
        let w: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * scale)
            .collect();
        let run = |mse: bool| {
            let mut codes = vec![0u32; 128 * 4 / 32];
            let (mut s, mut b) = (vec![0f32; 2], vec![0f32; 2]);
            let f = if mse {
                kernels::affine_quantize_mse
            } else {
                kernels::affine_quantize
            };
            f(&w, 128, 64, 4, Dtype::F32, &mut codes, &mut s, &mut b, None).unwrap();
            (codes, s, b)
        };
        assert_eq!(run(true), run(false), "{scale}");
    }
}
