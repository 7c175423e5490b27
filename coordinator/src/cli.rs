//! The `twopc` command line: `serve`, `demo` and `check-participant`.

use crate::demo::{self, DemoError};
use crate::server::{self, Server, ServerConfig, ServerError};
use clap::{Parser, Subcommand};
use std::io::Write as _;
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
    /// Check a running participant (any language) against the protocol's rules; exit 0 only if all pass.
    CheckParticipant(crate::conformance::CheckArgs),
    /// Benchmark tools: a no-op participant and a load generator.
    #[command(subcommand)]
    Bench(BenchCommand),
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

/// `twopc bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A participant that answers every call at once and keeps NOTHING: for benchmarks only.
    Participant {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7900")]
        listen: String,
        /// Milliseconds to wait before answering prepare (keeps transactions in flight).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Drive one-shot transactions against a coordinator (or, with --direct, the participants).
    Run(BenchRunArgs),
    /// Log COUNT transactions decided to commit, start a coordinator on that log and time how
    /// long recovery takes to deliver them all.
    Recovery {
        /// Decision log to fill (use a fresh one).
        #[arg(long)]
        database: String,
        /// Participant base URLs (no-op participants), comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        participants: Vec<String>,
        /// Transactions to recover.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// End with one JSON line holding the figures.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `twopc bench run`.
#[derive(Debug, clap::Args)]
pub struct BenchRunArgs {
    /// Coordinator base URL.
    #[arg(long, default_value = "http://127.0.0.1:7800")]
    pub coordinator: String,
    /// Participant base URLs, comma separated; every transaction enlists all of them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub participants: Vec<String>,
    /// Transactions in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Send prepare and commit straight to the participants, without the coordinator.
    #[arg(long)]
    pub direct: bool,
    /// End with one JSON line holding the figures.
    #[arg(long)]
    pub json: bool,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `serve` failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The recovery benchmark failed.
    #[error(transparent)]
    RecoveryBench(#[from] crate::bench::recovery::RecoveryBenchError),
    /// A benchmark failed.
    #[error(transparent)]
    Load(#[from] crate::bench::load::LoadError),
    /// Writing output failed.
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
    /// `demo` failed.
    #[error(transparent)]
    Demo(#[from] DemoError),
    /// `check-participant` failed or found a failing check.
    #[error(transparent)]
    Check(#[from] crate::conformance::ConformanceError),
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
        Command::Bench(BenchCommand::Participant { listen, delay_ms }) => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|source| ServerError::Bind {
                    address: listen.clone(),
                    source,
                })?;
            tracing::warn!(address = %listen, "no-op benchmark participant: it keeps nothing and promises nothing");
            crate::bench::noop::serve(
                listener,
                Duration::from_millis(delay_ms),
                server::shutdown_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Bench(BenchCommand::Recovery {
            database,
            participants,
            count,
            json,
        }) => {
            let report = crate::bench::recovery::run(crate::bench::recovery::RecoveryConfig {
                database_url: database,
                participants: participants
                    .iter()
                    .map(|p| p.trim_end_matches('/').to_owned())
                    .collect(),
                count,
            })
            .await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "recovered {} transactions ({} participants each) in {:.2} s: {:.0} transactions/s",
                report.count, report.participants, report.seconds, report.throughput_tps
            )?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&report).unwrap_or_default()
                )?;
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Run(args)) => {
            let report = crate::bench::load::run(crate::bench::load::LoadConfig {
                coordinator: args.coordinator.trim_end_matches('/').to_owned(),
                participants: args
                    .participants
                    .iter()
                    .map(|p| p.trim_end_matches('/').to_owned())
                    .collect(),
                concurrency: args.concurrency,
                duration: std::time::Duration::from_secs_f64(args.duration.max(0.1)),
                direct: args.direct,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            })
            .await?;
            let mut out = std::io::stdout().lock();
            report.write_text(&mut out)?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&report).unwrap_or_default()
                )?;
            }
            Ok(())
        }
        Command::Demo => {
            demo::run(&mut std::io::stdout()).await?;
            Ok(())
        }
        Command::CheckParticipant(args) => {
            crate::conformance::command(args, &mut std::io::stdout()).await?;
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
