//! twopc-coordinator: a durable two-phase-commit coordinator for HTTP participants.
//!
//! Layers, from the inside out: [`machine`] (the pure lifecycle), [`log`] (the durable decision
//! log), [`driver`] (performs the machine's actions over HTTP), [`recovery`] (resumes unfinished
//! transactions), [`api`] (the axum HTTP API) and [`cli`] (the `twopc` binary).

pub mod api;
pub mod bench;
pub mod cli;
pub mod conformance;
pub mod demo;
pub mod driver;
pub mod failpoint;
pub mod inflight;
pub mod log;
pub mod machine;
pub mod record;
pub mod recovery;
pub mod server;
pub mod service;
pub mod validate;
