//! `omnipack schema [manifest|summary]`: prints a JSON schema, byte-identical to the file
//! committed under `schemas/`.

use std::io::Write;
use std::process::ExitCode;

use super::CommandResult;

/// Which schema to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The bundle manifest (`schemas/omnipack-manifest.schema.json`).
    Manifest,
    /// `mobile_packager_summary.json` (`schemas/mobile_packager_summary.schema.json`).
    Summary,
}

/// Arguments of `omnipack schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// The schema to print.
    #[arg(value_enum, default_value = "manifest")]
    pub which: Which,
}

/// Runs `omnipack schema`.
pub fn run(args: SchemaArgs) -> CommandResult {
    let text = match args.which {
        Which::Manifest => omnipack_manifest::manifest_schema_json(),
        Which::Summary => omnipack_summary::summary_schema_json(),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| miette::miette!("cannot write the schema: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
