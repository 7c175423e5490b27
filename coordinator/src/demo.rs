//! `twopc demo`: a coordinator and two bank participants in one process, on temporary SQLite
//! files, making a few transfers (one of which must abort) and checking the money.

use crate::server::{Server, ServerConfig, ServerError};
use std::io::Write;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use twopc::CoordinatorClient;
use twopc::wire::{CreateTransaction, ParticipantSpec, TransactionState};
use twopc_examples::bank::{self, Bank};

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up a temporary directory or writing output failed.
    #[error("demo I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The coordinator failed to start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A bank participant failed.
    #[error("bank participant failed: {0}")]
    Bank(String),
    /// The coordinator API failed.
    #[error("coordinator call failed: {0}")]
    Client(#[from] twopc::ClientError),
    /// A transfer ended differently than the demo expects.
    #[error("unexpected outcome: {0}")]
    Unexpected(String),
    /// The money does not add up: the bank invariant is broken.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

/// One transfer of the demo and what it should do.
struct Transfer {
    from_bank: usize,
    from: &'static str,
    to_bank: usize,
    to: &'static str,
    amount: i64,
    expect: TransactionState,
}

const TRANSFERS: [Transfer; 4] = [
    Transfer {
        from_bank: 0,
        from: "alice",
        to_bank: 1,
        to: "bob",
        amount: 30,
        expect: TransactionState::Committed,
    },
    Transfer {
        from_bank: 1,
        from: "bob",
        to_bank: 0,
        to: "alice",
        amount: 10,
        expect: TransactionState::Committed,
    },
    Transfer {
        from_bank: 0,
        from: "alice",
        to_bank: 1,
        to: "bob",
        amount: 500,
        expect: TransactionState::Aborted,
    },
    Transfer {
        from_bank: 0,
        from: "alice",
        to_bank: 1,
        to: "bob",
        amount: 25,
        expect: TransactionState::Committed,
    },
];

/// Runs the demo, writing its report to `out`.
pub async fn run(out: &mut impl Write) -> Result<(), DemoError> {
    let dir = tempfile::tempdir()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let server = Server::build(ServerConfig {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}", dir.path().join("twopc.db").display()),
        recovery_interval: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .await?;
    let coordinator_url = server.base_url().to_owned();
    let coordinator_task = tokio::spawn(server.run(stop()));

    let mut banks = Vec::new();
    let mut urls = Vec::new();
    for (name, account, balance) in [("bank-a", "alice", 100), ("bank-b", "bob", 50)] {
        let db = format!(
            "sqlite://{}",
            dir.path().join(format!("{name}.db")).display()
        );
        let bank = Bank::open(&db)
            .await
            .map_err(|e| DemoError::Bank(e.to_string()))?;
        bank.open_account(account, balance)
            .await
            .map_err(|e| DemoError::Bank(e.to_string()))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("http://{}", listener.local_addr()?));
        let serving = bank.clone();
        let shutdown = stop();
        tokio::spawn(async move { serving.serve(listener, shutdown).await });
        banks.push((name, bank));
    }

    writeln!(
        out,
        "twopc demo: coordinator at {coordinator_url}, bank-a at {}, bank-b at {}",
        urls[0], urls[1]
    )?;
    let before = total(out, &banks, "before").await?;

    let client = CoordinatorClient::new(&coordinator_url);
    for (i, t) in TRANSFERS.iter().enumerate() {
        let request = CreateTransaction {
            timeout_ms: Some(10_000),
            commit: Some(true),
            participants: Some(vec![
                ParticipantSpec {
                    name: banks[t.from_bank].0.to_owned(),
                    url: urls[t.from_bank].clone(),
                    payload: bank::debit(t.from, t.amount),
                },
                ParticipantSpec {
                    name: banks[t.to_bank].0.to_owned(),
                    url: urls[t.to_bank].clone(),
                    payload: bank::credit(t.to, t.amount),
                },
            ]),
        };
        let tx = client.create(&request, None).await?;
        let reason = tx
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        writeln!(
            out,
            "transfer {}: {} -> {} amount {:>3}: {}{reason}   [tx {}]",
            i + 1,
            t.from,
            t.to,
            t.amount,
            tx.state,
            tx.id
        )?;
        if tx.state != t.expect {
            return Err(DemoError::Unexpected(format!(
                "transfer {} ended {} but should have ended {}",
                i + 1,
                tx.state,
                t.expect
            )));
        }
    }

    let after = total(out, &banks, "after").await?;
    let _ = stop_tx.send(true);
    let _ = coordinator_task.await;
    if before != after {
        return Err(DemoError::Invariant(format!(
            "total was {before} before and {after} after"
        )));
    }
    writeln!(out, "total unchanged: {after}")?;
    Ok(())
}

async fn total(
    out: &mut impl Write,
    banks: &[(&str, Bank)],
    label: &str,
) -> Result<i64, DemoError> {
    let mut sum = 0;
    let mut line = format!("balances {label}:");
    for (name, bank) in banks {
        for a in bank
            .accounts()
            .await
            .map_err(|e| DemoError::Bank(e.to_string()))?
        {
            if a.held != 0 {
                return Err(DemoError::Invariant(format!(
                    "{name}/{} still holds {}",
                    a.id, a.held
                )));
            }
            sum += a.balance;
            line.push_str(&format!(" {name}/{}={}", a.id, a.balance));
        }
    }
    writeln!(out, "{line}  (total {sum})")?;
    Ok(sum)
}
