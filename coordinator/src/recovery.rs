//! Recovery: resumes every unfinished transaction in the log that no driver here owns.
//!
//! Runs once at start-up and then periodically: `committing` -> commit again, `aborting` ->
//! abort again, `preparing` -> abort (presumed abort: no decision was logged), `active` past
//! its deadline -> aborted.

use crate::log::{DecisionLog, LogError};
use crate::machine::{self, Event};
use crate::record::{TxRecord, now_millis};
use crate::service::Coordinator;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, info, warn};

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
        let page = coordinator.log().unfinished_after(cursor, BATCH).await?;
        let full = page.len() == BATCH as usize;
        cursor = page.last().map(|r| (r.created_at, r.id));
        for record in page {
            report.examined += 1;
            recover_one(coordinator, slots, record, &mut report).await?;
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
            Ok(r) if r.resumed + r.expired > 0 => info!(
                examined = r.examined,
                resumed = r.resumed,
                expired = r.expired,
                "recovery round"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "recovery round failed; retrying at the next interval"),
        }
    }
}
