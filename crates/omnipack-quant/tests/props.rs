//! Property tests: packing round trips, dequantization error bounds, output shapes.

use omnipack_quant::kernels::{self, Bnb4};
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
