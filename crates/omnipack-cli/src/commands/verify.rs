//! `omnipack verify` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack verify`.
pub fn run(_args: VerifyArgs) -> CommandResult {
    Err(miette::miette!("`omnipack verify` is not available in this build yet"))
}
