//! Recovery: resumes every unfinished transaction in the log that no driver here owns.
//!
//! Runs once at start-up and then periodically: `committing` -> commit again, `aborting` ->
//! abort again, `preparing` -> abort (presumed abort: no decision was logged), `active` past
//! its deadline -> aborted.

use crate::log::{DecisionLog, LogError, Unfinished};
use crate::machine::{self, Event};
use crate::record::{TxRecord, now_millis};
use crate::service::Coordinator;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, error, info, warn};

/// How many unfinished records one page of a round reads.
pub const BATCH: u32 = 1000;
/// Most transactions recovery drives at once: bounds memory and the load on participants when
/// a restart finds a large backlog (a round waits for a free slot rather than reading ahead).
pub const MAX_CONCURRENT_DRIVES: usize = 1024;

/// Longest a recovered drive counts against [`MAX_CONCURRENT_DRIVES`]; one still retrying a
/// participant that is down after this goes on without a slot.
pub const SLOT_HOLD_MAX: Duration = Duration::from_secs(10);

/// What one recovery round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unfinished records looked at.
    pub examined: usize,
    /// Records owned by a live driver here, left alone.
    pub skipped: usize,
    /// Records whose delivery (commit or abort) was resumed.
    pub resumed: usize,
    /// Records aborted without any message (active past the deadline).
    pub expired: usize,
    /// Rows that could not be read, skipped (each logged as an error every round).
    pub corrupt: usize,
}

/// Runs one recovery round over every unfinished record, page by page, driving at most
/// `slots.available_permits()` transactions at once.
pub async fn recover_once<L: DecisionLog>(
    coordinator: &Arc<Coordinator<L>>,
    slots: &Arc<Semaphore>,
) -> Result<RecoveryReport, LogError> {
    let mut report = RecoveryReport::default();
    let mut cursor = None;
    loop {
        let page = coordinator.log().unfinished_page(cursor, BATCH).await?;
        let full = page.len() == BATCH as usize;
        cursor = page.last().map(Unfinished::cursor);
        for row in page {
            report.examined += 1;
            match row {
                Unfinished::Record(record) => {
                    recover_one(coordinator, slots, record, &mut report).await?;
                }
                // One unreadable row must not stop the recovery of all the others.
                Unfinished::Corrupt { id, message, .. } => {
                    report.corrupt += 1;
                    error!(
                        tx = id,
                        message, "unfinished log row cannot be read; skipped"
                    );
                }
            }
        }
        if !full {
            return Ok(report);
        }
    }
}

async fn recover_one<L: DecisionLog>(
    coordinator: &Arc<Coordinator<L>>,
    slots: &Arc<Semaphore>,
    record: TxRecord,
    report: &mut RecoveryReport,
) -> Result<(), LogError> {
    let Some(claim) = coordinator.inflight().claim(&record) else {
        report.skipped += 1;
        return Ok(());
    };
    // The page may be older than the claim: a driver here may have finished the transaction
    // between the read and the claim. Re-read, so a finished one is not delivered again.
    let Some(record) = coordinator.log().get(record.id).await? else {
        return Ok(());
    };
    let t = match machine::apply(&record, Event::Recovered, now_millis()) {
        Ok(t) => t,
        Err(e) => {
            warn!(tx = %record.id, error = %e, "cannot recover transaction");
            return Ok(());
        }
    };
    if !t.changed && t.actions.is_empty() {
        return Ok(());
    }
    let saved = if t.changed {
        let mut next = t.record;
        next.version = record.version + 1;
        match coordinator.log().update(&next).await {
            Ok(()) => next,
            Err(LogError::Conflict { .. }) => {
                debug!(tx = %record.id, "changed while recovering; next round");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    } else {
        record
    };
    if t.actions.is_empty() {
        report.expired += 1;
        info!(tx = %saved.id, state = %saved.state, "recovered");
    } else {
        report.resumed += 1;
        debug!(tx = %saved.id, state = %saved.state, "resuming");
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        // The slot is freed when the drive ends, or after SLOT_HOLD_MAX if it is still
        // retrying a participant that is down: such drives must not starve the others.
        let (ended, end) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SLOT_HOLD_MAX, end).await;
            drop(slot);
        });
        coordinator.spawn_drive_holding(claim, saved, t.actions, ended);
    }
    Ok(())
}

/// Runs recovery now and then every `interval` until `shutdown` completes.
pub async fn run<L: DecisionLog>(
    coordinator: Arc<Coordinator<L>>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_DRIVES));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        match recover_once(&coordinator, &slots).await {
            Ok(r) if r.resumed + r.expired + r.corrupt > 0 => info!(
                examined = r.examined,
                resumed = r.resumed,
                expired = r.expired,
                corrupt = r.corrupt,
                "recovery round"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "recovery round failed; retrying at the next interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Driver, DriverSettings};
    use crate::log::SqliteLog;
    use twopc::wire::{TransactionId, TransactionState};

    /// A row that cannot be read is skipped and counted; the rows around it are recovered.
    #[tokio::test]
    async fn a_corrupt_row_does_not_stop_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("log.db").display());
        let log = Arc::new(SqliteLog::connect(&url).await.unwrap());
        // Two active transactions past their deadline, created before and after a bad row.
        let early = TxRecord::new(TransactionId::new(), 1, 1_000);
        let late = TxRecord::new(TransactionId::new(), 1, 3_000);
        log.create(&early, None).await.unwrap();
        log.create(&late, None).await.unwrap();
        sqlx::query(
            "INSERT INTO twopc_transactions (id, state, decision, reason, timeout_ms, created_at, \
             deadline, decided_at, completed_at, participants, version) \
             VALUES (?, 'zombie', NULL, NULL, 1, 2000, 2001, NULL, NULL, '[]', 0)",
        )
        .bind(TransactionId::new().to_string())
        .execute(log.pool())
        .await
        .unwrap();
        let driver = Driver::new(
            log.clone(),
            reqwest::Client::new(),
            DriverSettings {
                advertise_url: "http://127.0.0.1:1".into(),
            },
        );
        let coordinator = Coordinator::new(Arc::new(driver), Duration::from_secs(1));
        let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_DRIVES));
        let report = recover_once(&coordinator, &slots).await.unwrap();
        assert_eq!(report.examined, 3, "{report:?}");
        assert_eq!(report.corrupt, 1, "{report:?}");
        assert_eq!(report.expired, 2, "{report:?}");
        for id in [early.id, late.id] {
            let r = log.get(id).await.unwrap().unwrap();
            assert_eq!(r.state, TransactionState::Aborted);
        }
    }
}
