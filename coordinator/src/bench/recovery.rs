//! Recovery benchmark: how fast a restarted coordinator finishes a backlog of transactions
//! that were decided to commit but not yet delivered.

use crate::log::{AnyLog, DecisionLog, LogError};
use crate::machine::{self, Event};
use crate::record::{ParticipantRecord, TxRecord, now_millis};
use crate::server::{Server, ServerConfig, ServerError};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use twopc::wire::{TransactionId, Vote};

/// Settings of the recovery benchmark.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// Decision log URL (a fresh database is best).
    pub database_url: String,
    /// Participant base URLs (no-op participants).
    pub participants: Vec<String>,
    /// How many decided transactions to leave for recovery.
    pub count: usize,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Transactions recovered.
    pub count: usize,
    /// Participants per transaction.
    pub participants: usize,
    /// Seconds from start-up to the last one completed.
    pub seconds: f64,
    /// Recovered transactions per second.
    pub throughput_tps: f64,
}

/// Errors of the recovery benchmark.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryBenchError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The coordinator failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A record could not be built.
    #[error("{0}")]
    Setup(String),
}

/// Logs `count` transactions as decided to commit, then starts a coordinator on that log and
/// measures until every one is completed.
pub async fn run(config: RecoveryConfig) -> Result<RecoveryReport, RecoveryBenchError> {
    let log = Arc::new(AnyLog::connect(&config.database_url).await?);
    let mut writers = tokio::task::JoinSet::new();
    let per_task = config.count.div_ceil(64).max(1);
    let mut left = config.count;
    while left > 0 {
        let n = left.min(per_task);
        left -= n;
        let (log, participants) = (log.clone(), config.participants.clone());
        writers.spawn(async move {
            for _ in 0..n {
                let rec = committing_record(&participants)?;
                log.create(&rec, None).await?;
            }
            Ok::<(), RecoveryBenchError>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.map_err(|e| RecoveryBenchError::Setup(e.to_string()))??;
    }
    drop(log);

    let start = Instant::now();
    let server = Server::build(ServerConfig {
        listen: "127.0.0.1:0".into(),
        database_url: config.database_url.clone(),
        recovery_interval: Duration::from_secs(3600),
        ..ServerConfig::default()
    })
    .await?;
    let log = server.coordinator().log().clone();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    loop {
        if log.unfinished(1).await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = running.await;
    Ok(RecoveryReport {
        count: config.count,
        participants: config.participants.len(),
        seconds,
        throughput_tps: config.count as f64 / seconds,
    })
}

/// A record as a coordinator leaves it when it dies right after logging a commit decision.
fn committing_record(participants: &[String]) -> Result<TxRecord, RecoveryBenchError> {
    let now = now_millis();
    let mut rec = TxRecord::new(TransactionId::new(), 30_000, now);
    rec.participants = participants
        .iter()
        .enumerate()
        .map(|(i, url)| {
            ParticipantRecord::new(format!("p{i}"), url.clone(), serde_json::Value::Null)
        })
        .collect();
    let setup = |e: machine::TransitionError| RecoveryBenchError::Setup(e.to_string());
    rec = machine::apply(&rec, Event::CommitRequested, now)
        .map_err(setup)?
        .record;
    for i in 0..participants.len() {
        let ev = Event::Voted {
            participant: format!("p{i}"),
            vote: Vote::Commit,
        };
        rec = machine::apply(&rec, ev, now).map_err(setup)?.record;
    }
    rec.version = 0;
    Ok(rec)
}
