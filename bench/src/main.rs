//! `cargo run --release -p bench -- <suite> --json FILE`: micro benchmark suites and the
//! end-to-end harness. Each suite lives in its own module and writes a JSON report.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod codecs;
mod e2e;
mod identity;
mod instructions;
mod masking;
mod policy;
mod recorder;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Portcullis benchmark suites")]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// Policy decisions per second and per-decision latency.
    Policy(SuiteArgs),
    /// Masking throughput (GB/s per core) and accuracy.
    Masking(SuiteArgs),
    /// Recorder end-to-end rate and data-path enqueue cost.
    Recorder(SuiteArgs),
    /// Token verification cost, cold and cached.
    Identity(SuiteArgs),
    /// PostgreSQL wire decoding and DataRow re-encoding, per frame and GB/s.
    Codecs(SuiteArgs),
    /// Instructions per operation of every micro suite under callgrind: deterministic, for a
    /// regression gate (`--baseline FILE`).
    Instructions(instructions::InstructionsArgs),
    /// One case of `instructions`, run under callgrind by it.
    #[command(hide = true)]
    InstructionCase { case: String },
    /// End to end: direct vs gateway (full inspection, pure relay) vs PgBouncer.
    E2e(e2e::E2eArgs),
}

/// Arguments every suite takes.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Write the JSON report here (also printed to stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Shorter run for smoke checks in CI.
    #[arg(long)]
    pub quick: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.suite {
        Suite::Policy(a) => policy::run(&a),
        Suite::Masking(a) => masking::run(&a),
        Suite::Recorder(a) => recorder::run(&a),
        Suite::Identity(a) => identity::run(&a),
        Suite::Codecs(a) => codecs::run(&a),
        Suite::Instructions(a) => instructions::run(&a),
        Suite::InstructionCase { case } => instructions::case(&case),
        Suite::E2e(a) => e2e::run(&a),
    }
}

/// Writes a suite's report to `--json` (when given) and stdout.
pub fn write_report(args: &SuiteArgs, report: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    #[expect(clippy::print_stdout, reason = "the report is the command's output")]
    {
        println!("{text}");
    }
    Ok(())
}
