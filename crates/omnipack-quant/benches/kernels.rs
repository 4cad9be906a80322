//! Kernel benchmarks: `cargo bench -p omnipack-quant`.

use divan::Bencher;
use divan::counter::ItemsCount;
use omnipack_quant::Dtype;
use omnipack_quant::kernels::{self, Bnb4};

fn main() {
    divan::main();
}

const ROWS: usize = 256;
const COLS: usize = 4096;

fn weights() -> Vec<f32> {
    // xorshift-based pseudo-normal values, deterministic
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..ROWS * COLS)
        .map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 0.05
        })
        .collect()
}

/// An MLX affine kernel (`kernels::affine_quantize` or `kernels::affine_quantize_mse`).
type AffineKernel = fn(
    &[f32],
    usize,
    usize,
    u8,
    Dtype,
    &mut [u32],
    &mut [f32],
    &mut [f32],
    Option<&mut omnipack_quant::ErrorStats>,
) -> Result<(), usize>;

/// Times `quantize` at group size 64 and `bits`, measuring the error when `report`.
fn bench_affine(b: Bencher, quantize: AffineKernel, bits: u8, report: bool) {
    let w = weights();
    let mut codes = vec![0u32; w.len() * bits as usize / 32];
    let mut s = vec![0f32; w.len() / 64];
    let mut bi = vec![0f32; w.len() / 64];
    b.counter(ItemsCount::new(w.len())).bench_local(|| {
        let mut st = omnipack_quant::ErrorStats::default();
        quantize(
            &w,
            COLS,
            64,
            bits,
            Dtype::F16,
            &mut codes,
            &mut s,
            &mut bi,
            report.then_some(&mut st),
        )
        .unwrap();
        st
    });
}

#[divan::bench(args = [2, 3, 4, 6, 8])]
fn affine_g64(b: Bencher, bits: u8) {
    bench_affine(b, kernels::affine_quantize, bits, false);
}

#[divan::bench]
fn affine_int4_g64_with_report(b: Bencher) {
    bench_affine(b, kernels::affine_quantize, 4, true);
}

#[divan::bench(args = [2, 3, 4, 6, 8])]
fn affine_mse_g64(b: Bencher, bits: u8) {
    bench_affine(b, kernels::affine_quantize_mse, bits, false);
}

#[divan::bench]
fn affine_mse_int4_g64_with_report(b: Bencher) {
    bench_affine(b, kernels::affine_quantize_mse, 4, true);
}

#[divan::bench(args = ["nf4", "fp4"])]
fn bnb4_bs64(b: Bencher, kind: &str) {
    let kind = if kind == "nf4" { Bnb4::Nf4 } else { Bnb4::Fp4 };
    let w = weights();
    let mut packed = vec![0u8; w.len() / 2];
    let mut am = vec![0f32; w.len() / 64];
    b.counter(ItemsCount::new(w.len())).bench_local(|| {
        kernels::bnb4_quantize(&w, 64, kind, &mut packed, &mut am, None).unwrap();
    });
}

#[divan::bench]
fn decode_f16(b: Bencher) {
    let w = weights();
    let mut bytes = vec![0u8; w.len() * 2];
    kernels::encode_f32(&w, Dtype::F16, &mut bytes);
    let mut out = vec![0f32; w.len()];
    b.counter(ItemsCount::new(w.len()))
        .bench_local(|| kernels::decode_f32(&bytes, Dtype::F16, &mut out));
}

#[divan::bench(args = ["F16", "BF16"])]
fn encode(b: Bencher, dt: &str) {
    let dt = Dtype::parse(dt).unwrap();
    let w = weights();
    let mut bytes = vec![0u8; w.len() * 2];
    b.counter(ItemsCount::new(w.len()))
        .bench_local(|| kernels::encode_f32(&w, dt, &mut bytes));
}
