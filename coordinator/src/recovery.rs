//! Recovery: resumes every unfinished transaction in the log that no driver here owns.
//!
//! Runs once at start-up and then periodically: `committing` -> commit again, `aborting` ->
//! abort again, `preparing` -> abort (presumed abort: no decision was logged), `active` past
//! its deadline -> aborted.

use crate::log::{DecisionLog, LogError};
use crate::machine::{self, Event};
use crate::record::now_millis;
use crate::service::Coordinator;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How many unfinished records one round reads.
pub const BATCH: u32 = 1000;

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

/// Runs one recovery round.
pub async fn recover_once<L: DecisionLog>(
    coordinator: &Arc<Coordinator<L>>,
) -> Result<RecoveryReport, LogError> {
    let mut report = RecoveryReport::default();
    let records = coordinator.log().unfinished(BATCH).await?;
    for record in records {
        report.examined += 1;
        let Some(claim) = coordinator.inflight().claim(&record) else {
            report.skipped += 1;
            continue;
        };
        let t = match machine::apply(&record, Event::Recovered, now_millis()) {
            Ok(t) => t,
            Err(e) => {
                warn!(tx = %record.id, error = %e, "cannot recover transaction");
                continue;
            }
        };
        if !t.changed && t.actions.is_empty() {
            continue;
        }
        let saved = if t.changed {
            let mut next = t.record;
            next.version = record.version + 1;
            match coordinator.log().update(&next).await {
                Ok(()) => next,
                Err(LogError::Conflict { .. }) => {
                    debug!(tx = %record.id, "changed while recovering; next round");
                    continue;
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
            info!(tx = %saved.id, state = %saved.state, "resuming");
            coordinator.spawn_drive(claim, saved, t.actions);
        }
    }
    Ok(report)
}

/// Runs recovery now and then every `interval` until `shutdown` completes.
pub async fn run<L: DecisionLog>(
    coordinator: Arc<Coordinator<L>>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        match recover_once(&coordinator).await {
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
