//! `portcullis token keygen|mint`.

use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {}

pub fn run(cmd: TokenCommand) -> ExitCode {
    match cmd {}
}
