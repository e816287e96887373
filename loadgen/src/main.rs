//! `portcullis-loadgen`: protocol load generator for Portcullis and the targets behind it.
//!
//! Its client code (tokio-postgres for PostgreSQL, a small HTTP/1.1 client here) is independent of
//! the gateway's codecs, so the gateway's protocol bugs are not mirrored by the tool measuring it.
//! It does not start targets or the gateway; the `bench` crate's harness does that.
#![forbid(unsafe_code)]

mod cli;
mod engine;
mod http;
mod mix;
mod pg;
mod report;
mod stats;

use anyhow::Context as _;
use clap::Parser as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.common.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(run(cli))?;
    if outcome.failed {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(cli: cli::Cli) -> anyhow::Result<report::Outcome> {
    let params = cli.parameters();
    let plan = cli.common.plan()?;
    let (totals, intervals) = match cli.workload {
        cli::Workload::Pg(args) => {
            let target = pg::Target::from_args(&args)?;
            engine::run(
                plan.clone(),
                std::sync::Arc::new(target),
                cli.common.hdr_log.as_deref(),
            )
            .await?
        }
        cli::Workload::Http(args) => {
            let target = http::Target::from_args(&args)?;
            engine::run(
                plan.clone(),
                std::sync::Arc::new(target),
                cli.common.hdr_log.as_deref(),
            )
            .await?
        }
    };
    let outcome = report::summarize(&plan, &params, &totals, intervals);
    report::print_summary(&outcome);
    if let Some(path) = &cli.common.json {
        report::write_json(path, &outcome)?;
    }
    Ok(outcome)
}
