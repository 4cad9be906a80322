//! `omnipack validate MANIFEST...`: schema and semantic checks with located diagnostics, and
//! for a manifest with tiers and components, the budgets (every tier must fit, as in `plan`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use omnipack_manifest::{Diagnostic, counted, load, render};

use super::CommandResult;

/// Output format of `omnipack validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable diagnostics on stderr (`human`, as `plan` once called it, is accepted too).
    #[value(alias = "human")]
    Text,
    /// A JSON array of diagnostics on stdout.
    Json,
}

/// Arguments of `omnipack validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Manifest files to check.
    #[arg(required = true, value_name = "MANIFEST")]
    pub manifests: Vec<PathBuf>,
    /// `text` (diagnostics on stderr) or `json` (an array of `{severity, message, file,
    /// line, column, path, help}` on stdout;
    /// `help`, the suggested fix, only when there is one).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Runs `omnipack validate`: exit 0 when every manifest is valid, 1 otherwise.
pub fn run(args: ValidateArgs) -> CommandResult {
    let mut all: Vec<Diagnostic> = Vec::new();
    let mut ok_lines = Vec::new();
    let mut failed = false;
    for path in &args.manifests {
        match load(path) {
            Ok(m) => {
                // Budgets: a manifest with tiers and components must also fit every tier.
                let mut budget = Vec::new();
                if !m.is_base_only() {
                    match omnipack_plan::plan(&m, &[]) {
                        Ok(plan) => {
                            budget.extend(plan.warnings.iter().map(|w| w.to_diagnostic(&m)))
                        }
                        Err(failure) => {
                            failed = true;
                            all.extend(m.warnings.iter().cloned());
                            all.extend(failure.diagnostics.iter().map(|d| d.to_diagnostic(&m)));
                            continue;
                        }
                    }
                }
                let tiers = plural(m.resolved.tiers.len(), "tier");
                let components = plural(m.resolved.components.len(), "component");
                let what = if m.is_base_only() {
                    format!(" (a base for extends: {tiers}, {components})")
                } else {
                    format!(" ({tiers}, {components})")
                };
                let warn = match m.warnings.len() + budget.len() {
                    0 => String::new(),
                    n => format!(", {}", counted(n, "warning")),
                };
                ok_lines.push(format!("{}: valid{what}{warn}", path.display()));
                all.extend(m.warnings);
                all.extend(budget);
            }
            Err(diags) => {
                failed = true;
                all.extend(diags);
            }
        }
    }
    match args.format {
        Format::Json => {
            let text = serde_json::to_string_pretty(&all)
                .map_err(|e| miette::miette!("cannot encode diagnostics: {e}"))?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
        }
        Format::Text => {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{}", render(&all));
            let mut out = std::io::stdout().lock();
            for line in &ok_lines {
                let _ = writeln!(out, "{line}");
            }
            if failed {
                let errors = all.iter().filter(|d| d.is_error()).count();
                let _ = writeln!(err, "{} found", counted(errors, "error"));
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn plural(n: usize, word: &str) -> String {
    match n {
        0 => format!("no {word}s"),
        1 => format!("1 {word}"),
        _ => format!("{n} {word}s"),
    }
}
