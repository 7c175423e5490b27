//! What a service implements to become a participant: three handlers that run inside the SDK's
//! local transaction.

use crate::wire::{TransactionId, Vote};
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

/// The service's part of a participant. Each handler runs inside the local transaction that also
/// records the participant's state, so its writes and the state change commit together.
///
/// Handlers must keep their effects inside `tx`: the SDK may roll the transaction back (a handler
/// error, a deadlock) and run the flow again.
pub trait Handler<DB: sqlx::Database>: Send + Sync + 'static {
    /// The payload the coordinator's client gives this participant, deserialized from JSON.
    type Payload: serde::de::DeserializeOwned + Send + Sync + 'static;

    /// Checks and reserves what the transaction needs and votes. A `Vote::Abort` has its writes
    /// rolled back by the SDK (to a savepoint taken just before this call); an `Err` rolls back
    /// everything and answers 500, so the coordinator counts it as an abort vote.
    fn prepare(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        id: TransactionId,
        payload: &Self::Payload,
    ) -> impl Future<Output = Result<Vote, HandlerError>> + Send;

    /// Makes a prepared transaction's changes final. Must not fail for business reasons: the
    /// commit vote promised it would succeed. An `Err` is retried by the coordinator.
    fn commit(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        id: TransactionId,
        payload: &Self::Payload,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Releases what a prepared transaction reserved. Runs only for transactions that voted commit.
    fn abort(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        id: TransactionId,
        payload: &Self::Payload,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A handler's failure: any error, boxed.
pub struct HandlerError(Box<dyn StdError + Send + Sync + 'static>);

impl HandlerError {
    /// Wraps any error.
    pub fn new(err: impl StdError + Send + Sync + 'static) -> Self {
        Self(Box::new(err))
    }

    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into().into())
    }

    /// The wrapped error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// True when the handler failed on a deadlock, serialization failure or busy database, so
    /// running the local transaction again may succeed.
    pub fn is_transient(&self) -> bool {
        self.0
            .downcast_ref::<sqlx::Error>()
            .is_some_and(crate::error::is_transient_sqlx)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self::new(e)
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        Self::new(e)
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::msg(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::msg(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_display_as_given() {
        assert_eq!(
            HandlerError::msg("no such account").to_string(),
            "no such account"
        );
    }

    #[test]
    fn only_database_deadlocks_are_transient() {
        assert!(!HandlerError::msg("40001").is_transient());
        assert!(!HandlerError::from(sqlx::Error::RowNotFound).is_transient());
    }
}
