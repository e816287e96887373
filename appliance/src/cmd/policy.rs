//! `portcullis policy check|test|explain`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {}

pub fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {}
}
