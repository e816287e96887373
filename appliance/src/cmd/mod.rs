//! One module per subcommand family; each only parses arguments and calls a library crate.

pub mod access;
pub mod config;
pub mod demo;
pub mod policy;
pub mod recordings;
pub mod reviews;
pub mod run;
pub mod sessions;
pub mod token;

/// Exit code for usage and configuration errors (clap uses it for usage errors too).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for runtime errors.
pub const EXIT_RUNTIME: u8 = 1;
