//! Compresses a Core ML package as omnipack does (int8 per channel, int4 per block, or f16 as
//! it is), bit-exact with coremltools 9.0's `linear_quantize_weights`:
//!
//!     cargo run --release -p omnipack-coreml --example compress -- IN.mlpackage OUT.mlpackage \
//!         --format int4 --block 32 [--keep GLOB]... [--plan]
//!
//! `OUT` must not exist. With `--plan` the plan (which weights are compressed, every blob of
//! the new `weight.bin`, the byte counts) is printed as JSON. `scripts/check-coreml` and
//! `scripts/bench-coreml-compress` drive this until `omnipack quantize` does the same.

use std::path::PathBuf;
use std::process::ExitCode;

use omnipack_coreml::{CompressionConfig, CompressionFormat};

fn usage() -> ExitCode {
    eprintln!(
        "usage: compress IN.mlpackage OUT.mlpackage --format f16|int8|int4 [--block N] [--keep GLOB]... [--plan]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut format = None;
    let mut block = 32u32;
    let mut keep = Vec::new();
    let mut print_plan = false;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--format") => format = args.next().and_then(|v| v.into_string().ok()),
            Some("--block") => match args.next().and_then(|v| v.to_str()?.parse().ok()) {
                Some(b) => block = b,
                None => return usage(),
            },
            Some("--keep") => match args.next().and_then(|v| v.into_string().ok()) {
                Some(g) => keep.push(g),
                None => return usage(),
            },
            Some("--plan") => print_plan = true,
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let format = match format.as_deref() {
        Some("f16") => CompressionFormat::F16,
        Some("int8") => CompressionFormat::Int8,
        Some("int4") => CompressionFormat::Int4 { block_size: block },
        _ => return usage(),
    };
    let [input, output] = paths.as_slice() else {
        return usage();
    };
    let config = CompressionConfig { format, keep };
    let result =
        omnipack_coreml::open(input).and_then(|m| omnipack_coreml::compress(&m, &config, output));
    match result {
        Ok(plan) => {
            if print_plan {
                use std::io::Write;
                let json = serde_json::to_string_pretty(&plan).expect("plans serialize");
                let _ = writeln!(std::io::stdout(), "{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
