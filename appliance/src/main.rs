//! `portcullis`: the gateway binary. Thin: it parses the command line and hands each
//! subcommand to the crate that owns the work.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "Portcullis access gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Policy files: check, test, explain.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Audit recordings: list segments.
    #[command(subcommand)]
    Recordings(cmd::recordings::RecordingsCommand),
    /// Show a recorded session's timeline.
    Replay(cmd::recordings::ReplayArgs),
    /// Local token issuer: keygen, mint.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy(c) => cmd::policy::run(c),
        Command::Recordings(c) => cmd::recordings::run(c),
        Command::Replay(a) => cmd::recordings::replay(a),
        Command::Token(c) => cmd::token::run(c),
    }
}
