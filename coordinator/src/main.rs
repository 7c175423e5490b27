//! The `twopc` binary: see `twopc --help`.

use clap::Parser;
use twopc_coordinator::cli::{self, Cli, Command};

/// mimalloc: the coordinator allocates per request and per event from many threads; the system
/// allocator spent ~12 % of its CPU in malloc/free under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo => "warn",
        Command::Serve(_) => "info",
        Command::CheckParticipant(_) => "warn",
        Command::Bench(_) => "warn",
    };
    cli::init_tracing(default_filter);
    cli::run(cli).await?;
    Ok(())
}
