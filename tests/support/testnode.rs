//! `twopc-testnode`: the processes the crash tests start and kill.
//!
//! - `twopc-testnode coordinator serve …` is `twopc serve …` built with the `failpoints` feature
//!   (set `TWOPC_FAILPOINTS=name=pause` to freeze it at a fail point);
//! - `twopc-testnode bank --listen ADDR --database URL [--seed a=1,b=2] [--in-doubt-after-ms N]
//!   [--resolve-interval-ms N]` is the bank participant of `examples/`.

use anyhow::Context as _;
use clap::Parser;
use std::time::Duration;
use twopc::ResolverConfig;
use twopc_coordinator::cli::{self, Cli};
use twopc_examples::bank::Bank;

/// Options of the bank role.
#[derive(Debug, Parser)]
struct BankArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    database: String,
    #[arg(long, default_value = "")]
    seed: String,
    #[arg(long, default_value_t = 600_000)]
    in_doubt_after_ms: u64,
    #[arg(long, default_value_t = 200)]
    resolve_interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let role = args.get(1).cloned().unwrap_or_default();
    let rest = args.iter().skip(2).cloned();
    match role.as_str() {
        "coordinator" => {
            cli::init_tracing("info");
            let cli = Cli::parse_from(std::iter::once("twopc".to_owned()).chain(rest));
            cli::run(cli).await?;
        }
        "bank" => {
            cli::init_tracing("info");
            let a = BankArgs::parse_from(std::iter::once("bank".to_owned()).chain(rest));
            run_bank(a).await?;
        }
        other => anyhow::bail!("unknown role '{other}': use coordinator or bank"),
    }
    Ok(())
}

async fn run_bank(a: BankArgs) -> anyhow::Result<()> {
    let bank = Bank::open(&a.database)
        .await
        .with_context(|| format!("opening {}", a.database))?
        .with_resolver(ResolverConfig {
            in_doubt_after: Duration::from_millis(a.in_doubt_after_ms),
            interval: Duration::from_millis(a.resolve_interval_ms),
        });
    for part in a.seed.split(',').filter(|p| !p.is_empty()) {
        let (id, balance) = part.split_once('=').context("seed is ACCOUNT=BALANCE")?;
        bank.open_account(id, balance.parse()?).await?;
    }
    let listener = tokio::net::TcpListener::bind(&a.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, database = %a.database, "bank participant serving");
    bank.serve(listener, std::future::pending()).await?;
    Ok(())
}
