//! `omnipack verify OUT_DIR`: re-hashes every bundle, every file inside it and every
//! asset-pack folder against the summary and each `bundle.json`; exit 1 naming each mismatch.

use std::path::PathBuf;
use std::process::ExitCode;

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
            "ok: {} bundle{}, {} files verified in {}",
            report.bundles,
            if report.bundles == 1 { "" } else { "s" },
            report.files,
            args.out_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for m in &report.mismatches {
        eprintln!("mismatch: {m}");
    }
    eprintln!(
        "error: {} mismatch{} in {} ({} files checked)",
        report.mismatches.len(),
        if report.mismatches.len() == 1 {
            ""
        } else {
            "es"
        },
        args.out_dir.display(),
        report.files
    );
    Ok(ExitCode::from(1))
}
