//! `bank-participant`: one bank as a twopc participant over HTTP.
//!
//! Shows a complete participant service: the SDK's `/prepare`, `/commit` and `/abort` next to the
//! service's own `/accounts`, the in-doubt resolver in the background, graceful shutdown.
//!
//! ```text
//! cargo run -p twopc-examples --bin bank-participant -- \
//!     --listen 127.0.0.1:7801 --database sqlite://bank-a.db --seed alice=100,bob=50
//! curl -s http://127.0.0.1:7801/accounts
//! ```
//!
//! Logs go to stderr (`RUST_LOG` filters them). Stdout gets exactly one line once the listener is
//! bound, `listening on http://ADDR`, so that scripts and tests can start it with
//! `--listen 127.0.0.1:0` and learn the port.

use anyhow::Context as _;
use clap::Parser;
use std::io::Write as _;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use twopc::ResolverConfig;
use twopc_examples::bank::Bank;

/// One bank as a twopc participant.
#[derive(Debug, Parser)]
#[command(name = "bank-participant", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "BANK_LISTEN", default_value = "127.0.0.1:7801")]
    listen: String,

    /// The bank's database: sqlite://FILE (created if missing), postgres://… or mysql://….
    #[arg(long, env = "BANK_DATABASE_URL")]
    database: String,

    /// Accounts to open unless they exist, e.g. `alice=100,bob=50` (existing balances are kept).
    #[arg(long, value_parser = parse_seed)]
    seed: Option<Seed>,

    /// A prepared transaction not updated for this long is in doubt: ask the coordinator.
    #[arg(long, default_value_t = 5000)]
    in_doubt_after_ms: u64,

    /// Pause between rounds of the in-doubt resolver.
    #[arg(long, default_value_t = 1000)]
    resolve_interval_ms: u64,
}

/// Accounts and opening balances from `--seed`.
#[derive(Debug, Clone)]
struct Seed(Vec<(String, i64)>);

fn parse_seed(text: &str) -> Result<Seed, String> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (id, balance) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not ACCOUNT=BALANCE"))?;
            let balance = balance
                .trim()
                .parse::<i64>()
                .map_err(|e| format!("balance of '{}' is not a whole number: {e}", id.trim()))?;
            Ok((id.trim().to_owned(), balance))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Seed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();

    let bank = Bank::open(&args.database)
        .await
        .with_context(|| {
            format!(
                "opening the database '{}' given in --database",
                args.database
            )
        })?
        .with_resolver(ResolverConfig {
            in_doubt_after: Duration::from_millis(args.in_doubt_after_ms),
            interval: Duration::from_millis(args.resolve_interval_ms),
        });
    for (id, balance) in args.seed.map(|s| s.0).unwrap_or_default() {
        let account = bank
            .open_account(&id, balance)
            .await
            .with_context(|| format!("seeding account '{id}' given in --seed"))?;
        tracing::info!(account = %account.id, balance = account.balance, held = account.held, "account ready");
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "failed binding to address '{}' given in --listen",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    // The one line on stdout: tests and scripts read the port from it.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(%addr, database = %args.database, "bank participant serving");

    bank.serve(listener, shutdown_signal()).await?;
    tracing::info!("bank participant stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_parse_as_account_balance_pairs() {
        let seed = parse_seed("alice=100, bob=50,").unwrap();
        assert_eq!(
            seed.0,
            vec![("alice".to_owned(), 100), ("bob".to_owned(), 50)]
        );
        assert!(parse_seed("alice").unwrap_err().contains("ACCOUNT=BALANCE"));
        assert!(parse_seed("alice=lots").unwrap_err().contains("alice"));
    }
}
