//! Which transactions this process is driving right now, and their latest record.
//!
//! A driver claims a transaction before it changes its state, so recovery never resumes a
//! transaction that a live driver in this process owns, and API calls can wait on the
//! driver's progress instead of polling the log.

use crate::record::TxRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;
use twopc::wire::TransactionId;

/// The registry of claimed transactions.
#[derive(Debug, Clone, Default)]
pub struct Inflight {
    /// One watch per claimed transaction, holding its latest persisted record (or its
    /// completion while that is being written).
    map: Arc<Mutex<HashMap<TransactionId, watch::Sender<TxRecord>>>>,
}

/// Ownership of one transaction; releasing it (drop) removes the entry.
#[derive(Debug)]
pub struct Claim {
    id: TransactionId,
    sender: watch::Sender<TxRecord>,
    map: Arc<Mutex<HashMap<TransactionId, watch::Sender<TxRecord>>>>,
}

impl Inflight {
    /// Claims `record`'s transaction, unless it is claimed already.
    pub fn claim(&self, record: &TxRecord) -> Option<Claim> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&record.id) {
            return None;
        }
        let (sender, _) = watch::channel(record.clone());
        map.insert(record.id, sender.clone());
        Some(Claim {
            id: record.id,
            sender,
            map: self.map.clone(),
        })
    }

    /// Follows a claimed transaction's progress.
    pub fn subscribe(&self, id: TransactionId) -> Option<watch::Receiver<TxRecord>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&id).map(watch::Sender::subscribe)
    }

    /// The records of claimed transactions that are not in the log yet.
    pub fn unlogged(&self) -> Vec<TxRecord> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .map(|w| w.borrow().clone())
            .filter(|r| !r.is_logged())
            .collect()
    }

    /// Whether a driver in this process owns the transaction.
    pub fn is_claimed(&self, id: TransactionId) -> bool {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.contains_key(&id)
    }

    /// How many transactions are being driven.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no transaction is being driven.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Claim {
    /// The claimed transaction.
    pub fn id(&self) -> TransactionId {
        self.id
    }

    /// Tells the followers about a newly persisted record (or a completion being persisted).
    pub fn publish(&self, record: &TxRecord) {
        self.sender.send_replace(record.clone());
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_claimed_once_until_released() {
        let inflight = Inflight::default();
        let rec = TxRecord::new(TransactionId::new(), 1000, 0);
        let claim = inflight.claim(&rec).unwrap();
        assert!(inflight.claim(&rec).is_none());
        assert!(inflight.is_claimed(rec.id));
        let mut rx = inflight.subscribe(rec.id).unwrap();
        let mut next = rec.clone();
        next.version = 7;
        claim.publish(&next);
        assert_eq!(rx.borrow_and_update().version, 7);
        drop(claim);
        assert!(!inflight.is_claimed(rec.id));
        assert!(inflight.claim(&rec).is_some());
    }
}
