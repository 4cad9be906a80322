//! Seeded random weights and the SQNR of `rtn` and `mse` on them, measured after MLX
//! dequantization: shared by `tests/mse_gain.rs` and `examples/mse_quality.rs`.

use omnipack_quant::Dtype;
use omnipack_quant::kernels;
use omnipack_quant::quality::mlx_affine_dequantize;

pub const ROWS: usize = 1024;
pub const COLS: usize = 4096;

/// xorshift64* with Box-Muller normals: small, seeded, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3).
    fn student_t3(&mut self) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..3).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / 3.0).sqrt()
    }
}

/// Seeded f16 weights, `ROWS` x `COLS`: Gaussian, or Student-t with 3 degrees of freedom
/// when `heavy`, scaled by 0.02.
pub fn weights(heavy: bool, seed: u64) -> Vec<f32> {
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

/// SQNR (dB) of a method on `w` with groups of `g`, measured on `mx.dequantize`'s
/// reconstruction.
pub fn sqnr(w: &[f32], bits: u8, g: usize, mse: bool) -> f64 {
    let mut codes = vec![0u32; w.len() * bits as usize / 32];
    let (mut s, mut b) = (vec![0f32; w.len() / g], vec![0f32; w.len() / g]);
    let quantize = if mse {
        kernels::affine_quantize_mse
    } else {
        kernels::affine_quantize
    };
    quantize(
        w,
        COLS,
        g,
        bits,
        Dtype::F16,
        &mut codes,
        &mut s,
        &mut b,
        None,
    )
    .unwrap();
    let mut r = vec![0f32; w.len()];
    mlx_affine_dequantize(&codes, &s, &b, g, bits, Dtype::F16, &mut r);
    let (mut err, mut sig) = (0f64, 0f64);
    for (&x, &y) in w.iter().zip(&r) {
        let d = f64::from(x) - f64::from(y);
        err += d * d;
        sig += f64::from(x) * f64::from(x);
    }
    10.0 * (sig / err).log10()
}
