//! `portcullis run --config FILE`: load the config, start the gateway, serve until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use dataplane::config::Config;
use dataplane::runtime::DriverChoice;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,
}

pub fn run(args: RunArgs, driver: DriverChoice) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    crate::serve::serve(&config, driver, |_, _| {})
}
