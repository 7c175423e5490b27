//! The in-doubt resolver (protocol rule 3.2.4): a participant that holds a prepared transaction
//! and hears nothing asks the coordinator for the outcome and applies it.

use super::{Handler, Participant};
use crate::client::CoordinatorClient;
use crate::error::ParticipantError;
use crate::store::{StateRow, StateStore, now_ms};
use crate::wire::{Decision, OutcomeRequest, TransactionId, TransactionState};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Most prepared rows one round inquires about; the rest wait for the next round.
const RESOLVE_BATCH: i64 = 100;

/// Time limit of one inquiry: a coordinator that does not answer by then is asked next round.
const INQUIRY_TIMEOUT: Duration = Duration::from_secs(10);

/// When the in-doubt resolver runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverConfig {
    /// A `prepared` row not updated for this long is in doubt: the coordinator is asked about it.
    pub in_doubt_after: Duration,
    /// Pause between rounds.
    pub interval: Duration,
}

impl Default for ResolverConfig {
    /// In doubt after 30 s (well past a healthy coordinator's phase two), a round every 5 s.
    fn default() -> Self {
        Self {
            in_doubt_after: Duration::from_secs(30),
            interval: Duration::from_secs(5),
        }
    }
}

/// What the resolver did about one in-doubt transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverAction {
    /// The coordinator decided commit; the commit handler ran.
    Committed,
    /// The coordinator decided abort; the abort handler ran.
    Aborted,
    /// The coordinator has no record (404): presumed abort; the abort handler ran.
    PresumedAborted,
    /// The coordinator has not decided yet (`active` or `preparing`): left prepared.
    LeftOpen(TransactionState),
    /// The coordinator could not be asked or gave no usable answer: asked again next round.
    Unreachable(String),
    /// The row has no coordinator URL to ask.
    NoCoordinator,
    /// Applying the outcome locally failed: tried again next round.
    Failed(String),
}

/// One in-doubt transaction and what the resolver did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The participant name of the row.
    pub participant: String,
    /// The transaction.
    pub transaction_id: TransactionId,
    /// What was done.
    pub action: ResolverAction,
}

impl<S: StateStore, H: Handler<S::Db>> Participant<S, H> {
    /// Runs one round: asks the coordinator about every `prepared` row not updated for
    /// `in_doubt_after` (at most a batch of them, oldest first) and applies the answers.
    pub async fn resolve_once(
        &self,
        in_doubt_after: Duration,
    ) -> Result<Vec<Resolution>, ParticipantError> {
        let age = i64::try_from(in_doubt_after.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age);
        let rows = self.store.list_in_doubt(cutoff, RESOLVE_BATCH).await?;
        let mut done = Vec::with_capacity(rows.len());
        for row in rows {
            let action = self.resolve_row(&row).await;
            log_resolution(&row, &action);
            done.push(Resolution {
                participant: row.participant,
                transaction_id: row.transaction_id,
                action,
            });
        }
        Ok(done)
    }

    /// Runs [`resolve_once`](Self::resolve_once) at once and then every `config.interval` until
    /// `shutdown` completes (a round in progress is abandoned; its local transaction rolls back).
    pub fn spawn_resolver(
        self: Arc<Self>,
        config: ResolverConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut shutdown = std::pin::pin!(shutdown);
            // `interval` panics on zero.
            let mut ticker = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = ticker.tick() => {}
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    round = self.resolve_once(config.in_doubt_after) => {
                        if let Err(e) = round {
                            tracing::error!(error = %e, "in-doubt resolver round failed");
                        }
                    }
                }
            }
            tracing::debug!("in-doubt resolver stopped");
        })
    }

    /// Asks about one row and applies the answer.
    async fn resolve_row(&self, row: &StateRow) -> ResolverAction {
        let Some(url) = row.coordinator.as_deref().filter(|u| !u.is_empty()) else {
            return ResolverAction::NoCoordinator;
        };
        let client =
            CoordinatorClient::with_http(self.http.clone(), url).with_timeout(INQUIRY_TIMEOUT);
        let decision = match client.get(row.transaction_id).await {
            Ok(None) => None,
            Ok(Some(view)) if view.id != row.transaction_id => {
                return ResolverAction::Unreachable(format!(
                    "coordinator answered about transaction {} instead",
                    view.id
                ));
            }
            Ok(Some(view)) => match view.state.decision() {
                Some(decision) => Some(decision),
                None => return ResolverAction::LeftOpen(view.state),
            },
            Err(e) => return ResolverAction::Unreachable(e.to_string()),
        };
        let req = OutcomeRequest {
            transaction_id: row.transaction_id,
            participant: row.participant.clone(),
        };
        let applied = match decision {
            Some(Decision::Commit) => self.commit(&req).await,
            Some(Decision::Abort) | None => self.abort(&req).await,
        };
        match (applied, decision) {
            (Err(e), _) => ResolverAction::Failed(e.to_string()),
            (Ok(_), Some(Decision::Commit)) => ResolverAction::Committed,
            (Ok(_), Some(Decision::Abort)) => ResolverAction::Aborted,
            (Ok(_), None) => ResolverAction::PresumedAborted,
        }
    }
}

/// Logs what the resolver did about `row`.
fn log_resolution(row: &StateRow, action: &ResolverAction) {
    let participant = row.participant.as_str();
    let transaction_id = row.transaction_id;
    match action {
        ResolverAction::Committed | ResolverAction::Aborted | ResolverAction::PresumedAborted => {
            tracing::info!(participant, %transaction_id, ?action, "resolved an in-doubt transaction");
        }
        ResolverAction::LeftOpen(state) => {
            tracing::debug!(participant, %transaction_id, %state, "in-doubt transaction not decided yet");
        }
        ResolverAction::Unreachable(why) => {
            tracing::warn!(participant, %transaction_id, coordinator = row.coordinator.as_deref().unwrap_or(""), error = %why, "could not ask the coordinator about an in-doubt transaction");
        }
        ResolverAction::NoCoordinator => {
            tracing::warn!(participant, %transaction_id, "in-doubt transaction has no coordinator URL to ask");
        }
        ResolverAction::Failed(why) => {
            tracing::error!(participant, %transaction_id, error = %why, "applying the coordinator's outcome failed");
        }
    }
}
