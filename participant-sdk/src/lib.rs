//! twopc: the wire types of the twopc protocol, a participant SDK for Rust services and a
//! client for the coordinator API.

pub mod wire;

pub use wire::{TransactionId, TransactionState, Vote};
