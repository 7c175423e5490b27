//! twopc: the wire types of the twopc protocol, a participant SDK for Rust services and a
//! client for the coordinator API.
//!
//! A service becomes a participant by implementing [`Handler`] for its database, wrapping it in a
//! [`Participant`] with the matching [`StateStore`] ([`SqliteStore`], [`PostgresStore`],
//! [`MySqlStore`]) and serving [`Participant::router`]. The SDK keeps the prepared state in the
//! service's own database, makes all three calls idempotent, records tombstones, and resolves
//! in-doubt transactions by asking the coordinator ([`Participant::spawn_resolver`]).
//!
//! A participant that moves stock between warehouses, on SQLite:
//!
//! ```no_run
//! use std::{sync::Arc, time::Duration};
//! use sqlx::{Sqlite, Transaction};
//! use twopc::{Handler, HandlerError, Participant, ResolverConfig, SqliteStore, StateStore};
//! use twopc::{TransactionId, Vote};
//!
//! #[derive(serde::Deserialize)]
//! struct Take { item: String, quantity: i64 }
//!
//! struct Stock;
//!
//! impl Handler<Sqlite> for Stock {
//!     type Payload = Take;
//!
//!     // Reserve, or refuse: the vote is a promise that commit will succeed.
//!     async fn prepare(&self, tx: &mut Transaction<'static, Sqlite>, _id: TransactionId, take: &Take)
//!         -> Result<Vote, HandlerError> {
//!         let reserved = sqlx::query(
//!             "UPDATE stock SET reserved = reserved + ? WHERE item = ? AND on_hand - reserved >= ?")
//!             .bind(take.quantity).bind(&take.item).bind(take.quantity)
//!             .execute(&mut **tx).await?.rows_affected();
//!         Ok(if reserved == 1 { Vote::Commit } else {
//!             Vote::Abort { reason: format!("not enough {}", take.item) }
//!         })
//!     }
//!
//!     async fn commit(&self, tx: &mut Transaction<'static, Sqlite>, _id: TransactionId, take: &Take)
//!         -> Result<(), HandlerError> {
//!         sqlx::query("UPDATE stock SET on_hand = on_hand - ?, reserved = reserved - ? WHERE item = ?")
//!             .bind(take.quantity).bind(take.quantity).bind(&take.item)
//!             .execute(&mut **tx).await?;
//!         Ok(())
//!     }
//!
//!     async fn abort(&self, tx: &mut Transaction<'static, Sqlite>, _id: TransactionId, take: &Take)
//!         -> Result<(), HandlerError> {
//!         sqlx::query("UPDATE stock SET reserved = reserved - ? WHERE item = ?")
//!             .bind(take.quantity).bind(&take.item)
//!             .execute(&mut **tx).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::connect("sqlite://warehouse.db").await?;
//! store.migrate().await?; // the SDK's state table, next to your own tables
//! let participant = Arc::new(Participant::new(store, Stock));
//! participant.clone().spawn_resolver(
//!     ResolverConfig { in_doubt_after: Duration::from_secs(30), interval: Duration::from_secs(5) },
//!     std::future::pending(),
//! );
//! let app = participant.router_at("/twopc"); // POST /twopc/prepare, /commit, /abort
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7801").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

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
