//! Prints the side-by-side SQNR of the `rtn` and `mse` methods for every MLX affine bit width
//! and group size, on seeded random f16 weights (1024 x 4096, Gaussian and Student-t with 3
//! degrees of freedom), measured after MLX dequantization (a Markdown table for the docs).
//!
//! `cargo run --release -p omnipack-quant --example mse_quality`

use omnipack_quant::Dtype;
use omnipack_quant::kernels;
use omnipack_quant::quality::mlx_affine_dequantize;

const ROWS: usize = 1024;
const COLS: usize = 4096;

/// xorshift64* with Box-Muller normals (the same generator as `tests/mse_gain.rs`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn student_t3(&mut self) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..3).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / 3.0).sqrt()
    }
}

fn weights(heavy: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..ROWS * COLS)
        .map(|_| {
            let x = if heavy {
                rng.student_t3()
            } else {
                rng.normal()
            };
            kernels::round_to_dtype((x * 0.02) as f32, Dtype::F16)
        })
        .collect()
}

fn sqnr(w: &[f32], bits: u8, group: usize, mse: bool) -> f64 {
    let mut codes = vec![0u32; w.len() * bits as usize / 32];
    let (mut s, mut b) = (vec![0f32; w.len() / group], vec![0f32; w.len() / group]);
    let quantize = if mse {
        kernels::affine_quantize_mse
    } else {
        kernels::affine_quantize
    };
    quantize(
        w,
        COLS,
        group,
        bits,
        Dtype::F16,
        &mut codes,
        &mut s,
        &mut b,
        None,
    )
    .expect("finite weights");
    let mut r = vec![0f32; w.len()];
    mlx_affine_dequantize(&codes, &s, &b, group, bits, Dtype::F16, &mut r);
    let (mut err, mut sig) = (0f64, 0f64);
    for (&x, &y) in w.iter().zip(&r) {
        let d = f64::from(x) - f64::from(y);
        err += d * d;
        sig += f64::from(x) * f64::from(x);
    }
    10.0 * (sig / err).log10()
}

fn main() {
    let data = [
        ("Gaussian", weights(false, 0x5eed_0001)),
        ("Student-t3", weights(true, 0x5eed_0002)),
    ];
    println!("| format | weights | rtn (dB) | mse (dB) | gain (dB) |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for bits in [2u8, 3, 4, 6, 8] {
        for group in [32usize, 64, 128] {
            for (name, w) in &data {
                let (r, m) = (sqnr(w, bits, group, false), sqnr(w, bits, group, true));
                println!(
                    "| int{bits} g{group} | {name} | {r:.2} | {m:.2} | {:+.2} |",
                    m - r
                );
            }
        }
    }
}
