//! `omnipack build` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack build`.
pub fn run(_args: BuildArgs) -> CommandResult {
    Err(miette::miette!("`omnipack build` is not available in this build yet"))
}
