//! `portcullis-loadgen`: protocol load generator. Its client code is independent of the
//! gateway's codecs so that the gateway's protocol bugs are not mirrored here.
#![forbid(unsafe_code)]

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis-loadgen",
    version,
    about = "Portcullis load generator"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!("no workload yet")
}
