//! `omnipack plan` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack plan`.
pub fn run(_args: PlanArgs) -> CommandResult {
    Err(miette::miette!("`omnipack plan` is not available in this build yet"))
}
