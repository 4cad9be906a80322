//! Prints the side-by-side SQNR of the `rtn` and `mse` methods for every MLX affine bit width
//! and group size, on seeded random f16 weights (1024 x 4096, Gaussian and Student-t with 3
//! degrees of freedom), measured after MLX dequantization (a Markdown table for the docs).
//!
//! `cargo run --release -p omnipack-quant --example mse_quality`

#[path = "../tests/support/random_weights.rs"]
mod random_weights;

use random_weights::{sqnr, weights};

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
