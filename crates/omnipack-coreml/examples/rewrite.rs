//! Writes the byte-reproducible form of a Core ML package:
//!
//!     cargo run -p omnipack-coreml --example rewrite -- IN.mlpackage OUT.mlpackage
//!
//! `OUT` must not exist. `scripts/check-coreml` drives this until the `omnipack` binary does the
//! same inside bundles.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: rewrite IN.mlpackage OUT.mlpackage");
        return ExitCode::from(2);
    };
    let result = omnipack_coreml::open(input)
        .and_then(|m| m.reproducible_entries())
        .and_then(|entries| omnipack_coreml::write_package(&entries, output));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
