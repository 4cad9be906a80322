//! `omnipack verify OUT_DIR`: re-hashes every bundle, every file inside it and every
//! asset-pack folder against the summary and each `bundle.json`; exit 1 naming each mismatch.

use std::path::PathBuf;
use std::process::ExitCode;

use omnipack_manifest::{counted, counted_as};

use super::CommandResult;

/// Arguments of `omnipack verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// An output folder of `omnipack build` (holding mobile_packager_summary.json).
    pub out_dir: PathBuf,
}

/// Runs `omnipack verify`.
pub fn run(args: VerifyArgs) -> CommandResult {
    let report = match omnipack_build::verify::verify(&args.out_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if report.mismatches.is_empty() {
        println!(
            "ok: {}, {} verified in {}",
            counted(report.bundles, "bundle"),
            counted(report.files, "file"),
            args.out_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for m in &report.mismatches {
        eprintln!("mismatch: {m}");
    }
    eprintln!(
        "error: {} in {} ({} checked)",
        counted_as(report.mismatches.len(), "mismatch", "mismatches"),
        args.out_dir.display(),
        counted(report.files, "file")
    );
    Ok(ExitCode::from(1))
}
