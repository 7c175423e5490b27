//! twopc: the wire types of the twopc protocol, a participant SDK for Rust services and a
//! client for the coordinator API.
//!
//! A service becomes a participant by implementing [`Handler`] for its database, wrapping it in a
//! [`Participant`] with the matching [`StateStore`] ([`SqliteStore`], [`PostgresStore`],
//! [`MySqlStore`]) and serving [`Participant::router`]. The SDK keeps the prepared state in the
//! service's own database, makes all three calls idempotent, records tombstones, and resolves
//! in-doubt transactions by asking the coordinator ([`Participant::spawn_resolver`]).

pub mod client;
pub mod error;
pub mod participant;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use client::CoordinatorClient;
pub use error::{ClientError, ParticipantError, StoreError};
pub use participant::{
    Applied, Handler, HandlerError, LocalState, Op, Participant, Resolution, ResolverAction,
    ResolverConfig, Step, step,
};
pub use store::{MySqlStore, PostgresStore, SqliteStore, StateRow, StateStore};
pub use wire::{TransactionId, TransactionState, Vote};
