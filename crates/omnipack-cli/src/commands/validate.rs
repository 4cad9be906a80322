//! `omnipack validate` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack validate`.
pub fn run(_args: ValidateArgs) -> CommandResult {
    Err(miette::miette!("`omnipack validate` is not available in this build yet"))
}
