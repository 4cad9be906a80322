//! `omnipack`: package on-device models for iOS apps. The only crate that prints.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Package on-device models for iOS apps: validate a bundle manifest, plan each device
/// tier's memory budget, quantize, and build lazily loadable bundles and asset packs.
#[derive(Debug, Parser)]
#[command(name = "omnipack", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a first, commented manifest for a safetensors checkpoint (never replacing a file).
    Init(commands::init::InitArgs),
    /// Check manifests against the schema and the semantic rules.
    Validate(commands::validate::ValidateArgs),
    /// Print a JSON schema (byte-identical to the committed file).
    Schema(commands::schema::SchemaArgs),
    /// Show each tier's memory budget, the chosen variants and the stages, without heavy work.
    Plan(commands::plan::PlanArgs),
    /// Run the whole pipeline: export, quantize, package, summarize.
    Build(commands::build::BuildArgs),
    /// Re-hash every bundle and file of an output folder against its summary.
    Verify(commands::verify::VerifyArgs),
    /// Describe a safetensors file, a bundle zip or a summary.
    Inspect(commands::inspect::InspectArgs),
    /// Quantize one safetensors file, with the same layout as in bundles, or compress one Core ML
    /// `.mlpackage` (int8 / int4, bit-exact with coremltools 9.0).
    Quantize(commands::quantize::QuantizeArgs),
}

/// No command ends with a panic's exit code 101. Writing to a closed standard output or error
/// (`omnipack plan m.yaml | head -1`, a pager quit early) ends the command quietly with exit
/// code 1: what was asked for was not all delivered. Any other panic is a bug: one line on
/// standard error, exit code 1.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        if !msg.starts_with("failed printing to std") {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "omnipack: internal error{at}: {msg} (please report it)"
            );
        }
        std::process::exit(1);
    }));
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => commands::init::run(a),
        Command::Validate(a) => commands::validate::run(a),
        Command::Schema(a) => commands::schema::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::Build(a) => commands::build::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            let _ = writeln!(std::io::stderr(), "{report:?}");
            ExitCode::from(1)
        }
    }
}
