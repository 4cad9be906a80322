//! `omnipack quantize` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack quantize`.
pub fn run(_args: QuantizeArgs) -> CommandResult {
    Err(miette::miette!("`omnipack quantize` is not available in this build yet"))
}
