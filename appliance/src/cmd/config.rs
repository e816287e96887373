//! `portcullis config check FILE`: validate a configuration without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use dataplane::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE; print a summary, or the first error with file, line and key.
    Check {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Check { file } => match Config::load(&file) {
            Ok(c) => {
                outln!(
                    "{}: ok, {} worker(s), {} connection(s)",
                    file.display(),
                    c.gateway.workers,
                    c.connections.len()
                );
                for conn in &c.connections {
                    outln!(
                        "  {} ({}) {} -> {}",
                        conn.name,
                        conn.protocol,
                        conn.listen,
                        conn.upstream
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(super::EXIT_CONFIG)
            }
        },
    }
}
