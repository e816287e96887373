//! `portcullis`: the gateway binary. Thin: it parses the command line and hands each
//! subcommand to the crate that owns the work.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Writes a command's output to stdout like `print!`, but a reader that has gone away
/// (`portcullis policy test DIR | head -3`) ends the output instead of panicking: the rest
/// is dropped, as with any Unix tool, and the command's exit code still says how it went.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `out!` with a newline, like `println!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod admin;
mod admin_api;
mod cmd;
mod histograms;
mod serve;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AFTER_HELP: &str = "\
Examples:
  portcullis demo                                   try it: a relay in front of a local server
  portcullis config check /etc/portcullis/portcullis.toml
  portcullis run --config /etc/portcullis/portcullis.toml
  portcullis --driver epoll --log-format json run --config gw.toml

Exit codes:
  0  success (including a clean shutdown on SIGTERM/SIGINT)
  1  runtime error (cannot bind, cannot start a worker, ...)
  2  usage or configuration error";

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis access gateway",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log output format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// IO driver for the workers: io_uring where available (auto), or forced.
    #[arg(long, global = true, value_enum, default_value_t = Driver::Auto)]
    driver: Driver,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Driver {
    Auto,
    Iouring,
    Epoll,
}

impl From<Driver> for dataplane::runtime::DriverChoice {
    fn from(d: Driver) -> Self {
        match d {
            Driver::Auto => Self::Auto,
            Driver::Iouring => Self::IoUring,
            Driver::Epoll => Self::Epoll,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM/SIGINT.
    Run(cmd::run::RunArgs),
    /// Configuration files: check.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Start a self-contained demo on free local ports and print what to try.
    Demo,
    /// Policy files: check, test, explain, mask.
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
    /// Held requests: list, approve, deny (admin API).
    #[command(subcommand)]
    Reviews(cmd::reviews::ReviewsCommand),
    /// Live sessions: list, kill (admin API).
    #[command(subcommand)]
    Sessions(cmd::sessions::SessionsCommand),
    /// Just-in-time access: request a time-boxed grant (admin API).
    #[command(subcommand)]
    Access(cmd::access::AccessCommand),
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // When the log's reader goes away (`portcullis run 2>&1 | head`), tracing would report
        // each failed write with `eprintln!`, which panics on the same closed pipe: in a worker
        // that kills the worker, in the signal thread it loses SIGTERM. Logs are best effort;
        // the audit trail is the recorder's, not stderr's.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let driver = cli.driver.into();
    match cli.command {
        Command::Run(a) => cmd::run::run(a, driver),
        Command::Config(c) => cmd::config::run(c),
        Command::Demo => cmd::demo::run(driver),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Recordings(c) => cmd::recordings::run(c),
        Command::Replay(a) => cmd::recordings::replay(a),
        Command::Token(c) => cmd::token::run(c),
        Command::Reviews(c) => cmd::reviews::run(c),
        Command::Sessions(c) => cmd::sessions::run(c),
        Command::Access(c) => cmd::access::run(c),
    }
}
