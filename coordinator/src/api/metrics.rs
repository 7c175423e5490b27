//! Counters served at `/metrics` in the Prometheus text format.

use crate::record::TxRecord;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use twopc::wire::TransactionState;

/// Counters of what the API answered.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Transactions created.
    created: AtomicU64,
    /// Commit-style answers that were `committed`.
    committed: AtomicU64,
    /// Answers that were `aborted`.
    aborted: AtomicU64,
    /// Answers that were `committing` (acknowledgements outstanding).
    committing: AtomicU64,
}

impl Metrics {
    /// Counts a created transaction.
    pub fn created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the state a commit or abort call answered.
    pub fn observe(&self, record: &TxRecord) {
        let counter = match record.state {
            TransactionState::Committed => &self.committed,
            TransactionState::Aborted => &self.aborted,
            TransactionState::Committing => &self.committing,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, inflight: usize, log_writes: Option<(u64, u64)>) -> String {
        let mut out = String::new();
        let counters = [
            (
                "twopc_transactions_created_total",
                "Transactions created.",
                &self.created,
            ),
            (
                "twopc_answers_committed_total",
                "Calls answered committed.",
                &self.committed,
            ),
            (
                "twopc_answers_aborted_total",
                "Calls answered aborted.",
                &self.aborted,
            ),
            (
                "twopc_answers_committing_total",
                "Calls answered committing (acknowledgements outstanding).",
                &self.committing,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP twopc_inflight_transactions Transactions driven by this process now.\n# TYPE twopc_inflight_transactions gauge\ntwopc_inflight_transactions {inflight}"
        );
        if let Some((batches, writes)) = log_writes {
            let _ = writeln!(
                out,
                "# HELP twopc_log_batches_total Decision-log commits (one fsync each).\n# TYPE twopc_log_batches_total counter\ntwopc_log_batches_total {batches}\n# HELP twopc_log_writes_total Decision-log writes, group-committed in those batches.\n# TYPE twopc_log_writes_total counter\ntwopc_log_writes_total {writes}"
            );
        }
        out
    }
}
