//! `bank-transfer`: moves money between two bank participants in one twopc transaction.
//!
//! Shows the client side: one `POST /v1/transactions` with `"commit": true` through
//! [`twopc::CoordinatorClient`], enlisting a debit at one bank and a credit at another.
//!
//! ```text
//! cargo run -p twopc-examples --bin bank-transfer -- --coordinator http://127.0.0.1:7800 \
//!     --from-url http://127.0.0.1:7801 --from alice --to-url http://127.0.0.1:7802 --to bob --amount 30
//! ```
//!
//! Prints the resulting transaction as JSON on stdout. Exit status: 0 when committed (or
//! committing: decided, acknowledgements still outstanding), 1 when aborted, 2 when the
//! coordinator could not be asked or answered without a decision.

use clap::Parser;
use std::io::Write as _;
use std::process::ExitCode;
use twopc::CoordinatorClient;
use twopc::wire::{CreateTransaction, ParticipantSpec, TransactionState, TransactionView};
use twopc_examples::bank::{credit, debit};

/// Moves money between two bank participants in one twopc transaction.
#[derive(Debug, Parser)]
#[command(name = "bank-transfer", version, about)]
struct Args {
    /// The coordinator's base URL.
    #[arg(
        long,
        env = "TWOPC_COORDINATOR",
        default_value = "http://127.0.0.1:7800"
    )]
    coordinator: String,
    /// Base URL of the bank to debit.
    #[arg(long)]
    from_url: String,
    /// Account to debit.
    #[arg(long)]
    from: String,
    /// Base URL of the bank to credit.
    #[arg(long)]
    to_url: String,
    /// Account to credit.
    #[arg(long)]
    to: String,
    /// Amount to move (positive).
    #[arg(long)]
    amount: i64,
    /// Participant name of the debiting bank in this transaction.
    #[arg(long, default_value = "from")]
    from_name: String,
    /// Participant name of the crediting bank in this transaction.
    #[arg(long, default_value = "to")]
    to_name: String,
    /// The transaction's deadline, in milliseconds (the coordinator's default otherwise).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Sent as `Idempotency-Key`: running again with the same key never transfers twice.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let body = CreateTransaction {
        timeout_ms: args.timeout_ms,
        participants: Some(vec![
            ParticipantSpec {
                name: args.from_name.clone(),
                url: args.from_url.clone(),
                payload: debit(&args.from, args.amount),
            },
            ParticipantSpec {
                name: args.to_name.clone(),
                url: args.to_url.clone(),
                payload: credit(&args.to, args.amount),
            },
        ]),
        commit: Some(true),
    };
    let client = CoordinatorClient::new(&args.coordinator);
    match client.create(&body, args.idempotency_key.as_deref()).await {
        Ok(view) => report(&view),
        Err(e) => {
            eprintln!(
                "bank-transfer: asking the coordinator at {} failed: {e}",
                args.coordinator
            );
            ExitCode::from(2)
        }
    }
}

/// Prints the transaction and chooses the exit status.
fn report(view: &TransactionView) -> ExitCode {
    let printed = serde_json::to_string_pretty(view)
        .map_err(std::io::Error::other)
        .and_then(|json| writeln!(std::io::stdout().lock(), "{json}"));
    if let Err(e) = printed {
        eprintln!("bank-transfer: cannot print the transaction: {e}");
        return ExitCode::from(2);
    }
    match view.state {
        TransactionState::Aborted | TransactionState::Aborting => {
            eprintln!(
                "bank-transfer: aborted: {}",
                view.reason.as_deref().unwrap_or("no reason given")
            );
            ExitCode::from(1)
        }
        TransactionState::Committed | TransactionState::Committing => ExitCode::SUCCESS,
        TransactionState::Active | TransactionState::Preparing => {
            eprintln!(
                "bank-transfer: the coordinator answered before deciding ({})",
                view.state
            );
            ExitCode::from(2)
        }
    }
}
