//! The `twopc` binary: see `twopc --help`.

use clap::Parser;
use twopc_coordinator::cli::{self, Cli, Command};

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
