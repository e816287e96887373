//! One module per subcommand family; each only parses arguments and calls a library crate.

pub mod policy;
pub mod recordings;
pub mod token;
