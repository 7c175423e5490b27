//! The `twopc` command line: `serve` and `demo`.

use crate::demo::{self, DemoError};
use crate::server::{self, Server, ServerConfig, ServerError};
use clap::{Parser, Subcommand};
use std::time::Duration;

/// twopc: a two-phase-commit transaction coordinator for HTTP services.
#[derive(Debug, Parser)]
#[command(name = "twopc", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator service.
    Serve(ServeArgs),
    /// Run a coordinator and two bank participants in this process and make a few transfers.
    Demo,
}

/// Options of `twopc serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TWOPC_LISTEN", default_value = server::DEFAULT_LISTEN)]
    pub listen: String,
    /// Decision log: sqlite://PATH (embedded, the default) or postgres://USER@HOST/DB.
    #[arg(long = "database", env = "TWOPC_DATABASE_URL", default_value = server::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Base URL participants use to ask about a transaction [default: http://LISTEN-ADDRESS].
    #[arg(long, env = "TWOPC_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Milliseconds between recovery rounds.
    #[arg(long, env = "TWOPC_RECOVERY_INTERVAL_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..))]
    pub recovery_interval_ms: u64,
    /// Milliseconds a commit call waits for acknowledgements after the decision.
    #[arg(long, env = "TWOPC_ACK_WAIT_MS", default_value_t = 2000)]
    pub ack_wait_ms: u64,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `serve` failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// `demo` failed.
    #[error(transparent)]
    Demo(#[from] DemoError),
}

/// Runs a parsed command line to completion.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServerConfig {
                listen: args.listen,
                database_url: args.database_url,
                advertise_url: args.advertise_url,
                recovery_interval: Duration::from_millis(args.recovery_interval_ms),
                ack_wait: Duration::from_millis(args.ack_wait_ms),
            };
            let server = Server::build(config).await?;
            server.run(server::shutdown_signal()).await?;
            Ok(())
        }
        Command::Demo => {
            demo::run(&mut std::io::stdout()).await?;
            Ok(())
        }
    }
}

/// Sets up logging to stderr (`RUST_LOG` overrides `default_filter`).
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
