//! `omnipack schema` (interim: being implemented).

use super::CommandResult;

/// Arguments of `omnipack schema`.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// Remaining arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `omnipack schema`.
pub fn run(_args: SchemaArgs) -> CommandResult {
    Err(miette::miette!("`omnipack schema` is not available in this build yet"))
}
