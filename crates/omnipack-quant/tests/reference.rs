//! Bit-exact reproduction of the reference vectors made by mlx 0.32.4 (`mx.quantize`, CPU)
//! and bitsandbytes 0.50.2 (`quantize_4bit`, CPU). See tests/data/README.md.

use std::path::PathBuf;

use omnipack_quant::kernels::{self, Bnb4};
use omnipack_quant::{Dtype, SafetensorsFile};

fn fixture() -> SafetensorsFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/quant_reference_vectors.safetensors");
    SafetensorsFile::open(p).expect("fixture opens")
}

fn f32s(f: &SafetensorsFile, name: &str) -> (Vec<f32>, Dtype) {
    let e = f.entry(name).unwrap_or_else(|_| panic!("missing {name}"));
    let mut v = vec![0f32; e.info.numel() as usize];
    kernels::decode_f32(f.bytes(e), e.info.dtype, &mut v);
    (v, e.info.dtype)
}

fn u32s(f: &SafetensorsFile, name: &str) -> Vec<u32> {
    let e = f.entry(name).unwrap_or_else(|_| panic!("missing {name}"));
    f.bytes(e)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn mlx_affine_bit_exact() {
    mlx_affine_check();
}

#[test]
fn portable_kernels_bit_exact() {
    kernels::force_portable(true);
    mlx_affine_check();
    bnb_check();
    kernels::force_portable(false);
}

fn mlx_affine_check() {
    let f = fixture();
    let mut checked = 0;
    for (dt_name, store) in [
        ("f32", Dtype::F32),
        ("f16", Dtype::F16),
        ("bf16", Dtype::BF16),
    ] {
        let (w, _) = f32s(&f, &format!("input.{dt_name}"));
        let (rows, cols) = (16usize, 256usize);
        assert_eq!(w.len(), rows * cols);
        for bits in [2u8, 3, 4, 6, 8] {
            for group in [32usize, 64, 128] {
                let key = format!("mlx.{dt_name}.b{bits}.g{group}");
                let mut codes = vec![0u32; rows * cols * bits as usize / 32];
                let mut s = vec![0f32; rows * cols / group];
                let mut b = vec![0f32; rows * cols / group];
                kernels::affine_quantize(
                    &w, cols, group, bits, store, &mut codes, &mut s, &mut b, None,
                )
                .unwrap();
                let want = u32s(&f, &format!("{key}.weight"));
                assert_eq!(codes, want, "{key}.weight");
                let (ws, _) = f32s(&f, &format!("{key}.scales"));
                let (wb, _) = f32s(&f, &format!("{key}.biases"));
                assert_eq!(bits_of(&s), bits_of(&ws), "{key}.scales");
                assert_eq!(bits_of(&b), bits_of(&wb), "{key}.biases");
                checked += 3;
            }
        }
    }
    assert_eq!(checked, 3 * 5 * 3 * 3);
}

#[test]
fn bnb_4bit_bit_exact() {
    bnb_check();
}

fn bnb_check() {
    let f = fixture();
    let (w, _) = f32s(&f, "input.f32");
    for (name, kind) in [("nf4", Bnb4::Nf4), ("fp4", Bnb4::Fp4)] {
        let (code, _) = f32s(&f, &format!("bnb.{name}.code"));
        assert_eq!(bits_of(&code), bits_of(kind.code()), "bnb.{name}.code");
        for block in [64usize, 128] {
            let key = format!("bnb.{name}.bs{block}");
            let mut packed = vec![0u8; w.len() / 2];
            let mut am = vec![0f32; w.len() / block];
            kernels::bnb4_quantize(&w, block, kind, &mut packed, &mut am, None).unwrap();
            let e = f.entry(&format!("{key}.packed")).unwrap();
            assert_eq!(packed.as_slice(), f.bytes(e), "{key}.packed");
            let (want_am, _) = f32s(&f, &format!("{key}.absmax"));
            assert_eq!(bits_of(&am), bits_of(&want_am), "{key}.absmax");
        }
    }
}

/// The fused bytes-to-bytes kernels (used by the writer) reproduce the vectors too, with
/// scales and biases encoded in the input dtype.
#[test]
fn bytes_kernels_bit_exact() {
    let f = fixture();
    for (dt_name, dt) in [
        ("f32", Dtype::F32),
        ("f16", Dtype::F16),
        ("bf16", Dtype::BF16),
    ] {
        let (w, _) = f32s(&f, &format!("input.{dt_name}"));
        let es = dt.size_bytes() as usize;
        let mut src = vec![0u8; w.len() * es];
        kernels::encode_f32(&w, dt, &mut src);
        for bits in [2u8, 3, 4, 6, 8] {
            for group in [32usize, 64, 128] {
                let key = format!("mlx.{dt_name}.b{bits}.g{group}");
                let mut codes = vec![0u8; w.len() * bits as usize / 8];
                let mut s = vec![0u8; w.len() / group * es];
                let mut b = vec![0u8; w.len() / group * es];
                kernels::affine_quantize_bytes(
                    &src, dt, 256, group, bits, &mut codes, &mut s, &mut b, None,
                )
                .unwrap();
                let e = f.entry(&format!("{key}.weight")).unwrap();
                assert_eq!(codes.as_slice(), f.bytes(e), "{key}.weight");
                for (part, got) in [("scales", &s), ("biases", &b)] {
                    let mut v = vec![0f32; got.len() / es];
                    kernels::decode_f32(got, dt, &mut v);
                    let (want, _) = f32s(&f, &format!("{key}.{part}"));
                    assert_eq!(bits_of(&v), bits_of(&want), "{key}.{part}");
                }
            }
        }
    }
    let (w, _) = f32s(&f, "input.f32");
    let mut src = vec![0u8; w.len() * 4];
    kernels::encode_f32(&w, Dtype::F32, &mut src);
    for (name, kind) in [("nf4", Bnb4::Nf4), ("fp4", Bnb4::Fp4)] {
        for block in [64usize, 128] {
            let key = format!("bnb.{name}.bs{block}");
            let mut packed = vec![0u8; w.len() / 2];
            let mut am = vec![0u8; w.len() / block * 4];
            kernels::bnb4_quantize_bytes(&src, Dtype::F32, block, kind, &mut packed, &mut am, None)
                .unwrap();
            assert_eq!(
                packed.as_slice(),
                f.bytes(f.entry(&format!("{key}.packed")).unwrap())
            );
            assert_eq!(
                am.as_slice(),
                f.bytes(f.entry(&format!("{key}.absmax")).unwrap())
            );
        }
    }
}
