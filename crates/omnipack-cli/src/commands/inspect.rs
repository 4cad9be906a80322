//! `omnipack inspect` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack inspect`.
pub fn run(_args: InspectArgs) -> CommandResult {
    Err(miette::miette!("`omnipack inspect` is not available in this build yet"))
}
