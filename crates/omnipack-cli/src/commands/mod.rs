//! One module per subcommand: its clap arguments and its `run`.
//!
//! `run` returns the exit code on success paths that still fail (for example an invalid
//! manifest: diagnostics already printed, exit 1) and a miette report for errors that
//! `main` prints.

pub mod build;
pub mod init;
pub mod inspect;
pub mod plan;
pub mod quantize;
pub mod schema;
pub mod validate;
pub mod verify;

/// What a command returns.
pub type CommandResult = miette::Result<std::process::ExitCode>;
