//! `portcullis recordings list` and `portcullis replay`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum RecordingsCommand {}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Session id to replay.
    pub session: String,
}

pub fn run(cmd: RecordingsCommand) -> ExitCode {
    match cmd {}
}

pub fn replay(_args: ReplayArgs) -> ExitCode {
    ExitCode::FAILURE
}
